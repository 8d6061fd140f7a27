"""The ledger's Kafka side: a compacted topic, read whole at start-up, followed while running."""

from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import Consumer, KafkaError, TopicPartition

from gateway.consume import read_topic
from gateway.dp.ledger import Ledger
from gateway.errors import GatewayError
from gateway.topics import admin_client, create_topics, partition_counts

LEDGER_CONFIG = {"cleanup.policy": "compact"}


def ensure_ledger_topic(kafka: Mapping[str, str], topic: str) -> None:
    """One partition (a small, totally ordered log), compacted: the latest entry per key survives."""
    admin = admin_client(kafka)
    if topic not in partition_counts(admin):
        create_topics(admin, {topic: 1}, configs={topic: LEDGER_CONFIG})


def load_ledger(kafka: Mapping[str, str], topic: str) -> Ledger:
    """Every committed entry of the ledger topic (empty ledger if the topic does not exist yet)."""
    if topic not in partition_counts(admin_client(kafka)):
        return Ledger()
    return Ledger.from_records((r.key, r.value) for r in read_topic(kafka, topic))


class LedgerFollower:
    """Applies entries other workers commit after start-up (read_committed, from the loaded end)."""

    def __init__(self, kafka: Mapping[str, str], topic: str, ledger: Ledger) -> None:
        self.ledger = ledger
        self.consumer = Consumer({
            **kafka, "group.id": "privacy-gateway.ledger-follower",
            "enable.auto.commit": False, "isolation.level": "read_committed", "auto.offset.reset": "earliest",
        })
        metadata = self.consumer.list_topics(topic, timeout=15).topics[topic]
        assignment = []
        for p in metadata.partitions:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            assignment.append(TopicPartition(topic, p, high))
        self.consumer.assign(assignment)

    def poll(self) -> int:
        applied = 0
        for msg in self.consumer.consume(500, 0):
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    continue
                continue
            if msg.key() is None:
                continue
            self.ledger.apply_record(msg.key(), msg.value())
            applied += 1
        return applied

    def wait_for(self, keys: set[bytes], timeout_s: float = 30.0) -> None:
        """Follow the ledger until it holds every charge in `keys` (decided in log order)."""
        deadline = time.monotonic() + timeout_s
        while not keys <= set(self.ledger.charges):
            if time.monotonic() > deadline:
                raise GatewayError(f"{len(keys - set(self.ledger.charges))} ledger charge(s) not read back "
                                   f"within {timeout_s:.0f}s")
            if not self.poll():
                time.sleep(0.01)

    def close(self) -> None:
        self.consumer.close()
