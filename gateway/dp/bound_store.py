"""Stage 1's bounding state on Kafka: a compacted changelog topic, one record per changed key.

Records are keyed by ``[sanitized topic, partition, *bounder key]`` (JSON) and written to the
changelog partition of the same number as the input partition (modulo the changelog's partition
count), so a worker taking over input partition p reads one changelog partition to rebuild it.
The worker writes them in the transaction that carries the contributions and the input offsets, so
the state a new owner restores always matches the offsets it resumes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.consume import read_topic
from gateway.pipeline import OutRecord

STATE_CONFIG = {"cleanup.policy": "compact"}
BoundKey = tuple[str, int]  # (sanitized topic, partition)
Change = tuple[list[Any], bytes | None]  # a bounder's changelog entry: (key, value or None to delete)


def state_records(state_topic: str, state_partitions: int, source: BoundKey,
                  changes: list[Change]) -> list[OutRecord]:
    partition = source[1] % state_partitions
    return [OutRecord(state_topic, orjson.dumps([source[0], source[1], *key]), value, None, partition)
            for key, value in changes]


def load_state(kafka: Mapping[str, str], state_topic: str, state_partitions: int,
               sources: list[BoundKey], timeout_s: float = 60.0) -> dict[BoundKey, list[Change]]:
    """Every committed changelog entry of `sources`, in log order, read up to the end (the last stable
    offset: a transaction still open is not part of the state, nor are its input offsets)."""
    out: dict[BoundKey, list[Change]] = {s: [] for s in sources}
    partitions = {p % state_partitions for _, p in sources}
    if not partitions:
        return out
    for record in read_topic(kafka, state_topic, timeout_s, partitions):
        key = orjson.loads(record.key or b"[]")
        if len(key) >= 3 and (key[0], key[1]) in out:
            out[(key[0], key[1])].append((key[2:], record.value))
    return out
