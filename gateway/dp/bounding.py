"""Stage 1: contribution bounding per subject per window (pure; the aggregate worker feeds it).

The sanitized topic is keyed by the subject token, so all of a subject's events are in one
partition: one ContributionBounder per input partition sees every event of its subjects, in order,
and its decisions depend only on that order (the same with one worker or many).

Per aggregate and window a subject may contribute to at most ``max_groups_per_subject`` groups
(the first ones it touches) and at most ``max_records_per_group`` records to each; sums are clamped
to ``clamp``. Anything beyond is dropped here, before it can reach stage 2.

Lateness follows event time per *upstream*, not this partition's order. The sanitized topic is keyed
by subject, so one of its partitions interleaves events of many raw partitions (the `gateway-source`
header names each record's), and with a backlog its event time jumps back and forth. So:

* each upstream (raw topic and partition) has its own mark, the largest event time seen from it; an
  event is *late* when its window's close time (window end + grace) is at or below its upstream's
  mark: its own producer had already moved past it, by more than the grace;
* a window's state is forgotten once every upstream has passed its close time (every partition of
  the raw topic, known when the job starts, plus any other seen since), or once the most advanced
  upstream is more than ``max_skew`` past it (a raw partition lagging the others by more than that,
  or carrying no events, holds nothing open for longer); the *frontier* is the latest close time
  forgotten, and an event for a window at or below it is late too, never folded into a fresh
  (empty) bound.

Late events are dropped and reported (audited per event).

The state survives a restart or a partition moving to another worker: every change is drained as
changelog entries (:meth:`ContributionBounder.drain_changes`), which the worker writes to a compacted
topic in the same transaction as the contributions and the input offsets, and a new owner rebuilds
the bounder from them (:meth:`ContributionBounder.restore`) before it reads the partition. Without
that, a subject whose partition moved mid-window could contribute its whole bound a second time.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.dp.declarations import AggregateSpec
from gateway.errors import MalformedStateRecord
from gateway.event_time import OUT_OF_RANGE as OUT_OF_RANGE_REASON
from gateway.event_time import in_range

ACCEPTED = "accepted"
LATE = "late"
OVER_GROUPS = "over_group_bound"
OVER_RECORDS = "over_record_bound"
MISSING = "missing_value"
OUT_OF_RANGE = OUT_OF_RANGE_REASON  # later than now + max_skew_s, or absurdly old: moves no mark
NEVER = -(2**62)


@dataclass(frozen=True)
class Contribution:
    """One bounded record on its way to stage 2 (no subject: stage 2 does not need it)."""

    aggregate: str  # AggregateSpec.id
    window_start: int
    group: str  # canonical JSON list of the group-by values
    value: int  # clamped value (0 for count)
    event_time: int
    # where its event times come from in order: "<stage-1 partition>|<raw topic>/<raw partition>"
    # (stage 2 keeps one event-time mark per source; see gateway/dp/windows.py)
    source: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps({"a": self.aggregate, "w": self.window_start, "g": self.group, "v": self.value,
                             "t": self.event_time, "s": self.source})

    @classmethod
    def from_json(cls, data: bytes) -> Contribution:
        d = orjson.loads(data)
        return cls(str(d["a"]), int(d["w"]), str(d["g"]), int(d["v"]), int(d["t"]), str(d.get("s", "")))

    @property
    def partition_key(self) -> bytes:
        """Stage 2 is partitioned by aggregate, window and group."""
        return f"{self.aggregate}|{self.window_start}|{self.group}".encode()


def group_key(spec: AggregateSpec, record: dict[str, Any]) -> str | None:
    values = [record.get(g) for g in spec.group_by]
    if any(v is None for v in values):
        return None
    return orjson.dumps(values).decode()


def event_time(spec: AggregateSpec, record: dict[str, Any], timestamp_ms: int) -> int | None:
    if spec.time_field is None:
        return timestamp_ms
    value = record.get(spec.time_field)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class ContributionBounder:
    """Bounding state of one input partition."""

    specs: tuple[AggregateSpec, ...]
    partition: str = ""  # its input partition, part of each contribution's source
    upstreams: frozenset[str] = frozenset()  # the raw partitions expected ("<topic>/<partition>")
    max_skew_ms: int | None = None  # None: event times are not range-checked here (gateway/event_time.py)
    marks: dict[tuple[str, str], int] = field(default_factory=dict)  # (aggregate id, upstream) -> event time
    frontier: dict[str, int] = field(default_factory=dict)  # aggregate id -> latest close time forgotten
    # (aggregate id, window start) -> subject -> group -> records accepted
    state: dict[tuple[str, int], dict[str, dict[str, int]]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    # changes not yet drained to the changelog
    _dirty: set[tuple[str, int, str]] = field(default_factory=set, repr=False)
    _dirty_marks: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _dirty_frontiers: set[str] = field(default_factory=set, repr=False)
    _closed: list[tuple[str, int, list[str]]] = field(default_factory=list, repr=False)

    def offer(self, subject: str, record: dict[str, Any], timestamp_ms: int, upstream: str = "",
              now_ms: int | None = None) -> list[tuple[AggregateSpec, str, Contribution | None]]:
        """Bound one sanitized record against every aggregate: [(spec, outcome, contribution)].
        `upstream` names the raw partition the record came from (its event times are in order);
        `now_ms` (with `max_skew_ms`): an event time out of range is OUT_OF_RANGE and moves nothing."""
        out: list[tuple[AggregateSpec, str, Contribution | None]] = []
        for spec in self.specs:
            outcome, contribution = self._offer_one(spec, subject, record, timestamp_ms, upstream, now_ms)
            self.counts[outcome] += 1
            out.append((spec, outcome, contribution))
        return out

    def _offer_one(self, spec: AggregateSpec, subject: str, record: dict[str, Any],
                   timestamp_ms: int, upstream: str, now_ms: int | None = None) -> tuple[str, Contribution | None]:
        t = event_time(spec, record, timestamp_ms)
        group = group_key(spec, record)
        value = 0
        if spec.field is not None:
            raw = record.get(spec.field)
            if not isinstance(raw, int) or isinstance(raw, bool):
                return MISSING, None
            lo, hi = spec.clamp or (0, 0)
            value = min(max(raw, lo), hi)
        if t is None or group is None:
            return MISSING, None
        if now_ms is not None and self.max_skew_ms is not None and not in_range(t, now_ms, self.max_skew_ms):
            return OUT_OF_RANGE, None
        start = spec.window_start(t)
        close_at = start + spec.window_ms + spec.grace_ms
        if close_at <= self.marks.get((spec.id, upstream), NEVER) or close_at <= self.frontier.get(spec.id, NEVER):
            return LATE, None
        self.advance(spec, upstream, t)
        subjects = self.state.setdefault((spec.id, start), {})
        groups = subjects.setdefault(subject, {})
        if group not in groups:
            if len(groups) >= spec.max_groups_per_subject:
                return OVER_GROUPS, None
            groups[group] = 0
        if groups[group] >= spec.max_records_per_group:
            return OVER_RECORDS, None
        groups[group] += 1
        self._dirty.add((spec.id, start, subject))
        return ACCEPTED, Contribution(spec.id, start, group, value, t, f"{self.partition}|{upstream}")

    def advance(self, spec: AggregateSpec, upstream: str, t: int) -> None:
        """Move an upstream's mark to event time `t` (if later) and forget the windows no upstream
        can still reach (see the module docstring)."""
        key = (spec.id, upstream)
        if t <= self.marks.get(key, NEVER):
            return
        self.marks[key] = t
        self._dirty_marks.add(key)
        marks = {u: m for (aggregate, u), m in self.marks.items() if aggregate == spec.id}
        slowest = min((marks.get(u, NEVER) for u in self.upstreams | marks.keys()), default=NEVER)
        done = max(slowest, max(marks.values()) - spec.max_skew_ms)
        if done <= self.frontier.get(spec.id, NEVER):
            return
        closing = [k for k in self.state if k[0] == spec.id and k[1] + spec.window_ms + spec.grace_ms <= done]
        for window in closing:
            self._closed.append((window[0], window[1], list(self.state.pop(window))))
        self.frontier[spec.id] = done
        self._dirty_frontiers.add(spec.id)

    # ---- changelog -------------------------------------------------------------------------------
    def drain_changes(self) -> list[tuple[list[Any], bytes | None]]:
        """Changelog entries for what changed since the last drain: ``(key, value)``, value None
        deleting the key. Keys are JSON lists: ``["s", aggregate, window, subject]`` holds a subject's
        ``{group: records}`` for a window, ``["m", aggregate, upstream]`` an upstream's mark and
        ``["f", aggregate]`` the frontier."""
        out: list[tuple[list[Any], bytes | None]] = []
        for aggregate, start, subjects in self._closed:
            out += [(["s", aggregate, start, subject], None) for subject in subjects]
        for aggregate, start, subject in sorted(self._dirty):
            groups = self.state.get((aggregate, start), {}).get(subject)
            if groups is not None:  # else its window closed later in the same batch: deleted above
                out.append((["s", aggregate, start, subject], orjson.dumps(groups)))
        out += [(["m", aggregate, upstream], orjson.dumps(self.marks[(aggregate, upstream)]))
                for aggregate, upstream in sorted(self._dirty_marks)]
        out += [(["f", aggregate], orjson.dumps(self.frontier[aggregate]))
                for aggregate in sorted(self._dirty_frontiers)]
        self._closed.clear()
        self._dirty.clear()
        self._dirty_marks.clear()
        self._dirty_frontiers.clear()
        return out

    def restore(self, entries: Iterable[tuple[list[Any], bytes | None]]) -> int:
        """Rebuild the state from changelog entries in log order (the last entry per key wins)."""
        applied = sum(self.restore_entry(key, value) for key, value in entries)
        self.settle_restored()
        return applied

    def restore_entry(self, key: list[Any], value: bytes | None) -> bool:
        """Apply one changelog entry, in log order; whether it was one of this bounder's kinds.

        A value (or key) it cannot read raises MalformedStateRecord and leaves nothing under that key,
        as the compacted changelog will (its latest record is that one); its reader skips and counts
        it. Call settle_restored once every entry is in."""
        try:
            if key[0] == "m" and value is not None:
                self.marks[(str(key[1]), str(key[2]))] = _integer(orjson.loads(value))
            elif key[0] in ("f", "w") and value is not None:  # "w": the one watermark of older versions
                aggregate = str(key[1])
                self.frontier[aggregate] = max(self.frontier.get(aggregate, NEVER), _integer(orjson.loads(value)))
            elif key[0] == "s":
                window = (str(key[1]), int(key[2]))
                if value is None:
                    self.state.get(window, {}).pop(str(key[3]), None)
                else:
                    counts = orjson.loads(value)
                    if not isinstance(counts, dict):
                        raise TypeError("not an object")
                    self.state.setdefault(window, {})[str(key[3])] = {str(g): _integer(n) for g, n in counts.items()}
            else:
                return False
        except (ValueError, TypeError, IndexError):  # not JSON, not UTF-8, a key too short, not a count
            self._forget_entry(key)
            raise MalformedStateRecord("a DP bounding-state record is not a mark, a frontier or a subject's "
                                       "counts") from None
        return True

    def _forget_entry(self, key: list[Any]) -> None:
        with contextlib.suppress(ValueError, TypeError, IndexError):
            if key[0] == "m":
                self.marks.pop((str(key[1]), str(key[2])), None)
            elif key[0] in ("f", "w"):
                self.frontier.pop(str(key[1]), None)
            elif key[0] == "s":
                self.state.get((str(key[1]), int(key[2])), {}).pop(str(key[3]), None)

    def settle_restored(self) -> None:
        """After the last restored entry: drop the windows the restored frontier has closed (their
        tombstones may not all have been written) and the empty ones."""
        for spec in self.specs:
            frontier = self.frontier.get(spec.id, NEVER)
            for window in [k for k in self.state if k[0] == spec.id and k[1] + spec.window_ms + spec.grace_ms
                           <= frontier]:
                del self.state[window]
        self.state = {k: v for k, v in self.state.items() if v}


def _integer(value: Any) -> int:
    """A count or an event time as the changelog stores it: an integer (a bool or a float is not one)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("not an integer")
    return value
