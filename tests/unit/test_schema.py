"""EventDecoder: wire formats, validation and reason codes; messages never carry values."""

from __future__ import annotations

import datetime
import struct
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.codec.raw import (
    EventDecoder,
    decoded_for_json,
    frame_confluent,
    load_schema_file,
    strip_logical_types,
)
from gateway.core.codec.writer import avro_bytes, json_bytes
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.embedded.samples import CANARIES, SampleEvents, broken_payment_events
from gateway.errors import PolicyError, RejectedEvent

MAX_RECORD = 1_048_576
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _decoder(plan: Plan, mode: str | None = None, max_record_bytes: int = MAX_RECORD) -> EventDecoder:
    return EventDecoder(plan.schema, mode or plan.input_mode, plan.schema_id, max_record_bytes)


def _canary_payment() -> dict[str, Any]:
    return SampleEvents(seed=11).payment(canary=True)


def _corpus(plan: Plan) -> list[tuple[str, bytes]]:
    return broken_payment_events(_canary_payment(), plan.schema_id, lambda r: avro_bytes(plan.schema.parsed, r))


def _to_millis(record: dict[str, Any]) -> dict[str, Any]:
    """Avro decoding yields datetimes for timestamp-millis; JSON keeps the integer."""
    out = dict(record)
    if isinstance(out.get("occurred_at"), datetime.datetime):
        out["occurred_at"] = round(out["occurred_at"].timestamp() * 1000)
    return out


def _assert_no_canary(text: str) -> None:
    for canary in CANARIES.values():
        assert canary not in text


def test_corpus_covers_the_expected_reasons(payments_plan: Plan) -> None:
    reasons = {reason for reason, _ in _corpus(payments_plan)}
    assert reasons == {"avro_truncated", "bad_magic_byte", "unknown_schema_id", "avro_trailing_bytes",
                       "invalid_utf8", "json_invalid", "wrong_type", "missing_field", "field_too_large",
                       "record_too_large", "empty_value"}


@pytest.mark.parametrize("index", range(13))
def test_each_broken_event_gets_its_reason(payments_plan: Plan, index: int) -> None:
    reason, data = _corpus(payments_plan)[index]
    decoder = _decoder(payments_plan)
    if reason == "field_too_large":  # decodes fine; the sanitizer rejects it
        record, encoding = decoder.decode(data)
        assert encoding == "json"
        assert len(record["customer_name"]) > 70_000
        return
    with pytest.raises(RejectedEvent) as excinfo:
        decoder.decode(data)
    assert excinfo.value.reason == reason
    _assert_no_canary(str(excinfo.value))
    _assert_no_canary(excinfo.value.message)


def test_none_value_is_empty(payments_plan: Plan) -> None:
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan).decode(None)
    assert excinfo.value.reason == "empty_value"


def test_valid_payment_decodes_the_same_in_every_encoding(payments_plan: Plan) -> None:
    valid = _canary_payment()
    decoder = _decoder(payments_plan)
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    framed = frame_confluent(payments_plan.schema_id, bare)
    as_json = orjson.dumps(valid)
    from_confluent, enc_c = decoder.decode(framed)
    from_avro, enc_a = decoder.decode(bare)
    from_json, enc_j = decoder.decode(as_json)
    assert (enc_c, enc_a, enc_j) == ("confluent", "avro", "json")
    assert from_confluent == from_avro
    assert _to_millis(from_avro) == _to_millis(from_json) == valid


def test_json_missing_optional_fields_get_their_defaults(payments_plan: Plan) -> None:
    valid = _canary_payment()
    without = {k: v for k, v in valid.items() if k not in ("card_expiry", "user_agent")}
    record, _ = _decoder(payments_plan).decode(orjson.dumps(without))
    assert record["card_expiry"] is None
    assert record["user_agent"] is None


@pytest.mark.parametrize("mode", ["confluent", "avro", "json"])
def test_explicit_modes_reject_other_encodings(payments_plan: Plan, mode: str) -> None:
    valid = _canary_payment()
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    encodings = {"confluent": frame_confluent(1, bare), "avro": bare, "json": orjson.dumps(valid)}
    decoder = _decoder(payments_plan, mode)
    assert decoder.decode(encodings[mode])[1] == mode
    for other, data in encodings.items():
        if other == mode or (mode, other) == ("avro", "confluent"):
            continue
        with pytest.raises(RejectedEvent) as excinfo:
            decoder.decode(data)
        _assert_no_canary(str(excinfo.value))


def test_bare_avro_of_a_framed_payload_is_rejected_in_avro_mode(payments_plan: Plan) -> None:
    valid = _canary_payment()
    framed = frame_confluent(1, avro_bytes(payments_plan.schema.parsed, valid))
    with pytest.raises(RejectedEvent):
        _decoder(payments_plan, "avro").decode(framed)


def test_confluent_mode_short_value_is_bad_framing(payments_plan: Plan) -> None:
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan, "confluent").decode(b"\x00\x00\x01")
    assert excinfo.value.reason == "bad_framing"


def test_unknown_input_mode_is_a_policy_error(payments_plan: Plan) -> None:
    with pytest.raises(PolicyError, match="input 'xml'"):
        EventDecoder(payments_plan.schema, "xml", None, MAX_RECORD)


def test_record_too_large_boundary(payments_plan: Plan) -> None:
    valid = _canary_payment()
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    assert _decoder(payments_plan, max_record_bytes=len(bare)).decode(bare)[0]["event_id"] == valid["event_id"]
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan, max_record_bytes=len(bare) - 1).decode(bare)
    assert excinfo.value.reason == "record_too_large"


def test_wrong_type_names_the_field_not_the_value(payments_plan: Plan) -> None:
    valid = dict(_canary_payment(), currency=CANARIES["email"])
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan).decode(orjson.dumps(valid))
    assert excinfo.value.reason == "wrong_type"
    assert "'currency'" in str(excinfo.value)
    _assert_no_canary(str(excinfo.value))


def test_wrong_type_in_nested_record(payments_plan: Plan) -> None:
    valid = _canary_payment()
    valid["billing_address"] = dict(valid["billing_address"], city=12)
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan).decode(orjson.dumps(valid))
    assert excinfo.value.reason == "wrong_type"
    assert "'billing_address'" in str(excinfo.value)


# ---- auto mode and bare Avro starting with 0x00 --------------------------------------------------
def test_auto_accepts_bare_payment_starting_with_zero_byte(payments_plan: Plan) -> None:
    valid = dict(_canary_payment(), event_id="")  # empty string -> first byte 0x00
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    assert bare[0] == 0
    record, _ = _decoder(payments_plan).decode(bare)
    assert _to_millis(record) == valid


@pytest.fixture
def zero_first_schema(write_schema) -> Any:
    schema = {"type": "record", "name": "Counter", "namespace": "ex", "fields": [
        {"name": "n", "type": "long"}, {"name": "label", "type": "string"}, {"name": "x", "type": "long"}]}
    return load_schema_file(write_schema(schema, name="counter.avsc"))


@pytest.mark.parametrize("schema_id", [None, 1, 7])
def test_auto_accepts_bare_avro_whose_first_field_is_long_zero(zero_first_schema, schema_id: int | None) -> None:
    record = {"n": 0, "label": "hello there", "x": 12345}
    bare = avro_bytes(zero_first_schema.parsed, record)
    assert bare[0] == 0 and len(bare) >= 5
    decoded, _ = EventDecoder(zero_first_schema, "auto", schema_id, MAX_RECORD).decode(bare)
    assert decoded == record


def test_auto_reports_avro_encoding_for_bare_avro_starting_with_zero(payments_plan: Plan) -> None:
    valid = dict(_canary_payment(), event_id="")
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    _, encoding = _decoder(payments_plan).decode(bare)
    assert encoding == "avro"


def test_auto_accepts_bare_avro_that_looks_like_the_configured_header(write_schema) -> None:
    schema = {"type": "record", "name": "Reading", "namespace": "ex", "fields": [
        {"name": "a", "type": "long"}, {"name": "b", "type": "long"}, {"name": "c", "type": "long"},
        {"name": "d", "type": "long"}, {"name": "e", "type": "long"}, {"name": "f", "type": "string"}]}
    parsed_file = load_schema_file(write_schema(schema, name="reading.avsc"))
    record = {"a": 0, "b": 0, "c": 0, "d": 0, "e": -1, "f": "sensor"}
    bare = avro_bytes(parsed_file.parsed, record)
    assert bare[:5] == b"\x00" + struct.pack(">I", 1)
    decoded, _ = EventDecoder(parsed_file, "auto", 1, MAX_RECORD).decode(bare)
    assert decoded == record


def test_auto_sniffs_json_with_leading_whitespace(payments_plan: Plan) -> None:
    valid = _canary_payment()
    record, encoding = _decoder(payments_plan).decode(b"\n  " + orjson.dumps(valid))
    assert encoding == "json"
    assert record["event_id"] == valid["event_id"]


# ---- auto mode: bare Avro whose first byte looks like JSON ---------------------------------------
@pytest.mark.parametrize("event_id,first_byte", [("x" * 16, b" "), ("abcde", b"\n"),
                                                 ("{" + "y" * 15, b" "), ("  {  ", b"\n"),
                                                 ("[" + "z" * 15, b" ")])
def test_auto_accepts_bare_payment_whose_first_string_length_is_json_whitespace(
        payments_plan: Plan, event_id: str, first_byte: bytes) -> None:
    """A string of length 16 is prefixed 0x20 (space), of length 5 0x0a (newline): still Avro."""
    valid = dict(_canary_payment(), event_id=event_id)
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    assert bare[:1] == first_byte
    for decoder in (_decoder(payments_plan), EventDecoder(payments_plan.schema, "auto", None, MAX_RECORD)):
        record, encoding = decoder.decode(bare)
        assert encoding == "avro"
        assert record == valid


@pytest.mark.parametrize("n,first_byte", [(16, b" "), (5, b"\n"), (-5, b"\t"), (-7, b"\r"), (-62, b"{"),
                                          (-46, b"[")])
def test_auto_accepts_bare_avro_whose_first_long_looks_like_json(zero_first_schema, n: int,
                                                                 first_byte: bytes) -> None:
    record = {"n": n, "label": "hello there", "x": 12345}
    bare = avro_bytes(zero_first_schema.parsed, record)
    assert bare[:1] == first_byte
    for schema_id in (None, 1):
        decoded, encoding = EventDecoder(zero_first_schema, "auto", schema_id, MAX_RECORD).decode(bare)
        assert (decoded, encoding) == (record, "avro")


@pytest.mark.parametrize("data,reason", [
    (b' {"event_id": ', "json_invalid"),      # looks like JSON, decodes as nothing: the JSON error
    (b"\n[1, 2]", "json_invalid"),             # an array is never an event
    (b" " + b"x" * 10, "avro_truncated"),      # a 16-byte string announced, 10 bytes follow
    (b"\n" + b"x" * 40, "avro_truncated"),     # not JSON at all: the bare-Avro error
])
def test_auto_reports_the_likely_encodings_error(payments_plan: Plan, data: bytes, reason: str) -> None:
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan).decode(data)
    assert excinfo.value.reason == reason


def test_auto_bare_avro_with_json_first_byte_that_fails_is_reported_as_avro(payments_plan: Plan) -> None:
    valid = dict(_canary_payment(), event_id="x" * 16)
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan).decode(bare[:-3])
    assert excinfo.value.reason == "avro_truncated"
    _assert_no_canary(str(excinfo.value))
    with pytest.raises(RejectedEvent) as excinfo:
        _decoder(payments_plan).decode(bare + CANARIES["email"].encode())
    assert excinfo.value.reason == "avro_trailing_bytes"
    _assert_no_canary(str(excinfo.value))


@pytest.mark.parametrize("kind", ["confluent", "avro", "avro_space", "avro_zero", "json"])
def test_auto_decodes_a_valid_event_in_one_attempt(payments_plan: Plan, kind: str) -> None:
    """The hot path: a valid event of the likely encoding is decoded once, nothing else is tried."""
    event_id = {"avro_space": "x" * 16, "avro_zero": ""}.get(kind, "evt-1")
    valid = dict(_canary_payment(), event_id=event_id)
    bare = avro_bytes(payments_plan.schema.parsed, valid)
    value = {"confluent": frame_confluent(1, bare), "json": orjson.dumps(valid)}.get(kind, bare)
    decoder = _decoder(payments_plan)
    calls: list[str] = []
    decode_avro, decode_json = decoder._decode_avro, decoder._decode_json

    def counting_avro(payload: bytes, what: str) -> dict[str, Any]:
        calls.append("avro")
        return decode_avro(payload, what)

    def counting_json(payload: bytes) -> dict[str, Any]:
        calls.append("json")
        return decode_json(payload)

    decoder._decode_avro = counting_avro  # type: ignore[method-assign]
    decoder._decode_json = counting_json  # type: ignore[method-assign]
    record, encoding = decoder.decode(value)
    assert record == valid
    assert calls == (["json"] if kind == "json" else ["avro"])


# ---- property: every valid record decodes to itself in every encoding ---------------------------
_PROPERTY_PLANS = [compile_plan(load_schema_file(SCHEMAS / name))
                   for name in ("payments.avsc", "clinical_visits.avsc")]
# the schema id a decoder expects for Confluent framing; ClinicalVisit has none configured, so use
# one whose header no bare ClinicalVisit can start with (0x01 after 0x00 would be a negative string
# length), keeping "bare Avro decodes as bare Avro" unambiguous (Payment's id 1 has the same property)
_FALLBACK_SCHEMA_ID = 0x01010101
# Avro lengths count bytes: one-byte characters at chosen lengths make a string's zigzag length
# prefix every value 0x00..0x7f often (16 is a space, 5 a newline), any-character strings cover UTF-8
_ONE_BYTE_CHAR = st.characters(max_codepoint=0x7F)
_STRING = st.one_of(
    st.one_of(st.sampled_from([0, 5, 16]), st.integers(0, 300)).flatmap(
        lambda n: st.text(_ONE_BYTE_CHAR, min_size=n, max_size=n)),
    st.text(st.characters(codec="utf-8"), max_size=300),
)
_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "double": st.floats(allow_nan=False, allow_infinity=False),  # JSON has no NaN or infinity
    "string": _STRING,
}


def _avro_values(schema: Any, named: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for `schema`: a fastavro-parsed schema with logical types stripped (a
    timestamp-millis is its long, a date its int). Types these schemas do not use fail loudly."""
    if isinstance(schema, list):
        return st.one_of(*[_avro_values(branch, named) for branch in schema])
    if isinstance(schema, str):
        return _PRIMITIVES[schema] if schema in _PRIMITIVES else _avro_values(named[schema], named)
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: _avro_values(f["type"], named) for f in schema["fields"]})
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_avro_values(schema["items"], named), max_size=3)
    if kind in _PRIMITIVES:
        return _PRIMITIVES[kind]
    raise NotImplementedError(f"no generator for Avro type {kind!r}")


def _plan_case(plan: Plan) -> st.SearchStrategy[tuple[Plan, dict[str, Any]]]:
    stripped = fastavro.parse_schema(strip_logical_types(plan.schema.raw))
    return st.tuples(st.just(plan), _avro_values(stripped, stripped["__named_schemas"]))


@settings(max_examples=200, deadline=None)
@given(case=st.one_of(*[_plan_case(plan) for plan in _PROPERTY_PLANS]))
def test_auto_mode_decodes_every_valid_record_in_every_encoding(case: tuple[Plan, dict[str, Any]]) -> None:
    plan, record = case
    schema_id = plan.schema_id if plan.schema_id is not None else _FALLBACK_SCHEMA_ID
    bare = avro_bytes(fastavro.parse_schema(strip_logical_types(plan.schema.raw)), record)
    as_json = json_bytes(record)
    with_id = EventDecoder(plan.schema, "auto", schema_id, MAX_RECORD)
    without_id = EventDecoder(plan.schema, "auto", None, MAX_RECORD)
    assert with_id.decode(frame_confluent(schema_id, bare)) == (record, "confluent")
    for decoder in (with_id, without_id):
        assert decoder.decode(bare) == (record, "avro")
        assert decoder.decode(as_json) == (record, "json")
        assert decoder.decode(b" \n\t\r" + as_json) == (record, "json")


# ---- helpers -------------------------------------------------------------------------------------
def test_frame_confluent_header() -> None:
    assert frame_confluent(258, b"xy") == b"\x00\x00\x00\x01\x02xy"


def test_json_bytes_encodes_bytes_as_base64() -> None:
    assert orjson.loads(json_bytes({"b": b"\x00\xff", "s": "x"})) == {"b": "AP8=", "s": "x"}


def test_decoded_for_json_converts_logical_types() -> None:
    value = {"d": datetime.date(2020, 1, 2), "b": [b"\x01"], "n": None}
    assert decoded_for_json(value) == {"d": "2020-01-02", "b": ["AQ=="], "n": None}


@pytest.mark.parametrize("content,fragment", [(b"{bad", "not valid JSON"), (b'{"type": "enum"}', "Avro record"),
                                              (b'{"type": "record", "name": "X", "fields": [{"name": "a"}]}',
                                               "not a valid Avro schema")])
def test_load_schema_file_errors(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "x.avsc"
    path.write_bytes(content)
    with pytest.raises(PolicyError) as excinfo:
        load_schema_file(path)
    assert str(path) in str(excinfo.value)
    assert fragment in str(excinfo.value)


def test_load_schema_file_missing(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read schema"):
        load_schema_file(tmp_path / "absent.avsc")
