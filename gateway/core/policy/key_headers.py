"""The raw record's key and headers under the policy, like fields.

Producers put tenant ids, trace ids and sometimes e-mail addresses in a record's key and headers.
Privacy by default: the gateway drops them all. The record-level privacy settings may name them,
each with a field's action and its options (the same operators, gateway/core/operators/):

    "privacy": {...,
      "key": {"tokenize": {"domain": "customer"}},
      "headers": {"x-tenant": "keep", "x-user-email": {"tokenize": {"domain": "email", "normalizer": "email"}},
                  "x-trace": {"encrypt": {"roles": ["support"]}}, "x-debug": "drop"}}

Only keep, drop, tokenize and encrypt apply (a header or key is bytes: the others' options speak of
dates, numbers and text fields). tokenize reads the value as UTF-8 text; keep and encrypt take the
bytes as they are. An unnamed header stays dropped, and the gateway's own headers (``gateway-*``)
cannot be named: a raw ``gateway-*`` header is always dropped, so a producer cannot forge the
provenance, policy or key headers a consumer trusts.

Where the results go:
- a named header: a header of the same name on the sanitized record (the token, the kept bytes, or the
  ciphertext, bound like a field's to topic, path ``(header)<name>``, subject, record and the header's
  occurrence among those of its name);
- the key: the sanitized record's key is the subject token whenever the policy names a subject (it
  partitions the sanitized topic by subject, which the DP stages, consent and erasure rely on), and the
  key's result goes in the ``gateway-key`` header. Without a subject, a kept or tokenized key is the
  record key (equal raw keys stay on one partition, as the producer meant); an encrypted key is never
  a record key (its nonce is random, so equal keys would scatter): it goes in ``gateway-key``.
- purpose views carry neither: a purpose publishes what it names, and its ``fields`` name fields only.

The audit lists the action on the key and on each named header under these paths (never a value),
beside the fields'.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core import operators
from gateway.core.operators.base import FieldContext, FieldPlan, Operator, OperatorError, Shape

WHERE_KEY = "(record).key"
WHERE_HEADERS = "(record).headers"
KEY_PATH = "(record key)"  # the path the audit, messages and ciphertexts' associated data name
HEADER_PATH = "(header)"  # + the header's name (field paths are Avro names: no parenthesis, no collision)
KEY_HEADER = "gateway-key"  # the key's result when it is not the record key
GATEWAY_PREFIX = "gateway-"  # the gateway's own headers: never named, always dropped from raw records
ACTIONS = ("keep", "drop", "tokenize", "encrypt")  # what a key or a header may be given


def header_path(name: str) -> str:
    return HEADER_PATH + name


@dataclass(frozen=True)
class HeaderRule:
    """A named header: its name and its compiled action (None: dropped, said in the audit)."""

    name: str
    plan: FieldPlan | None

    @property
    def path(self) -> str:
        return header_path(self.name)


@dataclass(frozen=True)
class KeyHeadersPlan:
    """The compiled key and header actions of a policy (nothing named: everything dropped)."""

    key: FieldPlan | None = None  # None: the raw key is dropped
    key_label: str | None = None  # the key's action as the audit names it (None: not named)
    headers: tuple[HeaderRule, ...] = ()
    replaces_key: bool = False  # the key's result is the record key (no subject; keep or tokenize)

    @property
    def actions(self) -> dict[str, str]:
        """path -> action label, for the audit and `policy show` (named ones only)."""
        out = {} if self.key_label is None else {KEY_PATH: self.key_label}
        for rule in self.headers:
            out[rule.path] = rule.plan.operator.label if rule.plan is not None else "drop"
        return out

    @property
    def operators(self) -> tuple[Operator, ...]:
        """Every compiled (not dropping) operator: the walks of the plan (roles, retentions) visit them."""
        plans = [self.key, *(rule.plan for rule in self.headers)]
        return tuple(fp.operator for fp in plans if fp is not None)

    @property
    def published_headers(self) -> tuple[HeaderRule, ...]:
        return tuple(r for r in self.headers if r.plan is not None)


NOTHING = KeyHeadersPlan()


def reads_text(operator: Operator) -> bool:
    """tokenize reads a key or header as UTF-8 text (its normalizers work on text); the others take bytes."""
    return operator.name == "tokenize"


def _no_records(ftype: Any, _path: str) -> tuple[Shape | None, Any]:
    return None, ftype  # a key or header is bytes or text: nothing to descend into


def _context(schema: str, path: str, action: str, retention_days: int | None) -> FieldContext:
    """tokenize reads the bytes as text; keep and encrypt take them as they are."""
    ftype = "string" if action == "tokenize" else "bytes"
    return FieldContext(schema, path, {"name": path, "type": ftype}, False, ftype, ftype, _no_records,
                        retention_days)


def _compile_one(declared: Any, schema: str, path: str, where: str, retention_days: int | None,
                 error: Callable[[str, str], None]) -> Operator | None:
    if isinstance(declared, str):
        action, options = declared, {}
    elif isinstance(declared, dict) and len(declared) == 1:
        (action, options), = declared.items()
        options = {} if options is None else options
        if not isinstance(options, dict):
            error(where, f"options of '{action}' must be an object")
            return None
    else:
        error(where, "must be an action name or {\"action\": {options}}, as for a field")
        return None
    if action not in ACTIONS:
        error(where, f"unknown action '{action}' for a record key or header (expected one of {', '.join(ACTIONS)})")
        return None
    try:
        return operators.registry()[action].compile(options, _context(schema, path, action, retention_days))
    except OperatorError as exc:
        error(where, str(exc))
        return None


class _JsonObject(dict[str, Any]):
    """A JSON object that remembers the keys written in it more than once (JSON parsers keep the last)."""

    duplicates: tuple[str, ...] = ()


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    if len(obj) < len(pairs):
        obj.duplicates = tuple(sorted({k for k, _ in pairs if sum(1 for other, _ in pairs if other == k) > 1}))
    return obj


def duplicate_header_names(text: bytes) -> tuple[str, ...]:
    """Header names the schema file's "headers" setting writes twice: parsed, the first is silently lost
    (the policy would not say what its author wrote), so `policy lint` and start-up refuse it."""
    try:
        doc = json.loads(text, object_pairs_hook=_json_object)
    except ValueError:  # not JSON: the loader says so
        return ()
    privacy = doc.get("privacy") if isinstance(doc, dict) else None
    headers = privacy.get("headers") if isinstance(privacy, dict) else None
    return headers.duplicates if isinstance(headers, _JsonObject) else ()


def compile_key_headers(key: Any, headers: Any, schema: str, subject: str | None, retention_days: int | None,
                        adopt: Callable[[str, Operator], None],
                        error: Callable[[str, str], None]) -> KeyHeadersPlan:
    """The record-level "key" and "headers" settings (None: not written). `adopt(path, operator)` gives
    each compiled operator to the compiler's bookkeeping (token domains, normalizers, key uses, the
    subject checks), as a field's; errors name the setting."""
    key_plan, key_label = None, None
    if key is not None:
        op = _compile_one(key, schema, KEY_PATH, WHERE_KEY, retention_days, error)
        if op is not None:
            key_label = op.label
            if not op.drops:
                adopt(KEY_PATH, op)
                key_plan = FieldPlan(KEY_PATH, KEY_PATH, op)
    rules: list[HeaderRule] = []
    if headers is not None and not isinstance(headers, dict):
        error(WHERE_HEADERS, "must be an object: {\"header name\": action, ...}")
    elif headers:
        seen: dict[str, str] = {}
        for name, declared in headers.items():
            where = f"{WHERE_HEADERS}.{name}"
            if not name or not name.isprintable():
                error(WHERE_HEADERS, f"header name {name!r} is empty or holds control characters")
                continue
            if name.lower().startswith(GATEWAY_PREFIX):
                error(where, f"'{name}' is a gateway header name (gateway-*): the gateway sets those itself, and "
                             "drops them from raw records so a producer cannot forge them; rename the header")
                continue
            if name.lower() in seen:
                error(where, f"header '{name}' is named twice (as '{seen[name.lower()]}' too; header names "
                             "are compared ignoring case here): name it once")
                continue
            seen[name.lower()] = name
            path = header_path(name)
            op = _compile_one(declared, schema, path, where, retention_days, error)
            if op is None:
                continue
            if op.drops:
                rules.append(HeaderRule(name, None))
                continue
            adopt(path, op)
            rules.append(HeaderRule(name, FieldPlan(name, path, op)))
    replaces = key_plan is not None and subject is None and key_plan.operator.deterministic
    return KeyHeadersPlan(key_plan, key_label, tuple(rules), replaces)
