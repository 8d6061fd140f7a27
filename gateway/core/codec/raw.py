"""Avro schemas, wire formats and input validation.

Input encodings: Confluent wire format (magic byte 0 + 4-byte schema id + Avro), Avro's single-object
encoding (C3 01 + the schema's 8-byte fingerprint + Avro), bare Avro, and JSON objects validated
against the schema: plain JSON (a union's value as it is), or Avro's JSON encoding (a union's value
wrapped in {"<branch type>": value}). Framed events written with another version of the schema
(a registry id or fingerprint the policy accepts, gateway.core.codec.evolution) are decoded with their writer
schema and resolved to the policy's. Decoding never puts a value into an error message.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import io
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import fastavro.validation
import orjson
from fastavro.schema import expand_schema

from gateway.core.avro import fullname
from gateway.core.codec.encoding import (
    CONFLUENT_HEADER_BYTES,
    CONFLUENT_MAGIC,
    INPUT_MODES,
    OPEN_BRACKET,
    Encoding,
    SchemaFormat,
    confluent_header,
    confluent_id,
    first_json_byte,
    sniff,
)
from gateway.core.codec.encoding import frame_confluent as frame_confluent
from gateway.core.codec.evolution import SINGLE_OBJECT_HEADER_BYTES, SINGLE_OBJECT_MAGIC, WriterSchema, fingerprint
from gateway.core.codec.evolution import strip_logical_types as strip_logical_types
from gateway.errors import PolicyError, RejectedEvent


@dataclass(frozen=True)
class SchemaFile:
    """One raw schema as loaded from disk: its source, JSON form and fastavro-parsed form.

    `raw` is always the Avro-shaped policy model (a record with `privacy` annotations) the compiler,
    operators, quality rules, DP and audit consume; a schema of another format family (`format`) is
    converted into it at load time (gateway.core.codec.formats) and keeps its own text in `native`,
    which its decoder, the sanitized schema's derivation and registry registration read."""

    path: Path
    raw: dict[str, Any]
    parsed: dict[str, Any]
    format: SchemaFormat = SchemaFormat.AVRO
    native: str | None = dataclasses.field(default=None, repr=False)  # its own text (None for Avro: `raw` is it)

    @property
    def fullname(self) -> str:
        return str(self.parsed["name"])

    @property
    def privacy(self) -> Any:
        return self.raw.get("privacy")


def load_schema_file(path: Path) -> SchemaFile:
    try:
        raw = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read schema: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise PolicyError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise PolicyError(f"{path}: the top-level schema must be an Avro record")
    try:
        parsed = fastavro.parse_schema(raw)
    except Exception as exc:  # fastavro raises several types for invalid schemas
        raise PolicyError(f"{path}: not a valid Avro schema ({exc})") from None
    return SchemaFile(Path(path), raw, parsed)


def iter_schema_files(directory: Path) -> Iterator[Path]:
    """The Avro schema files of a directory (gateway.core.codec.formats.iter_schema_files: every format's)."""
    yield from sorted(Path(directory).glob("*.avsc"))


def _avro_type_name(field_type: Any) -> str:
    if isinstance(field_type, dict):
        return str(field_type.get("logicalType") or field_type.get("type"))
    if isinstance(field_type, list):
        return "|".join(_avro_type_name(t) for t in field_type)
    return str(field_type).rsplit(".", 1)[-1]


_AVRO_ERRORS_TRUNCATED = (EOFError, StopIteration)


NO_FIELDS: tuple[str, ...] = ()


class EventDecoder:
    """Decodes and validates one topic's events against its schema (compiled once at start-up).

    `writers`: other schema versions by registry id, `fingerprints`: by single-object fingerprint;
    an event framed with one is read with it and resolved to the policy's schema. The runtime adds
    ids it meets later (`add_writer`), resolved from the registry."""

    def __init__(self, schema: SchemaFile, input_mode: str, schema_id: int | None,
                 max_record_bytes: int, writers: dict[int, WriterSchema] | None = None,
                 fingerprints: dict[bytes, WriterSchema] | None = None) -> None:
        if input_mode not in INPUT_MODES:
            raise PolicyError(f"{schema.path}: input '{input_mode}' is not one of {', '.join(INPUT_MODES)}")
        self.schema = schema
        self.input_mode = input_mode
        self.schema_id = schema_id
        self.max_record_bytes = max_record_bytes
        self._parsed = fastavro.parse_schema(strip_logical_types(schema.raw))
        self.writers: dict[int, WriterSchema] = dict(writers or {})
        self.fingerprints: dict[bytes, WriterSchema] = dict(fingerprints or {})
        self.fingerprint = fingerprint(schema.raw)  # the policy's own schema, in single-object framing
        # the expected Confluent header, for the fast path of the common case (see decode)
        self._confluent_header = (frame_confluent(schema_id, b"") if input_mode in ("auto", Encoding.CONFLUENT)
                                  and schema_id is not None and 0 <= schema_id < 2**32 else None)
        self._fields = [(f["name"], "default" in f, f.get("default")) for f in schema.raw["fields"]]
        self._field_probes = self._build_field_probes(schema)
        self._expanded: Any = None  # the schema with named types inlined, for Avro JSON unions (built on first use)

    @staticmethod
    def _build_field_probes(schema: SchemaFile) -> dict[str, tuple[dict[str, Any], str]]:
        """One-field schemas used only to name the failing field of an invalid JSON event."""
        probes: dict[str, tuple[dict[str, Any], str]] = {}
        for field in expand_schema(strip_logical_types(schema.raw))["fields"]:
            probe = {"type": "record", "name": "probe", "fields": [{"name": "v", "type": field["type"]}]}
            try:
                probes[field["name"]] = (fastavro.parse_schema(probe), _avro_type_name(field["type"]))
            except Exception:  # noqa: S112 - a field we cannot probe gets the generic message
                continue
        return probes

    def add_writer(self, schema_id: int, writer: WriterSchema) -> None:
        self.writers[schema_id] = writer

    def unknown_ids(self, values: Iterable[bytes | None]) -> set[int]:
        """Confluent schema ids among `values` that are neither the policy's nor a known writer's
        (for the runtime to look up before the batch is decoded)."""
        if self.input_mode not in ("auto", Encoding.CONFLUENT):
            return set()
        known, own = self.writers, self.schema_id
        found: set[int] = set()
        for value in values:
            schema_id = confluent_id(value) if value is not None and len(value) > CONFLUENT_HEADER_BYTES else None
            if schema_id is not None:
                if schema_id != own and schema_id not in known:
                    found.add(schema_id)
        return found

    def decode(self, value: bytes | None) -> tuple[dict[str, Any], str]:
        """Return (record, encoding) or raise RejectedEvent with a reason code."""
        record, encoding, _ = self.decode_event(value)
        return record, encoding

    def decode_event(self, value: bytes | None) -> tuple[dict[str, Any], str, tuple[str, ...]]:
        """Return (record, encoding, the writer's fields the policy does not name) or raise RejectedEvent."""
        if value is None or len(value) == 0:
            raise RejectedEvent("empty_value", "the event has no value (tombstone or empty payload)")
        if len(value) > self.max_record_bytes:
            raise RejectedEvent("record_too_large",
                                f"the event is {len(value)} bytes, above max_record_bytes={self.max_record_bytes}")
        if self._confluent_header is not None and value[:CONFLUENT_HEADER_BYTES] == self._confluent_header:
            try:  # framed with the expected schema id: the Avro after the header, if it decodes cleanly
                return (self._decode_avro(value[CONFLUENT_HEADER_BYTES:], "Avro after the Confluent header"),
                        Encoding.CONFLUENT, NO_FIELDS)
            except RejectedEvent as framed_error:
                if self.input_mode != "auto":
                    raise
                try:  # bare Avro may start with bytes that look like the header: accept it if it decodes
                    return self._decode_avro(value, "bare Avro"), Encoding.AVRO, NO_FIELDS
                except RejectedEvent:
                    raise framed_error from None
        mode = self.input_mode
        if mode == "auto":
            return self._decode_auto(value)
        if mode == Encoding.JSON:
            return self._decode_json(value), Encoding.JSON, NO_FIELDS
        if mode == Encoding.CONFLUENT:
            return self._decode_confluent(value)
        if mode == Encoding.SINGLE_OBJECT:
            return self._decode_single_object(value)
        return self._decode_avro(value, "bare Avro"), Encoding.AVRO, NO_FIELDS

    def _decode_single_object(self, value: bytes) -> tuple[dict[str, Any], str, tuple[str, ...]]:
        if len(value) < SINGLE_OBJECT_HEADER_BYTES or value[:2] != SINGLE_OBJECT_MAGIC:
            raise RejectedEvent("bad_framing", "Avro single-object encoding starts with C3 01 and an 8-byte "
                                "schema fingerprint")
        fp = value[2:SINGLE_OBJECT_HEADER_BYTES]
        payload = value[SINGLE_OBJECT_HEADER_BYTES:]
        if fp == self.fingerprint:
            return self._decode_avro(payload, "Avro after the single-object header"), Encoding.SINGLE_OBJECT, NO_FIELDS
        writer = self.fingerprints.get(fp)
        if writer is None:
            raise RejectedEvent("unknown_schema_fingerprint", f"schema fingerprint {fp.hex()} is neither "
                                f"{self.schema.fullname}'s nor one of its policy's writer_schemas")
        return (self._decode_with(writer, payload, "Avro after the single-object header"), Encoding.SINGLE_OBJECT,
                writer.unannotated)

    def _decode_auto(self, value: bytes) -> tuple[dict[str, Any], str, tuple[str, ...]]:
        """Auto mode: the first encoding that decodes cleanly and validates wins, however the value's
        bytes happen to start (a bare-Avro string of length 16 starts with a space, of length 5 with
        a newline). The likely encoding is tried first, so a valid event pays for one attempt; when
        none decodes, the likely encoding's rejection is raised. (A value framed with the expected
        schema id has already been tried by decode.)"""
        likely = sniff(value, framed=self.schema_id is not None or bool(self.writers))
        # a JSON array is never an event: bare Avro is tried first, but a failure is reported as JSON
        array = likely is Encoding.JSON and first_json_byte(value) == OPEN_BRACKET
        if likely is Encoding.JSON and not array:
            try:
                return self._decode_json(value), Encoding.JSON, NO_FIELDS
            except RejectedEvent as json_error:
                try:
                    return self._decode_avro(value, "bare Avro"), Encoding.AVRO, NO_FIELDS
                except RejectedEvent:
                    raise json_error from None
        if likely is Encoding.CONFLUENT:  # 0x00 and a schema id that is not ours; tries bare Avro as well
            return self._decode_confluent(value)
        if likely is Encoding.SINGLE_OBJECT:  # C3 01: bare Avro may start so too, so it is tried after
            try:
                return self._decode_single_object(value)
            except RejectedEvent as framed_error:
                try:
                    return self._decode_avro(value, "bare Avro"), Encoding.AVRO, NO_FIELDS
                except RejectedEvent:
                    raise framed_error from None
        try:
            return self._decode_avro(value, "bare Avro"), Encoding.AVRO, NO_FIELDS
        except RejectedEvent as exc:
            avro_error = exc
        if array:  # report it as the JSON it is
            return self._decode_json(value), Encoding.JSON, NO_FIELDS  # raises (a list is not an object)
        if self._looks_like_bad_magic(value):
            raise RejectedEvent("bad_magic_byte", f"magic byte is {value[0]}, expected {CONFLUENT_MAGIC}: "
                                "the event looks Confluent-framed with a corrupt first byte")
        raise avro_error

    def _looks_like_bad_magic(self, value: bytes) -> bool:
        header = confluent_header(value)
        return (self.schema_id is not None and header is not None and header[0] != CONFLUENT_MAGIC
                and header[1] == self.schema_id)

    def _decode_confluent(self, value: bytes) -> tuple[dict[str, Any], str, tuple[str, ...]]:
        header = confluent_header(value)
        if header is None:
            raise RejectedEvent("bad_framing", f"Confluent wire format needs {CONFLUENT_HEADER_BYTES} header bytes, "
                                f"got {len(value)}")
        magic, schema_id = header
        if magic != CONFLUENT_MAGIC:
            raise RejectedEvent("bad_magic_byte", f"magic byte is {magic}, expected {CONFLUENT_MAGIC} "
                                "(Confluent wire format)")
        try:
            if schema_id == self.schema_id:
                return (self._decode_avro(value[CONFLUENT_HEADER_BYTES:], "Avro after the Confluent header"),
                        Encoding.CONFLUENT, NO_FIELDS)
            writer = self.writers.get(schema_id)
            if writer is None:
                expected = "" if self.schema_id is None else f" (expected {self.schema_id})"
                raise RejectedEvent("unknown_schema_id", f"schema id {schema_id} is not registered for "
                                    f"{self.schema.fullname}{expected}")
            return (self._decode_with(writer, value[CONFLUENT_HEADER_BYTES:], "Avro after the Confluent header"),
                    Encoding.CONFLUENT, writer.unannotated)
        except RejectedEvent:
            if self.input_mode != "auto":
                raise
            try:  # in auto mode, bare Avro may start with 0x00 too: accept it if it decodes cleanly
                return self._decode_avro(value, "bare Avro"), Encoding.AVRO, NO_FIELDS
            except RejectedEvent:
                pass
            raise

    def _decode_with(self, writer: WriterSchema, payload: bytes, what: str) -> dict[str, Any]:
        """An event of another schema version: read with its writer schema, resolved to the policy's."""
        if writer.parsed is None:
            raise RejectedEvent("incompatible_writer_schema", f"{what} was written with {writer.label}, which "
                                f"{self.schema.fullname}'s policy cannot read: {writer.problem}")
        return self._decode_avro(payload, what, writer.parsed)

    def _decode_avro(self, payload: bytes, what: str, writer: Any = None) -> dict[str, Any]:
        buffer = io.BytesIO(payload)
        try:
            if writer is None:
                record = fastavro.schemaless_reader(buffer, self._parsed, None)
            else:
                record = fastavro.schemaless_reader(buffer, writer, self._parsed)
        except _AVRO_ERRORS_TRUNCATED:
            raise RejectedEvent("avro_truncated", f"{what} ended before the record was complete") from None
        except UnicodeDecodeError:
            raise RejectedEvent("invalid_utf8", f"{what} holds a string that is not valid UTF-8") from None
        except Exception as exc:  # fastavro raises IndexError, ValueError, ... on corrupt input
            raise RejectedEvent("avro_decode_error",
                                f"{what} does not match {self.schema.fullname} ({type(exc).__name__})") from None
        if buffer.tell() != len(payload):
            raise RejectedEvent("avro_trailing_bytes", f"{what} has {len(payload) - buffer.tell()} bytes "
                                f"after the end of the {self.schema.fullname} record")
        if not isinstance(record, dict):
            raise RejectedEvent("avro_decode_error", f"{what} did not decode to a record")
        return record

    def _decode_json(self, value: bytes) -> dict[str, Any]:
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            if "utf-8" in str(exc).lower() or "surrogate" in str(exc).lower():
                raise RejectedEvent("invalid_utf8", "the JSON event is not valid UTF-8") from None
            raise RejectedEvent("json_invalid", f"the event is not valid JSON (at character {exc.pos})") from None
        if not isinstance(record, dict):
            raise RejectedEvent("json_invalid", f"the JSON event is a {type(record).__name__}, not an object")
        for name, has_default, default in self._fields:
            if name not in record and has_default:
                record[name] = default
        if not fastavro.validation.validate(record, self._parsed, raise_errors=False):
            avro_json = self._decode_avro_json(value)
            if avro_json is not None:
                return avro_json
            self._explain_json_mismatch(record)
        return record

    def _decode_avro_json(self, value: bytes) -> dict[str, Any] | None:
        """The event with each union value in Avro's JSON form, {"<branch>": value} (`{"string": "x"}`,
        `{"ns.Name": {...}}`), unwrapped to its value, when that makes it valid; None otherwise. Tried
        only after the plain form failed, so a value that is valid as it stands is never reread; plain
        and wrapped unions may mix in one event."""
        if self._expanded is None:
            self._expanded = expand_schema(strip_logical_types(self.schema.raw))
        record = orjson.loads(value)
        for name, has_default, default in self._fields:
            if name not in record and has_default:
                record[name] = default
        unwrapped = _unwrap_unions(self._expanded, record)
        if not fastavro.validation.validate(unwrapped, self._parsed, raise_errors=False):
            return None
        return unwrapped

    def _explain_json_mismatch(self, record: dict[str, Any]) -> None:
        for name, _has_default, _default in self._fields:
            if name not in record:
                raise RejectedEvent("missing_field", f"required field '{name}' of {self.schema.fullname} is missing")
            probe = self._field_probes.get(name)
            if probe and not fastavro.validation.validate({"v": record[name]}, probe[0], raise_errors=False):
                raise RejectedEvent("wrong_type", f"field '{name}' of {self.schema.fullname} does not hold "
                                    f"a valid {probe[1]}")
        raise RejectedEvent("wrong_type", f"the JSON event does not match {self.schema.fullname}")


def _branch_names(branch: Any) -> set[str]:
    """What Avro's JSON encoding may call a union branch: its type name, or a named type's full
    and short name."""
    if isinstance(branch, str):
        return {branch}
    if isinstance(branch, dict):
        if "name" in branch and branch.get("type") in ("record", "enum", "fixed"):
            full = fullname(str(branch["name"]), branch.get("namespace"))
            return {full, full.rsplit(".", 1)[-1]}
        return {str(branch.get("type"))}
    return set()


def _unwrap_unions(schema: Any, datum: Any) -> Any:
    """`datum` with every union value written {"<branch>": value} replaced by the value (a copy;
    everything else as it is). `schema`: fully expanded, logical types stripped."""
    if isinstance(schema, list):
        if isinstance(datum, dict) and len(datum) == 1:
            (key, inner), = datum.items()
            for branch in schema:
                if key in _branch_names(branch):
                    return _unwrap_unions(branch, inner)
        for branch in schema:  # a plain value: descend through the branch of its shape
            kind = branch.get("type") if isinstance(branch, dict) else branch
            if (isinstance(datum, dict) and kind in ("record", "map")) or (isinstance(datum, list)
                                                                           and kind == "array"):
                return _unwrap_unions(branch, datum)
        return datum
    if not isinstance(schema, dict):
        return datum
    kind = schema.get("type")
    if kind == "record" and isinstance(datum, dict):
        out = dict(datum)
        for field in schema["fields"]:
            if field["name"] in out:
                out[field["name"]] = _unwrap_unions(field["type"], out[field["name"]])
        return out
    if kind == "array" and isinstance(datum, list):
        return [_unwrap_unions(schema["items"], v) for v in datum]
    if kind == "map" and isinstance(datum, dict):
        return {k: _unwrap_unions(schema["values"], v) for k, v in datum.items()}
    if isinstance(kind, dict | list):  # {"type": {...}}: a type wrapped once more
        return _unwrap_unions(kind, datum)
    return datum


def decoded_for_json(record: Any) -> Any:
    """Make a decoded record JSON-friendly for display (demo, decrypt output)."""
    if isinstance(record, dict):
        return {k: decoded_for_json(v) for k, v in record.items()}
    if isinstance(record, list):
        return [decoded_for_json(v) for v in record]
    if isinstance(record, bytes):
        return base64.b64encode(record).decode("ascii")
    if isinstance(record, decimal.Decimal):
        return str(record)
    if isinstance(record, datetime.datetime | datetime.date | datetime.time):
        return record.isoformat()
    if isinstance(record, uuid.UUID):
        return str(record)
    return record
