"""`{"redact": {...}}`: free text with the PII entities inside it replaced.

Each entity the detectors find (gateway/core/detectors/: validated, not only pattern-matched) becomes a
placeholder (`<EMAIL>`), or, for entity types listed under "tokenize", its token in that domain
wrapped as `<EMAIL:tok_v1_...>`, so a redacted email in a note still joins with the tokenized email
field (same domain, same normalizer). The audit event counts entities per field and type, never
the text.

A text longer than "max_chars" is never passed through unredacted: by default the event is
dead-lettered (`text_too_long`); with "too_long": "truncate" the text is cut at the last
whitespace before the bound (so no entity is cut in half and left unrecognizable), marked
`[truncated]`, and then redacted.

Options: "entities" (default all of gateway.core.detectors.ENTITIES), "tokenize" ({ENTITY: {"domain": D,
"normalizer": N}}), "max_chars" (default 10000), "too_long" ("dead_letter" | "truncate"),
"phone_region" (default "US": numbers written without a country code).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from gateway.core import detectors as detect
from gateway.core.operators.base import (
    CALL,
    BuildEnv,
    FieldContext,
    FieldPlan,
    Operator,
    OperatorError,
    SanitizeResult,
    Step,
    int_option,
    reject_unknown,
)
from gateway.core.operators.tokenize import check_domain
from gateway.errors import RejectedEvent
from gateway.keys import normalize

TRUNCATED = " [truncated]"
OPTIONS = {"entities", "tokenize", "max_chars", "too_long", "phone_region"}


class Redact(Operator):
    name = "redact"

    def __init__(self, entities: tuple[str, ...], tokenize: dict[str, tuple[str, str | None, str]],
                 max_chars: int, truncate: bool, phone_region: str) -> None:
        self.entities = entities
        self.tokenize = tokenize  # entity -> (domain, normalizer name, region)
        self.max_chars = max_chars
        self.truncate = truncate
        self.phone_region = phone_region

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Redact:
        reject_unknown(options, OPTIONS, "redact")
        if ctx.base != "string":
            raise OperatorError(f"redact applies to strings (free text), but the field is {ctx.type_label()}")
        entities = options.get("entities", list(detect.ENTITIES))
        if not isinstance(entities, list) or not entities or not all(isinstance(e, str) for e in entities):
            raise OperatorError(f"option 'entities' must be a non-empty list of {', '.join(detect.ENTITIES)}")
        unknown = sorted(set(entities) - set(detect.ENTITIES))
        if unknown:
            raise OperatorError(f"unknown entities {unknown} (known: {', '.join(detect.ENTITIES)})")
        region = options.get("phone_region", "US")
        if not isinstance(region, str):
            raise OperatorError("option 'phone_region' must be a region code such as US or GB")
        try:
            normalize.normalizer("phone", region)
        except ValueError as exc:
            raise OperatorError(f"option 'phone_region': {exc}") from None
        tokenize = cls._compile_tokenize(options.get("tokenize", {}), entities)
        max_chars = int_option(options, "max_chars", 10_000, minimum=64, maximum=1_000_000)
        too_long = options.get("too_long", "dead_letter")
        if too_long not in ("dead_letter", "truncate"):
            raise OperatorError("option 'too_long' must be \"dead_letter\" or \"truncate\"")
        return cls(tuple(e for e in detect.ENTITIES if e in entities), tokenize, max_chars,
                   too_long == "truncate", region)

    @staticmethod
    def _compile_tokenize(spec: Any, entities: list[str]) -> dict[str, tuple[str, str | None, str]]:
        if not isinstance(spec, dict):
            raise OperatorError("option 'tokenize' must map entity types to {\"domain\": D, \"normalizer\": N}")
        out: dict[str, tuple[str, str | None, str]] = {}
        for entity, target in spec.items():
            if entity not in entities:
                raise OperatorError(f"tokenize names {entity!r}, which is not among the redacted entities")
            if not isinstance(target, dict):
                raise OperatorError(f"tokenize.{entity} must be {{\"domain\": D, \"normalizer\": N}}")
            reject_unknown(target, {"domain", "normalizer", "region"}, f"tokenize.{entity}")
            domain = check_domain(target.get("domain"), "tokenize")
            name, region = target.get("normalizer"), target.get("region", "US")
            if name is not None:
                try:
                    normalize.normalizer(name, region)
                except ValueError as exc:
                    raise OperatorError(f"tokenize.{entity}: {exc}") from None
            out[entity] = (domain, name, region)
        return out

    @property
    def label(self) -> str:
        return "redact"

    @property
    def token_domains(self) -> frozenset[str]:
        return frozenset(domain for domain, _, _ in self.tokenize.values())

    @property
    def token_normalizers(self) -> dict[str, str | None]:
        return {domain: normalize.spec(name, region) for domain, name, region in self.tokenize.values()}

    def output_type(self, ctx: FieldContext) -> Any:
        return "string"

    def doc(self, ctx: FieldContext) -> str:
        return f"free text, PII redacted ({', '.join(self.entities)})"

    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        find = detect.detector(self.entities, self.phone_region).find
        replace = self._replacer(env)
        path, max_chars, truncate = fp.path, self.max_chars, self.truncate
        chars, check = env.max_str_chars, env.string_check(fp.path)

        def redact_text(value: str, event: SanitizeResult) -> str:
            if len(value) > chars:
                check(value)  # above max_field_bytes: rejected like any field
            if len(value) > max_chars:
                if not truncate:
                    raise RejectedEvent("text_too_long", f"field '{path}' holds {len(value)} characters, above "
                                        f"the redaction bound max_chars={max_chars}")
                value = _truncate(value, max_chars)
            matches = find(value)
            if not matches:
                return value
            counts = event.entities
            if counts is None:
                counts = event.entities = Counter()
            for m in matches:
                counts[(path, m.entity)] += 1
            return detect.redact(value, matches, replace)

        return CALL, redact_text

    def _replacer(self, env: BuildEnv) -> Callable[[detect.Match, str], str]:
        tokens: dict[str, Callable[[str], str]] = {}
        for entity, (domain, name, region) in self.tokenize.items():
            tokens[entity] = _token_function(env.tokenizer(domain).token,
                                             normalize.normalizer(name, region) if name else None)
        if not tokens:
            return detect.placeholder

        def replace(match: detect.Match, text: str) -> str:
            token = tokens.get(match.entity)
            return f"<{match.entity}:{token(text)}>" if token is not None else f"<{match.entity}>"

        return replace


def _token_function(token: Callable[[str], str], norm: normalize.Normalizer | None) -> Callable[[str], str]:
    if norm is None:
        return token

    def normalized_token(text: str) -> str:
        return token(norm(text))

    return normalized_token


def _truncate(value: str, max_chars: int) -> str:
    """Cut at the last whitespace within the bound, so no entity is left half-cut (and undetected)."""
    head = value[:max_chars - len(TRUNCATED)]
    cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
    return (head[:cut] if cut > 0 else "") + TRUNCATED
