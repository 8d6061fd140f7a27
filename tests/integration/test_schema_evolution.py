"""Schema evolution on the real broker and a real registry (Apicurio, Confluent API).

Producers upgrade one by one: a topic holds events of three writer versions interleaved (v2 adds an
optional `coupon`, v3 removes `user_agent`, which the policy gives a default), and v3 is registered
only after the worker started, so its id is looked up when first met. Every valid event is sanitized,
none dead-lettered; `coupon` is dropped, counted and named in the audit until the policy annotates
it, then kept. A policy change that would break the sanitized topic's consumers is refused at start-up
naming the field and the rule; a compatible one registers a new sanitized version. Bare Avro in
single-object encoding resolves by fingerprint, and an unknown fingerprint has its own reason code.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from gateway.core.codec.evolution import UNANNOTATED_ACTION, fingerprint, single_object_header
from gateway.core.codec.raw import strip_logical_types
from gateway.core.codec.writer import avro_bytes
from gateway.core.policy.lint import load_plans
from gateway.embedded.broker import free_port
from gateway.embedded.samples import SampleEvents
from tests.http_get import http_get

from .conftest import Deployment, cli, wait_for

pytestmark = pytest.mark.integration
COUPON = "SPRING-"  # the v2 field's values: never in an output while the policy does not name it


def _write_policy(d: Deployment, schema: dict[str, Any], directory: Path | None = None) -> Path:
    directory = directory or d.schemas
    directory.mkdir(exist_ok=True)
    path = directory / "payments.avsc"
    path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    return directory


def _base_policy(d: Deployment, **privacy: Any) -> dict[str, Any]:
    (d.schemas / "clinical_visits.avsc").unlink(missing_ok=True)
    schema = orjson.loads((d.schemas / "payments.avsc").read_bytes())
    schema["privacy"].pop("aggregates")
    schema["privacy"].pop("budget", None)
    schema["privacy"].update(privacy)
    return schema


def _bare(schema: dict[str, Any]) -> dict[str, Any]:
    """A producer's copy of a schema: the same Avro without the policy."""
    out = copy.deepcopy(schema)
    out.pop("privacy", None)

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("privacy", None)
            node.pop("quality", None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)
    strip(out)
    return out


def _versions(policy: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    v1 = _bare(policy)
    v2 = copy.deepcopy(v1)
    v2["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None})
    v3 = copy.deepcopy(v1)
    v3["fields"] = [f for f in v3["fields"] if f["name"] != "user_agent"]
    return v1, v2, v3


def _event(samples: SampleEvents, version: int, n: int) -> dict[str, Any]:
    record = samples.payment()
    record["event_id"] = f"v{version}-{n}"
    if version == 2:
        record["coupon"] = f"{COUPON}{n}"
    if version == 3:
        record.pop("user_agent", None)
    return record


def _unannotated_metric(base: str, topic: str) -> float:
    needle = f'gateway_unannotated_fields_total{{field="coupon",topic="{topic}"}} '
    for line in http_get(f"{base}/metrics")[1].splitlines():
        if line.startswith(needle):
            return float(line.split()[-1])
    return 0.0


def test_three_writer_versions_a_refused_and_a_compatible_policy_change(fresh_deployment: Deployment,
                                                                        registry_url: str) -> None:
    d = fresh_deployment
    policy = _base_policy(d, schema_id="registry", sanitized_schema_id="registry", input="confluent",
                          output="confluent")
    _write_policy(d, policy)
    v1_dir = d.root / "consumer-v1"  # the existing consumer's copy of today's policy
    _write_policy(d, policy, v1_dir)
    source, sanitized = policy["privacy"]["source_topic"], policy["privacy"]["sanitized_topic"]
    client = SchemaRegistryClient({"url": registry_url})
    v1, v2, v3 = _versions(policy)
    serializers = {n: AvroSerializer(client, orjson.dumps(v).decode()) for n, v in ((1, v1), (2, v2), (3, v3))}
    context = SerializationContext(source, MessageField.VALUE)
    samples = SampleEvents(seed=22)
    producer = Producer({"bootstrap.servers": d.bootstrap, "enable.idempotence": True})
    produced: dict[str, int] = {}  # event id -> writer version
    amounts: dict[str, int] = {}

    def produce(versions: list[int]) -> None:
        for version in versions:
            record = _event(samples, version, len(produced))
            produced[record["event_id"]] = version
            amounts[record["event_id"]] = record["amount_minor"]
            producer.produce(source, serializers[version](record, context), partition=len(produced) % 3)
        assert producer.flush(30) == 0

    produce([1, 2] * 8)  # v1 and v2 are registered before the worker starts
    port = free_port()
    worker = d.start_worker("evolve-1", extra=("--schema-registry-url", registry_url, "--metrics-port", str(port)))
    try:
        produce([3, 1, 2] * 6)  # v3 is registered now: the worker meets its id mid-stream
        audit = d.wait_for_audit(len(produced))
        first_phase = len(produced)
        wait_for(lambda: _unannotated_metric(f"http://127.0.0.1:{port}", source) == 14.0,
                 "gateway_unannotated_fields_total for coupon to count the 14 v2 events")
    finally:
        assert worker.stop() == 0
    assert "a new writer schema from the registry" in worker.log()
    assert [a["outcome"] for a in audit] == ["sanitized"] * first_phase, {a["outcome"] for a in audit}
    assert d.read(f"{source}.dlq") == []
    by_event = {a["event"]["event_id"]: a for a in audit}
    for event_id, version in produced.items():
        actions = by_event[event_id]["actions"]
        assert (actions.get("coupon") == UNANNOTATED_ACTION) == (version == 2), (event_id, actions.get("coupon"))
    records = d.read(sanitized)
    assert len(records) == first_phase
    for topic in (sanitized, d.audit_topic, f"{source}.dlq"):
        assert not any(COUPON.encode() in (r.value or b"") for r in d.read(topic)), topic
    assert COUPON not in worker.log()
    deserializer = AvroDeserializer(client)
    decoded = {x["event_id"]: x for x in (deserializer(r.value, SerializationContext(sanitized, MessageField.VALUE))
                                          for r in records)}
    assert set(decoded) == set(produced) and all("coupon" not in x for x in decoded.values())
    assert {e: x["amount_minor"] for e, x in decoded.items()} == amounts  # every version read right
    assert len(client.get_versions(f"{sanitized}-value")) == 1

    # lint against the registry: version 2's coupon is not in the policy
    linted = cli("policy", "lint", str(d.schemas), "--schema-registry-url", registry_url)
    assert linted.returncode == 0, linted.stdout.decode()
    assert "version 2" in linted.stdout.decode() and "field 'coupon' is not in the policy" in linted.stdout.decode()

    # a breaking change: country, kept and required, dropped -> consumers holding version 1 break
    breaking = copy.deepcopy(policy)
    next(f for f in breaking["fields"] if f["name"] == "country")["privacy"] = "drop"
    _write_policy(d, breaking)
    linted = cli("policy", "lint", str(d.schemas), "--schema-registry-url", registry_url)
    assert linted.returncode == 1 and "field 'country'" in linted.stdout.decode()
    refused = d.start_worker("evolve-refused", wait=False, extra=("--schema-registry-url", registry_url))
    assert refused.proc.wait(60) == 2
    refused.handle.close()
    message = refused.log()
    assert "field 'country'" in message and "reader_field_missing_default_value" in message, message[-2000:]
    assert "sanitized_compatibility=full" in message
    assert len(client.get_versions(f"{sanitized}-value")) == 1  # nothing registered, nothing published
    assert len(d.read(sanitized)) == first_phase

    # a compatible change: the policy moves to v2 and keeps coupon (nullable, default null)
    annotated = copy.deepcopy(policy)
    annotated["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None, "privacy": "keep"})
    _write_policy(d, annotated)
    new_hash = next(iter(load_plans(d.schemas))).policy_hash
    worker = d.start_worker("evolve-2", extra=("--schema-registry-url", registry_url))
    try:
        before = len(produced)
        produce([1, 2, 3] * 4)
        audit = d.wait_for_audit(len(produced))
    finally:
        assert worker.stop() == 0
    later = [a for a in audit if a["event"].get("event_id") in set(list(produced)[before:])]
    assert len(later) == 12 and all(a["outcome"] == "sanitized" and a["policy"] == new_hash for a in later)
    assert all("coupon" not in a["actions"] or a["actions"]["coupon"] == "keep" for a in later)
    assert len(client.get_versions(f"{sanitized}-value")) == 2
    records = d.read(sanitized)
    decoded = {x["event_id"]: x for x in (deserializer(r.value, SerializationContext(sanitized, MessageField.VALUE))
                                          for r in records)}
    for event_id in list(produced)[before:]:
        expected = f"{COUPON}{event_id.split('-')[1]}" if produced[event_id] == 2 else None
        assert decoded[event_id]["coupon"] == expected

    # the existing consumer, still on today's policy, keeps decoding both sanitized versions
    dumped = cli("dump", "--topic", sanitized, "--bootstrap", d.bootstrap, "--schemas", str(v1_dir),
                 "--schema-registry-url", registry_url)
    assert dumped.returncode == 0, dumped.stderr.decode()[-2000:]
    lines = [orjson.loads(line) for line in dumped.stdout.decode().splitlines() if line.startswith("{")]
    values = [line.get("value", line) for line in lines]
    assert len(values) == len(produced)
    assert {v["event_id"] for v in values} == set(produced) and all("coupon" not in v for v in values)


def test_single_object_avro_of_two_versions_resolves_by_fingerprint(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    policy = _base_policy(d, input="single_object", writer_schemas=["writers/payments.v1.avsc"])
    v1, v2, v3 = _versions(policy)
    policy["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None, "privacy": "keep"})
    (d.schemas / "writers").mkdir()
    (d.schemas / "writers" / "payments.v1.avsc").write_bytes(orjson.dumps(v1))
    _write_policy(d, policy)
    plan = next(iter(load_plans(d.schemas)))
    assert fingerprint(v1) in plan.writers_by_fingerprint
    source = policy["privacy"]["source_topic"]
    samples = SampleEvents(seed=23)
    values, expected = [], {}
    for n in range(12):
        version = (1, 2)[n % 2]
        record = _event(samples, version, n)
        schema = v1 if version == 1 else v2
        values.append(single_object_header(schema) + avro_bytes(fastavro.parse_schema(strip_logical_types(schema)),
                                                                 record))
        expected[record["event_id"]] = record.get("coupon")
    unknown = _event(samples, 3, 99)
    values.append(single_object_header(v3) + avro_bytes(fastavro.parse_schema(strip_logical_types(v3)), unknown))
    d.produce(source, values, partition=0)
    worker = d.start_worker("single-object")
    try:
        audit = d.wait_for_audit(len(values))
    finally:
        assert worker.stop() == 0
    assert [a["outcome"] for a in audit] == ["sanitized"] * 12 + ["rejected:unknown_schema_fingerprint"]
    dead = [orjson.loads(r.value) for r in d.read(f"{source}.dlq")]
    assert len(dead) == 1 and fingerprint(v3).hex() in dead[0]["message"]
    out = d.read(plan.sanitized_topic)
    header = single_object_header(plan.sanitized_schema)
    reader = fastavro.parse_schema(strip_logical_types(plan.sanitized_schema))
    decoded = []
    for r in out:
        assert r.value is not None and r.value.startswith(header)
        assert r.headers["gateway-encoding"] == b"single_object"
        decoded.append(fastavro.schemaless_reader(io.BytesIO(r.value[len(header):]), reader, None))
    assert {x["event_id"]: x["coupon"] for x in decoded} == expected
