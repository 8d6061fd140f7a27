"""The quality path's fast forms give the results of their plain definitions, written out here:

- the checker's generated function against an oracle written from the declarations (plain Python per rule),
  on random records, in the rules' order; declared values are bound, never parsed as code;
- the gate's shared empty result for an event that passed, and a new list whenever one failed;
- `Fingerprinter` (pre-keyed BLAKE2b states, copied per event) against one-shot keyed BLAKE2b over the pinned
  encoding, so the dedup log's fingerprints do not change;
- `is_email` (an ASCII regex for ASCII text, `str.find` for the at sign) against the original definition:
  the Unicode address regex, then the structural limits on the part before the first at sign.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.detectors import detector
from gateway.core.detectors import email as email_module
from gateway.core.detectors.email import is_email
from gateway.core.quality.dedup import DuplicateFilter, Fingerprinter, fingerprint_key, pack
from gateway.core.quality.gate import PASSED, QualityGate
from gateway.core.quality.rules import RecordChecker, compile_checker
from gateway.core.quality.spec import compile_quality

KEY = fingerprint_key(bytes(range(32)))
COLOR = {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}
OUTLIER_NEVER_WARM = {"min_samples": 100_000, "window": 100_000}  # observed, never judged: the oracle stays stateless
FIELDS: list[dict[str, Any]] = [
    {"name": "a", "type": ["null", "long"],
     "quality": {"required": {"action": "measure"}, "range": [0, 100], "outlier": OUTLIER_NEVER_WARM}},
    {"name": "b", "type": ["null", "double"], "quality": {"range": {"min": -1.5}}},
    {"name": "b2", "type": ["null", "double"], "quality": {"range": {"max": 2.5, "action": "reject"}}},
    {"name": "untouched", "type": ["null", "string"]},
    {"name": "c", "type": ["null", "string"],
     "quality": {"allowed": ["x", "yy", "z'); raise SystemExit('code') #"], "format": {"regex": "[a-z]{1,2}"},
                 "max_length": 2}},
    {"name": "d", "type": ["null", "string"], "quality": {"format": {"detector": "EMAIL"}}},
    {"name": "e", "type": ["null", COLOR], "quality": {"allowed": ["RED", "BLUE"], "required": True}},
    {"name": "f", "type": ["null", "string"], "quality": {"format": {"detector": "IP"}}},
    {"name": "g", "type": ["null", "bytes"], "quality": {"max_length": {"max": 3, "action": "reject"}}},
    {"name": "h", "type": ["null", {"type": "array", "items": "long"}], "quality": {"max_length": 2}},
    {"name": "i", "type": ["null", "boolean"], "quality": {"allowed": [True]}},
]
CHECKS = [
    {"name": "a_le_b", "rule": ["a", "<=", "b"]},
    {"name": "c_is_x", "rule": ["c", "==", {"value": "x\"; import os #"}]},
    {"name": "three_below_a", "rule": [{"value": 3}, "<", "a"], "action": "reject"},
    {"name": "e_not_c", "rule": ["e", "!=", "c"]},
    {"name": "b2_above", "rule": ["b2", ">", {"value": -2.5}]},
    {"name": "untouched_ge", "rule": ["untouched", ">=", "c"]},
]
ALLOWED_C = {"x", "yy", "z'); raise SystemExit('code') #"}
IP = detector(["IP"])


def _whole(entity_find: Any, value: str) -> bool:
    text = value.strip()
    found = list(entity_find(text))
    return len(found) == 1 and found[0].start == 0 and found[0].end == len(text)


def expected_failures(r: dict[str, Any]) -> list[str]:
    """The rules `r` fails, from the declarations above, in the rules' order (fields, then kinds, then checks)."""
    out: list[str] = []
    a, b, b2, c, d, e, f, g, h, i = (r.get(k) for k in "a b b2 c d e f g h i".split())
    u = r.get("untouched")
    if a is None:
        out.append("a.required")
    elif not 0 <= a <= 100:
        out.append("a.range")
    if b is not None and not b >= -1.5:
        out.append("b.range")
    if b2 is not None and not b2 <= 2.5:
        out.append("b2.range")
    if c is not None:
        out += [name for name, ok in (("c.allowed", c in ALLOWED_C), ("c.format", re.fullmatch("[a-z]{1,2}", c)),
                                      ("c.max_length", len(c) <= 2)) if not ok]
    if d is not None and not is_email(d.strip()):
        out.append("d.format")
    if e is None:
        out.append("e.required")
    elif e not in ("RED", "BLUE"):
        out.append("e.allowed")
    if f is not None and not _whole(IP.find, f):
        out.append("f.format")
    if g is not None and len(g) > 3:
        out.append("g.max_length")
    if h is not None and len(h) > 2:
        out.append("h.max_length")
    if i is not None and i is not True:
        out.append("i.allowed")
    for name, left, op, right in (("a_le_b", a, "<=", b), ("c_is_x", c, "==", "x\"; import os #"),
                                  ("three_below_a", 3, "<", a), ("e_not_c", e, "!=", c),
                                  ("b2_above", b2, ">", -2.5), ("untouched_ge", u, ">=", c)):
        if left is None or right is None:
            continue
        holds = {"<=": left <= right, "==": left == right, "<": left < right, "!=": left != right,
                 ">": left > right, ">=": left >= right}[op]
        if not holds:
            out.append(name)
    return out


def checker_of(fields: list[dict[str, Any]], checks: Any = None) -> RecordChecker:
    errors: list[tuple[str, str]] = []
    checker = compile_checker(fields, checks, {"Color": COLOR}, lambda w, m: errors.append((w, m)))
    assert errors == [] and checker is not None
    return checker


CHECKER = checker_of(FIELDS, CHECKS)
NUMBERS = st.one_of(st.integers(-10, 120), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([-1.5, 2.5, -2.5, 0.0, -0.0, 100, 100.0, 0]))
RECORDS = st.fixed_dictionaries({}, optional={
    "a": st.one_of(st.none(), st.integers(-5, 105)),
    "b": st.one_of(st.none(), NUMBERS.filter(lambda v: isinstance(v, float))),
    "b2": st.one_of(st.none(), NUMBERS.filter(lambda v: isinstance(v, float))),
    "untouched": st.one_of(st.none(), st.sampled_from(["", "x", "yy", "zz"])),
    "c": st.one_of(st.none(), st.sampled_from(sorted(ALLOWED_C)), st.text("xyzX'", max_size=4)),
    "d": st.one_of(st.none(), st.sampled_from(["jane@example.com", " jane@example.com ", "jane@localhost", "x",
                                               "josé@bücher.de", "a..b@example.com"])),
    "e": st.one_of(st.none(), st.sampled_from(COLOR["symbols"])),
    "f": st.one_of(st.none(), st.sampled_from(["10.0.0.1", " 10.0.0.1", "10.0.0.1 10.0.0.2", "no", "::1"])),
    "g": st.one_of(st.none(), st.binary(max_size=5)),
    "h": st.one_of(st.none(), st.lists(st.integers(), max_size=4)),
    "i": st.one_of(st.none(), st.booleans()),
})


@settings(max_examples=400, deadline=None)
@given(records=st.lists(RECORDS, min_size=1, max_size=5))
def test_the_generated_checker_fails_exactly_the_rules_the_declarations_say(records: list[dict[str, Any]]) -> None:
    state, other = CHECKER.new_state(), CHECKER.new_state()
    names = [r.name for r in CHECKER.rules]
    for record in records:
        failed = CHECKER.check(record, state)
        assert failed == sorted(failed)  # ascending indexes: the rules' order
        assert [names[i] for i in failed] == expected_failures(record)
        assert (CHECKER.failures(record, other.baselines) or []) == failed
    # the outlier rule saw exactly the non-null values of its field
    assert state.baselines[0].seen == sum(1 for r in records if r.get("a") is not None)


@settings(max_examples=300, deadline=None)
@given(lo=st.one_of(st.none(), st.integers(-5, 5), st.floats(-5, 5)),
       hi=st.one_of(st.none(), st.integers(-5, 5), st.floats(-5, 5)),
       values=st.lists(st.one_of(st.integers(-7, 7), st.floats(allow_nan=True, allow_infinity=True)), max_size=8))
def test_every_range_form_keeps_nan_outside(lo: Any, hi: Any, values: list[Any]) -> None:
    if lo is None and hi is None or lo is not None and hi is not None and lo > hi:
        return
    decl = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
    checker = checker_of([{"name": "v", "type": "double", "quality": {"range": decl}}])
    state = checker.new_state()
    for v in values:
        inside = (lo is None or lo <= v) and (hi is None or v <= hi)  # False for NaN either way
        assert checker.check({"v": v}, state) == ([] if inside else [0])


def test_declared_values_are_bound_never_parsed_as_code() -> None:
    """A literal or allowed value that reads as Python stays a value: compared, not executed."""
    state = CHECKER.new_state()
    names = [r.name for r in CHECKER.rules]
    sneaky = "z'); raise SystemExit('code') #"
    record = {"a": 50, "e": "RED", "c": sneaky}
    assert [names[i] for i in CHECKER.check(record, state)] == ["c.format", "c.max_length", "c_is_x"]
    assert CHECKER.check({"a": 50, "e": "RED", "c": "x\"; import os #"}, state) == [
        names.index("c.allowed"), names.index("c.format"), names.index("c.max_length")]


def test_a_passing_record_allocates_no_result_and_a_failing_one_gets_a_new_list() -> None:
    checker = checker_of([{"name": "v", "type": "long", "quality": {"range": [0, 10]}}])
    state = checker.new_state()
    assert checker.failures({"v": 5}, state.baselines) is None
    first, second = checker.failures({"v": 11}, state.baselines), checker.failures({"v": 11}, state.baselines)
    assert first == second == [0] and first is not second


def _gate(duplicates: bool, id_type: Any = "string", max_ids: int = 1000,
          duplicate_action: str = "flag") -> QualityGate:
    fields = [{"name": "id", "type": id_type},
              {"name": "v", "type": ["null", "long"], "quality": {"range": {"min": 0, "max": 10, "action": "reject"}}}]
    settings_ = {"freshness": {"max_lag_s": 1},
                 **({"duplicates": {"action": duplicate_action}} if duplicates else {})}
    errors: list[tuple[str, str]] = []
    spec = compile_quality(fields, settings_, {}, "id", {"id": True, "v": True}, lambda w, m: errors.append((w, m)))
    assert errors == [] and spec is not None
    return QualityGate(spec, "t.R", "policy", "src", "id", DuplicateFilter(3_600_000, max_ids) if duplicates else None,
                       KEY if duplicates else None)


def test_the_gate_returns_the_shared_empty_result_when_nothing_failed_and_counts_the_rest() -> None:
    gate = _gate(duplicates=True)
    now = 10_000_000
    failed, reject, fp = gate.check(0, {"id": "e1", "v": 3}, now, now)
    assert failed is PASSED and reject is None and fp == Fingerprinter(KEY, "t.R").of("e1")
    # a duplicate (an earlier slice's id, held by the filter), too late and out of range: every failure,
    # ascending, counted once
    assert fp is not None and gate.dedup is not None
    gate.dedup.add_tentative("src", 0, 0, now, [fp])
    failed, reject, fp2 = gate.check(0, {"id": "e1", "v": 11}, now - 5_000, now)
    assert list(failed) == [0, 1, 2] and reject == 0 and fp2 == fp
    assert gate.partitions[0].window.failed == [1, 1, 1]
    assert gate.partitions[0].window.nulls == [0]
    # a null value: counted in its field's completeness, no rule fails
    failed, reject, _ = gate.check(0, {"id": "e2", "v": None}, now, now)
    assert failed is PASSED and gate.partitions[0].window.nulls == [1] and gate.partitions[0].window.events == 3
    plain = _gate(duplicates=False)
    assert plain.check(0, {"id": "e1", "v": 1}, now, now) == (PASSED, None, None)
    failed, _, _ = plain.check(0, {"id": "e1", "v": 1}, now - 2_000, now)
    assert failed == [1] and failed is not PASSED and PASSED == ()


@pytest.mark.parametrize("action", ["flag", "reject"])
def test_an_id_published_earlier_in_the_slice_fails_the_duplicate_rule_in_order_and_counted(action: str) -> None:
    """The check runs on a slice's events before any is published: the pipeline reports an id published
    earlier in the slice through in_batch_duplicate, which fails the duplicate rule (index 1 here, between
    the range rule and freshness) as the check would have: in order, counted, its action applied."""
    gate = _gate(duplicates=True, duplicate_action=action)
    now = 10_000_000
    failed, reject, fp = gate.check(0, {"id": "e1", "v": 1}, now - 5_000, now)  # freshness fails
    assert list(failed) == [2] and reject is None and fp is not None
    failed, reject = gate.in_batch_duplicate(0, failed, reject)
    assert failed == [1, 2] and reject == (1 if action == "reject" else None)
    assert gate.partitions[0].window.failed == [0, 1, 1]
    # with the range rule (reject) failing first, that one stays the reason
    failed, reject, _ = gate.check(0, {"id": "e1", "v": 11}, now, now)
    failed, reject = gate.in_batch_duplicate(0, failed, reject)
    assert failed == [0, 1] and reject == 0 and gate.partitions[0].window.failed == [1, 2, 1]
    # the shared empty result is never appended to
    failed, reject = gate.in_batch_duplicate(0, PASSED, None)
    assert failed == [1] and PASSED == ()


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.one_of(st.text(max_size=30), st.integers(-(2**63), 2**63 - 1), st.binary(max_size=30)),
                    min_size=1, max_size=8))
def test_the_gate_fingerprints_every_id_type_as_the_fingerprinter_does(ids: list[Any]) -> None:
    gates = {str: _gate(True), int: _gate(True, "long"), bytes: _gate(True, "bytes")}
    for event_id in ids:
        _, _, fp = gates[type(event_id)].check(0, {"id": event_id, "v": 1}, 5, 5)
        assert fp == _one_shot("t.R", event_id)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_the_gates_duplicate_verdict_follows_the_filter_through_every_change(seed: int) -> None:
    """The generated check holds the filter's containers: after tentative batches, confirmations, drops,
    expiry and the cap's evictions it still says what `DuplicateFilter.seen` says."""
    rnd = random.Random(seed)
    gate = _gate(True, max_ids=12)
    dedup = gate.dedup
    assert dedup is not None
    of = Fingerprinter(KEY, "t.R").of
    now = 10_000_000
    for step in range(40):
        ids = [f"e{rnd.randrange(30)}" for _ in range(rnd.randrange(1, 5))]
        op = rnd.randrange(4)
        if op == 0:
            key = dedup.add_tentative("src", rnd.randrange(2), step, now, [of(i) for i in ids])
            if rnd.random() < 0.5:
                dedup.apply(key, pack(now + rnd.randrange(-4_000_000, 10), [of(i) for i in ids]))
        elif op == 1:
            dedup.apply(f"src/0/{1000 + step}".encode(), pack(now - rnd.randrange(5_000_000), [of(i) for i in ids]))
        elif op == 2:
            dedup.drop_tentative([("src", rnd.randrange(2))])
        else:
            now += rnd.randrange(1_000_000)
            dedup.expire(now)
        for probe in (f"e{n}" for n in range(30)):
            failed, _, _ = gate.check(0, {"id": probe, "v": 1}, now, now)
            assert (gate._dup in failed) == dedup.seen(of(probe))


# ---- fingerprints -------------------------------------------------------------------------------------------------
def _one_shot(schema: str, event_id: Any) -> int:
    name = schema.encode()
    if isinstance(event_id, str):
        tagged = b"s" + event_id.encode("utf-8", "surrogatepass")
    elif isinstance(event_id, int):
        tagged = b"i" + str(event_id).encode()
    else:
        tagged = b"b" + bytes(event_id)
    message = len(name).to_bytes(4, "big") + name + tagged
    return int.from_bytes(hashlib.blake2b(message, key=KEY, digest_size=8).digest(), "big")


@settings(max_examples=300, deadline=None)
@given(schema=st.text(min_size=1, max_size=40),
       ids=st.lists(st.one_of(st.text(max_size=80), st.integers(-(2**70), 2**70), st.binary(max_size=80),
                              st.sampled_from(["\ud800", "a\udfffb", ""])), min_size=1, max_size=12))
def test_a_reused_fingerprinter_gives_the_one_shot_fingerprints(schema: str, ids: list[Any]) -> None:
    fingerprinter = Fingerprinter(KEY, schema)
    assert [fingerprinter.of(i) for i in ids] == [_one_shot(schema, i) for i in ids]
    assert KEY.hex() not in repr(fingerprinter) and str(KEY) not in repr(fingerprinter)


# ---- is_email ----------------------------------------------------------------------------------------------------
_AT_SIGN = re.compile("[@\uff20]")


def reference_is_email(text: str) -> bool:
    """is_email as first written: the Unicode address regex, then the limits on the part before the first at."""
    at = _AT_SIGN.search(text)
    if at is None or email_module._EMAIL.fullmatch(text) is None:
        return False
    local = text[:at.start()]
    return len(text) <= 254 and len(local) <= 64 and ".." not in local


_CHARS = "aZz09._-+!#~'@\uff20\u3002\uff0e.\u00e9\u0301\u4f8b \t_-xn"
_ATEXT = st.text("abcXYZ019._-+!#$%&'*/=?^`{|}~\u00e9\u0301", min_size=1, max_size=70)
_LABEL = st.text("abcXYZ019-_\u00fc\u4f8b", min_size=1, max_size=66)
_TLD = st.one_of(st.text("abcXYZ\u0440\u0444", min_size=1, max_size=65),
                 st.text("abcXYZ019-", min_size=0, max_size=62).map(lambda t: "xn--" + t))
ADDRESSES = st.one_of(
    st.text(_CHARS, max_size=90),
    st.builds(lambda local, at, labels, dot, tld: local + at + "".join(label + dot for label in labels) + tld,
              _ATEXT, st.sampled_from(["@", "@", "\uff20", "@@"]), st.lists(_LABEL, min_size=0, max_size=3),
              st.sampled_from([".", ".", "\u3002"]), _TLD),
    st.builds(lambda local, labels, tld: local + "@" + "".join(label + "." for label in labels) + tld,  # ASCII, near
              st.text("ab._+", min_size=1, max_size=8), st.lists(st.text("ab-_1", min_size=1, max_size=5), max_size=3),
              st.sampled_from(["com", "c", "xn--p1ai", "xn--", "c0m", "co_"])),
    st.builds(lambda n, m: "a" * n + "@" + "b" * m + ".com", st.integers(60, 70), st.integers(170, 195)),
    st.builds(lambda label, n: "a.b@" + label[:1] + "b" * n + label[1:] + ".com",  # label lengths
              st.sampled_from(["", "x", "-", "_", "x-", "-x", "1", "x_"]), st.integers(59, 66)),
    st.builds(lambda head, n: "a.b@b." + head + "c" * n,  # TLD lengths
              st.sampled_from(["", "xn--", "x1", "xn-", "xn--1-"]), st.integers(0, 66)),
)


@settings(max_examples=2000, deadline=None)
@given(text=ADDRESSES)
def test_is_email_gives_the_reference_definition(text: str) -> None:
    assert is_email(text) == reference_is_email(text)


def test_is_email_reference_cases() -> None:
    assert all(is_email(t) for t in ("jane@example.com", "a.b+c@mail.example.co.uk", "x@example.xn--p1ai",
                                     "josé@bücher.de", "user\uff20例え\u3002jp", "a_b@c_d.com"))
    assert not any(is_email(t) for t in ("jane@localhost", "a..b@example.com", ".a@example.com", "a@b.c",
                                         "a@-b.com", "x@xn--p1ai", "a" * 65 + "@example.com", "a@b.com ", "a@b@c.com",
                                         "x@" + "b" * 250 + ".com"))
