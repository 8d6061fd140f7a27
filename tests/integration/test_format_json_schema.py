"""JSON Schema producers on the broker with a real Schema Registry (Apicurio, Confluent API).

Producers use confluent-kafka's own JSONSerializer with the policy's schema (its `privacy` keywords and
all); the worker decodes the Confluent-framed JSON, validates it against the registered schema of its id,
sanitizes it with the same operators as Avro, registers the derived sanitized JSON Schema under
`<sanitized topic>-value` and frames its output with that id, which confluent-kafka's JSONDeserializer
reads back (validating it); the keyring opens the encrypted fields. A producer version that adds a field
(registered before the worker starts) has it dropped and audited as such; one that removes an optional
field (registered while the worker runs) is read too. Bad input is dead-lettered with a reason each,
every event audited once, and no plaintext of an encrypted or tokenized field is anywhere.
"""

from __future__ import annotations

import copy
import shutil
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.json_schema import JSONDeserializer, JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.evolution import UNANNOTATED_ACTION
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.keys.envelope import FieldDecryptor
from gateway.keys.keyring import Keyring

from .conftest import Deployment, cli

_MISSING = [tool for tool in ("java", "mvn", "javac") if shutil.which(tool) is None]
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(_MISSING), reason=f"the Schema Registry needs {', '.join(_MISSING)}")]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "schemas" / "json" / "signups.schema.json"
NAME, EMAIL, PHONE, USER = "Zebulon Canaryfield", "zebulon.canary@example.org", "+447700900123", "user-zebulon-77"
LOYALTY = "LOYAL-CANARY-5150"  # the field a newer producer adds: dropped, so never published
STREET = "1 Canary Wharf"


def _policy(d: Deployment) -> dict[str, Any]:
    for avro in d.schemas.glob("*.avsc"):  # this deployment sanitizes the JSON Schema topic only
        avro.unlink()
    document = orjson.loads(EXAMPLE.read_bytes())
    privacy = document["privacy"]
    privacy["source_topic"] += f".{d.suffix}"
    privacy["sanitized_topic"] += f".{d.suffix}"
    (d.schemas / "signups.schema.json").write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    return document


def _event(i: int, version: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "signup_id": f"s-{version}-{i}", "user_id": f"{USER}-{i}", "email": EMAIL, "full_name": f"{NAME} {i}",
        "phone": PHONE, "age": 20 + i, "country": "GB", "plan": "pro",
        "address": {"street": STREET, "city": "London", "postcode": "E14 5AB"},
        "referrer_url": "https://example.org/?ref=zebulon", "marketing_opt_in": i % 2 == 0}
    if version == 2:
        event["loyalty_id"] = LOYALTY
    if version == 3:
        del event["phone"]
    return event


def test_json_schema_producers_to_json_schema_consumers_with_evolution_and_dead_letters(
        fresh_deployment: Deployment, registry_url: str) -> None:
    d = fresh_deployment
    v1 = _policy(d)
    source, sanitized = v1["privacy"]["source_topic"], v1["privacy"]["sanitized_topic"]
    v2 = copy.deepcopy(v1)  # a producer adds a field the policy does not name
    v2["properties"]["loyalty_id"] = {"type": "string"}
    v3 = copy.deepcopy(v1)  # ... another removes an optional one
    del v3["properties"]["phone"]
    client = SchemaRegistryClient({"url": registry_url})
    serializers = {n: JSONSerializer(orjson.dumps(v).decode(), client) for n, v in ((1, v1), (2, v2), (3, v3))}
    context = SerializationContext(source, MessageField.VALUE)
    producer = Producer({"bootstrap.servers": d.bootstrap, "enable.idempotence": True})
    produced: dict[str, int] = {}  # signup id -> writer version

    def produce(versions: list[int]) -> None:
        for version in versions:
            event = _event(len(produced), version)
            produced[event["signup_id"]] = version
            producer.produce(source, serializers[version](event, context), partition=len(produced) % 3)
        assert producer.flush(30) == 0

    produce([1, 2] * 6)  # v1 and v2 are registered before the worker starts
    raw_id = client.get_version(f"{source}-value", 1).schema_id
    bad = {  # what a broken producer may write: each a dead letter with its reason
        "json_schema_violation": frame_confluent(raw_id, orjson.dumps({**_event(99, 1), "age": NAME})),
        "bad_framing": b"\x00\x00\x01",
        "bad_magic_byte": b"\x07" + frame_confluent(raw_id, orjson.dumps(_event(98, 1)))[1:],
        "unknown_schema_id": frame_confluent(987_654, orjson.dumps(_event(97, 1))),
        "json_invalid": frame_confluent(raw_id, b'{"full_name": "' + NAME.encode()),
    }
    worker = d.start_worker("json-schema", extra=("--schema-registry-url", registry_url))
    try:
        produce([3, 1, 2] * 3)  # v3 is registered now: the worker meets its id mid-stream
        d.produce(source, list(bad.values()), partition=0)
        audit = d.wait_for_audit(len(produced) + len(bad))
    finally:
        assert worker.stop() == 0
    assert "a new writer schema from the registry" in worker.log()

    # every event audited once: the good ones sanitized, each bad one dead-lettered with its reason
    assert len(audit) == len(produced) + len(bad)
    outcomes = Counter(a["outcome"] for a in audit)
    assert outcomes == Counter({"sanitized": len(produced), **{f"rejected:{r}": 1 for r in bad}}), outcomes
    dead = [orjson.loads(r.value or b"") for r in d.read(f"{source}.dlq")]
    assert sorted(x["reason"] for x in dead) == sorted(bad)
    violation = next(x for x in dead if x["reason"] == "json_schema_violation")
    assert "at $.age: 'type' \"integer\"" in violation["message"]
    by_event = {a["event"]["event_id"]: a for a in audit if a["outcome"] == "sanitized"}
    for signup_id, version in produced.items():  # v2's new field: dropped, and the audit says so
        assert (by_event[signup_id]["actions"].get("loyalty_id") == UNANNOTATED_ACTION) == (version == 2)

    # the sanitized topic: framed with the id of the registered sanitized JSON Schema, read by JSONDeserializer
    versions = client.get_versions(f"{sanitized}-value")
    assert len(versions) == 1
    registered = client.get_version(f"{sanitized}-value", versions[0])
    assert registered.schema.schema_type == "JSON"
    sanitized_schema = orjson.loads(registered.schema.schema_str)
    assert sanitized_schema["properties"]["full_name"]["contentEncoding"] == "base64"
    assert "referrer_url" not in sanitized_schema["properties"] and "street" not in str(sanitized_schema)
    records = d.read(sanitized)
    assert len(records) == len(produced)
    deserializer = JSONDeserializer(None, schema_registry_client=client)
    (plan,) = load_plans(d.schemas)
    decryptor = FieldDecryptor(Keyring.open(d.keyring))
    seen = set()
    for r in records:
        value = r.value or b""
        assert value[0] == 0 and struct.unpack(">I", value[1:5])[0] == registered.schema_id
        assert r.headers["gateway-encoding"] == b"json_schema"
        decoded = deserializer(value, SerializationContext(sanitized, MessageField.VALUE))
        version = produced[decoded["signup_id"]]
        seen.add(decoded["signup_id"])
        assert "loyalty_id" not in decoded and "referrer_url" not in decoded and "street" not in decoded["address"]
        assert decoded["email"].startswith("tok_v") and decoded["user_id"].startswith("tok_v")
        opened, report = decrypt_record(decoded, plan, decryptor, r.headers.get("gateway-source"))
        assert report.ok, report.fields
        assert opened["full_name"].startswith(NAME)
        assert opened["phone"] == (None if version == 3 else PHONE)
    assert seen == set(produced)
    dumped = cli("dump", "--bootstrap", d.bootstrap, "--topic", sanitized)  # no schema needed for JSON
    assert dumped.returncode == 0, dumped.stderr.decode()
    lines = [orjson.loads(line) for line in dumped.stdout.splitlines()]
    assert sorted(x["signup_id"] for x in lines) == sorted(produced) and not dumped.stderr

    # no plaintext of an encrypted, tokenized or dropped field anywhere the gateway writes
    canaries = [NAME, EMAIL, PHONE, USER, LOYALTY, STREET, "zebulon"]
    for topic in (sanitized, d.audit_topic, f"{source}.dlq"):
        for r in d.read(topic):
            for canary in canaries:
                assert canary.encode() not in (r.value or b""), (topic, canary)
                assert all(canary.encode() not in v for _, v in (r.headers or {}).items()), (topic, canary)
    log = worker.log()
    assert not [c for c in canaries if c in log]

    # a policy change that would break the sanitized topic's consumers (age published as a number, not its
    # band) stops a worker at start-up, naming the subject; nothing is registered under it
    policy = orjson.loads((d.schemas / "signups.schema.json").read_bytes())
    policy["properties"]["age"]["privacy"] = "keep"
    (d.schemas / "signups.schema.json").write_bytes(orjson.dumps(policy))
    refused = cli("run", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas), "--keyring", str(d.keyring),
                  "--group-id", d.group_id, "--audit-topic", d.audit_topic, "--schema-registry-url",
                  registry_url, timeout=60)
    message = refused.stderr.decode()
    assert refused.returncode == 2, message
    assert f"'{sanitized}-value'" in message and "$.age is string in the records, integer for the reader" in message
    assert len(client.get_versions(f"{sanitized}-value")) == 1
