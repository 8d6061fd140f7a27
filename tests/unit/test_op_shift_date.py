"""shift_date: compile-time checks, the sanitized type, the per-subject offset (derived as
documented, checked with hmac directly), its range, stability and spread, and the dead letters."""

from __future__ import annotations

import hashlib
import hmac
import io
import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.codec.writer import avro_bytes
from gateway.core.operators import shift_date as shift_date_module
from gateway.core.operators.base import CALL, FieldContext, OperatorError
from gateway.core.operators.shift_date import ShiftDate
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.errors import PolicyError, RejectedEvent
from gateway.keys.keyring import Keyring
from gateway.keys.tokens import DomainTokenizer
from gateway.settings import GatewayConfig
from tests.unit.operator_env import field_context

DATE = {"type": "int", "logicalType": "date"}
TS_MS = {"type": "long", "logicalType": "timestamp-millis"}
TS_US = {"type": "long", "logicalType": "timestamp-micros"}
DAY_MS = 86_400_000
KEY = bytes(range(32))


def _ctx(ftype: Any, name: str = "visit") -> FieldContext:
    return field_context(ftype, name)


class _Env:
    topic = "t.sanitized"
    dek_max_uses = 1
    subject_path = "patient"
    max_field_bytes = 400
    max_str_chars = 100

    def __init__(self, key: bytes = KEY) -> None:
        self.key = key
        self.digests = 0

    def tokenizer(self, domain: str) -> Any:
        real = DomainTokenizer(domain, "1", self.key)
        env = self

        class Counting:
            def digest(self, data: bytes) -> bytes:
                env.digests += 1
                return real.digest(data)

        return Counting()


def _step(options: dict[str, Any], ftype: Any = DATE, env: _Env | None = None) -> Callable[[int, str], int]:
    op = ShiftDate.compile(options, _ctx(ftype))
    mode, fn = op.build(SimpleNamespace(name="visit", path="visit"), env or _Env())
    assert mode == CALL
    return lambda value, subject: fn(value, SimpleNamespace(subject=subject, timestamp_ms=0))


def _offset(subject: str, lo: int, hi: int, key: bytes = KEY) -> int:
    """Oracle: the documented derivation, with hmac itself."""
    mac = hmac.new(key, b"shift_date\0" + subject.encode(), hashlib.sha256).digest()
    return lo + int.from_bytes(mac[:8], "big") % (hi - lo + 1)


# ---- compile ------------------------------------------------------------------------------------
@pytest.mark.parametrize("options,needle", [
    ({"max_days": 30}, "shift_date needs a key domain"),
    ({"domain": "Dates", "max_days": 30}, "shift_date needs a key domain"),
    ({"domain": "", "max_days": 30}, "shift_date needs a key domain"),
    ({"domain": "dates"}, "shift_date needs max_days"),
    ({"domain": "dates", "max_days": 3651}, "max_days must be a whole number of days between -3650 and 3650"),
    ({"domain": "dates", "max_days": 30, "min_days": -3651}, "min_days must be a whole number of days"),
    ({"domain": "dates", "max_days": 7.5}, "max_days must be a whole number"),
    ({"domain": "dates", "max_days": True}, "max_days must be a whole number"),
    ({"domain": "dates", "max_days": "30"}, "max_days must be a whole number"),
    ({"domain": "dates", "max_days": 30, "min_days": 31}, "range is empty: min_days must not exceed max_days"),
    ({"domain": "dates", "max_days": -5}, "range is empty"),  # min_days defaults to 5
    ({"domain": "dates", "max_days": 0}, "range holds one offset"),
    ({"domain": "dates", "max_days": 7, "min_days": 7}, "range holds one offset"),
    ({"domain": "dates", "max_days": 30, "days": 3}, "unknown shift_date option(s) ['days']"),
])
def test_bad_options_are_refused(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(OperatorError) as excinfo:
        ShiftDate.compile(options, _ctx(DATE))
    assert needle in str(excinfo.value)


@pytest.mark.parametrize("ftype,label", [
    ("int", "int"), ("long", "long"), ("string", "string"),
    ({"type": "int", "logicalType": "time-millis"}, "time-millis"),
    ({"type": "long", "logicalType": "date"}, "date"),  # a date annotation on the wrong base type
])
def test_only_dates_and_timestamps_are_shifted(ftype: Any, label: str) -> None:
    with pytest.raises(OperatorError) as excinfo:
        ShiftDate.compile({"domain": "dates", "max_days": 30}, _ctx(ftype))
    assert f"but the field is {label}" in str(excinfo.value)


@pytest.mark.parametrize("ftype", [DATE, TS_MS, TS_US, {"type": "long", "logicalType": "local-timestamp-millis"}])
def test_output_type_keeps_the_logical_type(ftype: Any) -> None:
    op = ShiftDate.compile({"domain": "dates", "max_days": 30}, _ctx(ftype))
    assert op.output_type(_ctx(ftype)) == ftype
    assert op.sanitized_field(_ctx(["null", ftype]))["type"] == ["null", ftype]
    assert op.label == "shift_date:dates" and op.token_domains == frozenset({"dates"}) and op.needs_subject
    assert "-30 to 30 days" in (op.doc(_ctx(ftype)) or "")


# ---- values -------------------------------------------------------------------------------------
def test_offset_is_the_documented_hmac_and_the_same_for_every_field_of_a_subject() -> None:
    visit = _step({"domain": "dates", "max_days": 30})
    seen = _step({"domain": "dates", "max_days": 30}, TS_MS)
    seen_us = _step({"domain": "dates", "max_days": 30}, TS_US)
    day = (date(2024, 3, 1) - date(1970, 1, 1)).days
    moment = (datetime(2024, 3, 1, 14, 5, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    for subject in ("tok_v1_alice", "tok_v1_bob", "patient-42", "é𝄞"):
        offset = _offset(subject, -30, 30)
        assert visit(day, subject) == day + offset
        assert seen(moment, subject) == moment + offset * DAY_MS  # whole days: the time of day stays
        assert seen_us(moment * 1000 + 7, subject) == (moment + offset * DAY_MS) * 1000 + 7
        assert visit(day + 10, subject) - visit(day, subject) == 10  # intervals within a subject survive
    assert len({visit(day, f"s{i}") for i in range(200)}) > 40  # subjects get different offsets


def test_asymmetric_range_and_min_days_default() -> None:
    step = _step({"domain": "dates", "max_days": -1, "min_days": -365})
    offsets = {step(0, f"s{i}") for i in range(3000)}
    assert min(offsets) >= -365 and max(offsets) <= -1 and len(offsets) > 300
    assert offsets == {_offset(f"s{i}", -365, -1) for i in range(3000)}


def test_an_event_without_a_subject_is_dead_lettered() -> None:
    step = _step({"domain": "dates", "max_days": 30})
    with pytest.raises(RejectedEvent) as excinfo:
        step(19_876, "")
    assert excinfo.value.reason == "missing_subject"
    assert "19876" not in excinfo.value.message and "visit" in excinfo.value.message


@pytest.mark.parametrize("ftype,value", [(DATE, 2**31 - 1), (DATE, -(2**31)), (TS_MS, 2**63 - 1), (TS_MS, -(2**63))])
def test_a_shift_out_of_the_types_range_is_dead_lettered(ftype: Any, value: int) -> None:
    step = _step({"domain": "dates", "max_days": 30, "min_days": 1} if value > 0 else
                 {"domain": "dates", "max_days": -1, "min_days": -30}, ftype)
    with pytest.raises(RejectedEvent) as excinfo:
        step(value, "tok_v1_alice")
    assert excinfo.value.reason == "value_out_of_range" and str(value) not in excinfo.value.message


def test_offsets_are_cached_per_subject_and_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shift_date_module, "CACHE_SUBJECTS", 3)
    env = _Env()
    step = _step({"domain": "dates", "max_days": 30}, env=env)
    for subject in ("a", "b", "c", "a", "b", "c", "a"):
        step(0, subject)
    assert env.digests == 3
    step(0, "d")  # the cache is full: cleared, then d cached
    step(0, "a")
    assert env.digests == 5
    assert step(0, "a") == _offset("a", -30, 30) and env.digests == 5


# ---- properties ---------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(subject=st.text(min_size=1, max_size=40), lo=st.integers(-3650, 3649), span=st.integers(1, 400),
       day=st.integers(-700_000, 2_900_000))
def test_offset_is_stable_and_within_the_range(subject: str, lo: int, span: int, day: int) -> None:
    hi = min(lo + span, 3650)
    step = _step({"domain": "dates", "min_days": lo, "max_days": hi})
    out = step(day, subject)
    assert lo <= out - day <= hi
    assert step(day, subject) == out and step(day + 3, subject) == out + 3
    assert out - day == _offset(subject, lo, hi)


def _chi_square(counts: list[int]) -> float:
    expected = sum(counts) / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def _pearson(xs: list[int], ys: list[int]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    vx = sum((x - mx) ** 2 for x in xs)
    vy = sum((y - my) ** 2 for y in ys)
    return cov / (vx * vy) ** 0.5


def test_offsets_spread_uniformly_and_do_not_follow_the_subject() -> None:
    rng = random.Random(20261201)
    key = rng.randbytes(32)
    step = _step({"domain": "dates", "max_days": 30}, env=_Env(key))
    subjects = [f"tok_v1_{rng.getrandbits(128):032x}" for _ in range(10_000)] + [f"user{i}" for i in range(10_000)]
    offsets = [step(0, s) for s in subjects]
    counts = [0] * 61
    for o in offsets:
        counts[o + 30] += 1
    # 60 degrees of freedom: mean 60, sd 11; 130 is beyond p = 1e-6
    assert _chi_square(counts) < 130, counts
    # neighbouring subjects (user1, user2, ...) get unrelated offsets
    tail = offsets[10_000:]
    assert abs(_pearson(tail[:-1], tail[1:])) < 0.05
    assert abs(_pearson(list(range(10_000)), tail)) < 0.05


def test_two_keys_give_unrelated_offsets() -> None:
    rng = random.Random(7)
    first = _step({"domain": "dates", "max_days": 30}, env=_Env(rng.randbytes(32)))
    second = _step({"domain": "dates", "max_days": 30}, env=_Env(rng.randbytes(32)))
    subjects = [f"tok_v1_{i:06d}" for i in range(5_000)]
    a = [first(0, s) for s in subjects]
    b = [second(0, s) for s in subjects]
    same = sum(x == y for x, y in zip(a, b, strict=True))
    assert same < 5_000 * 0.04  # 1 in 61 by chance
    assert abs(_pearson(a, b)) < 0.06


# ---- through the policy compiler and the pipeline ------------------------------------------------
_SCHEMA = {"type": "record", "name": "Visit", "namespace": "ex.shift",
           "privacy": {"source_topic": "visits.raw", "subject": "patient"},
           "fields": [
               {"name": "patient", "type": ["null", "string"], "default": None,
                "privacy": {"tokenize": {"domain": "patient"}}},
               {"name": "admitted", "type": DATE, "privacy": {"shift_date": {"domain": "dates", "max_days": 30}}},
               {"name": "discharged", "type": ["null", TS_MS], "default": None,
                "privacy": {"shift_date": {"domain": "dates", "max_days": 30}}},
           ]}


def test_compiled_plan_shifts_every_date_of_a_subject_alike(write_schema: Any, keyring: Keyring,
                                                            tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(write_schema(_SCHEMA, name="shift.avsc")))
    assert plan.field_actions["admitted"] == "shift_date:dates" and "dates" in plan.token_domains
    types = {f["name"]: f["type"] for f in plan.sanitized_schema["fields"]}
    assert types["admitted"] == DATE and types["discharged"] == ["null", TS_MS]
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    admitted = (date(2024, 3, 1) - date(1970, 1, 1)).days
    discharged = (admitted + 4) * DAY_MS + 3_600_000
    events = [RawEvent("visits.raw", 0, i, 1_700_000_000_000, None, avro_bytes(plan.schema.parsed, record), None)
              for i, record in enumerate([
                  {"patient": "alice", "admitted": admitted, "discharged": discharged},
                  {"patient": "alice", "admitted": admitted + 100, "discharged": None},
                  {"patient": None, "admitted": admitted, "discharged": None},
              ])]
    result = pipeline.process(events)
    sanitized = [fastavro.schemaless_reader(io.BytesIO(r.value), plan.sanitized_parsed, None)
                 for r in result.records if r.topic == plan.sanitized_topic]
    assert len(sanitized) == 2
    offset = sanitized[0]["admitted"] - admitted
    assert -30 <= offset <= 30
    assert sanitized[0]["discharged"] == discharged + offset * DAY_MS  # the stay is still 4 days and an hour
    assert sanitized[1]["admitted"] == admitted + 100 + offset and sanitized[1]["discharged"] is None
    (letter,) = [orjson.loads(r.value) for r in result.records if r.topic == plan.dlq_topic]
    assert letter["reason"] == "missing_subject" and str(admitted) not in letter["message"]


def test_shift_date_needs_a_subject_field(write_schema: Any) -> None:
    schema = dict(_SCHEMA, privacy={"source_topic": "visits.raw"})
    with pytest.raises(PolicyError) as excinfo:
        compile_plan(load_schema_file(write_schema(schema, name="nosubject.avsc")))
    assert "nosubject.avsc: admitted: this action derives its output from the event's subject" in str(excinfo.value)


def test_a_shift_date_domain_cannot_also_mint_tokens(write_schema: Any) -> None:
    """A token of "shift_date\\0" + subject under the same key would publish a subject's offset."""
    from gateway.core.policy.lint import lint_file

    schema = {"type": "record", "name": "R", "namespace": "t",
              "privacy": {"source_topic": "r.raw", "sanitized_topic": "r.sanitized", "subject": "who"},
              "fields": [{"name": "who", "type": "string", "privacy": {"tokenize": {"domain": "people"}}},
                         {"name": "day", "type": {"type": "int", "logicalType": "date"},
                          "privacy": {"shift_date": {"domain": "people", "max_days": 5}}}]}
    errors = [p for p in lint_file(write_schema(schema)) if p.severity == "error"]
    assert len(errors) == 1 and "domain 'people' is used for tokens (who) and for shift_date (day)" in errors[0].message
