"""The Avro family as a SchemaCodec: the gateway's original format (Confluent-framed, single-object,
bare Avro or JSON events), its parts living in gateway.core.codec.raw, evolution and writer."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import fastavro
import orjson
from fastavro.schema import to_parsing_canonical_form

from gateway.core.codec.encoding import Encoding, SchemaFormat
from gateway.core.codec.evolution import evolution_problems, resolve_writer, strip_logical_types
from gateway.core.codec.raw import EventDecoder, SchemaFile, load_schema_file
from gateway.core.codec.writer import avro_bytes, fast_record_encoder


class AvroCodec:
    format = SchemaFormat.AVRO
    suffixes = (".avsc",)
    registry_type = "AVRO"
    encoding = Encoding.CONFLUENT

    def load(self, path: Path) -> SchemaFile:
        return load_schema_file(path)

    def decoder(self, schema: SchemaFile, input_mode: str, schema_id: int | None, max_record_bytes: int,
                writers_by_id: dict[int, Any], writers_by_fingerprint: dict[bytes, Any]) -> EventDecoder:
        return EventDecoder(schema, input_mode, schema_id, max_record_bytes, writers_by_id, writers_by_fingerprint)

    def same_schema(self, schema: SchemaFile, registered: str) -> bool:
        # the Parsing Canonical Form leaves the annotations out
        return bool(to_parsing_canonical_form(orjson.loads(registered)) == to_parsing_canonical_form(schema.raw))

    def writer(self, schema: SchemaFile, registered: str, label: str) -> Any:
        return resolve_writer(schema.raw, orjson.loads(registered), label)

    def sanitized_schema(self, schema: SchemaFile, sanitized: dict[str, Any]) -> str:
        return orjson.dumps(sanitized).decode()

    def sanitized_problems(self, text: str, previous: Sequence[tuple[str, str]], compatibility: str) -> list[str]:
        return evolution_problems(orjson.loads(text), [(label, orjson.loads(raw)) for label, raw in previous],
                                  compatibility)

    def encoder(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
        parsed = fastavro.parse_schema(strip_logical_types(sanitized))
        fast = fast_record_encoder(parsed)

        def encode(record: dict[str, Any]) -> bytes:
            if fast is not None:
                try:
                    return fast(record)
                except Exception:  # noqa: S110 - a value the shortcut does not take: fastavro's writer decides
                    pass
            return avro_bytes(parsed, record)
        return encode

    def reader(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[bytes], dict[str, Any]]:
        parsed = fastavro.parse_schema(strip_logical_types(sanitized))

        def read(payload: bytes) -> dict[str, Any]:
            buffer = io.BytesIO(payload)
            record = fastavro.schemaless_reader(buffer, parsed, None)
            if buffer.tell() != len(payload) or not isinstance(record, dict):
                raise ValueError("not one whole record")
            return record
        return read
