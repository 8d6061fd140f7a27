"""Protobuf schemas, Confluent framing and the sanitized .proto (gateway/core/codec/protobuf.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from google.protobuf import message_factory

from gateway.app import tokenizers
from gateway.core.codec.encoding import Encoding, SchemaFormat
from gateway.core.codec.formats import codec_for, format_of, load_schema_file
from gateway.core.codec.formats.missing import MissingExtra
from gateway.core.codec.protobuf import (
    ProtoDecoder,
    ProtoSchema,
    SanitizedProto,
    compile_proto,
    load_proto,
    read_message_indexes,
    write_message_indexes,
)
from gateway.core.codec.raw import SchemaFile, strip_logical_types
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan, compile_schema
from gateway.core.policy.lint import lint_directory
from gateway.core.policy.plan import Plan
from gateway.errors import PolicyError, RejectedEvent
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

# the example policy (docs/policy/protobuf.md): every field kind, one unannotated field
ORDERS_PROTO = Path(__file__).resolve().parents[2] / "examples" / "schemas" / "protobuf" / "orders.proto"


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
    with pytest.raises(RejectedEvent) as info:
        read_message_indexes(b"\x80" * 10 + b"\x00", 0)  # a count in 11 bytes: a varint has 10 at most
    assert info.value.reason == "protobuf_bad_message_index"


def test_a_message_decodes_to_the_avro_shaped_record(orders: ProtoSchema) -> None:
    message = producer_message(
        orders, order_id="o-1", placed_at=1_700_000_000_123_456, customer_id="c-9", email="a@example.com",
        card_number="4111111111111111", ip_address="10.0.0.1", amount_minor=1234, currency=2,
        shipping={"street": "1 Main St", "postal_code": "75001", "city": "Paris"},
        items=[{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 1}], attributes={"gift": "yes"},
        loyalty_points=2**63 - 1)
    record, unknown = ProtoDecoder(orders.root).decode(message.SerializeToString())
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
    (b"\x5a\x02\x08\x01", "protobuf_wrong_wire_type"),  # shipping.street (a string) as a varint
    (b"\x58\x01", "protobuf_wrong_wire_type"),  # shipping (a message) as a varint
    (b"\x62\x02\x10\xff", "protobuf_truncated"),  # items[0].quantity's varint never ends
    (b"\x48" + b"\x80" * 10 + b"\x00", "protobuf_wrong_wire_type"),  # amount_minor's varint in 11 bytes (10 at most)
])
def test_bad_messages_get_a_reason_and_no_value(orders: ProtoSchema, payload: bytes, reason: str) -> None:
    with pytest.raises(RejectedEvent) as info:
        ProtoDecoder(orders.root).decode(payload)
    assert info.value.reason == reason
    assert "o-1" not in str(info.value) and "\\x" not in str(info.value)


def test_a_newer_producers_field_is_reported_and_dropped(orders: ProtoSchema, tmp_path: Path) -> None:
    newer = tmp_path / "orders.proto"
    newer.write_text(ORDERS_PROTO.read_text().replace(
        "uint64 loyalty_points = 14", "string referrer = 15; uint64 loyalty_points = 14"))
    new_class = message_factory.GetMessageClass(load_proto(newer).root)
    payload = new_class(order_id="o-2", referrer="canary-referrer").SerializeToString()
    record, unknown = ProtoDecoder(orders.root).decode(payload)
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


# ---- the pipeline, with the Protobuf family plugged in (gateway.core.codec.formats.protobuf)

RAW_ID, SANITIZED_ID = 7, 8
CANARY = {"email": "canary-email@example.org", "card_number": "4000056655665556", "street": "77 Canary Row",
          "ip_address": "203.0.113.77", "user_agent": "CanaryAgent/9"}


@pytest.fixture
def proto_pipeline(tmp_path: Path) -> tuple[Plan, Any]:
    path = tmp_path / "orders.proto"
    path.write_text(ORDERS_PROTO.read_text().replace('"schema_id": "registry", "sanitized_schema_id": "registry"',
                                                     f'"schema_id": {RAW_ID}, "sanitized_schema_id": {SANITIZED_ID}'))
    plan = compile_plan(load_schema_file(path))
    keyring = Keyring.open(tmp_path / "k.json")
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    return plan, pipeline


def framed(schema_id: int, message: Any, indexes: bytes = b"\x00") -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + indexes + message.SerializeToString()


def test_the_pipeline_sanitizes_protobuf_into_the_sanitized_message(orders: ProtoSchema,
                                                                     proto_pipeline: tuple[Plan, Any]) -> None:
    plan, pipeline = proto_pipeline
    message = producer_message(orders, order_id="o-1", customer_id="c-1", email=CANARY["email"],
                               card_number=CANARY["card_number"], ip_address=CANARY["ip_address"],
                               user_agent=CANARY["user_agent"], amount_minor=99, currency=1,
                               shipping={"street": CANARY["street"], "postal_code": "1", "city": "Oslo"},
                               placed_at=1_700_000_000_000_000)
    result = pipeline.process([RawEvent("orders.raw", 0, 0, 0, None, framed(RAW_ID, message), None)])
    (out,) = [r for r in result.records if r.topic == "orders.sanitized"]
    assert out.value[:6] == b"\x00" + SANITIZED_ID.to_bytes(4, "big") + b"\x00"
    assert dict(out.headers or [])["gateway-encoding"] == Encoding.PROTOBUF.value.encode()
    for canary in CANARY.values():
        assert canary.encode() not in out.value
    sanitized = SanitizedProto(orders, plan.sanitized_schema)
    decoded = sanitized.message_class.FromString(out.value[6:])
    assert decoded.order_id == "o-1" and decoded.amount_minor == 99 and decoded.shipping.city == "Oslo"
    assert decoded.email.startswith("tok_v") and decoded.card_number and decoded.shipping.street
    assert decoded.placed_at.ToMicroseconds() == 1_700_000_000_000_000
    read = codec_for(plan.schema.format).reader(plan.schema, plan.sanitized_schema)
    assert read(out.value[5:])["email"] == decoded.email


@pytest.mark.parametrize(("value", "reason"), [
    (b"\x00\x00\x00\x00\x07\x02\x02", "protobuf_unknown_message_index"),  # [1]: the file's second message
    (b"\x00\x00\x00\x00\x63\x00\x0a\x01x", "unknown_schema_id"),
    (b"\x00\x00\x00\x00\x07\x00\x0a\x09o-1", "protobuf_truncated"),
    (b"\x00\x00\x00\x00\x07\x00\x49\x00\x00\x00\x00\x00\x00\x00\x00", "protobuf_wrong_wire_type"),
    (b"\x01\x00\x00\x00\x07\x00", "bad_magic_byte"),
])
def test_bad_protobuf_events_are_dead_lettered_with_their_reason(proto_pipeline: tuple[Plan, Any], value: bytes,
                                                                 reason: str) -> None:
    _, pipeline = proto_pipeline
    result = pipeline.process([RawEvent("orders.raw", 0, 0, 0, None, value, None)])
    (dead,) = [r for r in result.records if r.topic.endswith(".dlq")]
    assert orjson.loads(dead.value)["reason"] == reason
    assert not [r for r in result.records if r.topic == "orders.sanitized"]


# ---- registered versions and the sanitized schema's evolution (ProtobufCodec)

def _codec_and_schema() -> tuple[Any, Any]:
    return codec_for(SchemaFormat.PROTOBUF), load_schema_file(ORDERS_PROTO)


def _registered(orders: ProtoSchema) -> str:
    """The policy's schema as confluent-kafka's ProtobufSerializer registers it: base64 of the descriptor."""
    return base64.b64encode(orders.root.file.serialized_pb).decode()


def test_the_serializers_registration_is_the_policys_schema_and_annotations_do_not_matter(
        orders: ProtoSchema) -> None:
    codec, schema = _codec_and_schema()
    assert codec.same_schema(schema, _registered(orders))
    assert codec.same_schema(schema, ORDERS_PROTO.read_text().replace('(gateway.privacy) = "keep"',
                                                                      '(gateway.privacy) = "drop"'))
    assert not codec.same_schema(schema, ORDERS_PROTO.read_text().replace("int64 amount_minor",
                                                                          "int32 amount_minor"))


def test_a_writer_version_that_changes_a_field_numbers_type_is_unreadable_and_a_new_field_is_named() -> None:
    codec, schema = _codec_and_schema()
    text = ORDERS_PROTO.read_text()
    newer = codec.writer(schema, text.replace("uint64 loyalty_points = 14", "uint64 loyalty_points = 14;\n"
                                              "  string referrer = 15"), "v2")
    assert newer.problem is None and newer.unannotated == ("referrer",)
    changed = codec.writer(schema, text.replace("int64 amount_minor = 9", "string amount_minor = 9"), "v3")
    assert changed.problem is not None and "amount_minor" in changed.problem and "number 9" in changed.problem
    other = codec.writer(schema, 'syntax = "proto3";\npackage x;\nmessage Y { string a = 1; }\n', "v4")
    assert other.problem == "it has no message example.orders.Order"


def test_the_sanitized_proto_may_not_give_a_field_number_another_type(plan: Plan) -> None:
    codec, schema = _codec_and_schema()
    text = codec.sanitized_schema(schema, plan.sanitized_schema)
    assert codec.sanitized_problems(text, [("v1", text)], "full") == []
    kept_in_clear = text.replace("bytes card_number = 5;", "string card_number = 5;")
    problems = codec.sanitized_problems(text, [("sanitized version 1 (id 3)", kept_in_clear)], "backward")
    assert problems == ["sanitized version 1 (id 3): field 'card_number' (number 5) changes type from string to bytes"]
    assert codec.sanitized_problems(text, [("v1", kept_in_clear)], "none") == []
    dropped_more = text.replace("  string city = 3;\n", "").replace("reserved 2;", "reserved 2, 3;")
    assert codec.sanitized_problems(text, [("v1", dropped_more)], "full") == []  # adding a field is evolution


def test_a_timestamp_the_sanitized_record_holds_in_milliseconds_is_written_as_such(orders: ProtoSchema,
                                                                                   plan: Plan) -> None:
    sanitized_schema = orjson.loads(orjson.dumps(plan.sanitized_schema))
    (placed,) = [f for f in sanitized_schema["fields"] if f["name"] == "placed_at"]
    placed["type"] = ["null", {"type": "long", "logicalType": "timestamp-millis"}]  # e.g. a truncating operator
    sanitized = SanitizedProto(orders, sanitized_schema)
    message = sanitized.message_class.FromString(sanitized.encode({"placed_at": 1_700_000_000_123}))
    assert message.placed_at.ToMicroseconds() == 1_700_000_000_123_000


def test_without_the_protobuf_extra_a_proto_policy_fails_naming_the_extra(tmp_path: Path) -> None:
    missing = MissingExtra(SchemaFormat.PROTOBUF, (".proto",), "PROTOBUF", Encoding.PROTOBUF, "protobuf",
                           "google.protobuf")
    with pytest.raises(PolicyError, match=r"orders\.proto: protobuf schemas need the 'protobuf' extra .*"
                                          r"pip install 'privacy-gateway\[protobuf\]'"):
        missing.load(tmp_path / "orders.proto")
    assert format_of(tmp_path / "orders.proto") is SchemaFormat.PROTOBUF  # recognized, never skipped


def test_a_purpose_view_of_a_protobuf_policy_is_published_too(orders: ProtoSchema, tmp_path: Path) -> None:
    purposes = ('"purposes": {"analytics": {"topic": "orders.analytics", "basis": "legitimate_interests", '
                '"fields": {"customer_id": {"tokenize": {"domain": "customer"}}, "amount_minor": "keep", '
                '"currency": "keep"}}}')
    path = tmp_path / "orders.proto"
    path.write_text(ORDERS_PROTO.read_text().replace(
        '"schema_id": "registry", "sanitized_schema_id": "registry"',
        f'"schema_id": {RAW_ID}, "sanitized_schema_id": {SANITIZED_ID}, {purposes}'))
    plan = compile_plan(load_schema_file(path))
    keyring = Keyring.open(tmp_path / "k.json")
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    message = producer_message(orders, order_id="o-1", customer_id="c-1", email=CANARY["email"], amount_minor=7,
                               currency=2)
    result = pipeline.process([RawEvent("orders.raw", 0, 0, 0, None, framed(RAW_ID, message), None)])
    (view,) = [r for r in result.records if r.topic == "orders.analytics"]
    assert CANARY["email"].encode() not in view.value
    record = orjson.loads(view.value)  # a view without a registry id of its own is published as JSON
    assert record["amount_minor"] == 7 and record["currency"] == "USD" and record["customer_id"].startswith("tok_v")
    assert set(record) == {"customer_id", "amount_minor", "currency"}


def test_the_example_policy_lints_with_only_its_deliberate_warning() -> None:
    problems = lint_directory(ORDERS_PROTO.parent)
    assert [(p.severity, p.where) for p in problems] == [("warning", "user_agent")]


def test_enums_of_different_messages_may_share_value_names_in_the_sanitized_proto(tmp_path: Path) -> None:
    """Enum values are scoped to the enclosing message: the sanitized file keeps each enum in its
    message's counterpart, so a valid raw file never gives an invalid sanitized one."""
    path = tmp_path / "r.proto"
    path.write_text('syntax = "proto3";\npackage p;\nimport "gateway/privacy.proto";\nmessage R {\n'
                    "  option (gateway.record_privacy) = '{\"source_topic\": \"a\", \"sanitized_topic\": \"b\", "
                    "\"schema_id\": 1, \"sanitized_schema_id\": 2}';\n"
                    "  enum Kind { UNKNOWN = 0; A = 1; }\n"
                    '  Kind kind = 1 [(gateway.privacy) = "keep"];\n  S s = 2 [(gateway.privacy) = "keep"];\n}\n'
                    'message S {\n  enum Mode { UNKNOWN = 0; B = 1; }\n'
                    '  Mode mode = 1 [(gateway.privacy) = "keep"];\n}\n')
    plan = compile_plan(load_schema_file(path))
    codec = codec_for(SchemaFormat.PROTOBUF)
    text = codec.sanitized_schema(plan.schema, plan.sanitized_schema)
    (tmp_path / "sanitized").mkdir()
    (tmp_path / "sanitized" / "r.proto").write_text(text)
    assert compile_proto(tmp_path / "sanitized" / "r.proto").file[-1].package == "p.sanitized"
    payload = codec.encoder(plan.schema, plan.sanitized_schema)({"kind": "A", "s": {"mode": "B"}})
    assert codec.reader(plan.schema, plan.sanitized_schema)(payload) == {"kind": "A", "s": {"mode": "B"}}
