"""Compacted topics that hold state: read to their end to restore it, then followed.

One helper for every such topic: the DP bounding state (restored per input partition when the
aggregate job opens it), the privacy ledger (read whole at start-up, then followed), and the key
topic. A changelog written in the same transaction as the consumer offsets restores to exactly
the state those offsets stand for: the read is read_committed and stops at the last stable offset,
so an open transaction's records are not part of it (nor are its offsets committed yet).

State is applied through `apply_records`: a record the state cannot read (MalformedStateRecord: not
JSON, not an object, another format, bad UTF-8) is skipped, counted in
gateway_state_records_skipped_total and logged without its content, so what another writer put
there never stops a worker from starting or following. A follower that fails otherwise fails
loudly: its worker marks itself not ready and stops (see KeyTopic).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TypeVar

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from gateway.core.codec.sanitized import StoredRecord
from gateway.errors import GatewayError, MalformedStateRecord
from gateway.ops import metrics
from gateway.runtime import clients
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import admin_client, create_topics, partition_counts

log = logging.getLogger("gateway.changelog")
K = TypeVar("K")  # a record's key: bytes as read, or a changelog key already parsed
COMPACTED = {"cleanup.policy": "compact"}


def apply_records(state: str, topic: str, records: Iterable[tuple[K | None, bytes | None]],
                  apply: Callable[[K, bytes | None], object]) -> int:
    """Apply keyed records in log order; those `apply` cannot read are skipped and counted. How many
    were skipped. `state` names the state for the metric and the log (keys, consent, dp-ledger, ...)."""
    skipped = 0
    for key, value in records:
        if key is None:
            continue
        try:
            apply(key, value)
        except MalformedStateRecord as exc:
            skipped += 1
            metrics.STATE_SKIPPED.labels(state, topic).inc()
            log.warning("malformed state record skipped", extra={"state": state, "topic": topic, "problem": str(exc)})
    return skipped


def ensure_changelog(kafka: Mapping[str, str], topic: str, partitions: int,
                     config: Mapping[str, str] | None = None, timeout_s: float = 30.0) -> int:
    """Create the compacted topic if it is missing; its partition count."""
    admin = admin_client(kafka)
    count = partition_counts(admin).get(topic)
    if count:
        return count
    create_topics(admin, {topic: partitions}, configs={topic: dict(config or COMPACTED)})
    deadline = time.monotonic() + timeout_s
    while True:  # a new topic shows in the metadata once every broker has it
        count = partition_counts(admin).get(topic)
        if count:
            return count
        if time.monotonic() > deadline:
            raise GatewayError(f"changelog topic '{topic}' could not be created or read")
        time.sleep(0.1)


def restore(kafka: Mapping[str, str], topic: str, partitions: Collection[int] | None = None,
            timeout_s: float = 60.0, missing_ok: bool = False) -> tuple[list[StoredRecord], dict[int, int]]:
    """Every committed record of `topic` (of `partitions`, if given), in log order per partition,
    up to the last stable offset; and per partition the offset after the last record read, where a
    `ChangelogFollower` goes on (so a record committed meanwhile is neither missed nor read twice).

    `missing_ok`: a topic that does not exist yet restores to nothing instead of failing."""
    if missing_ok and topic not in partition_counts(admin_client(kafka)):
        return [], {}
    records = read_topic(kafka, topic, timeout_s, partitions)
    follow_from = {r.partition: r.offset + 1 for r in records}  # read_topic: offset order per partition
    return records, follow_from


def latest(records: list[StoredRecord]) -> dict[bytes, bytes]:
    """The state a compacted log stands for: the last value per key, tombstones deleting it."""
    out: dict[bytes, bytes] = {}
    for r in records:
        if r.key is None:
            continue
        if r.value is None:
            out.pop(r.key, None)
        else:
            out[r.key] = r.value
    return out


class ChangelogFollower:
    """Reads what is committed to a changelog after `restore` (read_committed), from where it stopped:
    not from the partition end the broker reports at the follower's start, which would skip what was
    committed in between."""

    def __init__(self, kafka: Mapping[str, str], topic: str, follow_from: Mapping[int, int],
                 group_id: str = "privacy-gateway.changelog-follower") -> None:
        self.topic = topic
        self.consumer = clients.reader(dict(kafka), group_id, **{"enable.partition.eof": False})
        metadata = self.consumer.list_topics(topic, timeout=15).topics[topic]
        self.consumer.assign([TopicPartition(topic, p, follow_from.get(p, OFFSET_BEGINNING))
                              for p in sorted(metadata.partitions)])

    def poll(self, max_records: int = 500, timeout_s: float = 0.0) -> list[tuple[bytes, bytes | None]]:
        """(key, value) of the records committed since the last poll (keyless ones are skipped)."""
        out: list[tuple[bytes, bytes | None]] = []
        for msg in clients.take(self.consumer, max_records, timeout_s):
            err = msg.error()
            if err is not None and err.fatal():
                raise KafkaException(err)  # the follower is dead: its owner says so and stops
            if err is not None or msg.key() is None:
                continue
            out.append((msg.key(), msg.value()))
        return out

    def positions(self) -> dict[int, int]:
        """Per partition, the offset after the last record `poll` returned (partitions it returned
        nothing from since the assignment are left out): a record below it has been seen."""
        assigned = self.consumer.assignment()
        return {tp.partition: tp.offset for tp in self.consumer.position(assigned) if tp.offset >= 0}

    def close(self) -> None:
        self.consumer.close()
