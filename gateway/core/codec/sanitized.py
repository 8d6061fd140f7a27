"""Sanitized records as stored in Kafka, and decoding them with the compiled plans (no Kafka client).

A sanitized topic holds records written with several versions of its sanitized schema when the
gateway's policy changes. A consumer keeps its own view, the plan's sanitized schema (the reader):
a Confluent-framed record of another registry id is decoded with the schema that id names (the
writer, from `writer_schemas`, e.g. `gateway.runtime.registry.WriterSchemaLookup`) and resolved to
the reader by Avro's rules, so fields a newer policy added are skipped and fields it lacks take
their defaults.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import IO, Any, NamedTuple

import fastavro
import orjson

from gateway.core.codec.evolution import (
    SINGLE_OBJECT_HEADER_BYTES,
    SINGLE_OBJECT_MAGIC,
    fingerprint,
    incompatibilities,
    strip_logical_types,
)
from gateway.core.policy.plan import Plan
from gateway.errors import GatewayError

# a registry id -> the schema JSON registered under it, or None when the registry does not know it
WriterSchemas = Callable[[int], dict[str, Any] | None]
CONFLUENT_HEADER_BYTES = 5  # magic byte 0, then the 4-byte big-endian schema id


class StoredRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


class SanitizedDecoder:
    """Decodes sanitized records (Avro, Confluent-framed, single-object or JSON) using the compiled plans.

    `writer_schemas` looks up the schemas of registry ids other than the plan's own; without it a
    record of another id is refused (it would decode wrongly), except when the plan names no id at
    all (`"sanitized_schema_id": "registry"` not resolved), where the plan's schema is assumed as before.
    """

    def __init__(self, plans: Sequence[Plan], writer_schemas: WriterSchemas | None = None) -> None:
        self.by_topic = {p.sanitized_topic: p for p in plans}
        self.by_name = {p.sanitized_schema["name"]: p for p in plans}
        self.writer_schemas = writer_schemas
        # (sanitized topic, registry id) -> (parsed writer, None) or (None, why it cannot be read):
        # a registry id never changes its schema, so each is fetched and checked once per plan
        self._writers: dict[tuple[str, int], tuple[Any, str | None]] = {}
        self._fingerprints: dict[str, bytes] = {}

    def plan_for(self, topic: str | None = None, schema_name: str | None = None) -> Plan:
        plan = self.by_name.get(schema_name or "") or self.by_topic.get(topic or "")
        if plan is None:
            if len(self.by_topic) == 1:
                return next(iter(self.by_topic.values()))
            known = ", ".join(sorted(self.by_topic))
            raise GatewayError(f"cannot tell which policy sanitized these records: pass --topic (one of {known})")
        return plan

    def decode(self, record: StoredRecord) -> tuple[Plan, dict[str, Any]]:
        name = record.headers.get("gateway-schema", b"").decode() or None
        plan = self.plan_for(record.topic, name)
        encoding = record.headers.get("gateway-encoding", b"").decode()
        value = record.value or b""
        if encoding == "json" or (not encoding and value[:1] == b"{"):
            return plan, orjson.loads(value)
        if encoding == "single_object":
            return plan, self._single_object(plan, value, record.topic)
        if encoding == "confluent" or (not encoding and value[:1] == b"\x00"):
            if len(value) < CONFLUENT_HEADER_BYTES:
                raise GatewayError(f"record on '{record.topic}' is {len(value)} bytes: too short for "
                                   "Confluent framing (magic byte and 4-byte schema id)")
            writer = self.writer_for(plan, int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big"), record.topic)
            return plan, read_avro(io.BytesIO(value[CONFLUENT_HEADER_BYTES:]), writer, plan)
        return plan, fastavro.schemaless_reader(io.BytesIO(value), plan.sanitized_parsed, None)

    def writer_for(self, plan: Plan, schema_id: int, topic: str | None = None) -> Any:
        """The parsed schema records framed with `schema_id` were written with: the plan's own for its
        id, else the looked-up one, checked (once per id) to resolve to the plan's sanitized schema.
        Raises GatewayError naming topic, id and cause (never a value)."""
        own = plan.sanitized_schema_id
        if schema_id == own or (own is None and self.writer_schemas is None):
            return plan.sanitized_parsed
        where = topic or plan.sanitized_topic
        if self.writer_schemas is None:
            raise GatewayError(f"records on '{where}' are framed with sanitized schema id {schema_id}, not the "
                               f"policy's ({own}; {plan.name}): they were written with another sanitized schema "
                               "version; pass the Schema Registry URL (--schema-registry-url, "
                               "GATEWAY_SCHEMA_REGISTRY_URL, or registry_url=) to decode them with the schema "
                               "they were written with")
        key = (plan.sanitized_topic, schema_id)
        if key not in self._writers:
            writer = self.writer_schemas(schema_id)
            if writer is None:  # not cached: the registry may learn the id (the lookup paces its retries)
                raise GatewayError(f"records on '{where}' are framed with sanitized schema id {schema_id}, which "
                                   f"is not the policy's ({own if own is not None else 'none'}; {plan.name}) and "
                                   "which the schema registry does not know (or not as Avro): pass the URL of "
                                   "the registry the gateway registers its sanitized schemas in")
            self._writers[key] = _resolve(plan, writer)
        parsed, problem = self._writers[key]
        if problem is not None:
            raise GatewayError(f"records on '{where}' written with sanitized schema id {schema_id} cannot be read "
                               f"as the policy's sanitized schema {plan.sanitized_schema['name']} ({plan.name}): "
                               f"{problem}; update the policy in the schemas directory to a compatible version")
        return parsed

    def _single_object(self, plan: Plan, value: bytes, topic: str) -> dict[str, Any]:
        """Avro single-object encoding: only the plan's own sanitized schema (by fingerprint) is read."""
        if value[:2] != SINGLE_OBJECT_MAGIC or len(value) < SINGLE_OBJECT_HEADER_BYTES:
            raise GatewayError(f"record on '{topic}' says single_object encoding but does not start with the "
                               "single-object header (C3 01 and an 8-byte fingerprint)")
        expected = self._fingerprints.get(plan.sanitized_topic)
        if expected is None:
            expected = self._fingerprints[plan.sanitized_topic] = fingerprint(plan.sanitized_schema)
        found = value[2:SINGLE_OBJECT_HEADER_BYTES]
        if found != expected:
            raise GatewayError(f"records on '{topic}' are single-object encoded with schema fingerprint "
                               f"{found.hex()}, not that of the policy's sanitized schema "
                               f"{plan.sanitized_schema['name']} ({expected.hex()}; {plan.name}): they were "
                               "written with another sanitized schema version; update the policy in the "
                               "schemas directory, or have the gateway publish Confluent-framed records")
        return fastavro.schemaless_reader(io.BytesIO(value[SINGLE_OBJECT_HEADER_BYTES:]), plan.sanitized_parsed,
                                          None)


def read_avro(buffer: IO[bytes], writer: Any, plan: Plan) -> Any:
    """One schemaless record written with `writer` (a parsed schema), in the plan's sanitized view."""
    reader = None if writer is plan.sanitized_parsed else plan.sanitized_parsed
    return fastavro.schemaless_reader(buffer, writer, reader)


def _resolve(plan: Plan, writer: dict[str, Any]) -> tuple[Any, str | None]:
    """(parsed writer, None) when the plan's sanitized schema can read it, else (None, the first reason)."""
    problems = incompatibilities(plan.sanitized_schema, writer)
    if problems:
        return None, str(problems[0])
    try:
        return fastavro.parse_schema(strip_logical_types(writer)), None
    except Exception as exc:  # fastavro raises several types for invalid schemas
        return None, f"the writer schema is not valid Avro ({type(exc).__name__})"
