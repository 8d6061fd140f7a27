"""gateway.integrations: sanitized records made by the real pipeline, decoded and opened as a
stream processor would, against the raw events they came from (no broker)."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.writer import avro_bytes
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.embedded.samples import SampleEvents
from gateway.integrations.common import Decoded, SanitizedReader, UndecodableRecord, header_dict
from gateway.keys.keyring import Keyring
from gateway.outputs import OutRecord
from gateway.settings import GatewayConfig
from tests.unit.conftest import SCHEMAS

ENCRYPTED = ("customer_name", "card_number", "card_expiry", "billing_address.street")
GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def _get(record: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        record = record[part]
    return record


@pytest.fixture
def published(tmp_path: Path) -> tuple[list[dict[str, Any]], list[OutRecord], Path, Plan]:
    """Six raw payments (bare Avro, Confluent-framed, JSON) through the pipeline; returns the raw
    events, their sanitized records, the keyring and the payments plan."""
    keyring_path = tmp_path / "keyring.json"
    plans = load_plans(SCHEMAS)
    plan = next(p for p in plans if p.name.endswith(".Payment"))
    ring = Keyring.open(keyring_path)
    pipeline = Pipeline(plans, ring, GatewayConfig(keyring=keyring_path, instance_id="unit"), audit_partitions=1,
                        tokenizers=tokenizers(ring, plans))
    samples = SampleEvents(seed=5)
    raws, events = [], []
    for i in range(6):
        raw = samples.payment()
        if i == 0:
            raw["card_expiry"] = None  # a null encrypted field stays null and is not reported
        bare = avro_bytes(plan.schema.parsed, raw)
        value = (bare, frame_confluent(plan.schema_id or 1, bare), orjson.dumps(raw))[i % 3]
        raws.append(raw)
        events.append(RawEvent(plan.source_topic, 0, i, 1_790_000_000_000, None, value, None))
    sanitized = [r for r in pipeline.process(events).records if r.topic == plan.sanitized_topic]
    assert len(sanitized) == 6
    assert [dict(r.headers or [])["gateway-encoding"] for r in sanitized] == [b"avro", b"confluent", b"json"] * 2
    return raws, sanitized, keyring_path, plan


def _assert_kept(raw: dict[str, Any], decoded: Decoded) -> None:
    value = decoded.value
    for name in ("event_id", "occurred_at", "amount_minor", "currency", "country", "merchant"):
        assert value[name] == raw[name], name
    assert value["billing_address"]["city"] == raw["billing_address"]["city"]
    assert value["user_id"].startswith("tok_v") and value["user_id"] != raw["user_id"]
    assert "ip_address" not in value and "user_agent" not in value
    assert decoded.schema == "example.payments.sanitized.Payment"


def test_every_encoding_decodes_by_its_headers_and_opens_with_the_keyring(published: Any) -> None:
    raws, sanitized, keyring, plan = published
    reader = SanitizedReader(SCHEMAS, keyring)
    assert reader.holds_keys
    for raw, record in zip(raws, sanitized, strict=True):
        decoded = reader.decode(record.topic, record.value, record.headers)
        _assert_kept(raw, decoded)
        present = [p for p in ENCRYPTED if _get(raw, p) is not None]
        assert dict(decoded.fields) == dict.fromkeys(present, "decrypted")
        assert decoded.opened
        for path in present:
            assert _get(decoded.value, path) == _get(raw, path), path
    assert "card_expiry" not in reader.decode(sanitized[0].topic, sanitized[0].value, sanitized[0].headers).fields


def test_without_keys_every_ciphertext_stays_closed_and_is_reported(published: Any) -> None:
    raws, sanitized, _, _ = published
    reader = SanitizedReader(SCHEMAS)
    assert not reader.holds_keys
    for raw, record in zip(raws, sanitized, strict=True):
        decoded = reader.decode(record.topic, record.value, dict(record.headers or []))
        _assert_kept(raw, decoded)
        present = [p for p in ENCRYPTED if _get(raw, p) is not None]
        assert sorted(decoded.fields) == sorted(present)
        assert {decoded.reason(p) for p in present} == {"key_not_held"}
        assert not decoded.opened
        closed = decoded.value["customer_name"]  # the ciphertext as the record carries it
        assert isinstance(closed, str if dict(record.headers or [])["gateway-encoding"] == b"json" else bytes)
        assert raw["customer_name"].encode() not in (closed if isinstance(closed, bytes) else closed.encode())


def test_another_keyring_opens_nothing_and_a_tampered_field_alone_fails(published: Any, tmp_path: Path) -> None:
    raws, sanitized, keyring, plan = published
    other = tmp_path / "other.json"
    Keyring.open(other)
    record = sanitized[0]  # bare Avro
    decoded = SanitizedReader(SCHEMAS, other).decode(record.topic, record.value, record.headers)
    assert {decoded.reason(p) for p in decoded.fields} == {"key_not_held"}

    parsed = fastavro.parse_schema(plan.sanitized_schema)
    value = fastavro.schemaless_reader(io.BytesIO(record.value or b""), parsed, None)
    value["customer_name"] = value["customer_name"][:-1] + bytes([value["customer_name"][-1] ^ 1])
    tampered = avro_bytes(parsed, value)
    decoded = SanitizedReader(SCHEMAS, keyring).decode(record.topic, tampered, record.headers)
    assert decoded.reason("customer_name") == "tampered"
    assert decoded.value["customer_name"] == value["customer_name"]  # keeps its ciphertext
    assert decoded.reason("card_number") == "decrypted" and decoded.value["card_number"] == raws[0]["card_number"]


def test_without_headers_the_value_alone_decodes_the_same(published: Any, tmp_path: Path) -> None:
    raws, sanitized, keyring, plan = published
    reader = SanitizedReader(SCHEMAS, keyring)
    only_payments = tmp_path / "schemas"
    only_payments.mkdir()
    (only_payments / "payments.avsc").write_bytes((SCHEMAS / "payments.avsc").read_bytes())
    single = SanitizedReader(only_payments, keyring)
    for record in sanitized:
        with_headers = reader.decode(record.topic, record.value, record.headers)
        assert reader.decode_value(record.value, plan.sanitized_topic) == with_headers
        assert single.decode_value(record.value) == with_headers  # one policy: no topic needed
        assert reader.decode(record.topic, record.value, None) == with_headers
    with pytest.raises(UndecodableRecord, match="known schemas: .*ClinicalVisit.*Payment"):
        reader.decode_value(sanitized[0].value)
    with pytest.raises(UndecodableRecord, match="neither a JSON object nor Avro"):
        single.decode_value(b"\x01\x02not a record")


def test_bad_records_fail_naming_the_topic_never_the_value(published: Any) -> None:
    _, sanitized, keyring, plan = published
    reader = SanitizedReader(SCHEMAS, keyring)
    headers = sanitized[0].headers
    with pytest.raises(UndecodableRecord, match=r"does not decode as example\.payments\.sanitized\.Payment") as info:
        reader.decode(plan.sanitized_topic, b"\x06abc", headers)
    assert "abc" not in str(info.value)
    with pytest.raises(UndecodableRecord, match="tombstone"):
        reader.decode(plan.sanitized_topic, None, headers)
    with pytest.raises(UndecodableRecord, match="not an object"):
        reader.decode(plan.sanitized_topic, b"[1, 2]", {"gateway-encoding": "json"})
    with pytest.raises(ValueError, match="not both"):
        SanitizedReader(SCHEMAS, keyring, decryptor=reader.decryptor)


def test_headers_in_every_shape_clients_give_them() -> None:
    expected = {"gateway-schema": b"s", "gateway-encoding": b"json"}
    assert header_dict([("gateway-schema", b"s"), ("gateway-encoding", b"json"), ("x", None)]) == expected
    assert header_dict({"gateway-schema": "s", "gateway-encoding": b"json"}) == expected
    assert header_dict((("gateway-schema", bytearray(b"s")), ("gateway-encoding", "json"))) == expected
    assert header_dict(None) == {}
    assert header_dict([("a", b"1"), ("a", b"2")]) == {"a": b"1"}  # the first of repeated headers


def test_as_dict_carries_the_status_beside_the_value() -> None:
    decoded = Decoded("s.P", {"a": 1}, {"f": "decrypted", "g": "tampered: moved"})
    assert decoded.as_dict() == {"a": 1, "_gateway": {"schema": "s.P", "fields": {"f": "decrypted",
                                                                                  "g": "tampered: moved"}}}
    assert (decoded.reason("g"), decoded.reason("nope"), decoded.opened) == ("tampered", None, False)


def test_the_gateway_itself_never_imports_a_stream_processor() -> None:
    offenders = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if path == GATEWAY / "integrations" / "faust.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(GATEWAY)}: {n}" for n in names
                          if n.split(".")[0] in {"faust", "quixstreams", "aiokafka", "mode"}]
    assert not offenders
    probe = ("import sys, gateway.integrations.common; "
             "print(sorted(m for m in ('faust', 'quixstreams', 'aiokafka', 'confluent_kafka') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_faust_hooks_decode_by_headers_and_from_bytes(published: Any) -> None:
    faust = pytest.importorskip("faust")  # the `faust` extra
    from faust.exceptions import ValueDecodeError
    from faust.serializers import codecs
    from faust.types.tuples import Message

    from gateway.integrations.faust import GatewaySchema, register_codec

    raws, sanitized, keyring, plan = published

    class Payment(faust.Record):
        event_id: str
        country: str
        customer_name: Any

    schema = GatewaySchema(SCHEMAS, keyring, record=Payment)
    for raw, record in zip(raws, sanitized, strict=True):
        message = Message(record.topic, 0, 0, 0.0, 0, list(record.headers or []), record.key, record.value, None)
        decoded = schema.loads_value(None, message)
        assert isinstance(decoded.value, Payment)
        assert (decoded.value.country, decoded.value.customer_name) == (raw["country"], raw["customer_name"])
        assert decoded.value.amount_minor == raw["amount_minor"]  # undeclared fields are kept
        assert decoded.reason("card_number") == "decrypted"
    with pytest.raises(ValueDecodeError, match="tombstone"):
        schema.loads_value(None, Message(plan.sanitized_topic, 0, 0, 0.0, 0, [], None, None, None))
    with pytest.raises(TypeError, match="only reads"):
        schema.dumps_value(None, decoded, headers=None)

    register_codec(SCHEMAS, keyring, topic=plan.sanitized_topic)
    for raw, record in zip(raws, sanitized, strict=True):
        value = codecs.loads("gateway", record.value)
        assert value["customer_name"] == raw["customer_name"]
        assert value["_gateway"]["fields"]["customer_name"] == "decrypted"

