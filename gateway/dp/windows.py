"""Stage 2: per-group sums per window, and when a window closes (pure; the worker feeds it).

Contributions arrive partitioned by (aggregate, window, group), so one stage-2 partition holds all
contributions of its groups. State is kept per (aggregate, window start, partition): that is the
unit the ledger charges and the worker releases.

Event time is tracked per *source*: contributions of one stage-1 partition from one raw partition
(`Contribution.source`) arrive in their event-time order, while contributions of different sources
interleave however the stages' partitions happened to be processed, and this worker reads its
own partitions at different paces too. So each (stage-2 partition, aggregate, source) has a mark, the
largest event time seen from that source on that partition, and a partition's watermark for an
aggregate is the smallest mark over every expected source (every stage-1 partition times every raw
partition, known when the job starts, plus any other seen since), but never more than ``max_skew``
behind the largest (a source that stopped, carries nothing, or lags by more, does not hold the
windows open for longer). A window of a partition closes when
* the watermark passes window end + grace (every source has moved past it), or
* the input has been quiet for ``idle_close_ms`` of wall-clock time and the wall clock has passed
  window end + grace (so a quiet stream still gets its windows released).

A contribution for a window already closed here (or already behind the watermark) is late: it is
reported, never folded into a released or fresh window.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.dp.bounding import NEVER, Contribution
from gateway.dp.declarations import AggregateSpec

WindowKey = tuple[str, int, int]  # (aggregate id, window start, partition)


@dataclass
class WindowState:
    counts: dict[str, int] = field(default_factory=dict)
    sums: dict[str, int] = field(default_factory=dict)
    first_offset: int = -1  # earliest input offset that fed it (re-read after a crash)

    def add(self, c: Contribution, offset: int) -> None:
        self.counts[c.group] = self.counts.get(c.group, 0) + 1
        self.sums[c.group] = self.sums.get(c.group, 0) + c.value
        if self.first_offset < 0 or offset < self.first_offset:
            self.first_offset = offset


@dataclass
class GroupWindows:
    specs: dict[str, AggregateSpec]
    idle_close_ms: int
    open: dict[WindowKey, WindowState] = field(default_factory=dict)
    closed: set[WindowKey] = field(default_factory=set)
    sources: dict[str, frozenset[str]] = field(default_factory=dict)  # aggregate -> expected sources
    # (aggregate, partition) -> source -> event time, and the watermark it gives (see the docstring)
    marks: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    watermarks: dict[tuple[str, int], int] = field(default_factory=dict)
    last_input_ms: int = 0

    def is_late(self, c: Contribution, partition: int) -> bool:
        spec = self.specs[c.aggregate]
        if (c.aggregate, c.window_start, partition) in self.closed:
            return True
        return c.window_start + spec.window_ms + spec.grace_ms <= self.watermarks.get((c.aggregate, partition),
                                                                                      NEVER)

    def add(self, c: Contribution, partition: int, offset: int, now_ms: int) -> bool:
        """Fold a contribution in; False (and nothing changes) if it is late."""
        self.last_input_ms = now_ms
        if self.is_late(c, partition):
            return False
        self.open.setdefault((c.aggregate, c.window_start, partition), WindowState()).add(c, offset)
        key = (c.aggregate, partition)
        marks = self.marks.setdefault(key, {})
        if c.event_time > marks.get(c.source, NEVER):
            marks[c.source] = c.event_time
            expected = self.sources.get(c.aggregate, frozenset()) | marks.keys()
            slowest = min(marks.get(source, NEVER) for source in expected)
            watermark = max(slowest, max(marks.values()) - self.specs[c.aggregate].max_skew_ms)
            if watermark > self.watermarks.get(key, NEVER):
                self.watermarks[key] = watermark
        return True

    def due(self, now_ms: int) -> list[WindowKey]:
        idle = now_ms - self.last_input_ms >= self.idle_close_ms
        out = []
        for key in self.open:
            spec = self.specs[key[0]]
            close_at = key[1] + spec.window_ms + spec.grace_ms
            if self.watermarks.get((key[0], key[2]), NEVER) >= close_at or (idle and now_ms >= close_at):
                out.append(key)
        return sorted(out, key=lambda k: (k[1], k[0], k[2]))

    def close(self, key: WindowKey) -> WindowState:
        self.closed.add(key)
        return self.open.pop(key)

    def forget_partition(self, partition: int) -> None:
        """On revoke: drop open state of a partition (its new owner re-reads it from the committed offset)."""
        for key in [k for k in self.open if k[2] == partition]:
            del self.open[key]
        for key in [k for k in self.marks if k[1] == partition]:
            del self.marks[key]
            self.watermarks.pop(key, None)

    def commit_offset(self, partition: int, next_offset: int) -> int:
        """Offset to commit for a partition: the earliest one an open window still needs."""
        needed = [s.first_offset for k, s in self.open.items() if k[2] == partition and s.first_offset >= 0]
        return min([next_offset, *needed])

    def prune_closed(self) -> None:
        """Closed-window markers are only needed while the watermark could still admit them."""
        keep = set()
        for key in self.closed:
            spec = self.specs[key[0]]
            if key[1] + spec.window_ms + spec.grace_ms > self.watermarks.get((key[0], key[2]), NEVER):
                keep.add(key)
        self.closed = keep
