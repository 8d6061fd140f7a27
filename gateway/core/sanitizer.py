"""The per-record sanitizer: each plan compiled once into flat per-record functions.

Each field's operator (gateway/core/operators/) validated its options when the policy compiled; here it
contributes one step. The sanitizer builds a new record holding only the fields the plan keeps, so
dropping is the default.

At start-up every record of a plan becomes one straight-line function (a get, a test and at most
one call per field, then one dict display), with everything an event does not change bound in:
the domain's tokenizer, the field's Avro plaintext encoder and the static part of its associated
data, and which size check its type needs. Per event there is no walk over the plan and no test
of a value's type that the schema already answers: the decoder validated every value against it
(fastavro for Avro, fastavro.validation for JSON). Only union branches are told apart by value.

Per event the subject is tokenized once, and the first encrypted field takes the current DEK,
which later fields reuse while it has uses left (the DEK cache's age and use checks run once per
event, not once per field).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.core.operators.base import CALL, CHECK_STR, FieldPlan, RecordPlan, SanitizeResult, Shape, StepFn
from gateway.core.policy.key_headers import KEY_HEADER, KeyHeadersPlan, reads_text
from gateway.core.policy.plan import Plan
from gateway.core.policy.timestamp import PATH, TimestampMode, TimestampPlan
from gateway.errors import GatewayError, KeyringError, RejectedEvent
from gateway.keys.envelope import Binding, DataKey, DekCache, index_step, key_step, record_prefix
from gateway.keys.errors import KmsConfigError, KmsUnavailable
from gateway.keys.period_keys import event_day
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer

RecordFn = Callable[[dict[str, Any], "SanitizeResult"], dict[str, Any]]
KeyHeadersFn = Callable[[bytes | None, Sequence[tuple[str, Any]] | None, SanitizeResult], None]


class RecordSanitizer:
    """Sanitizes records of one plan. Tokenizers and the DEK cache are shared, built once.

    It is also the operators' build environment (gateway.core.operators.base.BuildEnv)."""

    def __init__(self, plan: Plan, tokenizers: Mapping[str, DomainTokenizer], dek_cache: DekCache,
                 max_field_bytes: int, subject_keys: SubjectKeys | None = None) -> None:
        self.plan = plan
        self.topic = plan.sanitized_topic
        self._subject_keys = subject_keys
        self._tokenizers = tokenizers
        self._deks = dek_cache
        # the cache's own use limit: an event reuses its DEK while below it (1: a lookup per field)
        self.dek_max_uses: int = dek_cache.max_uses
        self.max_field_bytes = max_field_bytes
        self.max_str_chars = max_field_bytes // 4  # a str has at most 4 UTF-8 bytes per character
        self.token_key_ids = tuple(sorted(tokenizers[d].key_id for d in plan.token_domains))
        self._subject_field = plan.subject_field
        self.subject_path = plan.subject_field
        self._subject_value: Callable[[Any], str] | None = None
        if plan.subject_field is not None:
            subject_plan = next(f for f in plan.record.fields if f.name == plan.subject_field)
            self._subject_value = subject_plan.operator.subject_value(subject_plan, self)
        # format v5: ciphertexts are bound to the event id as the sanitized record carries it, else (no
        # event id in this view, or none in the event) to the raw event's source coordinates
        self._event_id_field = plan.event_id_field
        self._event_id_value: Callable[[Any], str] | None = None
        encrypts = any(action.startswith("encrypt") for action in plan.field_actions.values())
        if plan.event_id_field is not None and encrypts:  # a tokenized id costs an HMAC: only when it binds
            id_plan = next(f for f in plan.record.fields if f.name == plan.event_id_field)
            self._event_id_value = id_plan.operator.subject_value(id_plan, self)
        self._by_event_id, self._by_source = record_prefix(Binding.EVENT_ID), record_prefix(Binding.SOURCE)
        self._record: RecordFn = self.compile_record(plan.record)
        self._timestamp = self.timestamp_step(plan.timestamp)
        self._key_headers = self.key_headers_step(plan.key_headers)

    def subject_token(self, value: Any) -> str:
        """The subject as its sanitized records carry it (the token, through the domain's normalizer)."""
        if self._subject_value is None:
            raise GatewayError(f"{self.plan.name} names no subject")
        return self._subject_value(value)

    def sanitize(self, record: dict[str, Any], timestamp_ms: int = 0, source: str = "", key: bytes | None = None,
                 headers: Sequence[tuple[str, Any]] | None = None) -> SanitizeResult:
        """`source`: the raw event's `<topic>/<partition>/<offset>` (the `gateway-source` header), which
        binds its ciphertexts when the view has no event id. `key`, `headers`: the raw record's, which the
        policy drops unless it names them (`result.out_key`, `result.out_headers`)."""
        subject = ""
        name = self._subject_field
        if name is not None:
            value = record.get(name)
            if value is not None:  # computed once: the subject field's own step reuses it
                subject = self._subject_value(value)  # type: ignore[misc]
        ref, prefix = source, self._by_source
        if self._event_id_value is not None:
            event_id = record.get(self._event_id_field)  # type: ignore[arg-type]
            if event_id is not None:
                ref, prefix = self._event_id_value(event_id), self._by_event_id
        result = SanitizeResult(subject, timestamp_ms, ref, prefix)
        result.record = self._record(record, result)
        if self._key_headers is not None:
            self._key_headers(key, headers, result)
        if timestamp_ms is not None and timestamp_ms >= 0:  # none (Kafka's -1): processing time
            step = self._timestamp
            result.out_timestamp_ms = timestamp_ms if step is None else step(timestamp_ms, result)
        return result

    def timestamp_step(self, plan: TimestampPlan) -> Callable[[int, SanitizeResult], int] | None:
        """The output timestamp of an event's (non-negative) Kafka timestamp: the plan's treatment, made of
        the shift_date and generalize operators' own steps (built once, like a field's); None: kept as it is."""
        mode = plan.mode
        if mode is TimestampMode.KEEP:
            return None
        if mode is TimestampMode.PROCESSING:
            return _processing
        truncate = plan.truncate.build(FieldPlan(PATH, PATH, plan.truncate), self)[1] if plan.truncate else _same
        if mode is TimestampMode.TRUNCATE:
            return truncate  # type: ignore[no-any-return]
        assert plan.shift is not None
        shift = plan.shift.build(FieldPlan(PATH, PATH, plan.shift), self)[1]
        back = plan.shift.max_days * 86_400_000  # never ahead of the raw time: brokers refuse future timestamps

        def shift_timestamp(timestamp_ms: int, event: SanitizeResult) -> int:
            out = truncate(shift(timestamp_ms, event) - back, event)
            if out < 0:
                raise RejectedEvent("value_out_of_range", f"the {PATH} shifted lies before 1970, which Kafka "
                                    "cannot carry")
            return out  # type: ignore[no-any-return]

        return shift_timestamp

    def key_headers_step(self, plan: KeyHeadersPlan) -> KeyHeadersFn | None:
        """The raw key's and named headers' results (gateway/core/policy/key_headers.py), made of their
        operators' own steps (built once, like a field's); None: the policy names neither, all dropped.
        Unnamed headers, the gateway's own (`gateway-*`, which cannot be named) among them, are skipped."""
        rules = plan.published_headers
        if plan.key is None and not rules:
            return None
        key_fn = self._bytes_step(plan.key) if plan.key is not None else None
        replaces = plan.replaces_key
        steps = {rule.name: self._bytes_step(rule.plan) for rule in rules if rule.plan is not None}

        def key_and_headers(key: bytes | None, headers: Sequence[tuple[str, Any]] | None,
                            event: SanitizeResult) -> None:
            out: list[tuple[str, bytes | None]] = []
            if key_fn is not None and key is not None:
                value = key_fn(key, event)
                if replaces:
                    event.out_key = value
                else:
                    out.append((KEY_HEADER, value))
            if headers:
                seen: dict[str, int] = {}
                for name, raw in headers:
                    step = steps.get(name)
                    if step is None:
                        continue
                    n = seen[name] = seen.get(name, -1) + 1
                    if raw is None:  # a header without a value passes as one
                        out.append((name, None))
                        continue
                    event.position = index_step(n)  # a ciphertext is bound to its occurrence among its name's
                    out.append((name, step(raw, event)))
                event.position = b""
            event.out_headers = out

        return key_and_headers

    def _bytes_step(self, fp: FieldPlan) -> Callable[[Any, SanitizeResult], bytes]:
        """A key's or header's step: the value size-checked (and read as UTF-8 text for tokenize), then
        the operator's own step; its result as bytes."""
        mode, fn = fp.operator.build(fp, self)
        path, limit, text = fp.path, self.max_field_bytes, reads_text(fp.operator)

        def step(raw: Any, event: SanitizeResult) -> bytes:
            value = raw.encode() if isinstance(raw, str) else bytes(raw)
            if len(value) > limit:
                self.too_large(path, len(value))
            given: Any = value
            if text:
                try:
                    given = value.decode("utf-8")
                except UnicodeDecodeError:
                    raise RejectedEvent("invalid_utf8", f"'{path}' is not UTF-8 text, which tokenize "
                                        "reads") from None
            out = fn(given, event) if mode == CALL else given
            return out.encode() if isinstance(out, str) else out  # type: ignore[no-any-return]

        return step

    # ---- compilation (once per plan): the operators' build environment ----------------------
    def compile_record(self, plan: RecordPlan) -> RecordFn:
        """One straight-line function per record: a get, a test and at most one call per field, then
        a single dict display. Its source holds only generated names (name0, v0, op0...): field names
        and operators are bound through the namespace, so nothing from a schema is ever parsed as code.
        """
        namespace: dict[str, Any] = {"MAX_CHARS": self.max_str_chars}
        lines = ["def sanitize_record(record, event):", "    get = record.get"]
        for i, fp in enumerate(plan.fields):
            mode, op = fp.operator.build(fp, self)
            namespace[f"name{i}"], namespace[f"op{i}"] = fp.name, op
            lines.append(f"    v{i} = get(name{i})")
            if mode == CHECK_STR:
                lines.append(f"    if v{i} is not None and len(v{i}) > MAX_CHARS:")
                lines.append(f"        op{i}(v{i})")
            elif mode == CALL:
                lines.append(f"    if v{i} is not None:")
                lines.append(f"        v{i} = op{i}(v{i}, event)")
        lines.append("    return {" + ", ".join(f"name{i}: v{i}" for i in range(len(plan.fields))) + "}")
        code = compile("\n".join(lines) + "\n", f"<sanitize {plan.fullname}>", "exec")
        exec(code, namespace)  # noqa: S102 - generated from the template above only
        return namespace["sanitize_record"]  # type: ignore[no-any-return]

    def tokenizer(self, domain: str) -> DomainTokenizer:
        return self._tokenizers[domain]

    def string_check(self, path: str) -> Callable[[str], None]:
        """Called only for strings longer than max_field_bytes / 4 characters: counts UTF-8 bytes."""
        limit = self.max_field_bytes

        def check_long_string(value: str) -> None:
            size = len(value.encode("utf-8"))
            if size > limit:
                self.too_large(path, size)

        return check_long_string

    def value_check(self, path: str) -> Callable[[Any], None]:
        """The size check of a value whose type the schema leaves open (a union branch)."""
        limit, chars = self.max_field_bytes, self.max_str_chars

        def check(value: Any) -> None:
            if isinstance(value, str) and len(value) > chars:
                size = len(value.encode("utf-8"))
                if size > limit:
                    self.too_large(path, size)
            elif isinstance(value, bytes) and len(value) > limit:
                self.too_large(path, len(value))

        return check

    def shape_step(self, shape: Shape, path: str) -> StepFn:
        """Descend into records inside a kept value; a union's other branches pass, size-checked."""
        check = self.value_check(path)
        if shape.kind == "record":
            assert shape.record is not None
            sanitize_record = self.compile_record(shape.record)

            def walk_record(value: Any, event: SanitizeResult) -> Any:
                if isinstance(value, dict):
                    return sanitize_record(value, event)
                check(value)
                return value

            return walk_record
        assert shape.inner is not None
        inner = self.shape_step(shape.inner, path)
        if shape_encrypts(shape):  # each element's ciphertexts are bound to its position (format v5)
            return _positioned(shape.kind, inner, check)
        if shape.kind == "array":
            def walk_array(value: Any, event: SanitizeResult) -> Any:
                if isinstance(value, list):
                    return [inner(item, event) for item in value]
                check(value)
                return value

            return walk_array

        def walk_map(value: Any, event: SanitizeResult) -> Any:
            if isinstance(value, dict):
                return {key: inner(item, event) for key, item in value.items()}
            check(value)
            return value

        return walk_map

    def current_dek(self, path: str) -> Callable[[], DataKey]:
        return _current_or_reject(self._deks, path)

    def role_dek(self, path: str, roles: tuple[str, ...]) -> Callable[[], DataKey]:
        """The current DEK of a role-scoped field (format v3): one cache per role set, shared with every
        plan's fields naming the same roles. A role without a key fails start-up here, naming the field."""
        try:
            deks = self._deks.for_roles(roles)
        except (KmsConfigError, KeyringError) as exc:
            raise type(exc)(f"schema '{self.plan.name}', field '{path}' (roles {', '.join(roles)}): {exc}") from None

        return _current_or_reject(deks, path)

    def subject_key(self, path: str, roles: tuple[str, ...] = ()) -> Callable[[str], DataKey]:
        """The subject's key of a per-subject field (format v2), or with `roles` the subject's key of that
        role set, wrapped under each role's KEK in the key topic (format v6)."""
        keys, domain = self._subject_keys, self.plan.subject_domain
        assert keys is not None and domain is not None  # set up with the plan
        if roles:
            self._role_providers(path, roles)  # a role without a key fails start-up, naming the field

        def subject_key(subject: str) -> DataKey:
            if not subject:
                raise RejectedEvent("missing_subject", f"field '{path}' is encrypted under the subject's own "
                                    "key, but the event has no subject")
            try:
                if roles:
                    return keys.current_for_roles(roles, domain, subject)
                return keys.current(domain, subject)
            except KmsUnavailable as exc:
                raise RejectedEvent("kms_unavailable", f"no data key for field '{path}': {exc}") from None

        return subject_key

    def _role_providers(self, path: str, roles: tuple[str, ...]) -> Any:
        assert self._subject_keys is not None
        try:
            return self._subject_keys.role_providers(roles)
        except (KmsConfigError, KeyringError) as exc:
            raise type(exc)(f"schema '{self.plan.name}', field '{path}' (roles {', '.join(roles)}): {exc}") from None

    def period_dek(self, path: str, days: int, per_subject: bool,
                   roles: tuple[str, ...] = ()) -> Callable[[int, str], DataKey]:
        """The key of a field with a retention (format v4) for an event's (timestamp, subject): the period
        key of the event's UTC day, per subject too when `per_subject`. The key topic holds them, so a
        plan with a retention needs the subject keys (gateway.runtime.keytopic) even without a subject."""
        if self._subject_keys is None:
            raise GatewayError(f"schema '{self.plan.name}', field '{path}' has a retention: the sanitizer needs the "
                               "key topic's keys (gateway.runtime.keytopic follows it into SubjectKeys)")
        periods = self._subject_keys.periods
        domain = self.plan.subject_domain if per_subject else ""
        assert domain is not None  # per_subject needs a tokenized subject (the policy compiler checks)
        providers = self._role_providers(path, roles) if roles else ()

        def period_key(timestamp_ms: int, subject: str) -> DataKey:
            if timestamp_ms is None or timestamp_ms < 0:  # Kafka says -1 when a record has no timestamp
                raise RejectedEvent("missing_timestamp", f"field '{path}' is kept for {days} day(s) from the event's "
                                    "time, but the event has no timestamp")
            if per_subject and not subject:
                raise RejectedEvent("missing_subject", f"field '{path}' is encrypted under the subject's own "
                                    "key, but the event has no subject")
            day = event_day(timestamp_ms, int(time.time() * 1000))
            try:
                if roles:  # format v6: the role set's own key of the day, wrapped per role
                    return periods.current_for_roles(roles, days, day, domain, subject if per_subject else "",
                                                     providers)
                return periods.current(days, day, domain, subject if per_subject else "")
            except KmsUnavailable as exc:
                raise RejectedEvent("kms_unavailable", f"no data key for field '{path}': {exc}") from None

        return period_key

    def too_large(self, path: str, size: int) -> None:
        raise RejectedEvent("field_too_large", f"field '{path}' holds {size} bytes, above "
                            f"max_field_bytes={self.max_field_bytes}")


def shape_encrypts(shape: Shape) -> bool:
    """Whether a kept value of this shape holds encrypted fields (an operator that opens something)."""
    if shape.record is not None:
        return any(fp.operator.opens and (fp.shape is None or shape_encrypts(fp.shape)) for fp in shape.record.fields)
    return shape.inner is not None and shape_encrypts(shape.inner)


def _positioned(kind: str, inner: StepFn, check: Callable[[Any], None]) -> StepFn:
    """An array or map step that sets each element's position on the event while its inner step runs."""
    if kind == "array":
        def walk_array(value: Any, event: SanitizeResult) -> Any:
            if not isinstance(value, list):
                check(value)
                return value
            outer, out = event.position, []
            for i, item in enumerate(value):
                event.position = outer + index_step(i)
                out.append(inner(item, event))
            event.position = outer
            return out

        return walk_array

    def walk_map(value: Any, event: SanitizeResult) -> Any:
        if not isinstance(value, dict):
            check(value)
            return value
        outer, out = event.position, {}
        for key, item in value.items():
            event.position = outer + key_step(key)
            out[key] = inner(item, event)
        event.position = outer
        return out

    return walk_map


def _same(timestamp_ms: int, _event: SanitizeResult) -> int:
    return timestamp_ms


def _processing(_timestamp_ms: int, _event: SanitizeResult) -> int:
    return 0  # processing time: the pipeline stamps its batch's time


def _current_or_reject(deks: Any, path: str) -> Callable[[], DataKey]:
    """The cache's current DEK; a KMS outage dead-letters the event (sealed, replayable): never publish
    without encryption."""
    def current() -> DataKey:
        try:
            return deks.current()  # type: ignore[no-any-return]
        except KmsUnavailable as exc:
            raise RejectedEvent("kms_unavailable", f"no data key for field '{path}': {exc}") from None

    return current
