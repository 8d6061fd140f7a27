"""The one Encoding (names, framing, sniffing, header names) and the one sanitized decoder's forms: a Kafka
record by its headers or without them, and the byte streams `gateway decrypt` reads (Avro container,
JSON lines, bare Avro one after another)."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import orjson
import pytest

from gateway.core.codec.encoding import (
    CONFLUENT_HEADER_BYTES,
    ENCODING_HEADER,
    ENCODINGS,
    INPUT_MODES,
    POLICY_HEADER,
    SCHEMA_HEADER,
    SOURCE_HEADER,
    Encoding,
    confluent_id,
    frame_confluent,
    output_headers,
    sniff,
)
from gateway.core.codec.evolution import single_object_header
from gateway.core.codec.raw import decoded_for_json
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord, UndecodableRecord, is_json
from gateway.core.codec.writer import avro_bytes
from gateway.core.policy.plan import Plan
from gateway.errors import GatewayError


def test_the_encodings_are_the_names_policies_headers_and_audit_use() -> None:
    assert ENCODINGS == ("confluent", "avro", "json", "single_object")
    assert INPUT_MODES == ("auto", *ENCODINGS)
    assert Encoding.JSON == "json" and f"{Encoding.SINGLE_OBJECT}" == "single_object"
    assert orjson.dumps({"encoding": Encoding.CONFLUENT}) == b'{"encoding":"confluent"}'
    assert Encoding.from_header(b"avro") is Encoding.AVRO and Encoding.from_header("json") is Encoding.JSON
    # the other format families' encodings are names in the header too; the Avro policies' input/output are not
    assert Encoding.from_header(b"json_schema") is Encoding.JSON_SCHEMA
    assert Encoding.from_header(b"protobuf") is Encoding.PROTOBUF
    assert "json_schema" not in INPUT_MODES and "protobuf" not in ENCODINGS
    for absent in (None, b"", "", b"thrift", b"\xff"):
        assert Encoding.from_header(absent) is None


def test_output_headers_name_schema_encoding_and_policy() -> None:
    assert (SCHEMA_HEADER, ENCODING_HEADER, POLICY_HEADER, SOURCE_HEADER) == (
        "gateway-schema", "gateway-encoding", "gateway-policy", "gateway-source")
    assert output_headers("ns.Rec", Encoding.JSON, "abc") == [
        ("gateway-schema", b"ns.Rec"), ("gateway-encoding", b"json"), ("gateway-policy", b"abc")]


def test_confluent_framing_round_trips_and_refuses_what_is_not_framed() -> None:
    framed = frame_confluent(101, b"payload")
    assert framed[:CONFLUENT_HEADER_BYTES] == b"\x00\x00\x00\x00\x65" and framed[CONFLUENT_HEADER_BYTES:] == b"payload"
    assert confluent_id(framed) == 101 and confluent_id(frame_confluent(2**32 - 1, b"")) == 2**32 - 1
    assert confluent_id(b"\x00\x00\x00\x65") is None  # one byte short of the header
    assert confluent_id(b"\x07" + framed[1:]) is None  # another magic byte


@pytest.mark.parametrize(("value", "framed", "expected"), [
    (b'{"a": 1}', False, Encoding.JSON),
    (b' \n\t{"a": 1}', True, Encoding.JSON),  # JSON whitespace first
    (b"[1, 2]", True, Encoding.JSON),  # never an event, but JSON is what it looks like
    (frame_confluent(7, b"\x02x"), True, Encoding.CONFLUENT),
    (frame_confluent(7, b"\x02x"), False, Encoding.AVRO),  # no registry id known: 0x00 is bare Avro's too
    (b"\x00\x00\x01", True, Encoding.AVRO),  # no room for the Confluent header
    (single_object_header({"type": "string"}) + b"\x02x", False, Encoding.SINGLE_OBJECT),
    (b"\xc3\x01\x00", False, Encoding.AVRO),  # no room for the fingerprint
    (b"\x06abc", True, Encoding.AVRO),
    (b"   ", False, Encoding.AVRO),  # whitespace only: a bare Avro string of length 16 starts so
])
def test_sniffing_names_the_encoding_to_try_first(value: bytes, framed: bool, expected: Encoding) -> None:
    assert sniff(value, framed) is expected


def _sanitized(plan: Plan, n: int) -> dict[str, Any]:
    record: dict[str, Any] = {f["name"]: None for f in plan.sanitized_schema["fields"]}
    record.update(event_id=f"e{n}", occurred_at=n, user_id="tok", email="tok", customer_name=b"x", card_number=b"y",
                  amount_minor=5 + n, currency="EUR", country="DE",
                  billing_address={"street": b"s", "city": "c", "country": "DE"},
                  merchant={"merchant_id": "m", "category": "c"})
    return record


def _stored(value: bytes, encoding: bytes | None = None, schema: bytes | None = None) -> StoredRecord:
    headers = {k: v for k, v in ((SCHEMA_HEADER, schema), (ENCODING_HEADER, encoding)) if v is not None}
    return StoredRecord("payments.sanitized", 0, 0, None, value, headers)


def test_one_record_decodes_by_its_headers_and_without_them(payments_plan: Plan, clinical_plan: Plan) -> None:
    decoder = SanitizedDecoder([payments_plan, clinical_plan])
    record = _sanitized(payments_plan, 1)
    bare = avro_bytes(payments_plan.sanitized_parsed, record)
    assert payments_plan.sanitized_schema_id is not None
    framed = frame_confluent(payments_plan.sanitized_schema_id, bare)
    as_json = orjson.dumps(decoded_for_json(record))
    name = payments_plan.sanitized_schema["name"].encode()
    for value, encoding, expected in ((bare, b"avro", record), (framed, b"confluent", record),
                                      (as_json, b"json", orjson.loads(as_json))):
        assert decoder.decode(_stored(value, encoding, name)) == (payments_plan, expected)
        assert decoder.decode(_stored(value)) == (payments_plan, expected)  # by topic, encoding guessed
        assert decoder.decode_value(payments_plan, value) == expected
    assert is_json(_stored(as_json, b"json")) and is_json(_stored(b' {"a": 1}'))
    assert not is_json(_stored(b'{"a": 1}', b"avro")) and not is_json(_stored(bare))


def test_bytes_of_another_shape_fail_naming_topic_and_schema_never_the_value(payments_plan: Plan) -> None:
    decoder = SanitizedDecoder([payments_plan])
    canary = b"canary.person@example.org"
    with pytest.raises(UndecodableRecord, match=r"does not decode as example\.payments\.sanitized\.Payment") as info:
        decoder.decode(_stored(b"\x02" + canary, b"avro"))
    assert canary.decode() not in str(info.value)
    with pytest.raises(UndecodableRecord, match="neither a JSON object nor Avro") as info:
        decoder.decode(_stored(canary))
    assert canary.decode() not in str(info.value)
    with pytest.raises(GatewayError, match="too short for Confluent framing"):
        decoder.decode(_stored(b"\x00\x01", b"confluent"))
    with pytest.raises(UndecodableRecord, match="tombstone"):
        decoder.decode(StoredRecord("payments.sanitized", 0, 0, None, None, {}))


def test_the_plan_is_found_by_schema_then_topic_then_the_decoder_topic(payments_plan: Plan,
                                                                        clinical_plan: Plan) -> None:
    decoder = SanitizedDecoder([payments_plan, clinical_plan])
    clinical_name = clinical_plan.sanitized_schema["name"]
    assert decoder.plan_for("payments.sanitized", clinical_name) is clinical_plan
    assert decoder.plan_for("clinical.visits.sanitized") is clinical_plan
    with pytest.raises(UndecodableRecord, match="known schemas: .*ClinicalVisit.*Payment"):
        decoder.plan_for("elsewhere")
    assert SanitizedDecoder([payments_plan, clinical_plan], topic="payments.sanitized").plan_for() is payments_plan
    assert SanitizedDecoder([clinical_plan]).plan_for("elsewhere") is clinical_plan  # the only one


def test_a_stream_is_an_avro_container_json_lines_or_bare_avro_records(payments_plan: Plan,
                                                                       clinical_plan: Plan) -> None:
    decoder = SanitizedDecoder([payments_plan, clinical_plan])
    records = [_sanitized(payments_plan, n) for n in range(3)]
    container = io.BytesIO()
    fastavro.writer(container, payments_plan.sanitized_parsed, records)
    # the container names its schema: no topic needed with two plans
    assert list(decoder.records(container.getvalue())) == [(payments_plan, r) for r in records]
    lines = [orjson.dumps(decoded_for_json(r)) for r in records]
    stream = b"\n".join([lines[0], b"", lines[1], b"  ", lines[2]]) + b"\n"
    assert list(decoder.records(stream, "payments.sanitized")) == [(payments_plan, orjson.loads(x)) for x in lines]
    bare = b"".join(avro_bytes(payments_plan.sanitized_parsed, r) for r in records)
    assert list(decoder.records(bare, "payments.sanitized")) == [(payments_plan, r) for r in records]
    assert list(decoder.records(b"")) == []
    with pytest.raises(UndecodableRecord, match="--topic"):  # two plans, bare Avro: which one?
        list(decoder.records(bare))
