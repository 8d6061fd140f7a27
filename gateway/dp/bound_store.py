"""Stage 1's bounding state on Kafka: a compacted changelog topic, one record per changed key.

Records are keyed by ``[sanitized topic, partition, *bounder key]`` (JSON) and written to the
changelog partition of the same number as the input partition (modulo the changelog's partition
count), so a worker taking over input partition p reads one changelog partition to rebuild it.
The worker writes them in the transaction that carries the contributions and the input offsets, so
the state a new owner restores always matches the offsets it resumes from.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from gateway.errors import GatewayError
from gateway.pipeline import OutRecord

STATE_CONFIG = {"cleanup.policy": "compact"}
BoundKey = tuple[str, int]  # (sanitized topic, partition)
Change = tuple[list[Any], bytes | None]  # a bounder's changelog entry: (key, value or None to delete)


def state_records(state_topic: str, state_partitions: int, source: BoundKey,
                  changes: list[Change]) -> list[OutRecord]:
    partition = source[1] % state_partitions
    return [OutRecord(state_topic, orjson.dumps([source[0], source[1], *key]), value, None, partition)
            for key, value in changes]


def load_state(consumer_config: dict[str, Any], state_topic: str, state_partitions: int,
               sources: list[BoundKey], timeout_s: float = 60.0) -> dict[BoundKey, list[Change]]:
    """Every committed changelog entry of `sources`, in log order, read up to the end (the last stable
    offset: a transaction still open is not part of the state, nor are its input offsets)."""
    wanted = set(sources)
    out: dict[BoundKey, list[Change]] = {s: [] for s in sources}
    partitions = sorted({p % state_partitions for _, p in sources})
    if not partitions:
        return out
    consumer = Consumer({**consumer_config, "enable.auto.commit": False, "isolation.level": "read_committed",
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        pending = set()
        assignment = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(state_topic, p), timeout=10)
            if high > low:
                pending.add(p)
                assignment.append(TopicPartition(state_topic, p, low))
        if not assignment:
            return out
        consumer.assign(assignment)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise GatewayError(f"restoring bounding state from '{state_topic}' did not reach its end "
                                   f"within {timeout_s:.0f}s")
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                    continue
                key = orjson.loads(msg.key() or b"[]")
                if len(key) < 3 or (key[0], key[1]) not in wanted:
                    continue
                out[(key[0], key[1])].append((key[2:], msg.value()))
        return out
    finally:
        consumer.close()
