"""Minimize, tokenize and encrypt: each plan compiled once into flat per-record functions.

Each operator validated its options when the policy compiled; here they only transform. The
sanitizer builds a new record holding only the fields the plan keeps, so dropping is the default.

At start-up every record of a plan becomes one straight-line function (a get, a test and at most
one call per field, then one dict display), with everything an event does not change bound in:
the domain's tokenizer, the field's Avro plaintext encoder and the static part of its associated
data, and which size check its type needs. Per event there is no walk over the plan and no test
of a value's type that the schema already answers: the decoder validated every value against it
(fastavro for Avro, fastavro.validation for JSON). Only union branches are told apart by value.

Per event the subject is tokenized once, and the first encrypted field takes the current DEK,
which later fields reuse while it has uses left (the DEK cache's age and use checks run once per
event, not once per field). Ciphertexts are byte for byte what
`gateway.keys.envelope.encrypt_field` makes (format v1, or v2 under a subject's own key).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from gateway.errors import RejectedEvent
from gateway.keys.envelope import NONCE_BYTES, DataKey, DekCache, context_prefix, subject_suffix
from gateway.keys.errors import KmsUnavailable
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.policy import FieldPlan, Plan, RecordPlan, Shape
from gateway.schema import plaintext_encoder

# How a non-null field value is handled, per event (the second item of a compiled field).
_COPY = 0  # it passes as it is (numbers, booleans, arrays and maps holding no records)
_CHECK_STR = 1  # a string (or enum symbol): it passes unless longer than max_field_bytes / 4 characters
_CALL = 2  # the operator returns the output value (tokens, ciphertexts, nested records, unions)

Operator = Callable[[Any, Any], Any]  # (value, the event's SanitizeResult) -> output value
FieldEntry = tuple[str, int, Any]  # (name, mode, operator or size check)
RecordFn = Callable[[dict[str, Any], "SanitizeResult"], dict[str, Any]]


class SanitizeResult:
    """The sanitized record, its subject and the DEK used; also the per-event state the field
    operators share while the record is built (one object per event)."""

    __slots__ = ("record", "subject", "dek_key_id", "_dek", "_subject_aad")

    def __init__(self, subject: str) -> None:
        self.record: dict[str, Any] = {}
        self.subject = subject  # the subject as it appears in the sanitized record ("" if none)
        self.dek_key_id: str | None = None  # DEK used, if any field was encrypted
        self._dek: DataKey | None = None  # the shared DEK this event encrypts under
        self._subject_aad: bytes | None = None  # the subject's part of the associated data

    def __repr__(self) -> str:
        return f"<SanitizeResult subject={self.subject!r} dek={self.dek_key_id!r} fields={len(self.record)}>"


class RecordSanitizer:
    """Sanitizes records of one plan. Tokenizers and the DEK cache are shared, built once."""

    def __init__(self, plan: Plan, tokenizers: dict[str, DomainTokenizer], dek_cache: DekCache,
                 max_field_bytes: int, subject_keys: SubjectKeys | None = None) -> None:
        self.plan = plan
        self.topic = plan.sanitized_topic
        self._subject_keys = subject_keys
        self._tokenizers = tokenizers
        self._deks = dek_cache
        # the cache's own use limit: an event reuses its DEK while below it (1: a lookup per field)
        self._dek_max_uses: int = getattr(dek_cache, "_max_uses", 1)
        self._max_field_bytes = max_field_bytes
        self._max_str_chars = max_field_bytes // 4  # a str has at most 4 UTF-8 bytes per character
        self.token_key_ids = tuple(sorted(tokenizers[d].key_id for d in plan.token_domains))
        self._subject_field = plan.subject_field
        self._subject_token: Operator | None = None
        if plan.subject_tokenized:
            subject_plan = next(f for f in plan.record.fields if f.name == plan.subject_field)
            self._subject_token = self._tokenize_op(subject_plan, subject=False)
        self._record: RecordFn = self._compile_record(plan.record, top=True)

    def sanitize(self, record: dict[str, Any]) -> SanitizeResult:
        subject = ""
        name = self._subject_field
        if name is not None:
            value = record.get(name)
            if value is not None:
                token = self._subject_token  # tokenized once: the subject field's operator reuses it
                subject = token(value, None) if token is not None else str(value)
        result = SanitizeResult(subject)
        result.record = self._record(record, result)
        return result

    # ---- compilation (once per plan) -------------------------------------------------------
    def _compile_record(self, plan: RecordPlan, top: bool = False) -> RecordFn:
        """One straight-line function per record: a get, a test and at most one call per field, then
        a single dict display. Its source holds only generated names (name0, v0, op0...): field names
        and operators are bound through the namespace, so nothing from a schema is ever parsed as code.
        """
        namespace: dict[str, Any] = {"MAX_CHARS": self._max_str_chars}
        lines = ["def sanitize_record(record, event):", "    get = record.get"]
        for i, fp in enumerate(plan.fields):
            name, mode, op = self._compile_field(fp, top)
            namespace[f"name{i}"], namespace[f"op{i}"] = name, op
            lines.append(f"    v{i} = get(name{i})")
            if mode == _CHECK_STR:
                lines.append(f"    if v{i} is not None and len(v{i}) > MAX_CHARS:")
                lines.append(f"        op{i}(v{i})")
            elif mode == _CALL:
                lines.append(f"    if v{i} is not None:")
                lines.append(f"        v{i} = op{i}(v{i}, event)")
        lines.append("    return {" + ", ".join(f"name{i}: v{i}" for i in range(len(plan.fields))) + "}")
        code = compile("\n".join(lines) + "\n", f"<sanitize {plan.fullname}>", "exec")
        exec(code, namespace)  # noqa: S102 - generated from the template above only
        return namespace["sanitize_record"]  # type: ignore[no-any-return]

    def _compile_field(self, fp: FieldPlan, top: bool) -> FieldEntry:
        if fp.action == "tokenize":
            return fp.name, _CALL, self._tokenize_op(fp, subject=top and fp.name == self._subject_field)
        if fp.action == "encrypt":
            return fp.name, _CALL, self._encrypt_op(fp)
        if fp.shape is not None:
            if fp.kind == "record":  # a record, not a union holding one: no test of the value's type
                assert fp.shape.record is not None
                return fp.name, _CALL, self._compile_record(fp.shape.record)
            return fp.name, _CALL, self._shape_op(fp.shape, fp)
        if fp.kind in ("string", "enum"):
            return fp.name, _CHECK_STR, self._string_check(fp)
        if fp.kind in ("bytes", "fixed", "union", ""):  # "" (a plan built by hand): checked by value
            check = self._value_check(fp)

            def check_value(value: Any, _event: SanitizeResult) -> Any:
                check(value)
                return value

            return fp.name, _CALL, check_value
        return fp.name, _COPY, None  # numbers, booleans; arrays and maps without records (as before)

    def _string_check(self, fp: FieldPlan) -> Callable[[str], None]:
        """Called only for strings longer than max_field_bytes / 4 characters: counts UTF-8 bytes."""
        limit, path = self._max_field_bytes, fp.path

        def check_long_string(value: str) -> None:
            size = len(value.encode("utf-8"))
            if size > limit:
                self._too_large(path, size)

        return check_long_string

    def _value_check(self, fp: FieldPlan) -> Callable[[Any], None]:
        """The size check of a value whose type the schema leaves open (a union branch)."""
        limit, chars, path = self._max_field_bytes, self._max_str_chars, fp.path

        def check(value: Any) -> None:
            if isinstance(value, str) and len(value) > chars:
                size = len(value.encode("utf-8"))
                if size > limit:
                    self._too_large(path, size)
            elif isinstance(value, bytes) and len(value) > limit:
                self._too_large(path, len(value))

        return check

    def _shape_op(self, shape: Shape, fp: FieldPlan) -> Operator:
        """Descend into records inside a kept value; a union's other branches pass, size-checked."""
        check = self._value_check(fp)
        if shape.kind == "record":
            assert shape.record is not None
            sanitize_record = self._compile_record(shape.record)

            def walk_record(value: Any, event: SanitizeResult) -> Any:
                if isinstance(value, dict):
                    return sanitize_record(value, event)
                check(value)
                return value

            return walk_record
        assert shape.inner is not None
        inner = self._shape_op(shape.inner, fp)
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

    def _tokenize_op(self, fp: FieldPlan, subject: bool) -> Operator:
        if subject:  # the event's subject is this field's token, checked and computed first: reuse it
            def subject_token(_value: str, event: SanitizeResult) -> str:
                return event.subject

            return subject_token
        chars, check = self._max_str_chars, self._string_check(fp)
        token = self._tokenizers[fp.domain or ""].token

        def tokenize(value: str, _event: Any) -> str:
            if len(value) > chars:
                check(value)
            return token(value)

        return tokenize

    def _encrypt_op(self, fp: FieldPlan) -> Operator:
        """Envelope encryption of one field (see gateway.keys.envelope.encrypt_field, inlined):
        header | nonce | AES-GCM(DEK, nonce, Avro plaintext, header + topic, path, subject)."""
        encode = plaintext_encoder(fp.plaintext_schema)
        context = context_prefix(self.topic, fp.path)
        path, limit, max_uses = fp.path, self._max_field_bytes, self._dek_max_uses
        nonces = _NONCES
        refill = nonces.refill
        if fp.per_subject:
            subject_key = self._subject_key_for(path)

            def encrypt_per_subject(value: Any, event: SanitizeResult) -> bytes:
                plaintext = encode(value)
                if len(plaintext) > limit:
                    self._too_large(path, len(plaintext))
                key = subject_key(event.subject)  # per field: the key topic's consumer may erase it
                event.dek_key_id = key.key_id
                aad = event._subject_aad
                if aad is None:
                    aad = event._subject_aad = subject_suffix(event.subject)
                key.uses += 1
                nonce = next(nonces.it, None) or refill()
                header = key.header
                return header + nonce + key.aead.encrypt(nonce, plaintext, header + context + aad)

            return encrypt_per_subject
        current = self._current_dek_for(path)

        def encrypt(value: Any, event: SanitizeResult) -> bytes:
            plaintext = encode(value)
            if len(plaintext) > limit:
                self._too_large(path, len(plaintext))
            key = event._dek
            if key is None or key.uses >= max_uses:  # the event's first encrypted field, or the DEK is used up
                key = event._dek = current()
                if event._subject_aad is None:
                    event._subject_aad = subject_suffix(event.subject)
            event.dek_key_id = key.key_id
            key.uses += 1
            nonce = next(nonces.it, None) or refill()
            header = key.header
            return header + nonce + key.aead.encrypt(nonce, plaintext, header + context + event._subject_aad)

        return encrypt

    def _current_dek_for(self, path: str) -> Callable[[], DataKey]:
        deks = self._deks

        def current() -> DataKey:
            try:
                return deks.current()
            except KmsUnavailable as exc:  # dead-letter (sealed, replayable): never publish without encryption
                raise RejectedEvent("kms_unavailable", f"no data key for field '{path}': {exc}") from None

        return current

    def _subject_key_for(self, path: str) -> Callable[[str], DataKey]:
        keys, domain = self._subject_keys, self.plan.subject_domain
        assert keys is not None and domain is not None  # set up with the plan

        def subject_key(subject: str) -> DataKey:
            if not subject:
                raise RejectedEvent("missing_subject", f"field '{path}' is encrypted under the subject's own "
                                    "key, but the event has no subject")
            try:
                return keys.current(domain, subject)
            except KmsUnavailable as exc:
                raise RejectedEvent("kms_unavailable", f"no data key for field '{path}': {exc}") from None

        return subject_key

    def _too_large(self, path: str, size: int) -> None:
        raise RejectedEvent("field_too_large", f"field '{path}' holds {size} bytes, above "
                            f"max_field_bytes={self._max_field_bytes}")


class _Nonces:
    """96-bit AES-GCM nonces: uniformly random and independent, as ``os.urandom(12)`` per field made
    them, drawn from the OS 341 at a time (one getrandom call per 4 KB instead of one per field,
    which cost about as much as the encryption of a short field).

    Each nonce is handed out once: ``next()`` on a list iterator is a single step under the GIL, so
    two threads never get the same one, and a forked child drops what its parent drew (it would
    otherwise repeat the parent's nonces under the same DEKs).
    """

    BLOCK = 4096 // NONCE_BYTES * NONCE_BYTES

    def __init__(self) -> None:
        self.it: Iterator[bytes] = iter(())

    def refill(self) -> bytes:
        block = os.urandom(self.BLOCK)
        it = iter([block[i:i + NONCE_BYTES] for i in range(0, self.BLOCK, NONCE_BYTES)])
        nonce = next(it)
        self.it = it
        return nonce

    def forget(self) -> None:
        self.it = iter(())


_NONCES = _Nonces()
os.register_at_fork(after_in_child=_NONCES.forget)
