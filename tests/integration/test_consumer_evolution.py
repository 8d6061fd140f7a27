"""Consumers keep decoding when the gateway's sanitized schema evolves (real broker, real registry).

Two versions of a sanitized schema are registered under `<sanitized topic>-value` (v2 adds a nullable
field with default null, compatibly), and records of both, Confluent-framed with the registry's ids
and carrying the gateway's headers, are on one topic. A consumer whose policy is still v1 reads every
record in its v1 view through `gateway dump --schema-registry-url` and through the reader the faust
integration uses; without the registry URL, dump names the unknown id and says how to fix it.
"""

from __future__ import annotations

import copy
import io
import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import orjson
import pytest
from confluent_kafka import Producer

from gateway.core.codec.evolution import strip_logical_types
from gateway.core.codec.raw import frame_confluent, load_schema_file
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.runtime.reader import read_topic

from .conftest import cli

pytestmark = pytest.mark.integration
NAME = "ex.visits.sanitized.Visit"


def _policy(suffix: str, sanitized_schema_id: Any) -> dict[str, Any]:
    return {
        "type": "record", "name": "Visit", "namespace": "ex.visits",
        "privacy": {"source_topic": f"visits.raw.{suffix}", "sanitized_topic": f"visits.sanitized.{suffix}",
                    "sanitized_schema_id": sanitized_schema_id, "output": "confluent"},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "note", "type": "string", "privacy": "keep"},
            {"name": "amount", "type": "long", "privacy": "keep"},
            {"name": "ip", "type": "string"},  # not annotated: dropped
        ],
    }


def _write_plan(schemas: Path, policy: dict[str, Any]) -> Plan:
    (schemas / "visits.avsc").write_text(json.dumps(policy))
    return compile_plan(load_schema_file(schemas / "visits.avsc"))


def _avro(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(strip_logical_types(schema)), record)
    return out.getvalue()


def test_dump_and_the_faust_reader_decode_every_sanitized_version(bootstrap: str, registry_url: str,
                                                                  tmp_path: Path) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    suffix = uuid.uuid4().hex[:8]
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    v1 = _write_plan(schemas, _policy(suffix, "registry")).sanitized_schema
    v2 = copy.deepcopy(v1)  # the new field sits before `amount`: v1's schema alone would misread v2 bytes
    v2["fields"].insert(2, {"name": "channel", "type": ["null", "string"], "default": None})
    topic = f"visits.sanitized.{suffix}"
    client = SchemaRegistryClient({"url": registry_url})
    id1 = client.register_schema(f"{topic}-value", Schema(json.dumps(v1), "AVRO"))
    id2 = client.register_schema(f"{topic}-value", Schema(json.dumps(v2), "AVRO"))
    assert id1 != id2
    plan = _write_plan(schemas, _policy(suffix, id1))  # the consumer's policy: still v1, with v1's id
    assert plan.sanitized_schema == v1

    expected, values = [], []
    for i in range(6):
        view = {"event_id": f"e{i}", "note": f"visit {i}", "amount": 100 * i}
        if i % 2:
            values.append(frame_confluent(id2, _avro(v2, {**view, "channel": "web"})))
        else:
            values.append(frame_confluent(id1, _avro(v1, view)))
        expected.append(view)
    headers = [("gateway-schema", NAME.encode()), ("gateway-encoding", b"confluent"),
               ("gateway-policy", plan.policy_hash.encode())]
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value, partition=0, headers=headers)
    assert producer.flush(30) == 0

    dump = ("dump", "--bootstrap", bootstrap, "--topic", topic, "--schemas", str(schemas))
    done = cli(*dump, "--schema-registry-url", registry_url)
    assert done.returncode == 0, done.stderr.decode()
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == expected
    assert b"note:" not in done.stderr

    without = cli(*dump)  # v2's id is not the policy's: printed encoded, the note says how to fix
    assert without.returncode == 0, without.stderr.decode()
    lines = [orjson.loads(line) for line in without.stdout.splitlines()]
    assert lines[0::2] == expected[0::2] and all(line["schema"] == NAME for line in lines[1::2])
    note = without.stderr.decode()
    assert f"sanitized schema id {id2}" in note and "--schema-registry-url" in note and "--schemas DIR" not in note

    faust = pytest.importorskip("gateway.integrations.faust")  # the faust extra
    schema = faust.GatewaySchema(schemas, registry_url=registry_url)
    codec = faust.register_codec(schemas, registry_url=registry_url, name=f"gateway-{suffix}")
    records = read_topic({"bootstrap.servers": bootstrap}, topic)
    assert len(records) == len(expected)
    for record, view in zip(records, expected, strict=True):
        message = SimpleNamespace(topic=record.topic, value=record.value, headers=list(record.headers.items()))
        decoded = schema.loads_value(None, message)  # what faust calls with each message
        assert decoded.value == view and decoded.schema == NAME
        as_dict = codec.loads(record.value)  # the header-less codec (value_serializer="gateway")
        assert {k: v for k, v in as_dict.items() if k != "_gateway"} == view
