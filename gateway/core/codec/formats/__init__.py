"""The schema format families, one registry decided at import: SchemaFormat -> its SchemaCodec.

A schemas directory may hold schemas of every family side by side; each file's family is its suffix's
(`.avsc` Avro, `.schema.json` JSON Schema, `.proto` Protobuf). Whatever the family, loading gives the
one policy model (gateway.core.codec.formats.base), so the compiler, operators, purposes, quality rules,
DP and audit are the same for all; only decoding, the sanitized schema's language and encoding differ.
To add a family: implement base.SchemaCodec in a module here and add it to FORMATS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from gateway.core.codec.encoding import Encoding, SchemaFormat
from gateway.core.codec.formats.avro import AvroCodec
from gateway.core.codec.formats.base import RawDecoder, RegisteredWriter, SchemaCodec
from gateway.core.codec.formats.json_schema import JsonSchemaCodec
from gateway.core.codec.formats.missing import MissingExtra
from gateway.core.codec.raw import SchemaFile
from gateway.errors import PolicyError

_protobuf: SchemaCodec
try:  # the protobuf extra (protobuf, grpcio-tools) is optional: without it .proto policies fail start-up
    from gateway.core.codec.formats.protobuf import ProtobufCodec
    _protobuf = ProtobufCodec()
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith(("google", "grpc")):
        raise
    _protobuf = MissingExtra(SchemaFormat.PROTOBUF, (".proto",), "PROTOBUF", Encoding.PROTOBUF, "protobuf",
                             exc.name or "google.protobuf")

__all__ = ["FORMATS", "RawDecoder", "RegisteredWriter", "SchemaCodec", "codec_for", "codec_of_encoding",
           "format_of", "iter_schema_files", "load_schema_file"]

FORMATS: dict[SchemaFormat, SchemaCodec] = {
    SchemaFormat.AVRO: AvroCodec(),
    SchemaFormat.JSON_SCHEMA: JsonSchemaCodec(),
    SchemaFormat.PROTOBUF: _protobuf,
}


def codec_for(schema_format: SchemaFormat) -> SchemaCodec:
    """The implementation of a format family (a family without one is a start-up error, never a per-event one)."""
    codec = FORMATS.get(schema_format)
    if codec is None:
        raise PolicyError(f"schema format '{schema_format}' is not supported by this gateway build")
    return codec


def codec_of_encoding(encoding: Encoding) -> SchemaCodec | None:
    """The non-Avro family whose records carry `encoding` (None for the Avro family's encodings)."""
    for codec in FORMATS.values():
        if codec.format is not SchemaFormat.AVRO and codec.encoding is encoding:
            return codec
    return None


def format_of(path: Path) -> SchemaFormat | None:
    """The family of a schema file by its name's suffix (the longest that matches), None if none does."""
    name = Path(path).name
    best: tuple[int, SchemaFormat] | None = None
    for codec in FORMATS.values():
        for suffix in codec.suffixes:
            if name.endswith(suffix) and len(name) > len(suffix) and (best is None or len(suffix) > best[0]):
                best = (len(suffix), codec.format)
    return None if best is None else best[1]


def load_schema_file(path: Path) -> SchemaFile:
    """One schema file of any family, as the policy model."""
    schema_format = format_of(path)
    if schema_format is None:
        known = ", ".join(s for c in FORMATS.values() for s in c.suffixes)
        raise PolicyError(f"{path}: not a schema file the gateway reads (its name ends with one of {known})")
    return codec_for(schema_format).load(Path(path))


def iter_schema_files(directory: Path) -> Iterator[Path]:
    """Every schema file of a directory, of every family, in name order."""
    yield from sorted(p for p in Path(directory).glob("*") if p.is_file() and format_of(p) is not None)
