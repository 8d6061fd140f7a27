"""`"keep"`: the value passes in clear; records inside it are sanitized field by field.

A kept value is size-checked (strings and bytes above max_field_bytes are rejected) but never
parsed: the decoder already validated it against the schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core.operators.base import (
    CALL,
    CHECK_STR,
    COPY,
    BuildEnv,
    FieldContext,
    FieldPlan,
    Opener,
    Operator,
    SanitizeResult,
    Shape,
    Step,
    reject_unknown,
)


class Keep(Operator):
    name = "keep"
    in_clear = True

    def __init__(self, shape: Shape | None, out_type: Any, kind: str) -> None:
        self._shape = shape
        self._out_type = out_type
        self._kind = kind  # the Avro type of a non-null value, named types resolved

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Keep:
        reject_unknown(options, set(), "keep")
        shape, out_type = ctx.keep_type(ctx.field["type"], ctx.path)
        return cls(shape, out_type, ctx.base)

    @property
    def can_be_subject(self) -> bool:  # type: ignore[override]
        return self._shape is None  # a string or a number, not a record

    @property
    def kind(self) -> str:
        """The Avro type of a non-null value ("string", "long", "record", "union", ...)."""
        return self._kind

    @property
    def shape(self) -> Shape | None:
        return self._shape

    def sanitized_field(self, ctx: FieldContext) -> dict[str, Any]:
        out: dict[str, Any] = {"name": ctx.field["name"]}
        if ctx.field.get("doc"):
            out["doc"] = ctx.field["doc"]
        out["type"] = self._out_type
        if "default" in ctx.field:
            out["default"] = ctx.field["default"]
        return out

    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        if self._shape is not None:
            if self._kind == "record":  # a record, not a union holding one: no test of the value's type
                assert self._shape.record is not None
                return CALL, env.compile_record(self._shape.record)
            return CALL, env.shape_step(self._shape, fp.path)
        if self._kind in ("string", "enum"):
            return CHECK_STR, env.string_check(fp.path)
        if self._kind in ("bytes", "fixed", "union"):
            check = env.value_check(fp.path)

            def check_value(value: Any, _event: SanitizeResult) -> Any:
                check(value)
                return value

            return CALL, check_value
        return COPY, None  # numbers, booleans; arrays and maps without records

    def subject_value(self, fp: FieldPlan, env: BuildEnv) -> Callable[[Any], str]:
        return str

    @property
    def opens(self) -> bool:
        return self._shape is not None  # records inside may hold encrypted fields

    def open(self, value: Any, fp: FieldPlan, opener: Opener) -> Any:
        assert self._shape is not None
        return opener.walk(value, self._shape)
