"""Source of the functions the quality path generates per schema (as gateway/core/sanitizer.py does per record).

A rule is checked per event, so the checker and the gate each compile their plan once into one
straight-line function: no loop over rule objects, no call per simple test, no list unless a rule
fails. Anything a schema declares (field names, bounds, allowed values, regexes, literals) reaches the
function through its namespace under a generated name; the code itself is only the templates of
gateway/core/quality/rules.py and gate.py, so nothing from a schema is ever parsed as code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# the failed rule indexes of one event: None until one fails, then a new list (the common case allocates nothing)
_FAIL = ("if failed is None:", "    failed = [{rule}]", "else:", "    failed.append({rule})")


class FunctionSource:
    """One function being generated: its lines, and the namespace holding its constants."""

    def __init__(self, signature: str) -> None:
        self.lines = [f"def {signature}:"]
        self.namespace: dict[str, Any] = {}
        self.reads: dict[str, str] = {}  # top-level field -> the local holding its value (read once)
        self._temps = 0

    def const(self, value: Any) -> str:
        """A name for `value` in the function's namespace."""
        name = f"c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def temp(self, hint: str) -> str:
        """A local name no other part of the function uses (parts emitted by different owners never clash)."""
        self._temps += 1
        return f"{hint}_{self._temps}"

    def add(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def value_of(self, field: str, get: str = "get") -> str:
        """The local holding the top-level field's value: read here, at the function's top level, the first time."""
        local = self.reads.get(field)
        if local is None:
            local = self.reads[field] = f"v{len(self.reads)}"
            self.add(1, f"{local} = {get}({self.const(field)})")
        return local

    def fail(self, depth: int, rule: int | str) -> None:
        """Record a failed rule: an index, or the name of a local or constant holding one."""
        text = str(int(rule)) if isinstance(rule, int) else rule
        for line in _FAIL:
            self.add(depth, line.format(rule=text))

    def build(self, name: str, filename: str) -> Callable[..., Any]:
        code = compile("\n".join(self.lines) + "\n", filename, "exec")
        exec(code, self.namespace)  # noqa: S102 - generated from this package's templates only
        return self.namespace[name]  # type: ignore[no-any-return]
