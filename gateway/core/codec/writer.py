"""The writer: Avro bytes of a sanitized record, from an encoder generated once per schema (a straight-line
function per record type; fastavro's schemaless writer for what it does not cover), Confluent framing, JSON."""

from __future__ import annotations

import base64
import decimal
import io
import struct
from collections.abc import Callable
from typing import Any

import fastavro
import orjson

from gateway.core.avro import resolve


def avro_bytes(parsed: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def zigzag_varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = 1024
_SMALL_VARINTS = tuple(zigzag_varint(n) for n in range(_SMALL))  # lengths and small counts, built once


def plaintext_encoder(parsed: Any) -> Any:
    """A function value -> Avro bytes for `parsed`; strings, bytes, numbers and booleans, unions of null
    and one of them, arrays of them and records of them skip fastavro's writer (a BytesIO and a writer
    call cost more than the encryption of a short field); a length prefix (or small value) comes from a
    table. Other types go through fastavro. The values are a validated record's: the decoder checked
    their types."""
    fast = _fast_encoder(parsed)
    if fast is None:
        return lambda value: avro_bytes(parsed, value)
    if isinstance(resolve(parsed, {}), str):  # a primitive: the shortcut takes every value fastavro does
        return fast

    def encode(value: Any) -> bytes:
        try:
            return fast(value)
        except Exception:  # a value the shortcut does not take (e.g. a record's missing key): fastavro decides
            return avro_bytes(parsed, value)
    return encode


_PACK_DOUBLE, _PACK_FLOAT = struct.Struct("<d").pack, struct.Struct("<f").pack


def fast_record_encoder(parsed: Any) -> Callable[[Any], bytes] | None:
    """The encoder written here of a parsed schema whose every type it covers (`plaintext_encoder`'s, and
    enums), or None. Its output is fastavro's for every value it takes; it raises on a value it does not
    take (a wrong type, a missing key, an unknown symbol), and the caller then asks fastavro's writer."""
    return _fast_encoder(parsed, parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {})


def _fast_encoder(parsed: Any, named: dict[str, Any] | None = None) -> Any:
    """The encoder of `parsed` written here, or None when fastavro's writer is needed."""
    small, varint = _SMALL_VARINTS, zigzag_varint
    named = named or {}
    parsed = resolve(parsed, named)
    if parsed == "string":
        def encode_string(value: str) -> bytes:
            data = value.encode()
            n = len(data)
            return (small[n] if n < _SMALL else varint(n)) + data
        return encode_string
    if parsed == "bytes":
        def encode_bytes(value: bytes) -> bytes:
            n = len(value)
            return (small[n] if n < _SMALL else varint(n)) + value
        return encode_bytes
    if parsed in ("int", "long"):
        def encode_long(value: int) -> bytes:
            return small[value] if 0 <= value < _SMALL else varint(value)
        return encode_long
    if parsed == "double":
        return _PACK_DOUBLE
    if parsed == "float":
        return _PACK_FLOAT
    if parsed == "boolean":
        return lambda value: b"\x01" if value else b"\x00"
    if isinstance(parsed, list) and len(parsed) == 2 and "null" in parsed:
        null_index = parsed.index("null")
        inner = _fast_encoder(parsed[1 - null_index], named)
        if inner is None:
            return None
        null_tag, value_tag = small[null_index], small[1 - null_index]

        def encode_optional(value: Any) -> bytes:
            return null_tag if value is None else value_tag + inner(value)
        return encode_optional
    if isinstance(parsed, dict) and parsed.get("type") == "array":
        item = _fast_encoder(parsed["items"], named)
        if item is None:
            return None

        def encode_array(values: list[Any]) -> bytes:
            if not values:
                return b"\x00"
            n = len(values)
            return b"".join((small[n] if n < _SMALL else varint(n), *map(item, values), b"\x00"))
        return encode_array
    if isinstance(parsed, dict) and parsed.get("type") == "record":
        return _record_encoder(parsed, named)
    if isinstance(parsed, dict) and parsed.get("type") == "enum":
        index = {symbol: small[i] for i, symbol in enumerate(parsed["symbols"])}  # an unknown one: KeyError
        return index.__getitem__
    return None


def _record_encoder(parsed: dict[str, Any], named: dict[str, Any]) -> Any:
    """One straight-line function per record schema (as transforms.compile_record builds the sanitizer):
    strings, bytes and integers inline, other fields through their own encoders, one join. Its source
    holds only generated names (k0, e0, s0...): field names and encoders are bound through the
    namespace, so nothing from a schema is ever parsed as code."""
    namespace: dict[str, Any] = {"S": _SMALL_VARINTS, "V": zigzag_varint, "SMALL": _SMALL}
    lines, parts = ["def encode_record(r):"], []
    for i, f in enumerate(parsed["fields"]):
        field_type = resolve(f["type"], named)
        namespace[f"k{i}"] = f["name"]
        if field_type == "string":
            lines.append(f"    s{i} = r[k{i}].encode()")
            parts += [f"(S[n{i}] if (n{i} := len(s{i})) < SMALL else V(n{i}))", f"s{i}"]
        elif field_type == "bytes":
            lines.append(f"    s{i} = r[k{i}]")
            parts += [f"(S[n{i}] if (n{i} := len(s{i})) < SMALL else V(n{i}))", f"s{i}"]
        elif field_type in ("int", "long"):
            parts.append(f"(S[x{i}] if 0 <= (x{i} := r[k{i}]) < SMALL else V(x{i}))")
        elif isinstance(field_type, list) and len(field_type) == 2 and "null" in field_type and \
                field_type[1 - field_type.index("null")] == "bytes":  # an optional ciphertext
            null_tag, value_tag = (b"\x00", b"\x02") if field_type[0] == "null" else (b"\x02", b"\x00")
            namespace[f"t{i}"], namespace[f"u{i}"] = null_tag, value_tag
            parts.append(f"(t{i} if (s{i} := r[k{i}]) is None else "
                         f"u{i} + (S[n{i}] if (n{i} := len(s{i})) < SMALL else V(n{i})) + s{i})")
        else:
            encode = _fast_encoder(field_type, named)
            if encode is None:
                return None
            namespace[f"e{i}"] = encode
            parts.append(f"e{i}(r[k{i}])")
    lines.append("    return b''.join((" + "".join(f"{part}, " for part in parts) + "))")
    code = compile("\n".join(lines) + "\n", f"<avro writer {parsed.get('name', 'record')}>", "exec")
    exec(code, namespace)  # noqa: S102 - generated from the template above only
    return namespace["encode_record"]


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return str(value)
    raise TypeError(type(value).__name__)


def json_bytes(record: dict[str, Any]) -> bytes:
    """JSON for output records: bytes become base64 strings, decimals strings."""
    return orjson.dumps(record, default=_json_default)
