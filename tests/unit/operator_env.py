"""What operator unit tests build by hand: a field's compile context and the part of the sanitizer's
build environment that string-valued operators use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.core.operators.base import FieldContext
from gateway.errors import RejectedEvent


def field_context(ftype: Any, name: str) -> FieldContext:
    """The context of a top-level field `name` of type `ftype` (no named types to resolve)."""
    nullable = isinstance(ftype, list) and "null" in ftype
    inner = ftype
    if nullable:
        rest = [t for t in ftype if t != "null"]
        inner = rest[0] if len(rest) == 1 else rest
    return FieldContext("t.avsc", name, {"name": name, "type": ftype}, nullable, inner, inner,
                        lambda t, _p: (None, t))


class StringEnv:
    """Size checks as the sanitizer makes them (gateway.core.sanitizer.RecordSanitizer.string_check)."""

    topic = "t.sanitized"
    dek_max_uses = 1
    subject_path: str | None = None

    def __init__(self, max_field_bytes: int = 400) -> None:
        self.max_field_bytes = max_field_bytes
        self.max_str_chars = max_field_bytes // 4

    def string_check(self, path: str) -> Callable[[str], None]:
        def check(value: str) -> None:
            size = len(value.encode("utf-8"))
            if size > self.max_field_bytes:
                raise RejectedEvent("field_too_large", f"field '{path}' holds {size} bytes")

        return check
