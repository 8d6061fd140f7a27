"""Minimize, tokenize and encrypt: plain functions over a decoded record and a compiled plan.

Each operator validated its options when the policy compiled; here they only transform. The
sanitizer builds a new record holding only the fields the plan keeps, so dropping is the default.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gateway.errors import RejectedEvent
from gateway.keys.envelope import DataKey, DekCache, context_prefix, encrypt_field, subject_suffix
from gateway.keys.errors import KmsUnavailable
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.policy import FieldPlan, Plan, RecordPlan, Shape
from gateway.schema import plaintext_encoder


@dataclass
class SanitizeResult:
    record: dict[str, Any]
    subject: str  # the subject as it appears in the sanitized record ("" if none)
    dek_key_id: str | None  # DEK used, if any field was encrypted


class RecordSanitizer:
    """Sanitizes records of one plan. Tokenizers and the DEK cache are shared, built once."""

    def __init__(self, plan: Plan, tokenizers: dict[str, DomainTokenizer], dek_cache: DekCache,
                 max_field_bytes: int, subject_keys: SubjectKeys | None = None) -> None:
        self.plan = plan
        self._subject_keys = subject_keys
        encrypted = list(_encrypted_fields(plan.record))
        self._encoders = {fp.path: plaintext_encoder(fp.plaintext_schema) for fp in encrypted}
        self._contexts = {fp.path: context_prefix(plan.sanitized_topic, fp.path) for fp in encrypted}
        self.topic = plan.sanitized_topic
        self._tokenizers = tokenizers
        self._deks = dek_cache
        self._max_field_bytes = max_field_bytes
        self.token_key_ids = tuple(sorted(tokenizers[d].key_id for d in plan.token_domains))

    def sanitize(self, record: dict[str, Any]) -> SanitizeResult:
        subject = self._subject_of(record)
        state = _EventState(subject)
        out = self._record(record, self.plan.record, state)
        return SanitizeResult(out, subject, state.dek_key_id)

    def _subject_of(self, record: dict[str, Any]) -> str:
        name = self.plan.subject_field
        if name is None:
            return ""
        value = record.get(name)
        if value is None:
            return ""
        if self.plan.subject_tokenized:
            return self._tokenize(value, next(f for f in self.plan.record.fields if f.name == name))
        return str(value)

    def _record(self, record: dict[str, Any], plan: RecordPlan, state: _EventState) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fp in plan.fields:
            value = record.get(fp.name)
            if value is None:
                out[fp.name] = None
            elif fp.action == "keep":
                out[fp.name] = self._keep(value, fp, state)
            elif fp.action == "tokenize":
                out[fp.name] = self._tokenize(value, fp)
            else:
                out[fp.name] = self._encrypt(value, fp, state)
        return out

    def _keep(self, value: Any, fp: FieldPlan, state: _EventState) -> Any:
        if fp.shape is not None:
            return self._walk(value, fp.shape, fp, state)
        self._check_size(value, fp)
        return value

    def _walk(self, value: Any, shape: Shape, fp: FieldPlan, state: _EventState) -> Any:
        """Descend into records inside a kept value; a union's other branches pass through."""
        if shape.kind == "record" and isinstance(value, dict):
            assert shape.record is not None
            return self._record(value, shape.record, state)
        if shape.kind == "array" and isinstance(value, list):
            assert shape.inner is not None
            return [self._walk(item, shape.inner, fp, state) for item in value]
        if shape.kind == "map" and isinstance(value, dict):
            assert shape.inner is not None
            return {key: self._walk(item, shape.inner, fp, state) for key, item in value.items()}
        self._check_size(value, fp)
        return value

    def _check_size(self, value: Any, fp: FieldPlan) -> None:
        # a str has at most 4 UTF-8 bytes per character: encode only when it could be too large
        if isinstance(value, str) and len(value) * 4 > self._max_field_bytes:
            size = len(value.encode("utf-8"))
            if size > self._max_field_bytes:
                self._too_large(fp, size)
        elif isinstance(value, bytes) and len(value) > self._max_field_bytes:
            self._too_large(fp, len(value))

    def _tokenize(self, value: str, fp: FieldPlan) -> str:
        self._check_size(value, fp)
        return self._tokenizers[fp.domain or ""].token(value)

    def _encrypt(self, value: Any, fp: FieldPlan, state: _EventState) -> bytes:
        plaintext = self._encoders[fp.path](value)
        if len(plaintext) > self._max_field_bytes:
            self._too_large(fp, len(plaintext))
        try:
            key = self._subject_key(fp, state) if fp.per_subject else self._deks.current()
        except KmsUnavailable as exc:  # dead-letter (sealed, replayable): never publish without encryption
            raise RejectedEvent("kms_unavailable", f"no data key for field '{fp.path}': {exc}") from None
        state.dek_key_id = key.key_id
        if state.subject_context is None:
            state.subject_context = subject_suffix(state.subject)
        return encrypt_field(key, plaintext, self._contexts[fp.path] + state.subject_context)

    def _subject_key(self, fp: FieldPlan, state: _EventState) -> DataKey:
        if not state.subject:
            raise RejectedEvent("missing_subject", f"field '{fp.path}' is encrypted under the subject's own key, "
                                "but the event has no subject")
        assert self._subject_keys is not None and self.plan.subject_domain is not None  # set up with the plan
        return self._subject_keys.current(self.plan.subject_domain, state.subject)

    def _too_large(self, fp: FieldPlan, size: int) -> None:
        raise RejectedEvent("field_too_large", f"field '{fp.path}' holds {size} bytes, above "
                            f"max_field_bytes={self._max_field_bytes}")


@dataclass
class _EventState:
    """Per-event facts the field operators share: the subject (for associated data) and the DEK used."""

    subject: str
    dek_key_id: str | None = None
    subject_context: bytes | None = None  # the subject's part of the associated data, built on first use


def _encrypted_fields(plan: RecordPlan) -> Iterator[FieldPlan]:
    for fp in plan.fields:
        if fp.action == "encrypt":
            yield fp
        shape = fp.shape
        while shape is not None:
            if shape.record is not None:
                yield from _encrypted_fields(shape.record)
            shape = shape.inner
