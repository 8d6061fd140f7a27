"""EventDecoder: wire formats, validation and reason codes; messages never carry values."""

from __future__ import annotations

import datetime
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.errors import PolicyError, RejectedEvent
from gateway.policy import Plan
from gateway.samples import CANARIES, SampleEvents, broken_payment_events
from gateway.schema import (
    EventDecoder,
    avro_bytes,
    decoded_for_json,
    frame_confluent,
    json_bytes,
    load_schema_file,
)

MAX_RECORD = 1_048_576


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
