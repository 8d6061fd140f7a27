"""The wire encodings, decided once: each one's name, framing and sniffing, and the headers the gateway sets.

A raw topic may hold Confluent-framed Avro (magic byte 0 + the 4-byte big-endian registry id), Avro's
single-object encoding (C3 01 + the schema's 8-byte fingerprint), bare Avro or JSON; a sanitized
record says which in its `gateway-encoding` header. Every place that frames, sniffs or names an
encoding uses this module, so the set of encodings and the meaning of their bytes live in one file.
"""

from __future__ import annotations

import re
import struct
from enum import StrEnum

from gateway.core.codec.evolution import SINGLE_OBJECT_HEADER_BYTES, SINGLE_OBJECT_MAGIC

# the headers on every sanitized and purpose output
SCHEMA_HEADER = "gateway-schema"  # the sanitized schema's full name
ENCODING_HEADER = "gateway-encoding"  # an Encoding's value
POLICY_HEADER = "gateway-policy"  # the policy's hash
SOURCE_HEADER = "gateway-source"  # provenance: the raw event's topic/partition/offset

CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_BYTES = 5  # magic byte 0, then the 4-byte big-endian schema id
AVRO_CONTAINER_MAGIC = b"Obj\x01"  # an Avro object container file (fastavro.writer's output)
_JSON_WHITESPACE = frozenset(b" \t\n\r")
_JSON_WHITESPACE_RUN = re.compile(rb"[ \t\n\r]*")
OPEN_BRACE, OPEN_BRACKET = ord("{"), ord("[")


class Encoding(StrEnum):
    """A record's wire encoding. A StrEnum: the value is the name in policies (`input:`, `output:`),
    in the `gateway-encoding` header and in the audit."""

    CONFLUENT = "confluent"
    AVRO = "avro"
    JSON = "json"
    SINGLE_OBJECT = "single_object"
    # the other format families' wire encodings (gateway.core.codec.formats): Confluent-framed, always
    JSON_SCHEMA = "json_schema"  # magic byte 0, the 4-byte registry id, JSON validated by the JSON Schema
    PROTOBUF = "protobuf"  # magic byte 0, the 4-byte registry id, the message indexes, the Protobuf message

    @classmethod
    def from_header(cls, value: bytes | str | None) -> Encoding | None:
        """The `gateway-encoding` header's encoding; None when absent, empty or not one the gateway writes."""
        if not value:
            return None
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        try:
            return cls(text)
        except ValueError:
            return None


class SchemaFormat(StrEnum):
    """A schema's format family: how its schema file is written, how its events are framed and decoded,
    and its Schema Registry `schemaType`. Each has one implementation in gateway.core.codec.formats
    (its registry, decided at import). The policy model is the same for all: each format's schema is
    converted at load time into the Avro-shaped record the compiler, operators and audit consume."""

    AVRO = "avro"
    PROTOBUF = "protobuf"
    JSON_SCHEMA = "json_schema"


# the Avro family's encodings: the values of an Avro policy's `input` and `output`
ENCODINGS: tuple[str, ...] = (Encoding.CONFLUENT, Encoding.AVRO, Encoding.JSON, Encoding.SINGLE_OBJECT)
INPUT_MODES: tuple[str, ...] = ("auto", *ENCODINGS)
# each other format family has one encoding, its events' and its sanitized records'
FORMAT_ENCODINGS: dict[SchemaFormat, Encoding] = {SchemaFormat.JSON_SCHEMA: Encoding.JSON_SCHEMA,
                                                  SchemaFormat.PROTOBUF: Encoding.PROTOBUF}


def input_modes(schema_format: SchemaFormat) -> tuple[str, ...]:
    """The `input` values a policy of this format may name ("auto": the format's own framing)."""
    own = FORMAT_ENCODINGS.get(schema_format)
    return INPUT_MODES if own is None else ("auto", own.value)


def output_modes(schema_format: SchemaFormat) -> tuple[str, ...]:
    """The `output` values a policy of this format may name ("same": the input's encoding)."""
    own = FORMAT_ENCODINGS.get(schema_format)
    return ("same", *ENCODINGS) if own is None else ("same", own.value)


def frame_confluent(schema_id: int, payload: bytes) -> bytes:
    """Confluent's wire format: magic byte 0, the registry id (4 bytes, big-endian), the Avro payload."""
    return struct.pack(">bI", CONFLUENT_MAGIC, schema_id) + payload


def confluent_header(value: bytes) -> tuple[int, int] | None:
    """(magic byte, registry id) read from the first 5 bytes whatever the magic byte is (to tell a corrupt
    magic byte from another encoding); None when the value is shorter."""
    if len(value) < CONFLUENT_HEADER_BYTES:
        return None
    return value[0], int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big")


def confluent_id(value: bytes) -> int | None:
    """The registry id of a Confluent-framed value; None when it does not start with the 5-byte header."""
    header = confluent_header(value)
    return header[1] if header is not None and header[0] == CONFLUENT_MAGIC else None


def first_json_byte(value: bytes) -> int:
    """The first byte after JSON whitespace (-1 when there is none)."""
    if not value:
        return -1
    first = value[0]
    if first in _JSON_WHITESPACE:
        run = _JSON_WHITESPACE_RUN.match(value)  # matches at least the first byte
        end = run.end() if run else 0
        first = value[end] if end < len(value) else -1
    return first


def sniff(value: bytes, framed: bool) -> Encoding:
    """The likely encoding of a value without a `gateway-encoding` header: which decoding to try
    first (Avro's bytes may look like anything, so callers that must accept every valid value try
    the others after it).

    JSON when the first byte after JSON whitespace is `{` or `[`; Confluent for magic byte 0 and room
    for the header when `framed` (the reader knows a registry id, or can look ids up); single-object
    for C3 01 and room for the fingerprint; otherwise bare Avro."""
    if first_json_byte(value) in (OPEN_BRACE, OPEN_BRACKET):
        return Encoding.JSON
    if framed and len(value) >= CONFLUENT_HEADER_BYTES and value[0] == CONFLUENT_MAGIC:
        return Encoding.CONFLUENT
    if value[:2] == SINGLE_OBJECT_MAGIC and len(value) >= SINGLE_OBJECT_HEADER_BYTES:
        return Encoding.SINGLE_OBJECT
    return Encoding.AVRO


def output_headers(schema_name: str, encoding: Encoding, policy_hash: str) -> list[tuple[str, bytes]]:
    """The headers that say how a sanitized output was written (before the per-event ones)."""
    return [(SCHEMA_HEADER, schema_name.encode()), (ENCODING_HEADER, encoding.value.encode()),
            (POLICY_HEADER, policy_hash.encode())]
