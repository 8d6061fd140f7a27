"""`"encrypt"` / `{"encrypt": {"per_subject": true}}` / `{"encrypt": {"roles": [...]}}`: envelope
encryption of the value.

The value's Avro encoding is encrypted with AES-256-GCM by `gateway.keys.envelope.encrypt_field`
(the one encryption path), bound to topic, field path and subject. A shared DEK (format v1) is
taken once per event from the DEK cache and reused by the event's other encrypted fields while it
has uses left; `per_subject` uses the subject's own DEK (format v2), which `gateway forget` erases;
`roles` uses a DEK wrapped under each listed role's KEK (format v3), so only those roles open it.

`retention_days` (or the record's `retention_days` setting) uses the DEK of the event's UTC day for
that retention (format v4; per subject and day with `per_subject`), stored in the key topic only, so
`gateway retention enforce` makes the day unreadable once the retention has passed
(gateway.keys.period_keys).

`roles` with `per_subject` or a retention (format v6) uses the subject's or the day's key of that
role set, stored in the key topic wrapped under each listed role's KEK and under no other key: only
those roles open it, and `gateway forget` and `gateway retention enforce` erase it like the others.

Every ciphertext is bound to its record (format v5, a prefix in front of the formats above): the
associated data ends with the event id as the sanitized record carries it (the raw event's source
coordinates in a view without one) and the element's position in arrays and maps, so a ciphertext
moved to another record of the same subject, or to another element, does not open.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import fastavro

from gateway.core.codec.raw import strip_logical_types
from gateway.core.codec.writer import plaintext_encoder
from gateway.core.operators.base import (
    CALL,
    BuildEnv,
    FieldContext,
    FieldPlan,
    Opener,
    Operator,
    OperatorError,
    SanitizeResult,
    Step,
    reject_unknown,
)
from gateway.keys.envelope import Format, context_prefix, encrypt_field, key_format, record_suffix, subject_suffix
from gateway.keys.period_keys import retention_problem
from gateway.keys.roles import ROLE_NAME_RULE, valid_role

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.keys.envelope import DataKey

SHARED_DOC = "AES-256-GCM ciphertext, privacy-gateway format v1 (gateway decrypt)"
SUBJECT_DOC = "AES-256-GCM ciphertext under the subject's own key, privacy-gateway format v2 (gateway decrypt)"
ROLES_DOC = ("AES-256-GCM ciphertext readable by role(s) {roles} only, privacy-gateway format v3 "
             "(gateway decrypt --role R)")
PERIOD_DOC = ("AES-256-GCM ciphertext under the key of its day, erased {days} day(s) after the day ends{subject}, "
              "privacy-gateway format v4 (gateway decrypt --bootstrap)")
ROLE_KEYED_DOC = ("AES-256-GCM ciphertext readable by role(s) {roles} only, under {key}, privacy-gateway format v6 "
                  "(gateway decrypt --bootstrap --role R)")
MAX_ROLES = 255  # format v3 counts them in one byte


class Encrypt(Operator):
    name = "encrypt"
    deterministic = False  # a fresh nonce per value

    def __init__(self, plaintext_schema: Any, per_subject: bool, roles: tuple[str, ...] = (),
                 retention_days: int | None = None) -> None:
        self.plaintext_schema = plaintext_schema  # parsed Avro schema of the value (null excluded)
        self.per_subject = per_subject
        self.roles = roles  # sorted, unique; empty: not role-scoped
        self.retention_days = retention_days  # None: no retention (the key is not a period key)

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Encrypt:
        reject_unknown(options, {"per_subject", "roles", "retention_days"}, "encrypt")
        per_subject = options.get("per_subject", False)
        if per_subject not in (True, False):
            raise OperatorError("encrypt option per_subject must be true or false")
        roles = _roles_option(options)
        retention_days = _retention_option(options, ctx)
        try:
            plaintext_schema = fastavro.parse_schema(strip_logical_types(ctx.resolved))
        except Exception as exc:  # fastavro raises several types for schemas it cannot parse
            raise OperatorError(f"cannot build the plaintext schema for encryption ({exc})") from None
        return cls(plaintext_schema, bool(per_subject), roles, retention_days)

    @property
    def format(self) -> Format:
        """The key scope of this field's ciphertexts (gateway.keys.envelope.key_format decides)."""
        return key_format(self.per_subject, self.roles, self.retention_days)

    @property
    def label(self) -> str:
        if self.roles:
            scope = "".join((",per_subject" if self.per_subject else "",
                             "" if self.retention_days is None else f",retention_days={self.retention_days}"))
            return "encrypt:roles=" + ",".join(self.roles) + scope
        if self.retention_days is not None:
            return f"encrypt:{'per_subject,' if self.per_subject else ''}retention_days={self.retention_days}"
        return "encrypt:per_subject" if self.per_subject else "encrypt"

    @property
    def per_subject_key(self) -> bool:
        return self.per_subject

    def output_type(self, ctx: FieldContext) -> Any:
        return "bytes"

    def doc(self, ctx: FieldContext) -> str:
        if self.format == Format.ROLE_KEYED:
            key = ("the subject's own key" if self.retention_days is None else
                   f"the key of its day{' and subject' if self.per_subject else ''}, erased {self.retention_days} "
                   "day(s) after the day ends")
            return ROLE_KEYED_DOC.format(roles=", ".join(self.roles), key=key)
        if self.roles:
            return ROLES_DOC.format(roles=", ".join(self.roles))
        if self.retention_days is not None:
            return PERIOD_DOC.format(days=self.retention_days, subject=" (per subject)" if self.per_subject else "")
        return SUBJECT_DOC if self.per_subject else SHARED_DOC

    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        encode = plaintext_encoder(self.plaintext_schema)
        context = context_prefix(env.topic, fp.path)
        path, limit = fp.path, env.max_field_bytes
        too_large = env.too_large
        key_of: Callable[[SanitizeResult], DataKey] | None = None  # a key looked up per field, by event
        if self.retention_days is not None:
            # the key of the event's day (per subject and day with per_subject; the role set's own with
            # roles): the key topic's consumer may erase it
            period_key = env.period_dek(path, self.retention_days, self.per_subject, self.roles)
            key_of = lambda event: period_key(event.timestamp_ms, event.subject)  # noqa: E731
        elif self.per_subject:
            subject_key = env.subject_key(path, self.roles)
            key_of = lambda event: subject_key(event.subject)  # noqa: E731
        elif self.roles:
            # the role set's own DEK cache (BuildEnv.role_dek): the event's shared DEK is the v1 one
            role_current = env.role_dek(path, self.roles)
            key_of = lambda _event: role_current()  # noqa: E731
        if key_of is not None:
            lookup = key_of

            def encrypt_keyed(value: Any, event: SanitizeResult) -> bytes:
                """Formats v2, v3, v4, v6 (record-bound: v5): the field's own key, named in the audit."""
                plaintext = encode(value)
                if len(plaintext) > limit:
                    too_large(path, len(plaintext))
                key = lookup(event)
                event.add_key_id(key.key_id)
                aad = event.subject_aad
                if aad is None:
                    aad = event.subject_aad = subject_suffix(event.subject) + record_suffix(event.record_ref)
                return encrypt_field(key, plaintext, context + aad + event.position, event.record_prefix)

            return CALL, encrypt_keyed
        current, max_uses = env.current_dek(path), env.dek_max_uses

        def encrypt(value: Any, event: SanitizeResult) -> bytes:
            plaintext = encode(value)
            if len(plaintext) > limit:
                too_large(path, len(plaintext))
            key = event.dek
            if key is None or key.uses >= max_uses:  # the event's first encrypted field, or the DEK is used up
                key = event.dek = current()
            if event.subject_aad is None:
                event.subject_aad = subject_suffix(event.subject) + record_suffix(event.record_ref)
            event.dek_key_id = key.key_id
            return encrypt_field(key, plaintext, context + event.subject_aad + event.position, event.record_prefix)

        return CALL, encrypt

    @property
    def opens(self) -> bool:
        return True

    def open(self, value: Any, fp: FieldPlan, opener: Opener) -> Any:
        return opener.open_ciphertext(value, fp.path, self.decode)

    def decode(self, plaintext: bytes) -> Any:
        return fastavro.schemaless_reader(io.BytesIO(plaintext), self.plaintext_schema, None)


def _retention_option(options: dict[str, Any], ctx: FieldContext) -> int | None:
    """`retention_days`: the field's own, else the record's (checked by the policy compiler)."""
    if "retention_days" not in options:
        return ctx.retention_days
    problem = retention_problem(options["retention_days"])
    if problem is not None:
        raise OperatorError(f"encrypt option {problem}")
    return int(options["retention_days"])


def _roles_option(options: dict[str, Any]) -> tuple[str, ...]:
    """`roles`: a non-empty list of distinct role names, returned sorted (the v3 header's order)."""
    if "roles" not in options:
        return ()
    roles = options["roles"]
    if not isinstance(roles, list) or not roles:
        raise OperatorError("encrypt option roles must be a non-empty list of role names, e.g. [\"support\"]")
    bad = [r for r in roles if not valid_role(r)]
    if bad:
        raise OperatorError(f"encrypt option roles: {', '.join(repr(r) for r in bad)}: each role name must be "
                            f"{ROLE_NAME_RULE}")
    if len(set(roles)) != len(roles):
        raise OperatorError("encrypt option roles names a role twice")
    if len(roles) > MAX_ROLES:
        raise OperatorError(f"encrypt option roles names {len(roles)} roles; at most {MAX_ROLES}")
    return tuple(sorted(roles))
