"""Stage 2: per-group sums per window, and a close schedule that does not depend on the data (pure;
the worker feeds it).

Contributions arrive partitioned by (aggregate, window, group), so one stage-2 partition holds all
contributions of its groups. State is kept per (aggregate, window start, partition): that is the
unit the ledger charges and the worker releases.

Whether a window had data must not leave the DP boundary, so the *schedule* is not the data's:
every window of every declared aggregate closes on every stage-2 partition this worker owns, once the
wall clock has passed its end + grace + ``settle_ms`` (the setting ``dp_idle_close_s``: time for
contributions still in flight through the two stages), with or without contributions. An empty
window releases noise only (key selection keeps no group) and is accounted exactly like a full one:
one charge, one ledger entry, one audit event and the same metrics. Nothing in the data moves the
schedule (no watermark, no idle timer): a producer's event times only choose the window an event
falls in.

Where a partition's schedule starts (``schedule``): after the last window the ledger shows charged
or released on it (so a restart catches up on the windows it missed, at most one ``period`` of them),
else at the first window not yet due (a fresh deployment releases nothing about the past). A
continual aggregate's windows are scheduled only inside its declared horizon.

A contribution for a window already closed here (or before the schedule's start) is late: it is
reported, never folded into a released or fresh window. The trade-off: contributions that take longer
than grace + settle to pass both stages are late (see README "What stays inside the DP boundary").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.dp.bounding import Contribution
from gateway.dp.declarations import AggregateSpec

WindowKey = tuple[str, int, int]  # (aggregate id, window start, partition)
MAX_DUE = 500  # windows handed out per call: a long catch-up is released over several turns


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


def close_time(spec: AggregateSpec, window_start: int) -> int:
    """When a window's data stops being accepted (event time): end + grace. Also the time stamped on
    its release, so a release carries no processing time that could depend on the data."""
    return window_start + spec.window_ms + spec.grace_ms


def first_due(spec: AggregateSpec, now_ms: int, settle_ms: int) -> int:
    """The first window that is not yet due at `now_ms`."""
    return spec.window_start(now_ms - spec.window_ms - spec.grace_ms - settle_ms) + spec.window_ms


@dataclass
class GroupWindows:
    specs: dict[str, AggregateSpec]
    settle_ms: int
    open: dict[WindowKey, WindowState] = field(default_factory=dict)
    closed: set[WindowKey] = field(default_factory=set)  # closed here since the partition opened
    # (aggregate, partition) -> the start of the first window not closed yet: the schedule
    next_window: dict[tuple[str, int], int] = field(default_factory=dict)

    def schedule(self, aggregate: str, partition: int, last_charged: int | None, now_ms: int,
                 only_partition: int | None = None) -> None:
        """Start a partition's schedule for one aggregate (see the module docstring).
        `only_partition`: a continual aggregate's one stage-2 partition."""
        spec = self.specs[aggregate]
        if spec.continual and only_partition is not None and partition != only_partition:
            return
        start = first_due(spec, now_ms, self.settle_ms)
        if last_charged is not None:
            start = max(last_charged + spec.window_ms, start - spec.period_ms)
        if spec.continual:
            start = max(start, spec.continual_start_ms)
        self.next_window[(aggregate, partition)] = start  # every candidate falls on a window boundary

    def scheduled(self, aggregate: str, partition: int) -> bool:
        return (aggregate, partition) in self.next_window

    def is_late(self, c: Contribution, partition: int) -> bool:
        nxt = self.next_window.get((c.aggregate, partition))
        spec = self.specs[c.aggregate]
        if nxt is None or c.window_start < nxt:
            return True  # closed already, or before the schedule started
        return spec.continual and spec.horizon_index(c.window_start) is None

    def add(self, c: Contribution, partition: int, offset: int, now_ms: int = 0) -> bool:
        """Fold a contribution in; False (and nothing changes) if it is late."""
        if self.is_late(c, partition):
            return False
        self.open.setdefault((c.aggregate, c.window_start, partition), WindowState()).add(c, offset)
        return True

    def due(self, now_ms: int) -> list[WindowKey]:
        """Every scheduled window whose end + grace + settle has passed, with or without data."""
        out: list[WindowKey] = []
        for (aggregate, partition), start in self.next_window.items():
            spec = self.specs[aggregate]
            s = start
            while close_time(spec, s) + self.settle_ms <= now_ms and len(out) < MAX_DUE:
                if spec.continual and spec.horizon_index(s) is None:
                    break  # past the horizon: nothing more to release
                out.append((aggregate, s, partition))
                s += spec.window_ms
        return sorted(out, key=lambda k: (k[1], k[0], k[2]))

    def close(self, key: WindowKey) -> WindowState:
        """Close a due window (in schedule order): its state, empty if nobody contributed."""
        aggregate, start, partition = key
        self.closed.add(key)
        spec = self.specs[aggregate]
        self.next_window[(aggregate, partition)] = max(self.next_window.get((aggregate, partition), start),
                                                       start + spec.window_ms)
        return self.open.pop(key, None) or WindowState()

    def forget_partition(self, partition: int) -> None:
        """On revoke: drop open state of a partition (its new owner re-reads it from the committed offset)."""
        for key in [k for k in self.open if k[2] == partition]:
            del self.open[key]
        for key in [k for k in self.next_window if k[1] == partition]:
            del self.next_window[key]
        self.closed = {k for k in self.closed if k[2] != partition}

    def commit_offset(self, partition: int, next_offset: int) -> int:
        """Offset to commit for a partition: the earliest one an open window still needs."""
        needed = [s.first_offset for k, s in self.open.items() if k[2] == partition and s.first_offset >= 0]
        return min([next_offset, *needed])

    def prune_closed(self) -> None:
        """Closed-window markers (late vs. re-read) are kept for a period behind the schedule."""
        keep = set()
        for key in self.closed:
            spec = self.specs[key[0]]
            if key[1] >= self.next_window.get((key[0], key[2]), key[1]) - spec.period_ms:
                keep.add(key)
        self.closed = keep
