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
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, NamedTuple

import fastavro
import orjson

from gateway.core.codec.encoding import (
    AVRO_CONTAINER_MAGIC,
    CONFLUENT_HEADER_BYTES,
    ENCODING_HEADER,
    OPEN_BRACE,
    SCHEMA_HEADER,
    Encoding,
    SchemaFormat,
    confluent_id,
    first_json_byte,
    sniff,
)
from gateway.core.codec.evolution import (
    SINGLE_OBJECT_HEADER_BYTES,
    SINGLE_OBJECT_MAGIC,
    fingerprint,
    incompatibilities,
    strip_logical_types,
)
from gateway.core.codec.formats import SchemaCodec, codec_for, codec_of_encoding
from gateway.core.policy.plan import Plan
from gateway.errors import GatewayError

# a registry id -> the schema JSON registered under it, or None when the registry does not know it
WriterSchemas = Callable[[int], dict[str, Any] | None]


class StoredRecord(NamedTuple):
    topic: str | None
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


class UndecodableRecord(GatewayError):
    """A record the decoder cannot decode; the message names topic and cause, never a value."""


def header_encoding(headers: dict[str, bytes]) -> Encoding | None:
    """The encoding a sanitized record's `gateway-encoding` header names (None without one)."""
    return Encoding.from_header(headers.get(ENCODING_HEADER))


def is_json(record: StoredRecord) -> bool:
    """A JSON sanitized record (it needs no schema to read): by its header, else by its first byte."""
    encoding = header_encoding(record.headers)
    if encoding is not None:
        return encoding is Encoding.JSON
    return first_json_byte(record.value or b"") == OPEN_BRACE


class SanitizedDecoder:
    """The one decoder of sanitized records (Avro, Confluent-framed, single-object or JSON) with the
    compiled plans; every reader of sanitized topics uses it (`gateway dump`, `gateway decrypt`,
    the stream-processor adapters, the demo).

    - `decode(record)`: one Kafka record, by its `gateway-schema` and `gateway-encoding` headers; without
      the encoding header, as `decode_value`.
    - `decode_value(plan, value)`: bytes without headers: JSON, bare or Confluent-framed Avro, whichever
      decodes whole, the likely one (`Encoding` sniffing) first.
    - `records(data)`: a byte stream (`gateway decrypt`'s stdin): an Avro container file, JSON lines, or
      bare Avro records one after another.

    `writer_schemas` looks up the schemas of registry ids other than the plan's own; without it a
    record of another id is refused (it would decode wrongly), except when the plan names no id at
    all (`"sanitized_schema_id": "registry"` not resolved), where the plan's schema is assumed as before.
    `topic` names the sanitized topic of records that come without one, when there are several plans.
    """

    def __init__(self, plans: Sequence[Plan], writer_schemas: WriterSchemas | None = None,
                 topic: str | None = None) -> None:
        self.plans = list(plans)
        self.by_topic = {p.sanitized_topic: p for p in plans}
        self.by_name = {p.sanitized_schema["name"]: p for p in plans}
        self.writer_schemas = writer_schemas
        self.topic = topic
        # (sanitized topic, registry id) -> (parsed writer, None) or (None, why it cannot be read):
        # a registry id never changes its schema, so each is fetched and checked once per plan
        self._writers: dict[tuple[str, int], tuple[Any, str | None]] = {}
        self._fingerprints: dict[str, bytes] = {}
        self._readers: dict[str, Callable[[bytes], dict[str, Any]]] = {}  # sanitized topic -> its family's reader

    def plan_for(self, topic: str | None = None, schema_name: str | None = None) -> Plan:
        """The plan of a record: by its schema name, else its topic (or the decoder's), else the only one."""
        plan = (self.by_name.get(schema_name or "") or self.by_topic.get(topic or "")
                or self.by_topic.get(self.topic or ""))
        if plan is None:
            if len(self.by_topic) == 1:
                return next(iter(self.by_topic.values()))
            where = f"topic '{topic}'" if topic else "records without a topic"
            raise UndecodableRecord(f"no policy sanitizes {where} (schema {schema_name or 'not named'}): "
                                    f"name the sanitized topic (--topic, or topic=), one of "
                                    f"{', '.join(sorted(self.by_topic))}; known schemas: "
                                    f"{', '.join(sorted(self.by_name))}")
        return plan

    def decode(self, record: StoredRecord) -> tuple[Plan, Any]:
        """(plan, the decoded value) of one record. Raises GatewayError naming topic and cause (never a
        value): UndecodableRecord for bytes that are not the encoding said or guessed."""
        name = record.headers.get(SCHEMA_HEADER, b"").decode(errors="replace") or None
        plan = self.plan_for(record.topic, name)
        value = record.value
        if value is None:
            raise UndecodableRecord(f"record on '{record.topic}' has no value (a tombstone): nothing to decode")
        encoding = header_encoding(record.headers)
        if encoding is None:
            return plan, self.decode_value(plan, value, record.topic)
        try:
            return plan, self._decode_as(plan, encoding, value, record.topic)
        except GatewayError:
            raise
        except Exception as exc:  # fastavro and orjson raise many kinds on corrupt input
            raise UndecodableRecord(f"record on '{record.topic}' does not decode as "
                                    f"{plan.sanitized_schema['name']} ({encoding}: {type(exc).__name__})") from None

    def _decode_as(self, plan: Plan, encoding: Encoding, value: bytes, topic: str | None) -> Any:
        native = codec_of_encoding(encoding)
        if native is not None:  # Confluent-framed in another format family: its reader, whatever the id
            return self._native(plan, native, value, topic)
        if encoding is Encoding.JSON:
            return orjson.loads(value)
        if encoding is Encoding.SINGLE_OBJECT:
            return self._single_object(plan, value, topic)
        if encoding is Encoding.CONFLUENT:
            schema_id = confluent_id(value)
            if schema_id is None:
                raise GatewayError(f"record on '{topic}' is {len(value)} bytes: too short for "
                                   "Confluent framing (magic byte and 4-byte schema id)")
            writer = self.writer_for(plan, schema_id, topic)
            return read_avro(io.BytesIO(value[CONFLUENT_HEADER_BYTES:]), writer, plan)
        return fastavro.schemaless_reader(io.BytesIO(value), plan.sanitized_parsed, None)

    def decode_value(self, plan: Plan, value: bytes, topic: str | None = None) -> Any:
        """Bytes without an encoding header: the order of the gateway's own `input: auto` (JSON on "{",
        Confluent framing on byte 0 when the policy has a registry id or ids can be looked up, else bare
        Avro first); a value that fails one is tried as the others. Raises UndecodableRecord."""
        problems: list[str] = []  # why Confluent framing did not decode, for the error
        if plan.schema.format is not SchemaFormat.AVRO and confluent_id(value) is not None:
            try:
                return self._native(plan, codec_for(plan.schema.format), value, topic)
            except Exception:  # noqa: S110 - not that format after all: the plain JSON view of a purpose?
                pass

        def confluent(plan: Plan, value: bytes) -> Any:
            return self._confluent(plan, value, topic, problems)

        framed = plan.sanitized_schema_id is not None or self.writer_schemas is not None
        likely = sniff(value, framed)
        attempts = [_avro, confluent, _json]
        if likely is Encoding.CONFLUENT:
            attempts = [confluent, _avro, _json]
        elif likely is Encoding.JSON:
            attempts = [_json, _avro, confluent]
        for attempt in attempts:
            record = attempt(plan, value)
            if record is not None:
                return record
        why = f" ({problems[0]})" if problems else ""
        raise UndecodableRecord(f"record on '{topic or plan.sanitized_topic}' is neither a JSON object nor "
                                f"Avro of {plan.sanitized_schema['name']}{why}")

    def _native(self, plan: Plan, codec: SchemaCodec, value: bytes, topic: str | None) -> Any:
        """A record of another format family (Confluent-framed): read with the family's sanitized reader."""
        if confluent_id(value) is None:
            raise GatewayError(f"record on '{topic}' says {codec.encoding} encoding but does not start with "
                               "Confluent framing (magic byte 0 and a 4-byte schema id)")
        reader = self._readers.get(plan.sanitized_topic)
        if reader is None:
            reader = self._readers[plan.sanitized_topic] = codec.reader(plan.schema, plan.sanitized_schema)
        return reader(value[CONFLUENT_HEADER_BYTES:])

    def records(self, data: bytes, topic: str | None = None) -> Iterator[tuple[Plan, Any]]:
        """(plan, record) for each record of a byte stream: an Avro container file (its writer schema's
        name picks the plan), JSON lines, or bare Avro records of the topic's plan one after another."""
        if data.startswith(AVRO_CONTAINER_MAGIC):
            reader = fastavro.reader(io.BytesIO(data))
            plan = self.plan_for(topic, reader.writer_schema.get("name") if reader.writer_schema else None)
            for record in reader:
                yield plan, record
            return
        if first_json_byte(data) in (OPEN_BRACE, -1):
            json_plan: Plan | None = None
            for line in data.splitlines():
                if line.strip():
                    json_plan = json_plan or self.plan_for(topic)
                    yield json_plan, orjson.loads(line)
            return
        plan = self.plan_for(topic)
        buffer = io.BytesIO(data)
        while buffer.tell() < len(data):
            yield plan, fastavro.schemaless_reader(buffer, plan.sanitized_parsed, None)

    def _confluent(self, plan: Plan, value: bytes, topic: str | None, problems: list[str]) -> Any:
        """Confluent-framed Avro of the plan's id, or of another id the decoder can look up and resolve;
        None (with the reason in `problems`) when the value is not that."""
        schema_id = confluent_id(value)
        if schema_id is None:
            return None
        try:
            writer = self.writer_for(plan, schema_id, topic)
        except GatewayError as exc:  # unknown or unreadable id, registry down: maybe bare Avro after all
            problems.append(str(exc))
            return None
        return _avro(plan, value[CONFLUENT_HEADER_BYTES:], writer)

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

    def _single_object(self, plan: Plan, value: bytes, topic: str | None) -> dict[str, Any]:
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


def _json(plan: Plan, value: bytes) -> Any:
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _avro(plan: Plan, value: bytes, writer: Any = None) -> Any:
    """Bare Avro written with `writer` (default: the plan's sanitized schema) in the plan's view,
    None unless it decodes and uses every byte."""
    buffer = io.BytesIO(value)
    try:
        record = read_avro(buffer, plan.sanitized_parsed if writer is None else writer, plan)
    except Exception:  # fastavro raises IndexError, ValueError, EOFError, ... on bytes of another shape
        return None
    return record if buffer.tell() == len(value) else None
