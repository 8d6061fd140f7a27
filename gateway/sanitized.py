"""Sanitized records as stored in Kafka, and decoding them with the compiled plans (no Kafka client)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import fastavro
import orjson

from gateway.errors import GatewayError
from gateway.policy import Plan


class StoredRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


class SanitizedDecoder:
    """Decodes sanitized records (Avro, Confluent-framed or JSON) using the compiled plans."""

    def __init__(self, plans: Sequence[Plan]) -> None:
        self.by_topic = {p.sanitized_topic: p for p in plans}
        self.by_name = {p.sanitized_schema["name"]: p for p in plans}

    def plan_for(self, topic: str | None = None, schema_name: str | None = None) -> Plan:
        plan = self.by_name.get(schema_name or "") or self.by_topic.get(topic or "")
        if plan is None:
            if len(self.by_topic) == 1:
                return next(iter(self.by_topic.values()))
            known = ", ".join(sorted(self.by_topic))
            raise GatewayError(f"cannot tell which policy sanitized these records: pass --topic (one of {known})")
        return plan

    def decode(self, record: StoredRecord) -> tuple[Plan, dict[str, Any]]:
        name = record.headers.get("gateway-schema", b"").decode() or None
        plan = self.plan_for(record.topic, name)
        encoding = record.headers.get("gateway-encoding", b"").decode()
        value = record.value or b""
        if encoding == "json" or (not encoding and value[:1] == b"{"):
            return plan, orjson.loads(value)
        if encoding == "confluent" or (not encoding and value[:1] == b"\x00"):
            value = value[5:]
        return plan, fastavro.schemaless_reader(io.BytesIO(value), plan.sanitized_parsed, None)
