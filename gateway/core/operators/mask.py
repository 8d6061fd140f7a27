"""mask: replace a string's characters by a mask character, keeping the first or last N.

``{"mask": {"keep_last": 4}}`` or ``{"mask": {"keep_first": 2}}`` (exactly one, N >= 0), with
``"char"`` (one character, default ``*``) and ``"preserve"`` (characters left as they are, such as
separators: ``"4242 4242 4242 4242"`` with ``{"keep_last": 4, "preserve": " "}`` becomes
``"**** **** **** 4242"``). N counts only characters that are not preserved.

Decisions:

- A value with no more than N maskable characters is masked whole: the operator never reveals a
  whole value, however short (``"1234"`` under keep_last 4 is ``"****"``).
- The output has as many characters (code points) as the input; preserved characters stay where
  they are, so the output reveals the value's length and where its separators sit.
- Strings only (an enum symbol is one of a few known names: drop it or keep it).
"""

from __future__ import annotations

from typing import Any

from gateway.core.operators.base import (
    CALL,
    BuildEnv,
    FieldContext,
    FieldPlan,
    Operator,
    OperatorError,
    Step,
    reject_unknown,
)

_OPTIONS = {"keep_last", "keep_first", "char", "preserve"}


class Mask(Operator):
    name = "mask"

    def __init__(self, keep: int, last: bool, char: str, preserve: str) -> None:
        self.keep = keep
        self.last = last  # keep the last N (True) or the first N (False)
        self.char = char
        self.preserve = preserve

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Mask:
        reject_unknown(options, _OPTIONS, "mask")
        given = [k for k in ("keep_last", "keep_first") if k in options]
        if len(given) != 1:
            raise OperatorError("mask needs exactly one of 'keep_last' or 'keep_first' (an integer of at least 0), "
                                "e.g. {\"mask\": {\"keep_last\": 4}}"
                                + (" but both are set" if len(given) == 2 else ""))
        key = given[0]
        keep = options[key]
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise OperatorError(f"mask option '{key}' must be an integer of at least 0")
        char = options.get("char", "*")
        if not isinstance(char, str) or len(char) != 1:
            raise OperatorError("mask option 'char' must be a string of exactly one character, e.g. \"*\"")
        preserve = options.get("preserve", "")
        if not isinstance(preserve, str):
            raise OperatorError("mask option 'preserve' must be a string of the characters to leave as they are, "
                                "e.g. \" -\"")
        if ctx.base != "string":
            raise OperatorError(f"mask applies to strings, but the field is {ctx.type_label()}; "
                                "use drop, encrypt or generalize")
        # each preserved character once, in the order given (the label and doc show them)
        return cls(keep, key == "keep_last", char, "".join(dict.fromkeys(preserve)))

    def output_type(self, ctx: FieldContext) -> Any:
        return "string"

    def doc(self, ctx: FieldContext) -> str | None:
        side = "last" if self.last else "first"
        if self.keep:
            plural = "s" if self.keep != 1 else ""
            kept = (f"{side} {self.keep} character{plural} kept (a value of {self.keep} or fewer is masked "
                    "whole)")
        else:
            kept = "every character masked"
        preserved = f"; {self.preserve!r} left as they are" if self.preserve else ""
        return f"masked with {self.char!r}: {kept}{preserved}"

    @property
    def label(self) -> str:
        return f"mask:{'last' if self.last else 'first'}{self.keep}"

    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        keep, char, preserve = self.keep, self.char, self.preserve
        chars = env.max_str_chars
        check = env.string_check(fp.path)
        # a multi-byte mask character can make the output longer in bytes than the input
        check_output = len(char.encode("utf-8")) > 1
        if not preserve:
            if keep == 0:
                def mask_all(value: str, _event: Any) -> str:
                    if len(value) > chars:
                        check(value)
                    out = char * len(value)
                    if check_output and len(out) > chars:
                        check(out)
                    return out

                return CALL, mask_all
            if self.last:
                def mask_keep_last(value: str, _event: Any) -> str:
                    n = len(value)
                    if n > chars:
                        check(value)
                    out = char * n if n <= keep else char * (n - keep) + value[n - keep:]
                    if check_output and len(out) > chars:
                        check(out)
                    return out

                return CALL, mask_keep_last

            def mask_keep_first(value: str, _event: Any) -> str:
                n = len(value)
                if n > chars:
                    check(value)
                out = char * n if n <= keep else value[:keep] + char * (n - keep)
                if check_output and len(out) > chars:
                    check(out)
                return out

            return CALL, mask_keep_first

        # with preserved characters: every other character becomes `char` in one str.translate (C; for
        # ASCII about 1 ns a character), then the kept part is the shortest tail (head) holding `keep`
        # maskable characters
        table = _MaskTable(char, preserve)
        preserved = frozenset(preserve)
        last = self.last

        def mask_preserving(value: str, _event: Any) -> str:
            n = len(value)
            if n > chars:
                check(value)
            masked = value.translate(table)
            if keep:
                maskable = n
                for c in preserve:
                    maskable -= value.count(c)
                if maskable > keep:  # else the value is masked whole
                    seen = 0
                    if last:  # walk back from the end until `keep` maskable characters are behind
                        i = n
                        while seen < keep:
                            i -= 1
                            if value[i] not in preserved:
                                seen += 1
                        masked = masked[:i] + value[i:]
                    else:
                        i = 0
                        while seen < keep:
                            if value[i] not in preserved:
                                seen += 1
                            i += 1
                        masked = value[:i] + masked[i:]
            if check_output and len(masked) > chars:
                check(masked)
            return masked

        return CALL, mask_preserving


class _MaskTable(dict[int, str]):
    """str.translate's table: preserved characters map to themselves, any other to the mask
    character. Entries are made on first sight, up to a bound (so odd input cannot grow it)."""

    LIMIT = 4_096

    def __init__(self, char: str, preserve: str) -> None:
        super().__init__({ord(c): c for c in preserve})
        self.char = char

    def __missing__(self, key: int) -> str:
        if len(self) < self.LIMIT:
            self[key] = self.char
        return self.char
