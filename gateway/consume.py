"""Reading topics to their end (demo, `gateway dump`, `gateway audit verify`, tests)."""

from __future__ import annotations

import io
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import fastavro
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from gateway.errors import GatewayError
from gateway.policy import Plan


class StoredRecord(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_topic(kafka: Mapping[str, str], topic: str, timeout_s: float = 60.0,
               partitions: Collection[int] | None = None) -> list[StoredRecord]:
    """Every committed record of `topic` (of `partitions`, if given), in offset order per partition,
    up to the current end (the last stable offset: an open transaction's records are not read).

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config())."""
    consumer = Consumer({
        **kafka, "group.id": "privacy-gateway.reader", "enable.auto.commit": False,
        "isolation.level": "read_committed", "enable.partition.eof": True, "auto.offset.reset": "earliest",
    })
    try:
        metadata = consumer.list_topics(topic, timeout=15)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None:
            raise GatewayError(f"topic '{topic}' does not exist on {kafka['bootstrap.servers']}")
        # every partition from its beginning, each done at its end-of-partition event (under
        # read_committed: the last stable offset), so no separate ListOffsets answer decides the end
        pending = {p for p in info.partitions if partitions is None or p in partitions}
        assignment = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(pending)]
        records: list[StoredRecord] = []
        if not assignment:
            return records
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise GatewayError(f"reading '{topic}' did not reach its end within {timeout_s:.0f}s")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                records.append(StoredRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                            dict(msg.headers() or [])))
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()


def read_from(consumer: Consumer, start: TopicPartition, timeout_s: float = 30.0) -> Iterator[Message]:
    """The records of one partition from `start` to its end (or until `timeout_s`), on a consumer
    configured with `enable.partition.eof` (the recovery scans' tail reads)."""
    consumer.assign([start])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                return
            continue
        yield msg


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
