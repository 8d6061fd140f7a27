"""Stage 1: contribution bounding per subject per window (pure; the aggregate worker feeds it).

The sanitized topic is keyed by the subject token, so all of a subject's events are in one
partition: one ContributionBounder per input partition sees every event of its subjects, in order,
and its decisions depend only on that order (the same with one worker or many).

Per aggregate and window a subject may contribute to at most ``max_groups_per_subject`` groups
(the first ones it touches) and at most ``max_records_per_group`` records to each; sums are clamped
to ``clamp``. Anything beyond is dropped here, before it can reach stage 2.

Windows close on this partition's event-time watermark (the largest event time seen) once it passes
window end + grace; their state is then forgotten, and a later event for a closed window is *late*:
it is dropped and reported, never folded into a fresh (empty) bound.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.dp.declarations import AggregateSpec

ACCEPTED = "accepted"
LATE = "late"
OVER_GROUPS = "over_group_bound"
OVER_RECORDS = "over_record_bound"
MISSING = "missing_value"
NEVER = -(2**62)


@dataclass(frozen=True)
class Contribution:
    """One bounded record on its way to stage 2 (no subject: stage 2 does not need it)."""

    aggregate: str  # AggregateSpec.id
    window_start: int
    group: str  # canonical JSON list of the group-by values
    value: int  # clamped value (0 for count)
    event_time: int

    def to_json(self) -> bytes:
        return orjson.dumps({"a": self.aggregate, "w": self.window_start, "g": self.group, "v": self.value,
                             "t": self.event_time})

    @classmethod
    def from_json(cls, data: bytes) -> Contribution:
        d = orjson.loads(data)
        return cls(str(d["a"]), int(d["w"]), str(d["g"]), int(d["v"]), int(d["t"]))

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
    watermarks: dict[str, int] = field(default_factory=dict)  # aggregate id -> largest event time seen
    # (aggregate id, window start) -> subject -> group -> records accepted
    state: dict[tuple[str, int], dict[str, dict[str, int]]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def offer(self, subject: str, record: dict[str, Any], timestamp_ms: int
              ) -> list[tuple[AggregateSpec, str, Contribution | None]]:
        """Bound one sanitized record against every aggregate: [(spec, outcome, contribution)]."""
        out: list[tuple[AggregateSpec, str, Contribution | None]] = []
        for spec in self.specs:
            outcome, contribution = self._offer_one(spec, subject, record, timestamp_ms)
            self.counts[outcome] += 1
            out.append((spec, outcome, contribution))
        return out

    def _offer_one(self, spec: AggregateSpec, subject: str, record: dict[str, Any],
                   timestamp_ms: int) -> tuple[str, Contribution | None]:
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
        start = spec.window_start(t)
        if start + spec.window_ms + spec.grace_ms <= self.watermarks.get(spec.id, NEVER):
            return LATE, None
        self.advance(spec, t)
        subjects = self.state.setdefault((spec.id, start), {})
        groups = subjects.setdefault(subject, {})
        if group not in groups:
            if len(groups) >= spec.max_groups_per_subject:
                return OVER_GROUPS, None
            groups[group] = 0
        if groups[group] >= spec.max_records_per_group:
            return OVER_RECORDS, None
        groups[group] += 1
        return ACCEPTED, Contribution(spec.id, start, group, value, t)

    def advance(self, spec: AggregateSpec, t: int) -> None:
        """Move the aggregate's watermark to event time `t` (if later) and forget windows it closes."""
        if t <= self.watermarks.get(spec.id, NEVER):
            return
        self.watermarks[spec.id] = t
        for key in [k for k in self.state if k[0] == spec.id and k[1] + spec.window_ms + spec.grace_ms <= t]:
            del self.state[key]
