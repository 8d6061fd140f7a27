"""Hostile input generators shared by the property tests and the real-broker hostile run.

`avro_values(schema)` is a hypothesis strategy for any Avro type; PII fields (the ones a policy
tokenizes, encrypts or drops) can be filled with canaries so tests can prove they never leak.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import strategies as st

from gateway.embedded.samples import CANARIES

PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    "bytes": st.binary(max_size=40),
    # hypothesis copies values between fields of one example: keep canaries out of kept strings
    "string": st.text(max_size=40).filter(lambda s: not any(c in s for c in CANARIES.values())),
}


def avro_values(schema: Any, named: dict[str, Any], canary_fields: frozenset[str] = frozenset(),
                path: str = "") -> st.SearchStrategy[Any]:
    """Values valid for `schema` (a fastavro-parsed schema with logical types stripped)."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return PRIMITIVES[schema]
        return avro_values(named[schema], named, canary_fields, path)
    if isinstance(schema, list):
        return st.one_of(*[avro_values(s, named, canary_fields, path) for s in schema])
    kind = schema["type"]
    if kind == "record":
        fields = {}
        for f in schema["fields"]:
            fpath = f"{path}{f['name']}"
            value = avro_values(f["type"], named, canary_fields, fpath + ".")
            if fpath in canary_fields:
                value = st.sampled_from(sorted(CANARIES.values())) if _is_string(f["type"]) else value
            fields[f["name"]] = value
        return st.fixed_dictionaries(fields)
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(avro_values(schema["items"], named, canary_fields, path[:-1] + "[]."), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), avro_values(schema["values"], named, canary_fields,
                                                                 path[:-1] + "{}."), max_size=3)
    if kind == "fixed":
        return st.binary(min_size=schema["size"], max_size=schema["size"])
    return avro_values(kind, named, canary_fields, path)


def _is_string(schema: Any) -> bool:
    return schema == "string" or (isinstance(schema, list) and "string" in schema and
                                  all(s in ("null", "string") for s in schema))


def mutate(value: bytes, rng: random.Random) -> bytes:
    """One random corruption: flip, truncate, extend, splice or zero a run."""
    if not value:
        return bytes([rng.randrange(256)])
    data = bytearray(value)
    op = rng.randrange(5)
    i = rng.randrange(len(data))
    if op == 0:
        data[i] ^= 1 << rng.randrange(8)
    elif op == 1:
        del data[i:]
    elif op == 2:
        data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    elif op == 3:
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    else:
        data[i:i + 4] = b"\x00" * 4
    return bytes(data)
