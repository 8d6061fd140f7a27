"""`{"tokenize": {"domain": D, "normalizer": N}}`: a deterministic keyed token (HMAC-SHA256).

The same value in the same domain gives the same token, so joins and counts per subject work;
domains have their own keys, so their tokens are unlinkable. A normalizer (gateway/keys/normalize.py)
runs first, so `A@x.org` and ` a@x.org` are one token; `"region"` is the phone normalizer's
default region for numbers written without a country code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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
from gateway.keys import normalize

DOMAIN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_domain(domain: Any, action: str) -> str:
    if not isinstance(domain, str) or not DOMAIN_RE.match(domain):
        raise OperatorError(f"{action} needs a domain: {{\"{action}\": {{\"domain\": \"customer\"}}}} "
                            "(lowercase letters, digits, '-' and '_')")
    return domain


class Tokenize(Operator):
    name = "tokenize"
    can_be_subject = True

    def __init__(self, domain: str, normalizer: str | None, region: str) -> None:
        self.domain = domain
        self.normalizer = normalizer
        self.region = region

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Tokenize:
        reject_unknown(options, {"domain", "normalizer", "region"}, "tokenize")
        domain = check_domain(options.get("domain"), "tokenize")
        if ctx.base != "string":
            raise OperatorError(f"tokenize applies to strings, but the field is {ctx.type_label()}; "
                                "use encrypt or drop")
        normalizer = options.get("normalizer")
        region = options.get("region", "US")
        if normalizer is not None:
            try:
                normalize.normalizer(normalizer, region)
            except ValueError as exc:
                raise OperatorError(str(exc)) from None
        elif "region" in options:
            raise OperatorError("option 'region' belongs to the phone normalizer: add \"normalizer\": \"phone\"")
        return cls(domain, normalizer, region)

    @property
    def label(self) -> str:
        return f"tokenize:{self.domain}" + (f":{self.normalizer}" if self.normalizer else "")

    @property
    def token_domains(self) -> frozenset[str]:
        return frozenset({self.domain})

    @property
    def token_normalizers(self) -> dict[str, str | None]:
        return {self.domain: normalize.spec(self.normalizer, self.region)}

    def output_type(self, ctx: FieldContext) -> Any:
        return "string"

    def doc(self, ctx: FieldContext) -> str:
        how = f", {self.normalizer} normalizer" if self.normalizer else ""
        return f"token (HMAC-SHA256, domain {self.domain}{how})"

    def token_function(self, env: BuildEnv) -> Callable[[str], str]:
        """value -> token: the normalizer, then the domain's HMAC (also what redaction and forget use)."""
        token = env.tokenizer(self.domain).token
        if self.normalizer is None:
            return token
        norm = normalize.normalizer(self.normalizer, self.region)

        def normalized_token(value: str) -> str:
            return token(norm(value))

        return normalized_token

    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        if fp.path == env.subject_path:  # the event's subject is this field's token, computed first: reuse it
            def subject_token(_value: str, event: Any) -> str:
                return event.subject

            return CALL, subject_token
        chars, check = env.max_str_chars, env.string_check(fp.path)
        token = self.token_function(env)

        def tokenize(value: str, _event: Any) -> str:
            if len(value) > chars:
                check(value)
            return token(value)

        return CALL, tokenize

    def subject_value(self, fp: FieldPlan, env: BuildEnv) -> Callable[[Any], str]:
        chars, check = env.max_str_chars, env.string_check(fp.path)
        token = self.token_function(env)

        def subject_token(value: str) -> str:
            if len(value) > chars:
                check(value)
            return token(value)

        return subject_token
