"""Stage 1's bounding state as changelog records (pure; gateway.runtime.changelog reads them back).

Records are keyed by ``[sanitized topic, partition, *bounder key]`` (JSON) and written to the
changelog partition of the same number as the input partition (modulo the changelog's partition
count), so a worker taking over input partition p reads one changelog partition to rebuild it.
The worker writes them in the transaction that carries the contributions and the input offsets, so
the state a new owner restores always matches the offsets it resumes from.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import orjson

from gateway.errors import MalformedStateRecord
from gateway.outputs import OutRecord

STATE_CONFIG = {"cleanup.policy": "compact"}
BoundKey = tuple[str, int]  # (sanitized topic, partition)
Change = tuple[list[Any], bytes | None]  # a bounder's changelog entry: (key, value or None to delete)


def state_partition(source: BoundKey, state_partitions: int) -> int:
    return source[1] % state_partitions


def state_records(state_topic: str, state_partitions: int, source: BoundKey,
                  changes: list[Change]) -> list[OutRecord]:
    partition = state_partition(source, state_partitions)
    return [OutRecord(state_topic, orjson.dumps([source[0], source[1], *key]), value, None, partition)
            for key, value in changes]


def changes_by_source(records: Iterable[tuple[bytes | None, bytes | None]],
                      sources: Collection[BoundKey]) -> dict[BoundKey, list[Change]]:
    """The changelog entries of `sources` among (key, value) records read in log order (a key that is
    no changelog key raises MalformedStateRecord: see collect_change to skip it)."""
    out: dict[BoundKey, list[Change]] = {s: [] for s in sources}
    for raw_key, value in records:
        collect_change(out, raw_key or b"", value)
    return out


def collect_change(out: dict[BoundKey, list[Change]], raw_key: bytes, value: bytes | None) -> None:
    """Add one record to its source's entries in `out` (those of other sources are not ours to read).
    A key that is not ``[topic, partition, kind, ...]`` in JSON raises MalformedStateRecord."""
    try:
        key = orjson.loads(raw_key)
    except orjson.JSONDecodeError:
        raise MalformedStateRecord("a DP bounding-state record's key is not JSON (or not UTF-8)") from None
    if not isinstance(key, list) or len(key) < 3 or not isinstance(key[0], str) or not isinstance(key[1], int):
        raise MalformedStateRecord("a DP bounding-state record's key is not [topic, partition, kind, ...]")
    entries = out.get((key[0], key[1]))
    if entries is not None:
        entries.append((key[2:], value))
