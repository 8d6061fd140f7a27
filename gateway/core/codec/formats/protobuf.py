"""Protobuf as a format family: Confluent-framed proto3 messages (magic byte 0, the 4-byte registry id,
the message-index path, the message), with the same policy model as Avro.

The schema, its options and the mapping to the policy model are gateway.core.codec.protobuf's; this
module plugs them into the SchemaCodec interface. Each `.proto` is compiled once (by protoc) and its
compiled form kept by file and text, so a policy's purposes and its sanitized schema share it.

Versions: Protobuf readers skip fields they do not know and default the ones that are missing, so
every registered version whose shared field numbers keep their meaning is readable with the
policy's schema; a field only the writer has is dropped (and named in the audit, as for Avro).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from gateway.core.codec.encoding import CONFLUENT_HEADER_BYTES, Encoding, SchemaFormat
from gateway.core.codec.evolution import COMPATIBILITY_MODES
from gateway.core.codec.formats.base import Decoded, RegisteredWriter, RegistryFramedDecoder
from gateway.core.codec.protobuf import (
    ProtoDecoder,
    ProtoSchema,
    SanitizedProto,
    field_conflicts,
    load_proto,
    message_protos,
    read_message_indexes,
    registered_file,
    structure,
    write_message_indexes,
)
from gateway.core.codec.raw import NO_FIELDS, SchemaFile
from gateway.errors import PolicyError, RejectedEvent

ROOT_INDEX = write_message_indexes((0,))  # the sanitized record is its file's first message


@dataclass(frozen=True)
class _Version:
    """What the decoder needs of a registered version: where its file puts the record's message, and
    the names of the fields only it has (by number, for the audit)."""

    index_path: tuple[int, ...]
    extra_names: dict[int, str]


class ProtobufDecoder(RegistryFramedDecoder):
    """Decodes one topic's Confluent-framed Protobuf events into the policy model."""

    family = "Protobuf"
    min_bytes = CONFLUENT_HEADER_BYTES + 1  # the message indexes follow the header: one byte at least
    framing = f"Confluent-framed Protobuf needs {CONFLUENT_HEADER_BYTES} header bytes and the message indexes"

    def __init__(self, schema: SchemaFile, proto: ProtoSchema, schema_id: int | None, max_record_bytes: int,
                 writers: dict[int, RegisteredWriter] | None = None) -> None:
        super().__init__(schema, schema_id, max_record_bytes, writers)
        self.messages = ProtoDecoder(proto.root)
        self.own = _Version(message_protos(proto.file)[proto.root.full_name][1], {})

    def decode_event(self, value: bytes | None) -> Decoded:
        schema_id, writer = self._version(value)
        assert value is not None  # _version refused an empty one
        version = self.own if writer is None else writer.reader
        indexes, start = read_message_indexes(value, CONFLUENT_HEADER_BYTES)
        if indexes != version.index_path:
            raise RejectedEvent("protobuf_unknown_message_index", f"message index {list(indexes)} does not name "
                                f"{self.schema.fullname} in schema id {schema_id} (it is "
                                f"{list(version.index_path)}): the event is another message type")
        record, unknown = self.messages.decode(value[start:])
        if not unknown:
            return record, Encoding.PROTOBUF, NO_FIELDS
        # fields the policy's schema does not have: named when the writer's version names them
        named = tuple(_named(path, version.extra_names) for path in unknown)
        return record, Encoding.PROTOBUF, named


def _named(path: str, names: dict[int, str]) -> str:
    prefix, _, number = path.rpartition("#")
    if not prefix and number.isdigit() and int(number) in names:
        return names[int(number)]
    return path


class ProtobufCodec:
    format = SchemaFormat.PROTOBUF
    suffixes = (".proto",)
    registry_type = "PROTOBUF"
    encoding = Encoding.PROTOBUF

    def __init__(self) -> None:
        # compiled once per schema file and text (a policy's purposes share their schema's)
        self._compiled: dict[tuple[Path, str], ProtoSchema] = {}
        self._sanitized: dict[tuple[Path, str, str], SanitizedProto] = {}

    def compiled(self, schema: SchemaFile) -> ProtoSchema:
        key = (schema.path, schema.native or "")
        proto = self._compiled.get(key)
        if proto is None:
            proto = self._compiled[key] = load_proto(schema.path)
        return proto

    def sanitized(self, schema: SchemaFile, sanitized: dict[str, Any]) -> SanitizedProto:
        """The sanitized .proto of a plan (or a purpose's view: its record's namespace names the view)."""
        key = (schema.path, schema.native or "", str(sanitized["name"]))
        derived = self._sanitized.get(key)
        if derived is None:
            proto = self.compiled(schema)
            view = _view_of(proto.root.full_name, str(sanitized["name"]))
            derived = self._sanitized[key] = SanitizedProto(proto, sanitized, view)
        return derived

    def load(self, path: Path) -> SchemaFile:
        proto = load_proto(Path(path))
        try:
            parsed = fastavro.parse_schema(proto.avro)
        except Exception as exc:  # fastavro raises several types
            raise PolicyError(f"{path}: its record form is not valid ({exc})") from None
        self._compiled[(Path(path), proto.text)] = proto
        return SchemaFile(Path(path), proto.avro, parsed, SchemaFormat.PROTOBUF, proto.text)

    def decoder(self, schema: SchemaFile, input_mode: str, schema_id: int | None, max_record_bytes: int,
                writers_by_id: dict[int, Any], writers_by_fingerprint: dict[bytes, Any]) -> ProtobufDecoder:
        return ProtobufDecoder(schema, self.compiled(schema), schema_id, max_record_bytes, writers_by_id)

    def same_schema(self, schema: SchemaFile, registered: str) -> bool:
        try:
            return structure(registered_file(registered, "registered schema")) == structure(self.compiled(schema).file)
        except PolicyError:
            return False

    def writer(self, schema: SchemaFile, registered: str, label: str) -> RegisteredWriter:
        """A registered version: readable unless a field number both have means another thing there
        (another type, repeated in one only) or it lacks the record's message; its fields the policy
        does not have are dropped."""
        proto = self.compiled(schema)
        root = proto.root.full_name
        try:
            file = registered_file(registered, label)
        except PolicyError as exc:
            return RegisteredWriter(label, None, (), f"not a Protobuf schema the gateway reads ({exc})")
        messages = message_protos(file)
        if root not in messages:
            return RegisteredWriter(label, None, (), f"it has no message {root}")
        theirs, index_path = messages[root]
        ours = {f.number for f in proto.root.fields}
        extra = {f.number: f.name for f in theirs.field if f.number not in ours}
        version = _Version(index_path, extra)
        unannotated = tuple(extra.values())
        conflicts = field_conflicts(proto.file, root, file, root)
        if conflicts:
            return RegisteredWriter(label, version, unannotated, "; ".join(conflicts[:3]))
        return RegisteredWriter(label, version, unannotated)

    def sanitized_schema(self, schema: SchemaFile, sanitized: dict[str, Any]) -> str:
        return self.sanitized(schema, sanitized).text

    def sanitized_problems(self, text: str, previous: Sequence[tuple[str, str]], compatibility: str) -> list[str]:
        """Protobuf's rule, both ways alike: a field number keeps its meaning in every version (a field
        added or removed is read as missing or skipped, and the sanitized .proto reserves the numbers
        it drops, so they are never reused)."""
        if compatibility not in COMPATIBILITY_MODES:
            raise PolicyError(f"compatibility mode '{compatibility}' is not one of {', '.join(COMPATIBILITY_MODES)}")
        if compatibility == "none":
            return []
        new = registered_file(text, "the sanitized schema")
        new_root = _root_name(new)
        out: list[str] = []
        for label, old_text in previous:
            try:
                old = registered_file(old_text, label)
            except PolicyError as exc:
                out.append(f"{label}: {exc}")
                continue
            out += [f"{label}: {p}" for p in field_conflicts(new, new_root, old, _root_name(old))]
        return out

    def encoder(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[dict[str, Any]], bytes]:
        encode = self.sanitized(schema, sanitized).encode

        def framed(record: dict[str, Any]) -> bytes:
            return ROOT_INDEX + encode(record)
        return framed

    def reader(self, schema: SchemaFile, sanitized: dict[str, Any]) -> Callable[[bytes], dict[str, Any]]:
        derived = self.sanitized(schema, sanitized)
        messages = ProtoDecoder(derived.root)

        def read(payload: bytes) -> dict[str, Any]:
            indexes, start = read_message_indexes(payload, 0)
            if indexes != (0,):
                raise ValueError("not the sanitized record's message")
            record, _ = messages.decode(payload[start:])
            return record
        return read


def _root_name(file: Any) -> str:
    first = file.message_type[0].name
    return f"{file.package}.{first}" if file.package else first


def _view_of(raw_root: str, sanitized_name: str) -> str:
    """The view a sanitized record name was derived under ("sanitized", or a purpose's name)."""
    raw_namespace = raw_root.rpartition(".")[0]
    namespace = sanitized_name.rpartition(".")[0]
    if raw_namespace and namespace.startswith(raw_namespace + "."):
        return namespace[len(raw_namespace) + 1:]
    return namespace or "sanitized"
