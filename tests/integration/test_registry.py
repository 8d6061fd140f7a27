"""Schema ids from a real Schema Registry (Apicurio, Confluent API) instead of the policy.

A producer using confluent-kafka's own AvroSerializer registers the raw schema and frames events
with the id it got; a worker whose policy says "schema_id": "registry" decodes them, registers the
sanitized schema under `<sanitized topic>-value` and frames its output with that id, which
confluent-kafka's AvroDeserializer reads back. A policy change that would break the sanitized
topic's consumers (a field added without a default, under BACKWARD compatibility) stops a worker at
start-up, naming the subject; nothing is published under it.
"""

from __future__ import annotations

import shutil
import struct

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from gateway.embedded.samples import SampleEvents

from .conftest import Deployment, cli

_MISSING = [tool for tool in ("java", "mvn", "javac") if shutil.which(tool) is None]
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(_MISSING), reason=f"the Schema Registry needs {', '.join(_MISSING)}")]
COUNT = 30


def _policy(d: Deployment, **field_actions: str) -> dict:
    path = d.schemas / "payments.avsc"
    schema = orjson.loads(path.read_bytes())
    schema["privacy"].update(schema_id="registry", sanitized_schema_id="registry", input="confluent",
                             output="confluent")
    for field in schema["fields"]:
        if field["name"] in field_actions:
            field["privacy"] = field_actions[field["name"]]
    path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    return schema


def test_ids_come_from_the_registry_and_an_incompatible_policy_stops_the_worker(fresh_deployment: Deployment,
                                                                              registry_url: str) -> None:
    d = fresh_deployment
    (d.schemas / "clinical_visits.avsc").unlink()
    schema = _policy(d)
    source, sanitized = schema["privacy"]["source_topic"], schema["privacy"]["sanitized_topic"]
    client = SchemaRegistryClient({"url": registry_url})
    # the producer's side: its own serializer registers the raw schema (the policy's, annotations and all)
    serializer = AvroSerializer(client, orjson.dumps(schema).decode())
    samples = SampleEvents(seed=5)
    records = [samples.payment() for _ in range(COUNT)]
    producer = Producer({"bootstrap.servers": d.bootstrap})
    for record in records:
        producer.produce(source, serializer(record, SerializationContext(source, MessageField.VALUE)))
    assert producer.flush(30) == 0
    raw_id = client.get_latest_version(f"{source}-value").schema_id

    worker = d.start_worker("registry", extra=("--schema-registry-url", registry_url))
    try:
        audit = d.wait_for_audit(COUNT)
    finally:
        assert worker.stop() == 0
    assert [a["outcome"] for a in audit] == ["sanitized"] * COUNT
    sanitized_version = client.get_latest_version(f"{sanitized}-value")
    out = d.read(sanitized)
    assert len(out) == COUNT
    for r in out:  # Confluent framing: magic byte, then the id the registry gave the sanitized schema
        assert r.value[0] == 0 and struct.unpack(">I", r.value[1:5])[0] == sanitized_version.schema_id
    assert sanitized_version.schema_id != raw_id
    deserializer = AvroDeserializer(client)
    decoded = [deserializer(r.value, SerializationContext(sanitized, MessageField.VALUE)) for r in out]
    by_id = {x["event_id"]: x for x in decoded}
    for record in records:
        assert by_id[record["event_id"]]["amount_minor"] == record["amount_minor"]
        assert by_id[record["event_id"]]["card_number"] != record["card_number"]  # encrypted
        assert "ip_address" not in by_id[record["event_id"]]

    # consumers of the sanitized topic rely on BACKWARD compatibility; a kept ip_address would add
    # a field without a default, which they could not read old records with
    client.set_compatibility(f"{sanitized}-value", "BACKWARD")
    _policy(d, ip_address="keep")
    refused = cli("run", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas), "--keyring", str(d.keyring),
                  "--group-id", d.group_id, "--audit-topic", d.audit_topic, "--schema-registry-url",
                  registry_url, timeout=60)
    message = refused.stderr.decode()
    assert refused.returncode == 2, message
    assert f"'{sanitized}-value'" in message and "not compatible" in message
    assert len(client.get_versions(f"{sanitized}-value")) == 1  # nothing registered for it
