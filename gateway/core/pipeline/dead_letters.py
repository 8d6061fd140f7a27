"""The dead-letter step: a rejected event's record (reason, message and coordinates in clear, the
original sealed) and the ids of the key that sealed it, for its audit entry.

The original is sealed under its subject's key (format 2, erased by `gateway forget`) when the
subject can be read soundly, else under the quarantine key; not at all when it exceeds
max_record_bytes, or when sealed it would make a record Kafka refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from gateway.core.codec.raw import EventDecoder
from gateway.core.deadletter import DECODE_REASONS, JSON_SHAPE_REASONS, QuarantineSealer
from gateway.core.pipeline.events import RawEvent
from gateway.core.policy.plan import Plan
from gateway.outputs import OutRecord

log = logging.getLogger("gateway.core.pipeline")
REASON_HEADER = "gateway-reason"


class SubjectReader(NamedTuple):
    """How a source's rejected events give their subject: its field, token domain, the sanitizer's
    function from the field's own value to the token, and that token key's id."""

    field: str
    domain: str
    token_of: Callable[[str], str]
    token_key_id: str


class DeadLetters:
    def __init__(self, sealer: QuarantineSealer, subject_readers: dict[str, SubjectReader], max_record_bytes: int,
                 instance: str) -> None:
        self.sealer = sealer
        self.subject_readers = subject_readers  # per source topic
        self.max_record_bytes = max_record_bytes
        self.instance = instance

    def quarantine_key_ids(self) -> orjson.Fragment:
        """The audit's key ids of a dead letter under the quarantine key: the key the sealer uses now."""
        return self.sealer.audit_key_ids()

    def letter(self, plan: Plan, decoder: EventDecoder, event: RawEvent, reason: str, message: str, now_ms: int,
               source: tuple[str, bytes], max_output_bytes: int) -> tuple[OutRecord, Any]:
        """The dead letter of a rejected event, and the audit's ids of the key that sealed it."""
        sealed, key_ids = self._sealed(plan, decoder, event, reason)
        body = {
            "reason": reason,
            "message": message,
            "source": {"topic": event.topic, "partition": event.partition, "offset": event.offset,
                       "timestamp": event.timestamp_ms},
            "schema": plan.name,
            "policy": plan.policy_hash,
            "sealed": sealed,
            "instance": self.instance,
            "time": now_ms,
        }
        value = orjson.dumps(body)
        if len(value) > max_output_bytes:  # never emit a record Kafka would refuse
            body["sealed"] = None
            value = orjson.dumps(body)
            key_ids = self.quarantine_key_ids()
        return OutRecord(plan.dlq_topic, None, value, [(REASON_HEADER, reason.encode()), source]), key_ids

    def consent_letter(self, dlq_topic: str, event: RawEvent, reason: str, message: str, now_ms: int,
                       source: tuple[str, bytes]) -> OutRecord:
        """The dead letter of a raw consent event (sealed under the quarantine key; audited with
        `quarantine_key_ids`)."""
        body = {"reason": reason, "message": message, "schema": "consent",
                "source": {"topic": event.topic, "partition": event.partition, "offset": event.offset,
                           "timestamp": event.timestamp_ms},
                "sealed": self.sealer.seal(event.topic, event.partition, event.offset, event.value, event.key,
                                           event.headers) if len(event.value or b"") <= self.max_record_bytes
                else None,
                "instance": self.instance, "time": now_ms}
        return OutRecord(dlq_topic, None, orjson.dumps(body), [(REASON_HEADER, reason.encode()), source])

    def _sealed(self, plan: Plan, decoder: EventDecoder, event: RawEvent,
                reason: str) -> tuple[dict[str, Any] | None, Any]:
        """(the original event sealed, the audit's key ids). Under the subject's key (format 2, erased by
        `gateway forget`) when its subject can be read, else under the quarantine key (format 1). Not
        sealed when it exceeds max_record_bytes: then it stays at its source coordinates only (sealing it
        could make a dead letter Kafka refuses, stopping the partition)."""
        size = len(event.value or b"") + len(event.key or b"") + sum(len(v or b"") for _, v in event.headers or [])
        if size > self.max_record_bytes:
            return None, self.quarantine_key_ids()
        subject = self._read_subject(plan, decoder, event, reason)
        if subject is not None:
            domain, token, token_key_id = subject
            try:
                sealed = self.sealer.seal_for_subject(event.topic, event.partition, event.offset, event.value,
                                                      event.key, event.headers, domain, token)
                return sealed, [token_key_id, sealed["key_id"]]
            except Exception as exc:  # KMS down: still dead-letter (and say so), never stop the partition
                log.warning("dead letter sealed under the quarantine key: the subject's key is unavailable",
                            extra={"topic": event.topic, "partition": event.partition, "offset": event.offset,
                                   "error": type(exc).__name__})
        return (self.sealer.seal(event.topic, event.partition, event.offset, event.value, event.key, event.headers),
                self.quarantine_key_ids())

    def _read_subject(self, plan: Plan, decoder: EventDecoder, event: RawEvent,
                      reason: str) -> tuple[str, str, str] | None:
        """(token domain, subject token, token key id) of a rejected event, or None; never raises.

        Read only where it is sound: an event rejected after it decoded is decoded again (the same
        bytes give the same record; only rejected events pay); an event that failed validation as a
        JSON object (missing_field, wrong_type: it parsed) gives its subject field when that is a
        string, the value its valid events would carry, so the token is theirs. Nothing else is read:
        a broken Avro record has no field that can be trusted without decoding all of it."""
        reader = self.subject_readers.get(event.topic)
        if reader is None:
            return None
        field, domain, token_of, token_key_id = reader
        try:
            if reason not in DECODE_REASONS:
                record: Any = decoder.decode(event.value)[0]
            elif reason in JSON_SHAPE_REASONS and plan.input_mode in ("auto", "json"):
                record = orjson.loads(event.value or b"")
            else:
                return None
            value = record.get(field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                return None
            return domain, token_of(value), token_key_id  # the sanitizer's own function: its size check too
        except Exception:  # a subject that cannot be read: sealed under the quarantine key
            return None
