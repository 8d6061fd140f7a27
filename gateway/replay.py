"""After a crash: what a dead transaction left showing, so its events are not published twice.

A broker that implements `read_committed` hides an aborted transaction's records. The embedded
Tansu 0.6.0 does not: it serves them. A worker killed mid-transaction can then leave part of a
batch showing: some audit events, some sanitized records or dead letters, beyond the committed
offset. When a worker is assigned a partition it reads what shows beyond the committed offset,
and the pipeline replays those events without repeating what shows: an event whose audit record
shows is not audited again, an event whose output shows is not published again.

On Apache Kafka nothing of an aborted transaction shows, so every replay is empty. A committed
offset fetched stale (a broker without KIP-447 stable offsets) is handled the same way: the
events between it and the true position show in full and are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, TopicPartition

from gateway.config import GatewayConfig

log = logging.getLogger("gateway.replay")

SOURCE_HEADER = "gateway-source"
CLOCK_MARGIN_MS = 5_000  # record timestamps come from the producers' clocks


def source_ref(topic: str, partition: int, offset: int) -> bytes:
    """The `gateway-source` header value: where the event came from (topic names hold no '/')."""
    return f"{topic}/{partition}/{offset}".encode()


def parse_source_ref(value: bytes) -> tuple[str, int, int] | None:
    topic, _, rest = value.decode(errors="replace").partition("/")
    partition, _, offset = rest.partition("/")
    if not (topic and partition.isdigit() and offset.isdigit()):
        return None
    return topic, int(partition), int(offset)


@dataclass
class ReplayedPartition:
    """What already shows for one source partition's events from `start` on."""

    start: int
    audited_through: int = -1  # events at or below this offset already have their audit record
    published: set[int] = field(default_factory=set)  # offsets whose sanitized record or dead letter shows

    @property
    def through(self) -> int:
        """The last offset that needs care; past it the partition is processed as usual."""
        return max(self.audited_through, max(self.published, default=-1))


class OutputScan:
    """Reads the tail of output topics for records whose source header names a watched partition."""

    def __init__(self, config: GatewayConfig, max_scan: int = 200_000) -> None:
        self._config = config
        self._max_scan = max_scan

    def published(self, topics: Iterable[str], starts: Mapping[tuple[str, int], int],
                  since_ms: int) -> dict[tuple[str, int], set[int]]:
        """{(source topic, partition): offsets at or after its start whose output shows}, from
        records written since `since_ms` (each output partition read back until an older record)."""
        found: dict[tuple[str, int], set[int]] = {}
        consumer = Consumer({
            **self._config.kafka_client_config(), "group.id": f"{self._config.group_id}.replay-scan",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
        })
        try:
            for topic in sorted(set(topics)):
                metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
                if metadata is None or metadata.error is not None:
                    continue
                for partition in sorted(metadata.partitions):
                    self._scan(consumer, TopicPartition(topic, partition), starts, since_ms, found)
        finally:
            consumer.close()
        return found

    def _scan(self, consumer: Consumer, tp: TopicPartition, starts: Mapping[tuple[str, int], int],
              since_ms: int, found: dict[tuple[str, int], set[int]]) -> None:
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        window = 2_000
        while high > low:
            start = max(low, high - window)
            oldest = self._read(consumer, TopicPartition(tp.topic, tp.partition, start), starts, found)
            if start == low or oldest < since_ms:
                return
            if window >= self._max_scan:
                log.info("output scan stopped at its limit", extra={"topic": tp.topic, "partition": tp.partition,
                                                                    "records": window})
                return
            window *= 4

    def _read(self, consumer: Consumer, tp: TopicPartition, starts: Mapping[tuple[str, int], int],
              found: dict[tuple[str, int], set[int]]) -> int:
        """Read from tp.offset to the end; returns the oldest record timestamp seen."""
        consumer.assign([tp])
        oldest = 2**63
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            oldest = min(oldest, msg.timestamp()[1])
            for name, value in msg.headers() or []:
                if name == SOURCE_HEADER and value is not None:
                    ref = parse_source_ref(value)
                    if ref is not None and ref[2] >= starts.get(ref[:2], 2**63):
                        found.setdefault(ref[:2], set()).add(ref[2])
        return oldest
