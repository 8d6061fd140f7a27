"""The interface every schema format family implements (Avro, JSON Schema, Protobuf), and the types
its parts exchange. No Kafka client and no registry client here: the runtime hands registered schema
texts in, the pipeline hands event values in.

A format family owns five things, decided once per schema at start-up:
- loading its schema files into the one policy model (`SchemaFile.raw`: an Avro-shaped record with
  `privacy` annotations), keeping its own text in `SchemaFile.native`;
- decoding its Confluent-framed events into records of that model (`RawDecoder`), each failure a
  RejectedEvent with a reason code and a message that never holds a value;
- reading other registered versions of the raw schema (writer schemas: a producer added or removed a field);
- deriving the sanitized schema in its own language from the raw one and the compiled plan's sanitized
  (Avro-shaped) schema, and checking it may follow the versions already registered;
- encoding sanitized records in that language, and reading them back (`gateway dump`/`decrypt`, adapters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.core.codec.encoding import CONFLUENT_HEADER_BYTES, CONFLUENT_MAGIC, Encoding, SchemaFormat
from gateway.core.codec.raw import SchemaFile
from gateway.errors import RejectedEvent

# (record in the policy model, its encoding's value, the writer's fields the policy does not name)
Decoded = tuple[dict[str, Any], str, tuple[str, ...]]


@dataclass(frozen=True)
class RegisteredWriter:
    """Another registered version of a raw schema, as its format's decoder reads it.

    `problem` is None when the policy can read its events (they are decoded, `unannotated` fields
    dropped and audited as such), else why not (its events are dead-lettered incompatible_writer_schema).
    `reader` is the format's own compiled form of the version (opaque to everything but its decoder)."""

    label: str  # "registry id 12 (version 2 of 'x-value')": for messages, never a value
    reader: Any = field(repr=False)
    unannotated: tuple[str, ...] = ()
    problem: str | None = None


class RawDecoder(Protocol):
    """One source topic's decoder (built once per plan). The Avro family's is
    gateway.core.codec.raw.EventDecoder; its writers are gateway.core.codec.evolution.WriterSchema."""

    def decode_event(self, value: bytes | None) -> Decoded:
        """(record, encoding, unannotated writer fields), or raise RejectedEvent (reason code, no value)."""
        ...

    def decode(self, value: bytes | None) -> tuple[dict[str, Any], str]:
        """(record, encoding): decode_event without the writer's fields (`gateway scan` samples with it)."""
        ...

    def unknown_ids(self, values: Iterable[bytes | None]) -> set[int]:
        """Registry ids among `values` that are neither the policy's nor a known writer's (looked up by
        the runtime before the batch is decoded)."""
        ...

    def add_writer(self, schema_id: int, writer: Any) -> None:
        """A registered version met after start-up (what `SchemaCodec.writer` made of it)."""
        ...


class RegistryFramedDecoder:
    """What the decoders of the registry-framed families (JSON Schema, Protobuf) share: the writer versions
    by registry id, the ids not known yet, and the checks before the payload (size, Confluent header,
    magic byte, the id's version). A family subclass names itself and its framing's least size, and
    decodes the payload after `_version` said whose schema wrote it."""

    family = ""  # in the bad_magic_byte message: "JSON Schema", "Protobuf"
    min_bytes = CONFLUENT_HEADER_BYTES  # the least a framed event holds (Protobuf: a message index too)
    framing = f"Confluent wire format needs {CONFLUENT_HEADER_BYTES} header bytes"  # the bad_framing message
    own_when_unnamed = False  # a policy that names no id reads every event as its own (offline: `policy test`)

    def __init__(self, schema: SchemaFile, schema_id: int | None, max_record_bytes: int,
                 writers: dict[int, RegisteredWriter] | None = None) -> None:
        self.schema = schema
        self.schema_id = schema_id
        self.max_record_bytes = max_record_bytes
        self.writers: dict[int, RegisteredWriter] = dict(writers or {})

    def add_writer(self, schema_id: int, writer: RegisteredWriter) -> None:
        self.writers[schema_id] = writer

    def unknown_ids(self, values: Iterable[bytes | None]) -> set[int]:
        found: set[int] = set()
        for value in values:
            if value is not None and len(value) >= CONFLUENT_HEADER_BYTES and value[0] == CONFLUENT_MAGIC:
                schema_id = int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big")
                if schema_id != self.schema_id and schema_id not in self.writers:
                    found.add(schema_id)
        return found

    def decode_event(self, value: bytes | None) -> Decoded:
        raise NotImplementedError

    def decode(self, value: bytes | None) -> tuple[dict[str, Any], str]:
        record, encoding, _ = self.decode_event(value)
        return record, encoding

    def _version(self, value: bytes | None) -> tuple[int, RegisteredWriter | None]:
        """The event's registry id and its registered writer (None: the policy's own schema), after the
        checks every framed event passes; each failure a RejectedEvent that names no value."""
        if value is None or len(value) == 0:
            raise RejectedEvent("empty_value", "the event has no value (tombstone or empty payload)")
        if len(value) > self.max_record_bytes:
            raise RejectedEvent("record_too_large",
                                f"the event is {len(value)} bytes, above max_record_bytes={self.max_record_bytes}")
        if len(value) < self.min_bytes:
            raise RejectedEvent("bad_framing", f"{self.framing}, got {len(value)} bytes")
        if value[0] != CONFLUENT_MAGIC:
            raise RejectedEvent("bad_magic_byte", f"magic byte is {value[0]}, expected {CONFLUENT_MAGIC} "
                                f"(Confluent wire format of {self.family})")
        schema_id = int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big")
        if schema_id == self.schema_id or (self.own_when_unnamed and self.schema_id is None and not self.writers):
            return schema_id, None
        writer = self.writers.get(schema_id)
        if writer is None:
            expected = "" if self.schema_id is None else f" (expected {self.schema_id})"
            raise RejectedEvent("unknown_schema_id", f"schema id {schema_id} is not registered for "
                                f"{self.schema.fullname}{expected}")
        if writer.problem is not None:
            raise RejectedEvent("incompatible_writer_schema", f"the event was written with {writer.label}, "
                                f"which {self.schema.fullname}'s policy cannot read: {writer.problem}")
        return schema_id, writer


class SchemaCodec(Protocol):
    """One format family. Implementations are registered once in gateway.core.codec.formats.FORMATS."""

    format: SchemaFormat
    suffixes: tuple[str, ...]  # the schema file names it loads from a schemas directory (".avsc", ".schema.json")
    registry_type: str  # the Schema Registry's schemaType: "AVRO", "JSON", "PROTOBUF"
    encoding: Encoding  # the encoding of its framed events and sanitized records (`gateway-encoding`)

    def load(self, path: Path) -> SchemaFile:
        """The schema file as the policy model (raise PolicyError naming the file and the problem)."""
        ...

    def decoder(self, schema: SchemaFile, input_mode: str, schema_id: int | None, max_record_bytes: int,
                writers_by_id: dict[int, Any], writers_by_fingerprint: dict[bytes, Any]) -> RawDecoder:
        """The decoder of `schema`'s events (writers: what `writer` made of other registered versions)."""
        ...

    def same_schema(self, schema: SchemaFile, registered: str) -> bool:
        """Whether a registered schema text is the policy's own schema (its id is the policy's schema_id)."""
        ...

    def writer(self, schema: SchemaFile, registered: str, label: str) -> Any:
        """Another registered version of the raw schema, checked against the policy (a RegisteredWriter,
        or for Avro a WriterSchema: both say `problem` and `unannotated`)."""
        ...

    def sanitized_schema(self, schema: SchemaFile, sanitized: dict[str, Any]) -> str:
        """The sanitized schema in this format's language, as registered: derived from the raw schema and
        the plan's sanitized (Avro-shaped) schema. Deterministic: the same policy gives the same text."""
        ...

    def sanitized_problems(self, text: str, previous: Sequence[tuple[str, str]], compatibility: str) -> list[str]:
        """Why the sanitized schema `text` may not follow the (label, text) versions registered before it under
        `compatibility` (the setting sanitized_compatibility); [] when it may (the registry checks again)."""
        ...

    def encoder(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
        """Sanitized record -> its bytes after the 5-byte Confluent header (Protobuf: message indexes first)."""
        ...

    def reader(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[bytes], dict[str, Any]]:
        """Bytes after the 5-byte header -> the sanitized record (ciphertexts as bytes or base64 strings,
        which gateway.core.decrypt takes both); raises on bytes of another shape."""
        ...
