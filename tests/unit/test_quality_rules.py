"""gateway.core.quality.rules: each rule kind passing and failing, nullable fields, robust outliers against an
independent oracle, cross-field checks, and a specific error for every kind of bad declaration."""

from __future__ import annotations

import math
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest

from gateway.core.detectors import ENTITIES
from gateway.core.quality import rules as rules_module
from gateway.core.quality.rules import ACTIONS, RecordChecker, RuleSpec, compile_checker

ROOT = Path(__file__).resolve().parents[2]
CURRENCY = {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD", "GBP"]}


def compiled(fields: list[dict[str, Any]], checks: Any = None, named: dict[str, Any] | None = None) -> RecordChecker:
    errors: list[tuple[str, str]] = []
    checker = compile_checker(fields, checks, named or {}, lambda where, message: errors.append((where, message)))
    assert errors == []
    assert checker is not None
    return checker


def errors_of(fields: list[dict[str, Any]], checks: Any = None,
              named: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    checker = compile_checker(fields, checks, named or {}, lambda where, message: errors.append((where, message)))
    assert checker is None
    assert errors
    return errors


def one_error(fields: list[dict[str, Any]], checks: Any = None, named: dict[str, Any] | None = None) -> tuple[str, str]:
    errors = errors_of(fields, checks, named)
    assert len(errors) == 1, errors
    return errors[0]


def field(name: str, ftype: Any, quality: Any) -> dict[str, Any]:
    return {"name": name, "type": ftype, "quality": quality}


def failures(checker: RecordChecker, record: dict[str, Any], state: Any = None) -> list[str]:
    """Names of the failed rules (the indexes checked against rules separately)."""
    failed = checker.check(record, state if state is not None else checker.new_state())
    return [checker.rules[i].name for i in failed]


# ---- declaring nothing -----------------------------------------------------------------------------------------
def test_no_rule_declared_compiles_to_none_without_errors() -> None:
    errors: list[tuple[str, str]] = []
    plain = [{"name": "a", "type": "long"}, {"name": "b", "type": "string", "privacy": "keep"}]
    for fields, checks in ((plain, None), (plain, []), ([*plain, field("c", "long", {})], None)):
        assert compile_checker(fields, checks, {}, lambda w, m: errors.append((w, m))) is None
    assert errors == []


# ---- the rule list: names, kinds, actions, order ---------------------------------------------------------------
def test_rules_are_in_schema_order_then_kind_order_then_checks() -> None:
    checker = compiled([
        field("amount_minor", "long", {"outlier": {}, "range": {"min": 0, "action": "reject"},
                                        "required": {"action": "measure"}}),
        {"name": "untouched", "type": "string"},
        field("email", "string", {"max_length": 64, "format": {"detector": "EMAIL"}, "allowed": ["a@b.co"]}),
        field("at", {"type": "long", "logicalType": "timestamp-millis"}, {"required": True}),
    ], [{"name": "at_positive", "rule": ["at", ">", {"value": 0}], "action": "reject"}])
    assert checker.rules == (
        RuleSpec("amount_minor.required", "required", "measure", "amount_minor"),
        RuleSpec("amount_minor.range", "range", "reject", "amount_minor"),
        RuleSpec("amount_minor.outlier", "outlier", "flag", "amount_minor"),
        RuleSpec("email.allowed", "allowed", "flag", "email"),
        RuleSpec("email.format", "format", "flag", "email"),
        RuleSpec("email.max_length", "max_length", "flag", "email"),
        RuleSpec("at.required", "required", "flag", "at"),
        RuleSpec("at_positive", "check", "reject", None),
    )
    assert ACTIONS == ("reject", "flag", "measure")


def test_failed_indexes_point_at_the_failed_rules_in_ascending_order() -> None:
    checker = compiled([field("a", "long", {"range": [0, 10]}), field("b", "string", {"max_length": 3})],
                       [{"name": "a_below_five", "rule": ["a", "<", {"value": 5}]}])
    state = checker.new_state()
    assert checker.check({"a": 3, "b": "xy"}, state) == []
    assert checker.check({"a": 11, "b": "xyzw"}, state) == [0, 1, 2]
    assert checker.check({"a": 7, "b": "xyz"}, state) == [2]


def test_every_call_returns_a_new_list_the_caller_may_extend() -> None:
    checker = compiled([field("a", "long", {"range": [0, 10]})])
    state = checker.new_state()
    first = checker.check({"a": 1}, state)
    first.append(99)
    assert checker.check({"a": 1}, state) == []


# ---- required --------------------------------------------------------------------------------------------------
def test_required_fails_on_none_and_on_a_missing_value() -> None:
    checker = compiled([field("email", ["null", "string"], {"required": {"action": "reject", "completeness": 0.95}})])
    assert checker.rules == (RuleSpec("email.required", "required", "reject", "email"),)
    assert checker.completeness_targets == {"email": 0.95}
    assert checker.check({"email": "x"}, checker.new_state()) == []
    assert checker.check({"email": ""}, checker.new_state()) == []
    assert checker.check({"email": None}, checker.new_state()) == [0]
    assert checker.check({}, checker.new_state()) == [0]


def test_required_on_a_non_nullable_field_is_accepted() -> None:
    checker = compiled([field("id", "string", {"required": True})])
    assert checker.rules == (RuleSpec("id.required", "required", "flag", "id"),)
    assert checker.completeness_targets == {}
    assert checker.check({"id": "x"}, checker.new_state()) == []


# ---- range -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("decl", "value", "passes"), [
    ([0, 100], 0, True), ([0, 100], 100, True), ([0, 100], 50, True),
    ([0, 100], -1, False), ([0, 100], 101, False),
    ({"min": 10}, 10, True), ({"min": 10}, 9, False), ({"min": 10}, 10**12, True),
    ({"max": -5}, -5, True), ({"max": -5}, -4, False),
    ({"min": 0.5, "max": 1.5}, 1.5, True), ({"min": 0.5, "max": 1.5}, 0.49, False),
    ({"min": 0, "max": 1}, math.nan, False),
])
def test_range(decl: Any, value: float, passes: bool) -> None:
    checker = compiled([field("x", "double", {"range": decl})])
    assert checker.check({"x": value}, checker.new_state()) == ([] if passes else [0])


def test_range_on_a_timestamp_compares_its_epoch_millis() -> None:
    ts = {"type": "long", "logicalType": "timestamp-millis"}
    checker = compiled([field("at", ts, {"range": {"min": 1_600_000_000_000, "action": "reject"}})])
    assert checker.rules[0].action == "reject"
    assert checker.check({"at": 1_700_000_000_000}, checker.new_state()) == []
    assert checker.check({"at": 1_500_000_000_000}, checker.new_state()) == [0]


# ---- allowed ---------------------------------------------------------------------------------------------------
def test_allowed_strings_ints_and_booleans() -> None:
    checker = compiled([field("country", "string", {"allowed": ["DE", "FR"]}),
                        field("tier", "int", {"allowed": {"values": [1, 2, 3], "action": "measure"}}),
                        field("ok", "boolean", {"allowed": [True]})])
    assert [r.action for r in checker.rules] == ["flag", "measure", "flag"]
    state = checker.new_state()
    assert checker.check({"country": "DE", "tier": 3, "ok": True}, state) == []
    assert checker.check({"country": "de", "tier": 4, "ok": False}, state) == [0, 1, 2]


def test_allowed_enum_symbols_inline_and_by_name() -> None:
    schema = {"type": "record", "name": "P", "namespace": "ex.pay", "fields": [
        {"name": "currency", "type": CURRENCY, "quality": {"allowed": ["EUR", "USD"]}},
        {"name": "fallback", "type": ["null", "Currency"], "default": None, "quality": {"allowed": ["GBP"]}},
    ]}
    named = fastavro.parse_schema(schema)["__named_schemas"]
    assert "ex.pay.Currency" in named  # referenced by its short name in the raw field
    checker = compiled(schema["fields"], None, named)
    state = checker.new_state()
    assert checker.check({"currency": "EUR", "fallback": "GBP"}, state) == []
    assert checker.check({"currency": "GBP", "fallback": "EUR"}, state) == [0, 1]
    assert checker.check({"currency": "USD", "fallback": None}, state) == []


# ---- format ----------------------------------------------------------------------------------------------------
def test_format_regex_must_match_the_whole_value() -> None:
    checker = compiled([field("code", "string", {"format": {"regex": "[A-Z]{2}-[0-9]{3}"}})])
    state = checker.new_state()
    assert checker.check({"code": "AB-123"}, state) == []
    assert checker.check({"code": "AB-1234"}, state) == [0]  # re.match would accept this prefix
    assert checker.check({"code": "xAB-123"}, state) == [0]
    assert checker.check({"code": ""}, state) == [0]


@pytest.mark.parametrize(("value", "passes"), [
    ("jane.doe@example.com", True),
    ("  jane.doe@example.com \n", True),  # surrounding whitespace is stripped first
    ("not-an-email", False),
    ("mail jane.doe@example.com today", False),  # holds an email, is not one
    ("a@example.com b@example.com", False),
    ("", False),
])
def test_format_detector_needs_one_match_spanning_the_value(value: str, passes: bool) -> None:
    checker = compiled([field("email", "string", {"format": {"detector": "email", "action": "reject"}})])
    assert checker.rules == (RuleSpec("email.format", "format", "reject", "email"),)
    assert checker.check({"email": value}, checker.new_state()) == ([] if passes else [0])


# ---- max_length ------------------------------------------------------------------------------------------------
def test_max_length_of_strings_bytes_arrays_and_maps() -> None:
    checker = compiled([field("s", "string", {"max_length": 3}),
                        field("b", "bytes", {"max_length": {"max": 2, "action": "reject"}}),
                        field("a", {"type": "array", "items": "long"}, {"max_length": 1}),
                        field("m", {"type": "map", "values": "string"}, {"max_length": 2})])
    state = checker.new_state()
    assert checker.check({"s": "äöü", "b": b"\x00\x01", "a": [7], "m": {"k": "v", "l": "w"}}, state) == []
    too_long = {"s": "abcd", "b": b"abc", "a": [1, 2], "m": {"a": "", "b": "", "c": ""}}
    assert checker.check(too_long, state) == [0, 1, 2, 3]


# ---- nullable fields -------------------------------------------------------------------------------------------
def test_every_rule_but_required_passes_on_none() -> None:
    checker = compiled([
        field("n", ["null", "double"], {"range": [0, 1], "outlier": {"min_samples": 1, "window": 4}}),
        field("s", ["null", "string"], {"allowed": ["x"], "format": {"regex": "x"}, "max_length": 1}),
        field("r", ["null", "string"], {"required": True, "max_length": 1}),
    ])
    state = checker.new_state()
    assert failures(checker, {"n": None, "s": None, "r": None}, state) == ["r.required"]
    assert failures(checker, {"n": 2.0, "s": "yy", "r": "zz"}, state) == ["n.range", "s.allowed", "s.format",
                                                                        "s.max_length", "r.max_length"]


def test_none_does_not_enter_the_outlier_baseline() -> None:
    checker = compiled([field("v", ["null", "long"], {"outlier": {"min_samples": 3, "window": 3}})])
    state = checker.new_state()
    for value in (10, None, None, None, 10):
        assert checker.check({"v": value}, state) == []
    # two values seen, so 50 is still warm-up (had the Nones counted, the constant 10, 10 would flag it)
    assert checker.check({"v": 50}, state) == []
    assert checker.check({"v": 11}, state) == []  # baseline 10, 10, 50: median 10, MAD 0, MeanAD 40/3: M 0.06
    assert checker.check({"v": 1000}, state) == [0]  # baseline 11, 10, 50: median 11, MAD 1: M 667


# ---- outliers --------------------------------------------------------------------------------------------------
def modified_z_outliers(values: list[float], window: int, min_samples: int, threshold: float = 3.5) -> list[int]:
    """The oracle: each value against the exact last `window` values before it, with `statistics`."""
    flagged = []
    for k, x in enumerate(values):
        base = values[max(0, k - window):k]
        if k < min_samples:
            continue
        med = statistics.median(base)
        mad = statistics.median([abs(v - med) for v in base])
        if mad:
            m = 0.6745 * (x - med) / mad
        else:
            meanad = statistics.fmean([abs(v - med) for v in base])
            m = (x - med) / (1.253314 * meanad) if meanad else (0.0 if x == med else math.inf)
        if abs(m) > threshold:
            flagged.append(k)
    return flagged


def outliers_found(checker: RecordChecker, values: list[float], name: str = "v") -> list[int]:
    state = checker.new_state()
    return [k for k, x in enumerate(values) if checker.check({name: x}, state)]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("kind", ["gauss", "lumpy"])
def test_outliers_match_the_oracle_on_a_window_refreshed_every_value(seed: int, kind: str) -> None:
    rng = random.Random(seed)
    if kind == "gauss":
        values: list[float] = [rng.gauss(50.0, 5.0) for _ in range(300)]
        ftype = "double"
    else:  # many repeats: the MAD is often 0, so the MeanAD fallback and the exact comparison are exercised
        values = [rng.choice([10, 10, 10, 10, 11, 12]) for _ in range(300)]
        ftype = "long"
    for k in (40, 41, 120, 250):
        values[k] = values[k] * 9 + 100
    window = 12  # window // 8 == 1: the cached statistics are refreshed after every value, so they are exact
    checker = compiled([field("v", ftype, {"outlier": {"window": window, "min_samples": 8}})])
    expected = modified_z_outliers(values, window, 8)
    assert {40, 120, 250} <= set(expected)
    assert outliers_found(checker, values) == expected


def test_outliers_in_a_normal_stream_with_the_default_settings() -> None:
    rng = random.Random(20240611)
    values = [rng.gauss(100.0, 10.0) for _ in range(200)]
    planted = {45: 260.0, 90: -80.0, 140: 400.0, 199: 240.0}
    for k, x in planted.items():
        values[k] = x
    checker = compiled([field("amount", "double", {"outlier": {"action": "measure"}})])
    assert checker.rules == (RuleSpec("amount.outlier", "outlier", "measure", "amount"),)
    found = set(outliers_found(checker, values, "amount"))
    assert set(planted) <= found
    assert all(abs(values[k] - 100.0) > 30.0 for k in found - set(planted))  # beyond 3 sigma, if any


def test_no_outlier_during_warm_up() -> None:
    checker = compiled([field("v", "long", {"outlier": {"min_samples": 5, "window": 50}})])
    values = [1, 1_000_000, -1_000_000, 1, 5_000, 1_000_000]
    # the extremes at 1 and 2 come before 5 values are seen; the 6th is judged on -1e6, 1, 1, 5000, 1e6:
    # median 1, MAD 4999, M = 0.6745 * 999999 / 4999 = 135
    assert outliers_found(checker, values) == [5]


def test_mad_zero_falls_back_to_the_mean_absolute_deviation() -> None:
    checker = compiled([field("v", "double", {"outlier": {"min_samples": 8, "window": 8}})])
    state = checker.new_state()
    for x in (5, 5, 5, 5, 5, 5, 5, 9):
        assert checker.check({"v": x}, state) == []
    # baseline 5 x7, 9: median 5, MAD 0, MeanAD 0.5: M(6) = 1 / (1.253314 * 0.5) = 1.596
    assert checker.check({"v": 6.0}, state) == []
    # baseline 5 x6, 9, 6: MeanAD 5/8: M(8) = 3 / (1.253314 * 0.625) = 3.830 > 3.5
    assert checker.check({"v": 8.0}, state) == [0]
    # baseline 5 x5, 9, 6, 8: median 5, MAD 0, MeanAD 1: M(9) = 4 / 1.253314 = 3.19, M(9.5) = 3.59
    assert checker.check({"v": 9.0}, state) == []


def test_a_constant_baseline_makes_any_other_value_an_outlier() -> None:
    checker = compiled([field("v", "double", {"outlier": {"min_samples": 4, "window": 4, "threshold": 100}})])
    state = checker.new_state()
    for _ in range(4):
        assert checker.check({"v": 7.0}, state) == []
    assert checker.check({"v": 7.0}, state) == []
    assert checker.check({"v": 7.000001}, state) == [0]


def test_non_finite_values_are_outliers_once_warm_and_stay_out_of_the_baseline() -> None:
    checker = compiled([field("v", "double", {"outlier": {"min_samples": 3, "window": 3}})])
    state = checker.new_state()
    assert [checker.check({"v": x}, state) for x in (math.nan, 1.0, 2.0, 3.0)] == [[], [], [], []]
    assert checker.check({"v": math.inf}, state) == [0]
    assert checker.check({"v": math.nan}, state) == [0]
    assert checker.check({"v": 2.0}, state) == []  # baseline still 1, 2, 3 (median 2)


def test_each_state_keeps_its_own_baseline() -> None:
    checker = compiled([field("v", "long", {"outlier": {"min_samples": 3, "window": 3}})])
    warm, cold = checker.new_state(), checker.new_state()
    for x in (10, 11, 12):
        checker.check({"v": x}, warm)
    assert checker.check({"v": 10_000}, warm) == [0]
    assert checker.check({"v": 10_000}, cold) == []


def test_statistics_are_refreshed_at_warm_up_then_every_window_over_8_values(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = rules_module._Baseline._refresh

    def counting(self: Any) -> None:
        calls.append(len(self.values))
        original(self)

    monkeypatch.setattr(rules_module._Baseline, "_refresh", counting)
    checker = compiled([field("v", "long", {"outlier": {"min_samples": 20, "window": 80}})])
    state = checker.new_state()
    for x in range(100):
        checker.check({"v": x}, state)
    assert calls == [20, 30, 40, 50, 60, 70, 80, 80, 80]  # window // 8 == 10; the buffer stops growing at 80


def test_cached_statistics_lag_by_less_than_a_refresh_step() -> None:
    # window 16: refreshed after every 2 values, so every other value is judged on statistics one value old
    checker = compiled([field("v", "long", {"outlier": {"min_samples": 4, "window": 16}})])
    state = checker.new_state()
    for x in (10, 10, 10, 10):  # refreshed at warm-up: a constant 10
        assert checker.check({"v": x}, state) == []
    assert checker.check({"v": 20}, state) == [0]
    # the exact baseline 10 x4, 20 (median 10, MAD 0, MeanAD 2) gives M(11) = 0.40, but the statistics
    # are still the warm-up's, and against a constant 10 any other value is an outlier
    assert checker.check({"v": 11}, state) == [0]
    # refreshed after that 11: 10 x4, 20, 11: median 10, MAD 0, MeanAD 11/6: M(11) = 0.44
    assert checker.check({"v": 11}, state) == []


def test_the_deviation_rank_search_matches_sorted_deviations() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        values = [rng.choice([rng.randint(-3, 3), rng.gauss(0, 2)]) for _ in range(rng.randint(1, 25))]
        ordered = sorted(values)
        median = statistics.median(values)
        split = sum(1 for v in ordered if v < median)
        deviations = sorted(abs(v - median) for v in values)
        for rank in range(len(values)):
            assert rules_module._deviation(ordered, split, median, rank) == deviations[rank]


# ---- record-level checks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("op", "a", "b", "passes"), [
    ("<", 1, 2, True), ("<", 2, 2, False), ("<=", 2, 2, True), ("<=", 3, 2, False),
    (">", 3, 2, True), (">", 2, 2, False), (">=", 2, 2, True), (">=", 1, 2, False),
    ("==", 2, 2, True), ("==", 1, 2, False), ("!=", 1, 2, True), ("!=", 2, 2, False),
    ("<", 1.5, 2, True), (">=", 2.0, 2, True),
])
def test_check_operators_between_fields_and_literals(op: str, a: float, b: float, passes: bool) -> None:
    fields = [{"name": "a", "type": "double"}, {"name": "b", "type": "long"}]
    checks = [{"name": "fields", "rule": ["a", op, "b"], "action": "reject"},
              {"name": "literal_right", "rule": ["a", op, {"value": b}]},
              {"name": "literal_left", "rule": [{"value": a}, op, "b"], "action": "measure"}]
    checker = compiled(fields, checks)
    assert checker.rules == (RuleSpec("fields", "check", "reject", None),
                             RuleSpec("literal_right", "check", "flag", None),
                             RuleSpec("literal_left", "check", "measure", None))
    assert checker.check({"a": a, "b": b}, checker.new_state()) == ([] if passes else [0, 1, 2])


def test_checks_pass_when_either_side_is_none() -> None:
    fields = [{"name": "requested_at", "type": "long"}, {"name": "dropoff_at", "type": ["null", "long"]}]
    checker = compiled(fields, [{"name": "dropoff_after_request", "rule": ["dropoff_at", ">=", "requested_at"]},
                                {"name": "dropoff_set", "rule": ["dropoff_at", ">", {"value": 0}]}])
    state = checker.new_state()
    assert checker.check({"requested_at": 100, "dropoff_at": None}, state) == []
    assert checker.check({"requested_at": None, "dropoff_at": 5}, state) == []
    assert checker.check({"requested_at": 100, "dropoff_at": 5}, state) == [0]
    assert checker.check({"requested_at": 1, "dropoff_at": 5}, state) == []


def test_checks_on_strings_enums_and_booleans() -> None:
    fields = [{"name": "start", "type": "string"}, {"name": "end", "type": "string"},
              {"name": "currency", "type": CURRENCY}, {"name": "refund", "type": "boolean"}]
    checker = compiled(fields, [{"name": "ordered", "rule": ["start", "<=", "end"]},
                                {"name": "not_gbp", "rule": ["currency", "!=", {"value": "GBP"}]},
                                {"name": "no_refund", "rule": ["refund", "==", {"value": False}]},
                                {"name": "currency_is_start", "rule": ["currency", "==", "start"]}])
    state = checker.new_state()
    assert checker.check({"start": "EUR", "end": "USD", "currency": "EUR", "refund": False}, state) == []
    assert checker.check({"start": "b", "end": "a", "currency": "GBP", "refund": True}, state) == [0, 1, 2, 3]


# ---- bad declarations ------------------------------------------------------------------------------------------
def test_range_on_a_string() -> None:
    where, message = one_error([field("country", "string", {"range": [0, 1]})])
    assert where == "country.range"
    assert "numeric field" in message and "string" in message


@pytest.mark.parametrize(("decl", "words"), [
    ({"min": 5, "max": 1}, "above max"),
    ({}, "min, max or both"),
    ([1], "[min, max]"),
    ({"min": "0"}, "min must be a finite number"),
    ({"min": 0, "maximum": 3}, "unknown option 'maximum'"),
])
def test_bad_ranges(decl: Any, words: str) -> None:
    where, message = one_error([field("n", "long", {"range": decl})])
    assert where == "n.range" and words in message


def test_unknown_detector_lists_the_known_ones() -> None:
    where, message = one_error([field("e", "string", {"format": {"detector": "PASSPORT"}})])
    assert where == "e.format"
    assert "PASSPORT" in message and all(entity in message for entity in ENTITIES)


def test_invalid_regex() -> None:
    where, message = one_error([field("e", "string", {"format": {"regex": "([a-z]"}})])
    assert where == "e.format" and message.startswith("invalid regex")


@pytest.mark.parametrize(("ftype", "decl", "words"), [
    ("string", {"regex": "a", "detector": "EMAIL"}, "exactly one of regex and detector"),
    ("string", {}, "exactly one of regex and detector"),
    ("string", "EMAIL", "an object"),
    (CURRENCY, {"regex": "E.*"}, "needs a string field; this field is enum"),
])
def test_bad_formats(ftype: Any, decl: Any, words: str) -> None:
    where, message = one_error([field("f", ftype, {"format": decl})])
    assert where == "f.format" and words in message


def test_unknown_rule_names_the_known_ones() -> None:
    where, message = one_error([field("a", "long", {"minimum": 3})])
    assert where == "a.minimum"
    assert "unknown quality rule 'minimum'" in message
    assert all(kind in message for kind in ("required", "range", "allowed", "format", "max_length", "outlier"))


def test_bad_action_names_the_three() -> None:
    where, message = one_error([field("a", "long", {"range": {"min": 0, "action": "drop"}})])
    assert where == "a.range"
    assert "'drop'" in message and all(action in message for action in ("reject", "flag", "measure"))


def test_allowed_value_that_is_not_an_enum_symbol() -> None:
    where, message = one_error([field("currency", CURRENCY, {"allowed": ["EUR", "JPY"]})])
    assert where == "currency.allowed"
    assert "'JPY'" in message and "'EUR'" not in message and "EUR, USD, GBP" in message


@pytest.mark.parametrize(("ftype", "decl", "words"), [
    ("string", [], "non-empty list"),
    ("string", [1], "must be strings"),
    ("long", [1, True], "must be integers"),
    ("boolean", [1], "true or false"),
    ("double", [1.5], "needs a string, enum, int, long or boolean field"),
])
def test_bad_allowed_values(ftype: Any, decl: Any, words: str) -> None:
    where, message = one_error([field("f", ftype, {"allowed": decl})])
    assert where == "f.allowed" and words in message


@pytest.mark.parametrize(("ftype", "rule", "decl", "words"), [
    ("string", "required", False, "true or an object"),
    ("string", "required", {"completeness": 1.5}, "completeness must be a number in (0, 1]"),
    ("string", "required", {"completeness": 0}, "completeness must be a number in (0, 1]"),
    ("long", "max_length", 5, "needs a string, bytes, array or map field"),
    ("string", "max_length", 0, "positive integer"),
    ("string", "max_length", {"max": 3, "min": 1}, "unknown option 'min'"),
    ("string", "outlier", {}, "needs a numeric field"),
    ("long", "outlier", {"min_samples": 50, "window": 10}, "never warm up"),
    ("long", "outlier", {"threshold": 0}, "threshold must be a positive number"),
    ("long", "outlier", {"window": 0}, "window must be an integer"),
    ("long", "outlier", True, "an object"),
])
def test_other_bad_field_rules(ftype: Any, rule: str, decl: Any, words: str) -> None:
    where, message = one_error([field("f", ftype, {rule: decl})])
    assert where == f"f.{rule}" and words in message


def test_quality_must_be_an_object() -> None:
    assert one_error([field("f", "long", ["range"])])[0] == "f.quality"


def test_a_rule_on_an_undefined_named_type() -> None:
    where, message = one_error([field("f", "Missing", {"allowed": ["A"]})])
    assert where == "f.allowed" and "not defined" in message


def test_check_on_an_unknown_field() -> None:
    where, message = one_error([{"name": "a", "type": "long"}], [{"name": "a_vs_b", "rule": ["a", "<", "b"]}])
    assert where == "a_vs_b" and "unknown field 'b'" in message


@pytest.mark.parametrize(("rule", "words"), [
    (["n", "<", "s"], "needs two numbers or two strings"),
    (["n", "==", "s"], "same kind"),
    (["s", "==", {"value": 1}], "same kind"),
    (["flag", ">", {"value": False}], "needs two numbers or two strings"),
    (["currency", "<", {"value": "EUR"}], "does not order enum symbols"),
    (["currency", "==", {"value": "JPY"}], "not a symbol"),
    (["tags", "==", "tags"], "cannot compare"),
    ([{"value": 1}, "<", {"value": 2}], "two literals"),
    (["n", "=>", "n"], "operator '=>'"),
    (["n", "<"], "[LEFT, OP, RIGHT]"),
    (["n", "<", {"value": None}], "a finite number, a string or a boolean"),
])
def test_type_mismatches_and_malformed_checks(rule: list[Any], words: str) -> None:
    fields = [{"name": "n", "type": "long"}, {"name": "s", "type": "string"}, {"name": "flag", "type": "boolean"},
              {"name": "currency", "type": CURRENCY}, {"name": "tags", "type": {"type": "array", "items": "string"}}]
    where, message = one_error(fields, [{"name": "the_check", "rule": rule}])
    assert where == "the_check" and words in message


def test_duplicate_check_name() -> None:
    checks = [{"name": "twice", "rule": ["n", ">", {"value": 0}]}, {"name": "twice", "rule": ["n", "<", {"value": 9}]}]
    assert one_error([{"name": "n", "type": "long"}], checks) == ("twice", "duplicate check name")


@pytest.mark.parametrize(("checks", "words"), [
    ({"name": "x"}, "must be a list"),
    ([{"rule": ["n", ">", {"value": 0}]}], "checks[0] needs a name"),
    ([{"name": "Upper", "rule": ["n", ">", {"value": 0}]}], "checks[0] needs a name"),
    ([{"name": "x\n", "rule": ["n", ">", {"value": 0}]}], "checks[0] needs a name"),
    (["n > 0"], "checks[0] needs a name"),
])
def test_bad_check_lists_and_names(checks: Any, words: str) -> None:
    where, message = one_error([{"name": "n", "type": "long"}], checks)
    assert where == "(record).checks" and words in message


def test_check_with_an_unknown_option_or_bad_action() -> None:
    fields = [{"name": "n", "type": "long"}]
    assert "unknown option 'when'" in one_error(fields, [{"name": "c", "rule": ["n", ">", {"value": 0}],
                                                          "when": "always"}])[1]
    assert "not one of reject, flag, measure" in one_error(fields, [{"name": "c", "rule": ["n", ">", {"value": 0}],
                                                                     "action": "warn"}])[1]


def test_every_problem_is_reported_and_nothing_compiles() -> None:
    errors = errors_of([field("a", "string", {"range": [0, 1], "max_length": 5}),
                        field("b", "long", {"outlier": {"window": -1}, "foo": 1})],
                       [{"name": "c", "rule": ["zzz", "==", {"value": 1}]}])
    assert [where for where, _ in errors] == ["a.range", "b.foo", "b.outlier", "c"]


def test_no_record_value_reaches_a_result() -> None:
    personal = "jane.doe@example.com"
    checker = compiled([field("email", "string", {"format": {"regex": "[0-9]+"}, "max_length": 3})])
    failed = checker.check({"email": personal}, checker.new_state())
    assert failed == [0, 1]
    assert all(personal not in repr(checker.rules[i]) for i in failed) and personal not in repr(checker)


# ---- purity ----------------------------------------------------------------------------------------------------
def test_the_module_imports_neither_kafka_nor_the_runtime() -> None:
    probe = ("import sys, gateway.core.quality.rules; "
             "bad = [m for m in sys.modules if m.startswith(('confluent_kafka', 'gateway.runtime'))]; "
             "print(','.join(bad))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == ""
