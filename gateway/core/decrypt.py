"""The authorized consumer's path: open the encrypted fields of sanitized records.

Works on records decoded with the sanitized schema (Avro) or read from JSON, where encrypted
fields are base64 strings. Each encrypted field is reported as decrypted or with the reason it
could not be (tampered, key not held, key erased, not permitted,
kms unavailable, malformed).

Per-subject (format v2) and period-key (format v4, fields with a retention) fields open with the key
topic's keys (`FieldDecryptor(kms, subject_keys=...)`: SubjectKeys holds both); a period erased by
retention, like a forgotten subject, is reported "key_erased".

Every ciphertext the gateway writes is bound to its record (format v5): to the event id the record
carries, or, in a view without one, to the raw event's coordinates, which the consumer passes from
the record's `gateway-source` header (`decrypt_record(..., source=...)`; gateway.integrations.common
does it), and to the element's position in arrays and maps, which the walk below tracks. A
ciphertext moved to another record or element is reported "tampered".

Role-scoped fields (formats v3 and v6) open only for the role the decryptor was made with
(`FieldDecryptor(kms, role=R)`); a field whose roles do not include it is reported
"not_permitted", one whose role key is not held here "key_not_held".
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.core.operators.base import RecordPlan, Shape
from gateway.core.policy.key_headers import KEY_HEADER
from gateway.core.policy.plan import Plan
from gateway.errors import DecryptError
from gateway.keys.envelope import FieldDecryptor, RecordRef, context_bytes, index_step, key_step


@dataclass
class DecryptReport:
    fields: dict[str, str] = field(default_factory=dict)  # path -> "decrypted" or "<reason>: <message>"

    @property
    def ok(self) -> bool:
        return all(v == "decrypted" for v in self.fields.values())


def decrypt_record(record: dict[str, Any], plan: Plan, decryptor: FieldDecryptor,
                   source: str | bytes | None = None) -> tuple[dict[str, Any], DecryptReport]:
    """Return a copy of `record` with encrypted fields opened, and a per-field report.

    `source`: the record's `gateway-source` header, needed for the fields of a view without an event id
    (without it they do not authenticate: "tampered", the message says why). A field that fails keeps
    its ciphertext (bytes) in the copy.
    """
    walker = _walker(record, plan, decryptor, source, DecryptReport())
    return walker.record(record, plan.record), walker.report


def decrypt_key_headers(record: dict[str, Any], headers: Iterable[tuple[str, Any]], plan: Plan,
                        decryptor: FieldDecryptor, source: str | bytes | None = None
                        ) -> tuple[list[tuple[str, Any]], DecryptReport]:
    """The headers of a sanitized record that the policy names (core/policy/key_headers.py), with the
    encrypted ones opened (bound to the record like its fields: `record` gives the subject and event id,
    `source` the `gateway-source` header), and a report under their paths (`(header)<name>`, `(record key)`
    for the `gateway-key` header). The gateway's own other headers are left out; a header that fails keeps
    its ciphertext (bytes)."""
    rules = {rule.name: rule.plan for rule in plan.key_headers.published_headers}
    key = plan.key_headers.key if not plan.key_headers.replaces_key else None
    walker = _walker(record, plan, decryptor, source, DecryptReport())
    out: list[tuple[str, Any]] = []
    seen: dict[str, int] = {}
    for name, value in headers:
        fp = key if name == KEY_HEADER else rules.get(name)
        if fp is None:
            continue
        n = seen[name] = seen.get(name, -1) + 1
        if value is not None and fp.operator.opens:
            walker.ref = dataclasses.replace(walker.base, position=b"" if fp is key else index_step(n))
            value = fp.operator.open(value, fp, walker)
        out.append((name, value))
    return out, walker.report


def _walker(record: dict[str, Any], plan: Plan, decryptor: FieldDecryptor, source: str | bytes | None,
            report: DecryptReport) -> _Walker:
    """The walk over one sanitized record: its subject and its binding (event id, or source)."""
    subject = ""
    if plan.subject_field is not None and record.get(plan.subject_field) is not None:
        subject = str(record[plan.subject_field])
    event_id = None
    if plan.event_id_field is not None and record.get(plan.event_id_field) is not None:
        event_id = str(record[plan.event_id_field])
    if isinstance(source, bytes):
        source = source.decode("utf-8", "replace")
    return _Walker(plan.sanitized_topic, subject, decryptor, report, RecordRef(event_id, source))


class _Walker:
    """Visits the fields whose operator opens something (encrypted ones, kept records holding them);
    the operators call back here for the ciphertexts (gateway.core.operators.base.Opener)."""

    def __init__(self, topic: str, subject: str, decryptor: FieldDecryptor, report: DecryptReport,
                 ref: RecordRef) -> None:
        self.topic = topic
        self.subject = subject
        self.decryptor = decryptor
        self.report = report
        self.ref = ref  # the record's binding; its position changes while the walk is inside arrays and maps
        self.base = ref  # the record's binding at no position

    def record(self, record: dict[str, Any], plan: RecordPlan) -> dict[str, Any]:
        out = dict(record)
        for fp in plan.fields:
            value = record.get(fp.name)
            if value is not None and fp.operator.opens:
                out[fp.name] = fp.operator.open(value, fp, self)
        return out

    def walk(self, value: Any, shape: Shape) -> Any:
        if value is None:
            return None
        if shape.kind == "record":
            assert shape.record is not None
            return self.record(value, shape.record)
        assert shape.inner is not None
        outer = self.ref
        try:
            if shape.kind == "array":
                out: list[Any] = []
                for i, v in enumerate(value):
                    self.ref = dataclasses.replace(outer, position=outer.position + index_step(i))
                    out.append(self.walk(v, shape.inner))
                return out
            opened: dict[str, Any] = {}
            for k, v in value.items():
                self.ref = dataclasses.replace(outer, position=outer.position + key_step(k))
                opened[k] = self.walk(v, shape.inner)
            return opened
        finally:
            self.ref = outer

    def open_ciphertext(self, value: Any, path: str, decode: Callable[[bytes], Any]) -> Any:
        try:
            data = _as_bytes(value)
            plaintext = self.decryptor.decrypt(data, context_bytes(self.topic, path, self.subject), self.subject,
                                               self.ref)
            result = decode(plaintext)
        except DecryptError as exc:
            # inside arrays one path has many values: keep the first failure, never overwrite it
            if self.report.fields.get(path, "decrypted") == "decrypted":
                self.report.fields[path] = f"{exc.reason}: {exc.message}"
            return value
        self.report.fields.setdefault(path, "decrypted")
        return result


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptError("malformed", "encrypted field is neither bytes nor base64") from None
    raise DecryptError("malformed", f"encrypted field holds a {type(value).__name__}, expected bytes")
