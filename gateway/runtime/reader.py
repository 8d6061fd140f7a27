"""Reading topics to their end (demo, `gateway dump`, `gateway audit verify`, changelogs, tests)."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, IsolationLevel, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import OffsetSpec

from gateway.core.audit import record_entries
from gateway.core.codec.sanitized import StoredRecord
from gateway.errors import GatewayError
from gateway.runtime import clients


def read_topic(kafka: Mapping[str, str], topic: str, timeout_s: float = 60.0,
               partitions: Collection[int] | None = None, committed_only: bool = True,
               settle_s: float = 3.0) -> list[StoredRecord]:
    """Every committed record of `topic` (of `partitions`, if given), in offset order per partition,
    up to the current end (the last stable offset: an open transaction's records are not read).
    `committed_only=False` reads what a read_uncommitted consumer sees, aborted records included.
    A partition whose last stable offset stays below its high watermark for `settle_s` (an open
    transaction) ends there; a shorter lag is a commit's markers on their way, and is waited for.

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config()).
    A cluster that does not answer within clients.CONNECT_TIMEOUT_S is a GatewayError naming the
    bootstrap servers and librdkafka's reason (librdkafka itself prints nothing)."""
    errors = clients.ClientErrors("reader", log_every_s=None)  # the error raised says what went wrong
    consumer = clients.reader(kafka, "privacy-gateway.reader", errors, **clients.READ_TO_END,
                              **({} if committed_only else {"isolation.level": "read_uncommitted"}))
    try:
        metadata = clients.require_metadata(consumer, errors, kafka["bootstrap.servers"], topic)
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
        high = _high_watermarks(kafka, topic, pending) if committed_only else {}
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        behind: dict[int, float] = {}  # partitions at their last stable offset but short of the high watermark
        while pending:
            now = time.monotonic()
            if now > deadline:
                raise GatewayError(f"reading '{topic}' did not reach its end within {timeout_s:.0f}s")
            for partition in [p for p, since in behind.items() if now - since > settle_s]:
                pending.discard(partition)  # a transaction really is open: its records are not committed
                del behind[partition]
            for msg in clients.take(consumer, 1000, 0.2 if behind else 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if 0 <= msg.offset() < high.get(msg.partition(), -1):
                            # the last stable offset lags the high watermark: a transaction still open,
                            # or one whose commit markers are still being written (commit_transaction
                            # returns before they reach every partition); wait briefly for them
                            behind.setdefault(msg.partition(), time.monotonic())
                        else:
                            pending.discard(msg.partition())
                            behind.pop(msg.partition(), None)
                    continue
                behind.pop(msg.partition(), None)
                records.append(StoredRecord(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                            dict(msg.headers() or [])))
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()


def _high_watermarks(kafka: Mapping[str, str], topic: str, partitions: Collection[int]) -> dict[int, int]:
    """Each partition's high watermark as a read_uncommitted ListOffsets sees it (a read_committed
    consumer is told the last stable offset instead); {} if the cluster does not say."""
    try:
        admin = clients.admin(kafka)  # quiet, as every client: librdkafka prints nothing on stderr
        futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                                     isolation_level=IsolationLevel.READ_UNCOMMITTED, request_timeout=10)
        return {tp.partition: future.result().offset for tp, future in futures.items()}
    except (KafkaException, ValueError):  # a hint only: without it a read ends at the last stable offset
        return {}


class AuditFollower:
    """Follows an audit topic's committed entries as its records commit (a sanitize worker's record
    holds a batch's entries of one source partition): one read_committed reader from the beginning,
    assigned once the topic exists, each poll returning what arrived since the last, so a long wait
    never re-reads the topic (the demo's steps, AuditedCounter)."""

    def __init__(self, kafka: Mapping[str, str], topic: str) -> None:
        self.kafka, self.topic = kafka, topic
        self.consumer: Consumer | None = None

    def poll(self, timeout_s: float) -> list[dict[str, Any]]:
        """The entries committed since the last poll, after waiting up to `timeout_s` for some."""
        if self.consumer is None:
            consumer = clients.reader(self.kafka, "privacy-gateway.audited-counter", **clients.READ_TO_END)
            info = consumer.list_topics(self.topic, timeout=15).topics.get(self.topic)
            if info is None or info.error is not None:  # not created yet
                consumer.close()
                time.sleep(timeout_s)
                return []
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in sorted(info.partitions)])
            self.consumer = consumer
        return record_entries(m.value() for m in clients.take(self.consumer, 1000, timeout_s) if m.error() is None)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()


class AuditedCounter:
    """Counts the entries audited on an audit topic as its records commit (the demo's progress, the
    tests' waits); with `kind`, only the entries of that type ("event": the sanitize outcomes, not
    the consent, DP or forget entries other jobs write on the same topic)."""

    def __init__(self, kafka: Mapping[str, str], topic: str, kind: str | None = None) -> None:
        self.follower = AuditFollower(kafka, topic)
        self.kind = kind
        self.count = 0

    def poll(self, timeout_s: float) -> int:
        """The entries audited so far, after waiting up to `timeout_s` for more."""
        self.count += sum(self.kind is None or e.get("type") == self.kind for e in self.follower.poll(timeout_s))
        return self.count

    def close(self) -> None:
        self.follower.close()
