"""After a crash or an abort: what a dead transaction left showing, so nothing shows twice.

A broker that implements `read_committed` hides an aborted transaction's records. The embedded
Tansu 0.6.0 does not: it serves them. A worker killed mid-transaction, or one whose commit
failed, can then leave part of a batch showing: some audit events, some sanitized records or
dead letters, beyond the committed offset. When a worker is assigned a partition (or rewinds one
after an abort) it reads what shows beyond the committed offset, and the pipeline replays those
events without repeating what shows: an event whose audit record shows is not audited again, an
event whose output shows is not published again.

On Apache Kafka nothing of an aborted transaction shows, so every replay is empty. A committed
offset fetched stale (a broker without KIP-447 stable offsets) is handled the same way: the
events between it and the true position show in full and are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from gateway.config import GatewayConfig
from gateway.consume import read_from

log = logging.getLogger("gateway.replay")

SOURCE_HEADER = "gateway-source"


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
    """Reads the tail of output topics for records whose source header names a watched partition.

    A source partition's outputs land in any output partition, but in each one in source-offset
    order (one owner at a time, transactions in order). So reading an output partition back until
    it holds a record of that source from before its start finds all of its records after it. A
    source with no audited event yet (`fresh`) is only looked for in the first window: at most a
    first, torn batch of it can show.
    """

    def __init__(self, config: GatewayConfig, max_scan: int = 200_000, first_window: int = 2_000) -> None:
        self._config = config
        self._max_scan = max_scan
        self._first_window = first_window

    def published(self, topics: Iterable[str], starts: Mapping[tuple[str, int], int],
                  fresh: set[tuple[str, int]]) -> dict[tuple[str, int], set[int]]:
        """{(source topic, partition): offsets at or after its start whose output shows}."""
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
                    self._scan(consumer, TopicPartition(topic, partition), starts, fresh, found)
        finally:
            consumer.close()
        return found

    def _scan(self, consumer: Consumer, tp: TopicPartition, starts: Mapping[tuple[str, int], int],
              fresh: set[tuple[str, int]], found: dict[tuple[str, int], set[int]]) -> None:
        # `high` only sizes the first window: each read goes on to the end the fetches report, since
        # the embedded Tansu 0.6.0 answers ListOffsets with ends below the real one (even 0 for a
        # partition that holds records); an empty partition ends its one read at once
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        window = self._first_window
        while True:
            start = max(low, high - window)
            reached = self._read(consumer, TopicPartition(tp.topic, tp.partition, start), starts, found)
            if start == low or set(starts) - fresh <= reached:
                return
            if window >= self._max_scan:
                log.info("output scan stopped at its limit", extra={"topic": tp.topic, "partition": tp.partition,
                                                                    "records": window})
                return
            window *= 4

    def _read(self, consumer: Consumer, tp: TopicPartition, starts: Mapping[tuple[str, int], int],
              found: dict[tuple[str, int], set[int]]) -> set[tuple[str, int]]:
        """Read from tp.offset to the end; returns the sources seen with an offset before their start."""
        reached: set[tuple[str, int]] = set()
        for msg in read_from(consumer, tp):
            for name, value in msg.headers() or []:
                if name != SOURCE_HEADER or value is None:
                    continue
                ref = parse_source_ref(value)
                if ref is None or ref[:2] not in starts:
                    continue
                if ref[2] >= starts[ref[:2]]:
                    found.setdefault(ref[:2], set()).add(ref[2])
                else:
                    reached.add(ref[:2])
        return reached
