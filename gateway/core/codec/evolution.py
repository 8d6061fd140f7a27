"""Schema evolution: writer schemas resolved to the policy's, fingerprints, and compatibility checks.

A topic holds events written with several versions of its schema. Each event is decoded with the
schema it was written with (its writer schema: a registry id, or a single-object fingerprint) and
resolved to the policy's schema (the reader) by Avro's resolution rules, so a producer upgrade never
dead-letters valid events. Whether a reader can read a writer is decided by Apache Avro's own
checker (`avro.compatibility`, the port of the Java one the Confluent registry uses), and every
problem is reported with the field path and the rule it breaks. No Kafka, no network here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fastavro
from fastavro.schema import expand_schema, to_parsing_canonical_form
from fastavro.schema import fingerprint as _fastavro_fingerprint

from gateway.core.avro import lookup, named_types
from gateway.errors import PolicyError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"  # Avro single-object encoding: marker, then the 8-byte fingerprint
SINGLE_OBJECT_HEADER_BYTES = 10
COMPATIBILITY_MODES = ("backward", "forward", "full", "none")
UNANNOTATED_ACTION = "drop:not_in_policy"  # the audit action of a writer field the policy does not name

_RULES = {  # avro.compatibility's incompatibility types, said as what breaks
    "reader_field_missing_default_value": "the field is missing from the writer and has no default",
    "type_mismatch": "the type changed",
    "name_mismatch": "the named type was renamed",
    "fixed_size_mismatch": "the fixed size changed",
    "missing_enum_symbols": "the writer has enum symbols the reader lacks (and no enum default)",
    "missing_union_branch": "the reader's union lacks a branch the writer may write",
}


def fingerprint(schema: Any) -> bytes:
    """The schema's CRC-64-AVRO fingerprint over its Parsing Canonical Form, in the byte order the
    single-object header carries (little-endian, as the Avro specification defines it)."""
    return bytes.fromhex(_fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


def single_object_header(schema: Any) -> bytes:
    return SINGLE_OBJECT_MAGIC + fingerprint(schema)


def strip_logical_types(schema: Any) -> Any:
    """The schema without logicalType annotations (the gateway decodes in base types; see gateway.core.codec.raw)."""
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [strip_logical_types(v) for v in schema]
    return schema


@dataclass(frozen=True)
class Incompatibility:
    """One reason a reader cannot read what a writer wrote: where (a field path) and which rule."""

    path: str
    rule: str
    detail: str

    def __str__(self) -> str:
        where = f"field '{self.path}'" if self.path else "the record"
        return f"{where}: {_RULES.get(self.rule, self.rule)} ({self.rule}: {self.detail})"


def incompatibilities(reader: Any, writer: Any) -> list[Incompatibility]:
    """Why `reader` cannot read data written with `writer` (empty: it can), by Avro's resolution rules.

    avro.compatibility merges what it finds into unordered sets, so a record is checked one reader
    field at a time (named types inlined first) to pair each problem with its field."""
    found = _check(reader, writer)
    if len(found) <= 1 or not (isinstance(reader, dict) and reader.get("type") == "record"):
        return found
    expanded = expand_schema(strip_logical_types(reader))
    per_field: list[Incompatibility] = []
    for f in expanded["fields"]:
        per_field += _check({**expanded, "fields": [f]}, writer)
    return per_field or found


def _check(reader: Any, writer: Any) -> list[Incompatibility]:
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

    try:
        parsed_reader, parsed_writer = _avro_parse(reader), _avro_parse(writer)
    except Exception as exc:  # avro raises SchemaParseException and others
        return [Incompatibility("", "invalid_schema", f"{type(exc).__name__}: {exc}")]
    result = ReaderWriterCompatibilityChecker().get_compatibility(parsed_reader, parsed_writer)
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    locations = sorted(result.locations - {"/"}) or ["/"]  # "/" is the merged-in root, not a place
    found = [Incompatibility(_location_path(reader, location), kind.value, message)
             for location, message, kind in zip(locations, sorted(result.messages),
                                                result.incompatibilities, strict=False)]
    return found or [Incompatibility("", "incompatible", "the schemas do not resolve")]


def _avro_parse(schema: Any) -> Any:
    import avro.schema

    return avro.schema.parse(json.dumps(strip_logical_types(schema)))


def _location_path(schema: Any, location: str) -> str:
    """avro.compatibility's location ("/fields/2/type/fields/0") as a field path ("address.city")."""
    names: list[str] = []
    node = schema
    tokens = [t for t in location.split("/") if t]
    named = named_types(schema)
    i = 0
    while i < len(tokens):
        part = tokens[i]
        node = _resolve_named(node, named)
        if part == "fields" and i + 1 < len(tokens) and isinstance(node, dict):
            index = int(tokens[i + 1]) if tokens[i + 1].isdigit() else -1
            fields = node.get("fields", [])
            if 0 <= index < len(fields):
                names.append(fields[index]["name"])
                node = fields[index]["type"]
            i += 2
            continue
        if part in ("type", "items", "values") and isinstance(node, dict) and part in node:
            node = node[part]
        elif part.isdigit() and isinstance(node, list) and int(part) < len(node):
            node = node[int(part)]
        i += 1
    return ".".join(names)


def _resolve_named(node: Any, named: dict[str, Any]) -> Any:
    """A reference (a raw schema's, maybe a short name) as its definition; {"type": X} as X's."""
    if isinstance(node, str):
        return lookup(node, named, short=True) or node
    if isinstance(node, dict) and isinstance(node.get("type"), dict | list | str) and "fields" not in node \
            and node.get("type") not in ("array", "map", "enum", "fixed", "record"):
        inner = node["type"]
        return (lookup(inner, named, short=True) or inner) if isinstance(inner, str) else inner
    return node


def unannotated_paths(reader: Any, writer: Any) -> tuple[str, ...]:
    """Field paths the writer schema has and the reader (the policy) does not: the fields a producer
    added that no annotation covers. Resolution skips them, so they are dropped (privacy by default);
    the audit names them and a metric counts them."""
    reader_named, writer_named = named_types(reader), named_types(writer)
    out: list[str] = []

    def record_of(node: Any, named: dict[str, Any]) -> dict[str, Any] | None:
        node = _resolve_named(node, named)
        if isinstance(node, list):  # a nullable record: the one record branch
            records = [r for r in (record_of(b, named) for b in node) if r is not None]
            return records[0] if len(records) == 1 else None
        if isinstance(node, dict) and node.get("type") == "record":
            return node
        return None

    def walk(reader_record: dict[str, Any], writer_record: dict[str, Any], prefix: str, depth: int) -> None:
        by_name: dict[str, dict[str, Any]] = {}
        for f in reader_record.get("fields", []):
            by_name[f["name"]] = f
            for alias in f.get("aliases", []) or []:
                by_name.setdefault(alias, f)
        for wf in writer_record.get("fields", []):
            path = f"{prefix}{wf['name']}"
            rf = by_name.get(wf["name"])
            if rf is None:
                out.append(path)
                continue
            inner_reader, inner_writer = record_of(rf["type"], reader_named), record_of(wf["type"], writer_named)
            if inner_reader is not None and inner_writer is not None and depth < 32:
                walk(inner_reader, inner_writer, f"{path}.", depth + 1)

    walk(reader, writer, "", 0)
    return tuple(out)


@dataclass(frozen=True)
class WriterSchema:
    """A schema some producer wrote events with, as resolved against the policy's schema.

    `parsed` is None when the policy cannot read it (`problem` says why); events written with it are
    dead-lettered as incompatible_writer_schema rather than decoded wrongly."""

    label: str  # "registry id 12 (version 2)", "fingerprint 8a8f25cce724dd63": for messages, never a value
    raw: dict[str, Any] = field(repr=False)
    parsed: Any = field(repr=False)
    unannotated: tuple[str, ...]
    problem: str | None = None


def resolve_writer(reader: dict[str, Any], writer: dict[str, Any], label: str) -> WriterSchema:
    """The writer schema checked against the policy's (`reader`), ready for fastavro's resolving reader."""
    problems = incompatibilities(reader, writer)
    if problems:
        return WriterSchema(label, writer, None, (), "; ".join(map(str, problems)))
    try:
        parsed = fastavro.parse_schema(strip_logical_types(writer))
    except Exception as exc:  # fastavro raises several types for invalid schemas
        return WriterSchema(label, writer, None, (), f"not a valid Avro schema ({type(exc).__name__})")
    return WriterSchema(label, writer, parsed, unannotated_paths(reader, writer))


def evolution_problems(new: Any, previous: Iterable[tuple[str, Any]], mode: str) -> list[str]:
    """Why the `new` schema would break readers or writers of the `previous` versions ((label, schema)
    pairs) under `mode`, checked against every version (transitively):

    - backward: a reader holding `new` reads everything written with the previous versions;
    - forward: readers holding a previous version read what `new` writes (consumers not yet upgraded);
    - full: both; none: no check.
    """
    if mode not in COMPATIBILITY_MODES:
        raise PolicyError(f"compatibility mode '{mode}' is not one of {', '.join(COMPATIBILITY_MODES)}")
    out: list[str] = []
    if mode == "none":
        return out
    for label, old in previous:
        if mode in ("backward", "full"):
            out += [f"backward ({label}, read with the new schema): {p}" for p in incompatibilities(new, old)]
        if mode in ("forward", "full"):
            out += [f"forward (the new records, read with {label}): {p}" for p in incompatibilities(old, new)]
    return out


def writers_by_fingerprint(reader: dict[str, Any], writers: Sequence[tuple[str, dict[str, Any]]]
                           ) -> dict[bytes, WriterSchema]:
    """Writer schemas a policy accepts in single-object encoding, by fingerprint ((label, schema) pairs)."""
    return {fingerprint(schema): resolve_writer(reader, schema, f"{label} (fingerprint {fingerprint(schema).hex()})")
            for label, schema in writers}
