"""Protobuf producers and consumers against the gateway, on the broker with the embedded registry.

Producers use confluent-kafka's own ProtobufSerializer (message classes built from the policy's
.proto, as generated code would be): it registers the raw schema (a base64 FileDescriptorProto,
with gateway/privacy.proto as a reference) and frames events with its id and the message indexes.
The worker, whose policy says "schema_id": "registry", decodes them, registers the sanitized .proto
under `<sanitized topic>-value` (schemaType PROTOBUF) and frames its output likewise; a consumer
reads it with ProtobufDeserializer and a class compiled from the registered sanitized schema, and
`gateway decrypt` opens the ciphertexts with the keyring. Canaries prove no plaintext of an
encrypted, tokenized or dropped field reaches the sanitized topic or the dead letters. Bad input
is dead-lettered with its reason; a newer producer's field is dropped, a removed field reads as
absent (that version registered after the worker started, so its id is looked up when first met).
"""

from __future__ import annotations

import base64
import shutil
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer, ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pool, message_factory, timestamp_pb2

from gateway.core.codec.protobuf import ProtoDecoder, load_proto, registered_file
from gateway.core.codec.raw import decoded_for_json

from .conftest import Deployment, cli

ORDERS_PROTO = Path(__file__).resolve().parents[2] / "examples" / "schemas" / "protobuf" / "orders.proto"
_MISSING = [tool for tool in ("java", "mvn", "javac") if shutil.which(tool) is None]
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(_MISSING), reason=f"the Schema Registry needs {', '.join(_MISSING)}")]
COUNT = 12
CANARIES = {"email": "canary-mail-{}@example.org", "card_number": "4000-0566-5566-{:04d}",
            "phone": "+47 9999 {:04d}", "ip_address": "198.51.100.{}", "user_agent": "CanaryBrowser/{}",
            "street": "{} Canary Street", "customer_id": "canary-customer-{}", "referrer": "canary-ref-{}"}


def _schemas(d: Deployment) -> tuple[Path, str, str]:
    """The deployment's schemas directory holding only the orders policy, its topics made unique."""
    for path in d.schemas.glob("*.avsc"):
        path.unlink()
    text = ORDERS_PROTO.read_text().replace('"orders.raw"', f'"orders.raw.{d.suffix}"').replace(
        '"orders.sanitized"', f'"orders.sanitized.{d.suffix}"')
    (d.schemas / "orders.proto").write_text(text)
    return d.schemas / "orders.proto", f"orders.raw.{d.suffix}", f"orders.sanitized.{d.suffix}"


def _version(path: Path, tmp: Path, name: str, old: str, new: str) -> Any:
    """The Order class of another producer version of the .proto (one edit away from the policy's)."""
    text = path.read_text()
    assert old in text
    edited = tmp / name / "orders.proto"
    edited.parent.mkdir()
    edited.write_text(text.replace(old, new))
    return message_factory.GetMessageClass(load_proto(edited).root)


def _order(cls: Any, i: int, **extra: Any) -> Any:
    message = cls(order_id=f"o-{i}", customer_id=CANARIES["customer_id"].format(i),
                  email=CANARIES["email"].format(i), card_number=CANARIES["card_number"].format(i),
                  ip_address=CANARIES["ip_address"].format(i), user_agent=CANARIES["user_agent"].format(i),
                  amount_minor=100 + i, currency=1, loyalty_points=i, **extra)
    if "phone" in cls.DESCRIPTOR.fields_by_name:
        message.phone = CANARIES["phone"].format(i)
    message.placed_at.FromMicroseconds(1_790_000_000_000_000 + i)
    message.shipping.street = CANARIES["street"].format(i)
    message.shipping.postal_code = "0150"
    message.shipping.city = "Oslo"
    message.items.add(sku=f"sku-{i}", quantity=i % 3 + 1)
    message.attributes["channel"] = "web"
    return message


def _sanitized_class(text: str) -> Any:
    """The consumer's class for the registered sanitized schema (what protoc would generate from it)."""
    file = registered_file(text, "sanitized schema")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{file.package}.{file.message_type[0].name}"))


def test_protobuf_producers_and_consumers_through_the_gateway(fresh_deployment: Deployment, registry_url: str,
                                                              tmp_path: Path) -> None:
    d = fresh_deployment
    policy_path, source, sanitized = _schemas(d)
    client = SchemaRegistryClient({"url": registry_url})
    ctx = SerializationContext(source, MessageField.VALUE)
    v1 = message_factory.GetMessageClass(load_proto(policy_path).root)
    v2 = _version(policy_path, tmp_path, "v2", "uint64 loyalty_points = 14",  # a newer producer: one more field
                  "uint64 loyalty_points = 14;\n  string referrer = 15")
    v3 = _version(policy_path, tmp_path, "v3", 'optional string phone = 6 [(gateway.privacy) = "encrypt"]',
                  "reserved 6")  # phone removed
    conf = {"use.deprecated.format": False}
    values: list[bytes] = []
    serializer = ProtobufSerializer(v1, client, conf)
    values += [serializer(_order(v1, i), ctx) for i in range(COUNT)]
    raw_id = client.get_latest_version(f"{source}-value").schema_id
    newer = ProtobufSerializer(v2, client, conf)
    values += [newer(_order(v2, 100 + i, referrer=CANARIES["referrer"].format(i)), ctx) for i in range(3)]
    assert len({struct.unpack(">I", v[1:5])[0] for v in values}) == 2  # two versions before the worker starts
    assert values[0][5] == 0  # message index [0]: the single byte 0
    payload = _order(v1, 999).SerializeToString()
    header = b"\x00" + struct.pack(">I", raw_id)
    bad = {
        "protobuf_unknown_message_index": header + b"\x02\x02" + payload,  # [1]: the file's second message
        "unknown_schema_id": b"\x00" + struct.pack(">I", 987_654) + b"\x00" + payload,
        "protobuf_truncated": header + b"\x00" + payload[:-1],  # inside loyalty_points' varint
        "protobuf_wrong_wire_type": header + b"\x00\x49" + b"\x00" * 8,  # amount_minor (a varint) as fixed64
        "bad_framing": b"\x00\x00\x00",
    }
    d.produce(source, values + list(bad.values()), partition=0)

    worker = d.start_worker("proto", extra=("--schema-registry-url", registry_url))
    try:
        d.wait_for_audit(len(values) + len(bad))
        # a producer upgraded while the worker runs: its version is registered after start-up, looked up
        # when its id is first met
        removed = ProtobufSerializer(v3, client, conf)
        later = [removed(_order(v3, 200 + i), ctx) for i in range(3)]
        d.produce(source, later, partition=0)
        values += later
        audit = d.wait_for_audit(len(values) + len(bad))
    finally:
        assert worker.stop() == 0
    good = len(values)
    assert len({struct.unpack(">I", v[1:5])[0] for v in values}) == 3
    outcomes = [a["outcome"] for a in audit]
    assert outcomes.count("sanitized") == good, outcomes
    assert sorted(o for o in outcomes if o != "sanitized") == sorted(f"rejected:{r}" for r in bad)

    # dead letters: one per bad event, its reason, no value of the event in the clear
    dead = [orjson.loads(r.value) for r in d.read(f"{source}.dlq")]
    assert sorted(x["reason"] for x in dead) == sorted(bad)
    dlq_bytes = b"".join(r.value for r in d.read(f"{source}.dlq"))
    assert b"canary" not in dlq_bytes.lower()
    # nor in the audit or the worker's log
    assert b"canary" not in b"".join(r.value for r in d.read(d.audit_topic)).lower()
    assert b"canary" not in (d.root / "worker-proto.log").read_bytes().lower()

    # the sanitized topic: Protobuf framed with the registered sanitized schema's id, nothing in the clear
    registered = client.get_latest_version(f"{sanitized}-value")
    assert registered.schema.schema_type == "PROTOBUF"
    assert "bytes card_number = 5;" in registered.schema.schema_str
    out = d.read(sanitized)
    assert len(out) == good
    for record in out:
        assert record.value[:6] == b"\x00" + struct.pack(">I", registered.schema_id) + b"\x00"
        assert b"canary" not in record.value.lower()
        assert dict(record.headers or [])["gateway-encoding"] == b"protobuf"
    deserializer = ProtobufDeserializer(_sanitized_class(registered.schema.schema_str), conf)
    messages = [deserializer(r.value, SerializationContext(sanitized, MessageField.VALUE)) for r in out]
    by_id = {m.order_id: m for m in messages}
    assert by_id["o-3"].amount_minor == 103 and by_id["o-3"].shipping.city == "Oslo"
    assert by_id["o-3"].email.startswith("tok_v") and by_id["o-3"].card_number
    assert by_id["o-3"].placed_at.ToMicroseconds() == 1_790_000_000_000_003
    assert "referrer" not in type(by_id["o-100"]).DESCRIPTOR.fields_by_name  # the newer field: dropped
    assert not by_id["o-200"].HasField("phone")  # the removed field: absent, not invented
    dropped = [a for a in audit if "referrer" in (a.get("actions") or {})]  # audited as not in the policy
    assert len(dropped) == 3 and {a["actions"]["referrer"] for a in dropped} == {"drop:not_in_policy"}

    # gateway dump reads the sanitized topic (the format's sanitized reader)
    dumped = cli("dump", "--bootstrap", d.bootstrap, "--topic", sanitized, "--schemas", str(d.schemas))
    assert dumped.returncode == 0, dumped.stderr.decode()
    rows = [orjson.loads(line) for line in dumped.stdout.splitlines()]
    assert sorted(r["order_id"] for r in rows) == sorted(m.order_id for m in messages)
    assert b"canary" not in dumped.stdout.lower()

    # decrypting with the keyring gives the producers' plaintext back
    decode = ProtoDecoder(type(messages[0]).DESCRIPTOR).decode
    lines = b"".join(orjson.dumps(decoded_for_json(decode(m.SerializeToString())[0])) + b"\n" for m in messages)
    opened = cli("decrypt", "--keyring", str(d.keyring), "--schemas", str(d.schemas), "--topic", sanitized,
                 stdin=lines)
    assert opened.returncode == 0, opened.stderr.decode()
    plain = {r["order_id"]: r for r in map(orjson.loads, opened.stdout.splitlines())}
    assert plain["o-3"]["card_number"] == CANARIES["card_number"].format(3)
    assert plain["o-3"]["phone"] == CANARIES["phone"].format(3)
    assert plain["o-3"]["shipping"]["street"] == CANARIES["street"].format(3)
    assert base64.b64decode(orjson.loads(lines.splitlines()[0])["card_number"])  # base64 of the ciphertext

    # a policy change that gives a published field number another type (card_number kept in the clear:
    # bytes -> string) would break the sanitized topic's consumers: the worker refuses to start
    policy_path.write_text(policy_path.read_text().replace('string card_number = 5 [(gateway.privacy) = "encrypt"]',
                                                           'string card_number = 5 [(gateway.privacy) = "keep"]'))
    refused = cli("run", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas), "--keyring", str(d.keyring),
                  "--group-id", d.group_id, "--audit-topic", d.audit_topic, "--schema-registry-url", registry_url,
                  timeout=60)
    message = refused.stderr.decode()
    assert refused.returncode == 2, message
    assert f"'{sanitized}-value'" in message and "'card_number' (number 5) changes type from bytes to string" in message
    assert len(client.get_versions(f"{sanitized}-value")) == 1  # nothing registered for it
