"""`"drop"`: the field is left out of the sanitized record (also what an unannotated field gets)."""

from __future__ import annotations

from typing import Any

from gateway.core.operators.base import FieldContext, Operator, reject_unknown


class Drop(Operator):
    name = "drop"
    drops = True

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Drop:
        reject_unknown(options, set(), "drop")
        return cls()
