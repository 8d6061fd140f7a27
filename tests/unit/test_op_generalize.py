"""generalize: every form's compile-time checks, sanitized type and values, and properties checked
against oracles written apart from the operator (datetime for the calendar, a geohash decoder)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.codec.writer import avro_bytes
from gateway.core.operators.base import CALL, FieldContext, OperatorError
from gateway.core.operators.generalize import Generalize
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.errors import PolicyError, RejectedEvent
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig
from tests.unit.operator_env import StringEnv, field_context

DATE = {"type": "int", "logicalType": "date"}
TS_MS = {"type": "long", "logicalType": "timestamp-millis"}
TS_US = {"type": "long", "logicalType": "timestamp-micros"}
LOCAL_MS = {"type": "long", "logicalType": "local-timestamp-millis"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOC = {"type": "record", "name": "Loc", "fields": [{"name": "lat", "type": "double"},
                                                    {"name": "lon", "type": "double"}]}


def _ctx(ftype: Any, name: str = "f") -> FieldContext:
    return field_context(ftype, name)


_Env = StringEnv


def _op(options: dict[str, Any], ftype: Any) -> Generalize:
    return Generalize.compile(options, _ctx(ftype))


def _step(options: dict[str, Any], ftype: Any) -> Callable[..., Any]:
    mode, fn = _op(options, ftype).build(SimpleNamespace(name="f", path="f"), _Env())
    assert mode == CALL

    def run(value: Any, timestamp_ms: int | None = 0) -> Any:
        return fn(value, SimpleNamespace(subject="", timestamp_ms=timestamp_ms))

    return run


def _refused(options: dict[str, Any], ftype: Any) -> str:
    with pytest.raises(OperatorError) as excinfo:
        _op(options, ftype)
    return str(excinfo.value)


def _ms(*args: int) -> int:
    return (datetime(*args, tzinfo=UTC) - EPOCH) // timedelta(milliseconds=1)  # type: ignore[misc]


def _days(d: date) -> int:
    return (d - date(1970, 1, 1)).days


# ---- forms and options --------------------------------------------------------------------------
@pytest.mark.parametrize("options,needle", [
    ({}, "generalize needs exactly one form of bucket, edges, truncate, age_band, round, geohash, prefix"),
    ({"round": 2, "prefix": 3}, "but the options hold 2 (round, prefix)"),
    ({"round": 2, "labels": ["a"]}, "unknown generalize option(s) ['labels'] for the round form"),
    ({"bucket": {"width": 10}, "offset": 5}, "unknown generalize option(s) ['offset'] for the bucket form"),
    ({"bcket": {"width": 10}}, "exactly one form of bucket, edges, truncate, age_band, round, geohash, prefix, "
                               "but the options hold none (unknown: ['bcket'])"),
])
def test_exactly_one_form_and_only_its_options(options: dict[str, Any], needle: str) -> None:
    assert needle in _refused(options, "int")


@pytest.mark.parametrize("spec,ftype,needle", [
    (10, "int", "bucket needs an object with a width"),
    ({}, "int", "bucket needs an object with a width"),
    ({"width": 0}, "int", "width must be greater than 0"),
    ({"width": -5}, "double", "width must be greater than 0"),
    ({"width": True}, "int", "bucket width must be a number"),
    ({"width": "10"}, "int", "bucket width must be a number"),
    ({"width": 10, "offset": "1"}, "int", "bucket offset must be a number"),
    ({"width": 10, "step": 1}, "int", "unknown bucket option(s) ['step']"),
    ({"width": 2.5}, "long", "bucket width must be a whole number on an integer field (long)"),
    ({"width": 10, "offset": 0.5}, "int", "bucket offset must be a whole number"),
    ({"width": 0.0000001}, "double", "at most 6 decimal places"),
    ({"width": 10}, "string", "generalize bucket applies to numbers (int, long, float, double), but the field is "
                              "string"),
    ({"width": 10}, DATE, "but the field is date"),
    ({"width": 10}, "boolean", "but the field is boolean"),
])
def test_bucket_options(spec: Any, ftype: Any, needle: str) -> None:
    assert needle in _refused({"bucket": spec}, ftype)


@pytest.mark.parametrize("options,ftype,needle", [
    ({"edges": []}, "int", "edges must be a non-empty list of numbers"),
    ({"edges": 18}, "int", "edges must be a non-empty list of numbers"),
    ({"edges": [0, "18"]}, "int", "edges must be a non-empty list of numbers"),
    ({"edges": [0, True]}, "int", "edges must be a non-empty list of numbers"),
    ({"edges": [0, 18, 18]}, "int", "edges must increase strictly"),
    ({"edges": [30, 18]}, "double", "edges must increase strictly"),
    ({"edges": [0, 17.5]}, "int", "edges must be whole numbers on an integer field (int)"),
    ({"edges": [0, 18], "labels": ["minor", "adult"]}, "int",
     "labels must name the 3 bands of 2 edges (below the first, between each pair, from the last up), but 2"),
    ({"edges": [0, 18], "labels": ["a", "", "c"]}, "int", "labels must be a list of non-empty strings"),
    ({"edges": [0, 18], "labels": "a,b,c"}, "int", "labels must be a list of non-empty strings"),
    ({"edges": [0, 18]}, {"type": "long", "logicalType": "timestamp-millis"}, "but the field is timestamp-millis"),
])
def test_edges_options(options: dict[str, Any], ftype: Any, needle: str) -> None:
    assert needle in _refused(options, ftype)


@pytest.mark.parametrize("unit,ftype,needle", [
    ("hour", "long", "truncate applies to dates and timestamps (date, timestamp-millis, timestamp-micros, "
                     "local-timestamp-millis, local-timestamp-micros), but the field is long"),
    ("hour", "string", "but the field is string"),
    ("hour", {"type": "int", "logicalType": "time-millis"}, "but the field is time-millis"),
    ("week", TS_MS, "truncate on a timestamp-millis takes one of minute, hour, day, month, year"),
    (3600, TS_MS, "takes one of minute, hour, day, month, year"),
    ("day", DATE, "truncate on a date takes one of month, year (truncating a date to a day changes nothing"),
    ("hour", DATE, "truncate on a date takes one of month, year"),
])
def test_truncate_options(unit: Any, ftype: Any, needle: str) -> None:
    assert needle in _refused({"truncate": unit}, ftype)


@pytest.mark.parametrize("spec,ftype,needle", [
    ({"width": 10}, "int", "age_band applies to a date of birth (int with logicalType date), but the field is int"),
    ({"width": 10}, TS_MS, "but the field is timestamp-millis"),
    (10, DATE, "age_band needs an object with a width"),
    ({"max": 90}, DATE, "age_band needs an object with a width"),
    ({"width": 0}, DATE, "width must be a whole number of years between 1 and 150"),
    ({"width": 5.5}, DATE, "width must be a whole number of years"),
    ({"width": 10, "max": 0}, DATE, "max must be a whole number of years between 1 and 150"),
    ({"width": 10, "max": "90"}, DATE, "max must be a whole number of years"),
    ({"width": 10, "reference": "visit_time"}, DATE, "'reference' is not supported: ages are computed at the "
                                                     "event's Kafka timestamp"),
    ({"width": 10, "top": 90}, DATE, "unknown age_band option(s) ['top']"),
])
def test_age_band_options(spec: Any, ftype: Any, needle: str) -> None:
    assert needle in _refused({"age_band": spec}, ftype)


@pytest.mark.parametrize("options,ftype,needle", [
    ({"round": 2}, "int", "round applies to float and double fields, but the field is int"),
    ({"round": 2}, "string", "but the field is string"),
    ({"round": 7}, "double", "round takes a whole number of decimals between 0 and 6"),
    ({"round": -1}, "double", "between 0 and 6"),
    ({"round": True}, "double", "between 0 and 6"),
    ({"round": 1.5}, "double", "between 0 and 6"),
    ({"prefix": 0}, "string", "prefix takes a number of characters of at least 1"),
    ({"prefix": "3"}, "string", "at least 1"),
    ({"prefix": 3}, "int", "prefix applies to strings, but the field is int"),
    ({"prefix": 3}, {"type": "enum", "name": "E", "symbols": ["A"]}, "but the field is enum"),
])
def test_round_and_prefix_options(options: dict[str, Any], ftype: Any, needle: str) -> None:
    assert needle in _refused(options, ftype)


def _loc(lat: Any = "double", lon: Any = "double", names: tuple[str, str] = ("lat", "lon")) -> dict[str, Any]:
    return {"type": "record", "name": "Loc", "fields": [{"name": names[0], "type": lat},
                                                        {"name": names[1], "type": lon}]}


@pytest.mark.parametrize("options,ftype,needle", [
    ({"geohash": 0}, LOC, "geohash takes a precision between 1 and 12 characters"),
    ({"geohash": 13}, LOC, "between 1 and 12"),
    ({"geohash": 5}, "double", "geohash applies to a record holding 'lat' and 'lon' (double), but the field is "
                               "double"),
    ({"geohash": 5}, _loc(names=("latitude", "lon")), "the record has no field 'lat' (set \"lat\" to the field "
                                                      "holding the latitude)"),
    ({"geohash": 5, "lon": "lng"}, LOC, "the record has no field 'lng'"),
    ({"geohash": 5}, _loc(lat="string"), "field 'lat' of the record must be a double (or float), but it is string"),
    ({"geohash": 5}, _loc(lon=["null", "double"]), "field 'lon' of the record must be a double (or float), but it "
                                                   "is [null, double]"),
    ({"geohash": 5, "lat": "lon"}, LOC, "two different fields for 'lat' and 'lon'"),
    ({"geohash": 5, "lat": 3}, LOC, "option 'lat' must name a field of the record"),
])
def test_geohash_options(options: dict[str, Any], ftype: Any, needle: str) -> None:
    assert needle in _refused(options, ftype)


@pytest.mark.parametrize("options,ftype,out_type,label", [
    ({"bucket": {"width": 10}}, "int", "string", "generalize:bucket:10"),
    ({"bucket": {"width": 10, "offset": 5}}, "long", "string", "generalize:bucket:10+5"),
    ({"bucket": {"width": 0.5}}, "float", "string", "generalize:bucket:0.5"),
    ({"edges": [0, 18, 65]}, "int", "string", "generalize:edges:0,18,65"),
    ({"truncate": "hour"}, TS_MS, TS_MS, "generalize:truncate:hour"),
    ({"truncate": "month"}, TS_US, TS_US, "generalize:truncate:month"),
    ({"truncate": "year"}, DATE, DATE, "generalize:truncate:year"),
    ({"age_band": {"width": 10, "max": 90}}, DATE, "string", "generalize:age_band:10:90+"),
    ({"round": 2}, "float", "double", "generalize:round:2"),
    ({"geohash": 6}, LOC, "string", "generalize:geohash:6"),
    ({"prefix": 3}, "string", "string", "generalize:prefix:3"),
])
def test_output_type_and_label(options: dict[str, Any], ftype: Any, out_type: Any, label: str) -> None:
    op = _op(options, ftype)
    assert op.output_type(_ctx(ftype)) == out_type
    assert op.label == label
    assert op.doc(_ctx(ftype))
    assert op.token_domains == frozenset() and not op.needs_subject
    field = op.sanitized_field(_ctx(["null", ftype]))
    assert field["type"] == ["null", out_type]
    fastavro.parse_schema({"type": "record", "name": "R", "fields": [field]})


# ---- values -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,ftype,value,label", [
    ({"width": 10}, "int", 27, "20-29"),
    ({"width": 10}, "int", 20, "20-29"),
    ({"width": 10}, "int", 0, "0-9"),
    ({"width": 10}, "int", -1, "-10--1"),
    ({"width": 10, "offset": 5}, "int", 27, "25-34"),
    ({"width": 10, "offset": 5}, "int", 24, "15-24"),
    ({"width": 1}, "long", 7, "7-7"),
    ({"width": 1000}, "long", 2**62, "4611686018427387000-4611686018427387999"),
    ({"width": 10}, "double", 27.5, "20.0-30.0"),
    ({"width": 0.5}, "double", 3.7, "3.5-4.0"),
    ({"width": 0.1}, "double", 0.3, "0.3-0.4"),  # the double written 0.3 is in the bucket written 0.3
    ({"width": 0.1}, "double", -0.05, "-0.1-0.0"),
    ({"width": 0.25, "offset": 0.1}, "float", 0.2, "0.10-0.35"),
    ({"width": 10}, "double", 1e300, None),  # checked below: far beyond 2**40 buckets
    ({"width": 10}, "double", math.nan, "unknown"),
    ({"width": 10}, "double", math.inf, "unknown"),
    ({"width": 10}, "double", -math.inf, "unknown"),
    ({"width": 10}, "double", 27, "20.0-30.0"),  # a JSON number without a fraction
])
def test_bucket_values(spec: dict[str, Any], ftype: str, value: Any, label: str | None) -> None:
    out = _step({"bucket": spec}, ftype)(value)
    if label is not None:
        assert out == label
    else:
        lo, hi = _float_bounds(out)
        assert float(lo) <= value <= float(hi) and hi - lo == Decimal(10)


@pytest.mark.parametrize("options,ftype,value,label", [
    ({"edges": [0, 18, 30, 50, 65]}, "int", -1, "<0"),
    ({"edges": [0, 18, 30, 50, 65]}, "int", 0, "0-17"),
    ({"edges": [0, 18, 30, 50, 65]}, "int", 17, "0-17"),
    ({"edges": [0, 18, 30, 50, 65]}, "int", 18, "18-29"),
    ({"edges": [0, 18, 30, 50, 65]}, "long", 64, "50-64"),
    ({"edges": [0, 18, 30, 50, 65]}, "int", 65, ">=65"),
    ({"edges": [0, 18.0, 30]}, "int", 18, "18-29"),  # whole floats are whole numbers
    ({"edges": [0, 18, 30]}, "double", 17.99, "0-18"),
    ({"edges": [0, 18, 30]}, "double", 18.0, "18-30"),
    ({"edges": [0, 18.5, 30]}, "double", 18.4, "0-18.5"),
    ({"edges": [0, 18, 30]}, "double", -math.inf, "<0"),
    ({"edges": [0, 18, 30]}, "double", math.inf, ">=30"),
    ({"edges": [0, 18, 30]}, "double", math.nan, "unknown"),
    ({"edges": [18, 65], "labels": ["minor", "adult", "senior"]}, "int", 17, "minor"),
    ({"edges": [18, 65], "labels": ["minor", "adult", "senior"]}, "int", 18, "adult"),
    ({"edges": [18, 65], "labels": ["minor", "adult", "senior"]}, "int", 99, "senior"),
])
def test_edges_values(options: dict[str, Any], ftype: str, value: Any, label: str) -> None:
    assert _step(options, ftype)(value) == label


@pytest.mark.parametrize("unit,ftype,value,out", [
    ("minute", TS_MS, _ms(2023, 11, 14, 22, 13, 20), _ms(2023, 11, 14, 22, 13)),
    ("hour", TS_MS, _ms(2023, 11, 14, 22, 13, 20), _ms(2023, 11, 14, 22)),
    ("day", TS_MS, _ms(2023, 11, 14, 22, 13, 20), _ms(2023, 11, 14)),
    ("month", TS_MS, _ms(2023, 11, 14, 22, 13, 20), _ms(2023, 11, 1)),
    ("year", TS_MS, _ms(2023, 11, 14, 22, 13, 20), _ms(2023, 1, 1)),
    ("month", TS_MS, _ms(2024, 2, 29, 23, 59, 59) + 999, _ms(2024, 2, 1)),
    ("hour", TS_MS, -1, -3_600_000),  # before the epoch: to the start of the hour, not toward zero
    ("year", TS_MS, -1, _ms(1969, 1, 1)),
    ("day", LOCAL_MS, _ms(2023, 11, 14, 22, 13, 20), _ms(2023, 11, 14)),
    ("hour", TS_US, _ms(2023, 11, 14, 22, 13, 20) * 1000 + 123, _ms(2023, 11, 14, 22) * 1000),
    ("month", TS_US, _ms(2023, 11, 14, 22, 13, 20) * 1000 + 123, _ms(2023, 11, 1) * 1000),
    ("year", TS_US, _ms(1, 6, 1) * 1000, _ms(1, 1, 1) * 1000),
    ("month", DATE, _days(date(2023, 11, 14)), _days(date(2023, 11, 1))),
    ("year", DATE, _days(date(2023, 11, 14)), _days(date(2023, 1, 1))),
    ("year", DATE, _days(date(1969, 12, 31)), _days(date(1969, 1, 1))),
    ("month", DATE, _days(date(9999, 12, 31)), _days(date(9999, 12, 1))),
])
def test_truncate_values(unit: str, ftype: Any, value: int, out: int) -> None:
    assert _step({"truncate": unit}, ftype)(value) == out


@pytest.mark.parametrize("unit,ftype,value", [
    ("month", DATE, _days(date(1, 1, 1)) - 1),
    ("year", DATE, 2**31 - 1),
    ("month", TS_MS, _ms(9999, 12, 31) + 86_400_000),
    ("year", TS_US, -(2**63)),
    ("minute", TS_MS, -(2**63)),  # its minute starts before the long's range
])
def test_truncate_outside_its_range_is_dead_lettered(unit: str, ftype: Any, value: int) -> None:
    with pytest.raises(RejectedEvent) as excinfo:
        _step({"truncate": unit}, ftype)(value)
    assert excinfo.value.reason == "value_out_of_range"
    assert str(value) not in excinfo.value.message


@pytest.mark.parametrize("spec,dob,event,label", [
    ({"width": 10}, date(1990, 6, 15), _ms(2020, 6, 14, 23, 59), "20-29"),  # the day before turning 30
    ({"width": 10}, date(1990, 6, 15), _ms(2020, 6, 15), "30-39"),
    ({"width": 1}, date(2000, 2, 29), _ms(2001, 2, 28, 12), "0-0"),
    ({"width": 1}, date(2000, 2, 29), _ms(2001, 3, 1), "1-1"),  # a 29 February birthday counts on 1 March
    ({"width": 1}, date(2000, 2, 29), _ms(2004, 2, 29), "4-4"),
    ({"width": 5}, date(2024, 1, 1), _ms(2024, 1, 1), "0-4"),  # born that day
    ({"width": 10, "max": 90}, date(1930, 1, 1), _ms(2025, 1, 1), "90+"),
    ({"width": 10, "max": 90}, date(1935, 1, 2), _ms(2025, 1, 1), "80-89"),
    ({"width": 10, "max": 85}, date(1941, 1, 1), _ms(2025, 1, 1), "80-84"),  # the top cuts the last band
    ({"width": 10, "max": 85}, date(1940, 1, 1), _ms(2025, 1, 1), "85+"),
    ({"width": 10}, date(1771, 1, 1), _ms(2025, 1, 1), "250-259"),
    ({"width": 10}, date(2024, 1, 2), _ms(2024, 1, 1, 23), "unknown"),  # born after the event
    ({"width": 10, "max": 90}, date(9999, 12, 31), _ms(2024, 1, 1), "unknown"),
])
def test_age_band_values(spec: dict[str, Any], dob: date, event: int, label: str) -> None:
    assert _step({"age_band": spec}, DATE)(_days(dob), event) == label


def test_age_band_without_event_time_or_with_an_impossible_date_is_dead_lettered() -> None:
    step = _step({"age_band": {"width": 10}}, DATE)
    dob = _days(date(1990, 6, 15))
    for timestamp in (None, -1):
        with pytest.raises(RejectedEvent) as excinfo:
            step(dob, timestamp)
        assert excinfo.value.reason == "missing_timestamp" and str(dob) not in excinfo.value.message
    for value in (_days(date(1, 1, 1)) - 1, -(2**31)):
        with pytest.raises(RejectedEvent) as excinfo:
            step(value, _ms(2024, 1, 1))
        assert excinfo.value.reason == "value_out_of_range" and str(value) not in excinfo.value.message
    with pytest.raises(RejectedEvent) as excinfo:
        step(dob, 2**62)
    assert excinfo.value.reason == "value_out_of_range"


@pytest.mark.parametrize("decimals,ftype,value,out", [
    (2, "double", 48.856614, 48.86),
    (2, "double", -0.004, -0.0),
    (0, "double", 2.5, 2.0),  # ties to even
    (3, "float", 48.85660171508789, 48.857),  # a float's double value, rounded
    (4, "double", 2.0, 2.0),
])
def test_round_values(decimals: int, ftype: str, value: float, out: float) -> None:
    got = _step({"round": decimals}, ftype)(value)
    assert got == out and isinstance(got, float)


def test_round_passes_nan_and_infinities() -> None:
    step = _step({"round": 2}, "double")
    assert math.isnan(step(math.nan)) and step(math.inf) == math.inf and step(-math.inf) == -math.inf


@pytest.mark.parametrize("precision,lat,lon,out", [
    (5, 42.6, -5.6, "ezs42"),  # the examples of the geohash article
    (11, 57.64911, 10.40744, "u4pruydqqvj"),
    (1, 0.0, 0.0, "s"),
    (12, -90.0, -180.0, "000000000000"),
    (12, 90.0, 180.0, "zzzzzzzzzzzz"),
    (6, 48.8566, 2.3522, "u09tvw"),  # Paris
])
def test_geohash_values(precision: int, lat: float, lon: float, out: str) -> None:
    assert _step({"geohash": precision}, LOC)({"lat": lat, "lon": lon}) == out


def test_geohash_with_renamed_fields_and_float_coordinates() -> None:
    ftype = _loc("float", {"type": "double"}, names=("latitude", "longitude"))
    step = _step({"geohash": 5, "lat": "latitude", "lon": "longitude"}, ftype)
    assert step({"latitude": 42.6, "longitude": -5.6, "extra": 1}) == "ezs42"
    assert step({"latitude": 42, "longitude": -5}) == _decode_check(42, -5, step({"latitude": 42, "longitude": -5}))


@pytest.mark.parametrize("lat,lon", [(90.5, 0.0), (-91.0, 0.0), (0.0, 180.01), (0.0, -200.0), (math.nan, 0.0),
                                     (0.0, math.inf)])
def test_geohash_outside_the_globe_is_dead_lettered(lat: float, lon: float) -> None:
    with pytest.raises(RejectedEvent) as excinfo:
        _step({"geohash": 5}, LOC)({"lat": lat, "lon": lon})
    assert excinfo.value.reason == "value_out_of_range"
    assert str(lat) not in excinfo.value.message.replace("-90..90", "")


def test_prefix_values_and_size_check() -> None:
    step = _step({"prefix": 3}, "string")
    assert step("75011") == "750" and step("75") == "75" and step("") == "" and step("𝄞é𝄞é") == "𝄞é𝄞"
    assert step("x" * 400) == "xxx"
    with pytest.raises(RejectedEvent) as excinfo:
        step("x" * 401)
    assert excinfo.value.reason == "field_too_large"
    uuid = {"type": "string", "logicalType": "uuid"}
    assert _op({"prefix": 8}, uuid).output_type(_ctx(uuid)) == "string"


# ---- properties ---------------------------------------------------------------------------------
_INT_LABEL = re.compile(r"^(-?\d+)-(-?\d+)$")
_FLOAT_LABEL = re.compile(r"^(-?\d+\.\d+)-(-?\d+\.\d+)$")


def _float_bounds(label: str) -> tuple[Decimal, Decimal]:
    m = _FLOAT_LABEL.match(label)
    assert m, label
    return Decimal(m.group(1)), Decimal(m.group(2))


@settings(max_examples=250, deadline=None)
@given(value=st.integers(-(2**63), 2**63 - 1), width=st.integers(1, 10**6), offset=st.integers(-1000, 1000))
def test_int_bucket_label_contains_the_value(value: int, width: int, offset: int) -> None:
    label = _step({"bucket": {"width": width, "offset": offset}}, "long")(value)
    m = _INT_LABEL.match(label)
    assert m, label
    lo, hi = int(m.group(1)), int(m.group(2))
    assert lo <= value <= hi
    assert hi - lo == width - 1 and (lo - offset) % width == 0


_WIDTHS = st.sampled_from([0.1, 0.25, 0.5, 1, 2.5, 10, 0.001, 0.3, 7, 1e6])


@settings(max_examples=250, deadline=None)
@given(value=st.floats(-1e8, 1e8), width=_WIDTHS, offset=st.sampled_from([0, 0.05, 1, -3.5, 0.3]))
def test_float_bucket_label_contains_the_value(value: float, width: float, offset: float) -> None:
    label = _step({"bucket": {"width": width, "offset": offset}}, "double")(value)
    lo, hi = _float_bounds(label)
    assert float(lo) <= value < float(hi)  # lo included, hi excluded, compared as the doubles written
    assert hi - lo == Decimal(repr(width))
    assert ((lo - Decimal(repr(offset))) / Decimal(repr(width))) % 1 == 0


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False), width=_WIDTHS)
def test_float_bucket_of_any_finite_double_contains_it(value: float, width: float) -> None:
    lo, hi = _float_bounds(_step({"bucket": {"width": width}}, "double")(value))
    assert float(lo) <= value <= float(hi)  # beyond 2**53 a double can sit on a bound it cannot tell apart


@settings(max_examples=300, deadline=None)
@given(edges=st.lists(st.integers(-200, 200), min_size=1, max_size=8, unique=True), value=st.integers(-300, 300))
def test_int_edges_label_contains_the_value(edges: list[int], value: int) -> None:
    edges.sort()
    label = _step({"edges": edges}, "int")(value)
    if label.startswith("<"):
        assert value < int(label[1:]) == edges[0]
    elif label.startswith(">="):
        assert value >= int(label[2:]) == edges[-1]
    else:
        m = _INT_LABEL.match(label)
        assert m, label
        lo, hi = int(m.group(1)), int(m.group(2))
        assert lo <= value <= hi and lo in edges and hi + 1 in edges


_TS_UNITS_MS = {"minute": 60_000, "hour": 3_600_000, "day": 86_400_000}


def _calendar_start(moment: datetime, unit: str) -> datetime:
    """Oracle: the start of the moment's unit, by datetime's own fields."""
    if unit == "minute":
        return moment.replace(second=0, microsecond=0)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    if unit == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if unit == "month":
        return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)


@settings(max_examples=250, deadline=None)
@given(moment=st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=st.just(UTC)),
       unit=st.sampled_from(["minute", "hour", "day", "month", "year"]), micros=st.booleans())
def test_truncate_timestamps_is_the_unit_start_idempotent_and_within_one_unit(moment: datetime, unit: str,
                                                                               micros: bool) -> None:
    per_us = 1 if micros else 1000
    value = (moment - EPOCH) // timedelta(microseconds=per_us)
    step = _step({"truncate": unit}, TS_US if micros else TS_MS)
    out = step(value)
    assert out <= value
    assert step(out) == out
    assert EPOCH + timedelta(microseconds=out * per_us) == _calendar_start(
        EPOCH + timedelta(microseconds=value * per_us), unit)
    longest_ms = _TS_UNITS_MS.get(unit, 31 * 86_400_000 if unit == "month" else 366 * 86_400_000)
    assert value - out < longest_ms * 1000 // per_us


@settings(max_examples=300, deadline=None)
@given(day=st.dates(date(1, 1, 1), date(9999, 12, 31)), unit=st.sampled_from(["month", "year"]))
def test_truncate_dates_is_the_unit_start_and_idempotent(day: date, unit: str) -> None:
    step = _step({"truncate": unit}, DATE)
    out = step(_days(day))
    expected = day.replace(day=1) if unit == "month" else day.replace(month=1, day=1)
    assert out == _days(expected) and step(out) == out and out <= _days(day)


def _true_age(born: date, on: date) -> int:
    """Oracle: the number of birthdays passed, counting each one by constructing it (a 29 February
    birthday falls on 1 March in other years)."""
    age = 0
    while True:
        year = born.year + age + 1
        try:
            birthday = born.replace(year=year)
        except ValueError:
            birthday = date(year, 3, 1)
        if birthday > on:
            return age
        age += 1


@settings(max_examples=300, deadline=None)
@given(born=st.dates(date(1880, 1, 1), date(2045, 12, 31)),
       moment=st.datetimes(datetime(1990, 1, 1), datetime(2040, 12, 31), timezones=st.just(UTC)),
       width=st.sampled_from([1, 5, 10, 15]), top=st.sampled_from([None, 65, 90]))
def test_age_band_contains_the_true_age(born: date, moment: datetime, width: int, top: int | None) -> None:
    spec = {"width": width} if top is None else {"width": width, "max": top}
    timestamp = (moment - EPOCH) // timedelta(milliseconds=1)
    label = _step({"age_band": spec}, DATE)(_days(born), timestamp)
    today = moment.date()
    if born > today:
        assert label == "unknown"
        return
    age = _true_age(born, today)
    if top is not None and age >= top:
        assert label == f"{top}+"
        return
    m = _INT_LABEL.match(label)
    assert m, label
    lo, hi = int(m.group(1)), int(m.group(2))
    assert lo <= age <= hi and lo % width == 0 and hi - lo <= width - 1
    assert str(born.year) not in label or born.year < 200


@settings(max_examples=300, deadline=None)
@given(value=st.floats(-1e6, 1e6), decimals=st.integers(0, 6))
def test_round_is_within_half_a_unit(value: float, decimals: int) -> None:
    out = _step({"round": decimals}, "double")(value)
    assert abs(out - value) <= 0.5 * 10**-decimals * (1 + 1e-9) + 1e-9
    scaled = out * 10**decimals  # a whole number of units of 10**-decimals, up to the double's precision
    assert abs(scaled - round(scaled)) <= 1e-6 * max(1.0, abs(scaled))


_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def _cell(geohash: str) -> tuple[float, float, float, float]:
    """Oracle: decode a geohash into its cell by bisection (lon first, five bits per character)."""
    lat, lon = [-90.0, 90.0], [-180.0, 180.0]
    even = True
    for c in geohash:
        bits = _BASE32.index(c)
        for shift in range(4, -1, -1):
            interval = lon if even else lat
            mid = (interval[0] + interval[1]) / 2
            if bits >> shift & 1:
                interval[0] = mid
            else:
                interval[1] = mid
            even = not even
    return lat[0], lat[1], lon[0], lon[1]


def _decode_check(lat: float, lon: float, geohash: str) -> str:
    lat_lo, lat_hi, lon_lo, lon_hi = _cell(geohash)
    assert lat_lo <= lat <= lat_hi and lon_lo <= lon <= lon_hi
    return geohash


@settings(max_examples=250, deadline=None)
@given(lat=st.floats(-90, 90), lon=st.floats(-180, 180), precision=st.integers(1, 12))
def test_geohash_cell_contains_the_point(lat: float, lon: float, precision: int) -> None:
    geohash = _step({"geohash": precision}, LOC)({"lat": lat, "lon": lon})
    assert len(geohash) == precision and set(geohash) <= set(_BASE32)
    _decode_check(lat, lon, geohash)
    assume(precision > 1)
    coarser = _step({"geohash": precision - 1}, LOC)({"lat": lat, "lon": lon})
    assert geohash.startswith(coarser)


# ---- through the policy compiler, the sanitizer and the pipeline ---------------------------------------
_SCHEMA = {"type": "record", "name": "Visit", "namespace": "ex.gen", "privacy": {"source_topic": "visits.raw"},
           "fields": [
               {"name": "id", "type": "string", "privacy": "keep"},
               {"name": "age", "type": ["null", "int"], "default": None,
                "privacy": {"generalize": {"bucket": {"width": 10}}}},
               {"name": "amount", "type": "double", "privacy": {"generalize": {"edges": [0, 100, 1000]}}},
               {"name": "seen", "type": TS_MS, "privacy": {"generalize": {"truncate": "hour"}}},
               {"name": "dob", "type": DATE, "privacy": {"generalize": {"age_band": {"width": 10, "max": 90}}}},
               {"name": "lat", "type": "double", "privacy": {"generalize": {"round": 2}}},
               {"name": "where", "type": ["null", dict(LOC, fields=[dict(f, privacy="keep") for f in LOC["fields"]])],
                "default": None, "privacy": {"generalize": {"geohash": 5}}},
               {"name": "zip", "type": "string", "privacy": {"generalize": {"prefix": 3}}},
               {"name": "home", "type": "Loc", "privacy": "keep"},  # the named type, kept elsewhere
           ]}

_RAW = {"id": "v1", "age": 37, "amount": 250.0, "seen": _ms(2024, 5, 17, 9, 41, 3), "dob": _days(date(1984, 5, 18)),
        "lat": 48.856614, "where": {"lat": 42.6, "lon": -5.6}, "zip": "75011", "home": {"lat": 1.5, "lon": 2.5}}


def test_compiled_plan_sanitizes_every_form(write_schema: Any, keyring: Keyring, tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(write_schema(_SCHEMA, name="gen.avsc")))
    assert plan.field_actions["dob"] == "generalize:age_band:10:90+"
    types = {f["name"]: f["type"] for f in plan.sanitized_schema["fields"]}
    assert types["age"] == ["null", "string"] and types["seen"] == TS_MS and types["where"] == ["null", "string"]
    assert types["lat"] == "double"
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    sanitizer = pipeline.stages["visits.raw"].sanitizer
    out = sanitizer.sanitize(_RAW, _ms(2024, 5, 17, 9, 41, 3)).record
    assert out == {"id": "v1", "age": "30-39", "amount": "100-1000", "seen": _ms(2024, 5, 17, 9), "dob": "30-39",
                   "lat": 48.86, "where": "ezs42", "zip": "750", "home": {"lat": 1.5, "lon": 2.5}}
    assert sanitizer.sanitize(dict(_RAW, age=None, where=None), _ms(2024, 5, 18)).record["dob"] == "40-49"

    raw = avro_bytes(plan.schema.parsed, _RAW)
    result = pipeline.process([RawEvent("visits.raw", 0, 0, _ms(2024, 5, 18), None, raw, None),
                               RawEvent("visits.raw", 0, 1, -1, None, raw, None)])
    sanitized = [r for r in result.records if r.topic == plan.sanitized_topic]
    dead = [r for r in result.records if r.topic == plan.dlq_topic]
    assert len(sanitized) == 1 and len(dead) == 1
    published = fastavro.schemaless_reader(io.BytesIO(sanitized[0].value), plan.sanitized_parsed, None)
    assert published["dob"] == "40-49" and published["where"] == "ezs42" and published["seen"] == _ms(2024, 5, 17, 9)
    letter = orjson.loads(dead[0].value)
    assert letter["reason"] == "missing_timestamp"
    assert "1984" not in letter["message"] and str(_RAW["dob"]) not in letter["message"]


def test_a_bad_form_in_a_schema_names_schema_and_field(write_schema: Any) -> None:
    schema = dict(_SCHEMA, fields=[*_SCHEMA["fields"], {"name": "born", "type": DATE, "privacy": {
        "generalize": {"truncate": "day"}}}])
    with pytest.raises(PolicyError) as excinfo:
        compile_plan(load_schema_file(write_schema(schema, name="bad.avsc")))
    assert "bad.avsc: born: generalize truncate on a date takes one of month, year" in str(excinfo.value)
