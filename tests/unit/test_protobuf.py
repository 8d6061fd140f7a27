"""Protobuf schemas, Confluent framing and the sanitized .proto (gateway/core/codec/protobuf.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastavro
import pytest
from google.protobuf import message_factory

from gateway.core.codec.protobuf import (
    ProtoDecoder,
    ProtoSchema,
    SanitizedProto,
    compile_proto,
    load_proto,
    read_message_indexes,
    write_message_indexes,
)
from gateway.core.codec.raw import SchemaFile
from gateway.core.policy.compiler import compile_schema
from gateway.core.policy.plan import Plan
from gateway.errors import PolicyError, RejectedEvent
from tests.protobuf import ORDERS_PROTO


@pytest.fixture(scope="module")
def orders() -> ProtoSchema:
    return load_proto(ORDERS_PROTO)


@pytest.fixture(scope="module")
def plan(orders: ProtoSchema) -> Plan:
    compiled, problems = compile_schema(SchemaFile(orders.path, orders.avro, fastavro.parse_schema(orders.avro)))
    assert compiled is not None, problems
    assert [(p.severity, p.where) for p in problems] == [("warning", "user_agent")]
    return compiled


def producer_message(orders: ProtoSchema, **values: Any) -> Any:
    """A message of the raw Order type, as a producer's generated class would build it."""
    cls = message_factory.GetMessageClass(orders.root)
    message = cls()
    for name, value in values.items():
        target = getattr(message, name)
        if name == "placed_at":
            target.FromMicroseconds(value)
        elif name == "shipping":
            for k, v in value.items():
                setattr(target, k, v)
        elif name == "items":
            for item in value:
                target.add(**item)
        elif name == "attributes":
            target.update(value)
        else:
            setattr(message, name, value)
    return message


def test_the_field_options_become_the_policy_on_the_avro_shaped_schema(orders: ProtoSchema) -> None:
    fields = {f["name"]: f for f in orders.avro["fields"]}
    assert orders.avro["name"] == "example.orders.Order"
    assert orders.avro["privacy"]["source_topic"] == "orders.raw"
    assert fields["email"]["privacy"] == {"tokenize": {"domain": "customer"}}
    assert fields["card_number"]["privacy"] == "encrypt"
    assert "privacy" not in fields["user_agent"]
    assert fields["placed_at"]["type"] == ["null", {"type": "long", "logicalType": "timestamp-micros"}]
    assert fields["phone"]["type"] == ["null", "string"]  # proto3 optional: presence
    assert fields["card_number"]["type"] == "string" and fields["card_number"]["default"] == ""
    assert fields["currency"]["type"]["symbols"] == ["CURRENCY_UNSPECIFIED", "EUR", "USD"]
    assert fields["items"]["type"]["type"] == "array"
    assert fields["attributes"]["type"] == {"type": "map", "values": "string"}
    assert fields["loyalty_points"]["type"] == "long"


def test_message_index_paths_round_trip_and_the_first_message_is_one_zero_byte() -> None:
    assert write_message_indexes((0,)) == b"\x00"
    for path in [(0,), (1,), (2, 0), (0, 3, 1), (200,)]:
        data = b"xx" + write_message_indexes(path) + b"rest"
        assert read_message_indexes(data, 2) == (path, len(data) - 4)
    with pytest.raises(RejectedEvent) as info:
        read_message_indexes(b"\x04", 0)  # two indexes announced, none follow
    assert info.value.reason == "protobuf_bad_message_index"


def test_a_message_decodes_to_the_avro_shaped_record(orders: ProtoSchema) -> None:
    message = producer_message(
        orders, order_id="o-1", placed_at=1_700_000_000_123_456, customer_id="c-9", email="a@example.com",
        card_number="4111111111111111", ip_address="10.0.0.1", amount_minor=1234, currency=2,
        shipping={"street": "1 Main St", "postal_code": "75001", "city": "Paris"},
        items=[{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}], attributes={"gift": "yes"},
        loyalty_points=2**63 - 1)
    record, unknown = ProtoDecoder(orders).decode(message.SerializeToString())
    assert unknown == ()
    assert record == {
        "order_id": "o-1", "placed_at": 1_700_000_000_123_456, "customer_id": "c-9", "email": "a@example.com",
        "card_number": "4111111111111111", "phone": None, "ip_address": "10.0.0.1", "user_agent": "",
        "amount_minor": 1234, "currency": "USD",
        "shipping": {"street": "1 Main St", "postal_code": "75001", "city": "Paris"},
        "items": [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}], "attributes": {"gift": "yes"},
        "loyalty_points": 2**63 - 1}
    assert fastavro.validation.validate(record, fastavro.parse_schema(_without_logical(orders.avro)))


def _without_logical(schema: Any) -> Any:
    from gateway.core.codec.raw import strip_logical_types
    return strip_logical_types(schema)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\x0a\x05o-1", "protobuf_truncated"),  # order_id: 5 bytes announced, 3 there
    (b"\x0a\x03o-1\x48", "protobuf_truncated"),  # amount_minor's tag, no varint
    (b"\x0f\x00", "protobuf_wrong_wire_type"),  # wire type 7 does not exist
    (b"\x49\x00\x00\x00\x00\x00\x00\x00\x00", "protobuf_wrong_wire_type"),  # amount_minor (varint) as fixed64
    (b"\x0a\x02\xff\xfe", "invalid_utf8"),  # order_id is a string
    (b"\x50\x07", "protobuf_unknown_enum_value"),  # currency = 7: not declared
    (b"\x70\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "protobuf_value_out_of_range"),  # loyalty_points = 2**64-1
    (b"\x5a\x03\x0a\x05x", "protobuf_truncated"),  # shipping holds a truncated street
])
def test_bad_messages_get_a_reason_and_no_value(orders: ProtoSchema, payload: bytes, reason: str) -> None:
    with pytest.raises(RejectedEvent) as info:
        ProtoDecoder(orders).decode(payload)
    assert info.value.reason == reason
    assert "o-1" not in str(info.value) and "\\x" not in str(info.value)


def test_a_newer_producers_field_is_reported_and_dropped(orders: ProtoSchema, tmp_path: Path) -> None:
    newer = tmp_path / "orders.proto"
    newer.write_text(ORDERS_PROTO.read_text().replace(
        "uint64 loyalty_points = 14", "string referrer = 15; uint64 loyalty_points = 14"))
    new_class = message_factory.GetMessageClass(load_proto(newer).root)
    payload = new_class(order_id="o-2", referrer="canary-referrer").SerializeToString()
    record, unknown = ProtoDecoder(orders).decode(payload)
    assert unknown == ("#15",)
    assert record["order_id"] == "o-2" and "canary-referrer" not in repr(record)


def test_the_sanitized_proto_keeps_numbers_changes_types_and_reserves_dropped_numbers(
        orders: ProtoSchema, plan: Plan, tmp_path: Path) -> None:
    sanitized = SanitizedProto(orders, plan.sanitized_schema)
    text = sanitized.text
    assert "package example.orders.sanitized;" in text
    assert "bytes card_number = 5;" in text and "optional bytes phone = 6;" in text
    assert "string email = 4;" in text and "uint64 loyalty_points = 14;" in text
    assert "reserved 7, 8;" in text and "reserved 2;" in text  # ip_address, user_agent; postal_code
    assert "ip_address" not in text and "postal_code" not in text
    assert text.index("message Order {") < text.index("message Item {")  # the record is message [0]
    (tmp_path / "sanitized.proto").write_text(text)  # protoc reads it back: it is a valid .proto
    compiled = compile_proto(tmp_path / "sanitized.proto")
    assert compiled.file[-1].message_type[0].name == "Order"


def test_a_sanitized_record_encodes_as_the_sanitized_message(orders: ProtoSchema, plan: Plan) -> None:
    sanitized = SanitizedProto(orders, plan.sanitized_schema)
    record = {"order_id": "o-1", "placed_at": 1_700_000_000_123_456, "customer_id": "tok_v1_x", "email": "tok_v1_y",
              "card_number": b"\x01cipher", "phone": None, "amount_minor": 5, "currency": "EUR",
              "shipping": {"street": b"\x01st", "city": "Paris"}, "items": [{"sku": "A", "quantity": 1}],
              "attributes": {"k": "v"}, "loyalty_points": 3}
    message = sanitized.message_class.FromString(sanitized.encode(record))
    assert message.card_number == b"\x01cipher" and message.email == "tok_v1_y"
    assert not message.HasField("phone")
    assert message.placed_at.ToMicroseconds() == 1_700_000_000_123_456
    assert message.currency == 1 and message.shipping.city == "Paris" and message.items[0].sku == "A"
    assert dict(message.attributes) == {"k": "v"}


def test_an_invalid_proto_fails_naming_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\nmessage A {\n  strin name = 1;\n}\n')
    with pytest.raises(PolicyError, match=r"bad\.proto.*line 3"):
        load_proto(bad)


def test_a_bad_privacy_option_fails_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.proto"
    bad.write_text('syntax = "proto3";\nimport "gateway/privacy.proto";\n'
                   "message A {\n  string name = 1 [(gateway.privacy) = '{\"tokenize\": '];\n}\n")
    with pytest.raises(PolicyError, match=r"A\.name: the privacy option is not valid JSON"):
        load_proto(bad)


def test_proto2_is_refused(tmp_path: Path) -> None:
    old = tmp_path / "old.proto"
    old.write_text('syntax = "proto2";\nmessage A {\n  optional string name = 1;\n}\n')
    with pytest.raises(PolicyError, match="only proto3"):
        load_proto(old)
