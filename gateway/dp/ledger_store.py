"""The ledger's Kafka side: a compacted topic, read whole at start-up, followed while running."""

from __future__ import annotations

import time
from collections.abc import Mapping

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

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
    return read_ledger(kafka, topic)[0]


def read_ledger(kafka: Mapping[str, str], topic: str) -> tuple[Ledger, dict[int, int]]:
    """The ledger from every committed entry, and per partition the offset after the last entry
    read: where a LedgerFollower goes on, so that an entry committed meanwhile is neither missed
    nor applied twice."""
    if topic not in partition_counts(admin_client(kafka)):
        return Ledger(), {}
    records = read_topic(kafka, topic)
    follow_from = {r.partition: r.offset + 1 for r in records}  # read_topic: offset order per partition
    return Ledger.from_records((r.key, r.value) for r in records), follow_from


class LedgerFollower:
    """Applies entries other workers commit after start-up (read_committed), from where read_ledger
    stopped: not from the partition end the broker reports now, which would skip what was committed
    in between (and which the embedded Tansu answers low)."""

    def __init__(self, kafka: Mapping[str, str], topic: str, ledger: Ledger, follow_from: Mapping[int, int]) -> None:
        self.ledger = ledger
        self.consumer = Consumer({
            **kafka, "group.id": "privacy-gateway.ledger-follower",
            "enable.auto.commit": False, "isolation.level": "read_committed", "auto.offset.reset": "earliest",
        })
        metadata = self.consumer.list_topics(topic, timeout=15).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, follow_from.get(p, OFFSET_BEGINNING))
                              for p in sorted(metadata.partitions)])

    def poll(self) -> int:
        applied = 0
        for msg in self.consumer.consume(500, 0):
            if msg.error() is not None or msg.key() is None:
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
