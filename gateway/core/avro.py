"""Avro's named types and primitives as the gateway reads them (on fastavro's parsing): the resolver of a named
type to its definition and the table of primitive type names. The writer uses them; the other copies (the
compiler's and operators/base.py's primitive sets) move here in phase B of issue #32."""

from __future__ import annotations

from typing import Any

PRIMITIVES = ("string", "bytes", "int", "long", "float", "double", "boolean")


def resolve(parsed: Any, named: dict[str, Any]) -> Any:
    """A named type's definition (defined earlier in the schema), and {"type": "int"} (a logical type
    stripped) as "int"."""
    if isinstance(parsed, str) and parsed in named:
        parsed = named[parsed]
    if isinstance(parsed, dict) and parsed.get("type") in PRIMITIVES:
        parsed = parsed["type"]
    return parsed
