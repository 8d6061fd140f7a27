"""Avro's named types and primitives as the gateway reads them (on fastavro's parsing): the table of
primitive type names, the named types of a schema, and the resolver of a reference to its definition.

Every walker of a schema (the policy compiler, the generated writer, quality rules, the scanner, schema
evolution, the sample generator) resolves references here, so the naming rules (full names, names
relative to the enclosing namespace, a short name that only one named type has) are written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fastavro

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED_KINDS = frozenset({"record", "error", "enum", "fixed"})  # the types that define a name


def fullname(name: str, namespace: str | None) -> str:
    """A name as Avro qualifies it: a dotted name is already full, else the enclosing namespace is prefixed."""
    return name if "." in name or not namespace else f"{namespace}.{name}"


def named_types(schema: Any) -> dict[str, Any]:
    """Full name -> definition of every named type of `schema`, as fastavro's parser records them (a
    schema fastavro already parsed keeps its table; a raw one is parsed, which validates it too)."""
    if isinstance(schema, Mapping) and "__named_schemas" in schema:
        table: dict[str, Any] = schema["__named_schemas"]  # fastavro's own: read it, never change it
        return table
    parsed = fastavro.parse_schema(schema, _write_hint=False)
    return parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}


def lookup(name: str, named: Mapping[str, Any], namespace: str | None = None, *, short: bool = False) -> Any:
    """The definition a reference names: by its full name (relative to `namespace`) or as written; with
    `short`, also by a short name only one named type has (a raw schema's reference read without its
    enclosing namespace). None when it names nothing."""
    found = named.get(fullname(name, namespace))
    if found is None:
        found = named.get(name)
    if found is None and short and "." not in name:
        matches = [v for k, v in named.items() if k.rsplit(".", 1)[-1] == name]
        found = matches[0] if len(matches) == 1 else None
    return found


def resolve(parsed: Any, named: Mapping[str, Any]) -> Any:
    """A named type's definition (defined earlier in the schema), and {"type": "int"} (a logical type
    stripped) as "int"."""
    if isinstance(parsed, str) and parsed in named:
        parsed = named[parsed]
    if isinstance(parsed, dict) and parsed.get("type") in PRIMITIVES:
        parsed = parsed["type"]
    return parsed
