"""The privacy ledger: budget spent per aggregate, per window and per rolling period.

One entry per released (aggregate, window, stage-2 partition), stored in a compacted Kafka topic
(default ``privacy.ledger``) under the key ``<aggregate id>|<window start>|<partition>`` and written
in the same Kafka transaction as the release it pays for, so a release is never published without
its entry, nor an entry without its release. Workers read the whole topic at start-up.

Accounting (basic composition over time, parallel composition over groups):

* a window costs its aggregate's (epsilon, delta) once, however many stage-2 partitions release
  groups of it: the groups are disjoint, and the noise scale already covers a subject touching k
  of them;
* a second release of the same (aggregate, window, partition) is refused (``already_released``):
  that would spend the window's budget twice (a replay after a crash, a duplicate worker);
* a release is refused (``period_epsilon_cap`` / ``period_delta_cap``) if any rolling period of
  ``period_s`` (in event time) containing its window would then spend more than the cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from gateway.dp.declarations import AggregateSpec

ALREADY_RELEASED = "already_released"
EPSILON_CAP = "period_epsilon_cap"
DELTA_CAP = "period_delta_cap"
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LedgerEntry:
    aggregate: str
    window_start: int
    window_end: int
    partition: int
    epsilon: float
    delta: float
    groups: int
    released_at: int
    instance: str

    @property
    def key(self) -> bytes:
        return f"{self.aggregate}|{self.window_start}|{self.partition}".encode()

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> LedgerEntry:
        d = orjson.loads(data)
        return cls(str(d["aggregate"]), int(d["window_start"]), int(d["window_end"]), int(d["partition"]),
                   float(d["epsilon"]), float(d["delta"]), int(d["groups"]), int(d["released_at"]),
                   str(d["instance"]))


@dataclass
class Ledger:
    entries: dict[bytes, LedgerEntry] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[tuple[bytes | None, bytes | None]]) -> Ledger:
        ledger = cls()
        for key, value in records:
            if key is None:
                continue
            if value is None:  # tombstone (an operator retiring an entry)
                ledger.entries.pop(key, None)
                continue
            ledger.apply(LedgerEntry.from_json(value))
        return ledger

    def apply(self, entry: LedgerEntry) -> None:
        self.entries[entry.key] = entry

    def released(self, aggregate: str, window_start: int, partition: int) -> bool:
        return f"{aggregate}|{window_start}|{partition}".encode() in self.entries

    def windows(self, aggregate: str) -> dict[int, tuple[float, float]]:
        """Window start -> (epsilon, delta) spent, each window counted once."""
        out: dict[int, tuple[float, float]] = {}
        for e in self.entries.values():
            if e.aggregate == aggregate:
                eps, delta = out.get(e.window_start, (0.0, 0.0))
                out[e.window_start] = (max(eps, e.epsilon), max(delta, e.delta))
        return out

    def period_spend(self, aggregate: str, window_start: int, period_ms: int,
                     extra: tuple[float, float] | None = None) -> tuple[float, float]:
        """Largest (epsilon, delta) spent in any rolling period of `period_ms` that contains the window
        starting at `window_start`, counting `extra` for that window if it is not charged yet."""
        windows = self.windows(aggregate)
        if extra is not None and window_start not in windows:
            windows[window_start] = extra
        near = sorted(w for w in windows if window_start - period_ms < w < window_start + period_ms)
        worst = (0.0, 0.0)
        for start in (w for w in near if w <= window_start):  # periods [start, start + period_ms)
            inside = [windows[w] for w in near if start <= w < start + period_ms]
            spend = (sum(e for e, _ in inside), sum(d for _, d in inside))
            worst = (max(worst[0], spend[0]), max(worst[1], spend[1]))
        return worst

    def check(self, spec: AggregateSpec, window_start: int, partition: int) -> str | None:
        """None if the release may go ahead, else the refusal reason."""
        if self.released(spec.id, window_start, partition):
            return ALREADY_RELEASED
        eps, delta = self.period_spend(spec.id, window_start, spec.period_ms, (spec.epsilon, spec.delta))
        if eps > spec.period_epsilon_cap * (1 + _TOLERANCE):
            return EPSILON_CAP
        if delta > spec.period_delta_cap * (1 + _TOLERANCE):
            return DELTA_CAP
        return None

    def charge(self, spec: AggregateSpec, window_start: int, partition: int, groups: int, released_at: int,
               instance: str) -> LedgerEntry:
        entry = LedgerEntry(spec.id, window_start, window_start + spec.window_ms, partition, spec.epsilon,
                            spec.delta, groups, released_at, instance)
        self.apply(entry)
        return entry

    def summary(self, now_ms: int | None = None,
                specs: dict[str, AggregateSpec] | None = None) -> list[dict[str, Any]]:
        """One row per aggregate: windows charged, total spend, spend in the latest period, cap."""
        rows = []
        for aggregate in sorted({e.aggregate for e in self.entries.values()} | set(specs or {})):
            windows = self.windows(aggregate)
            spec = (specs or {}).get(aggregate)
            latest = max(windows) if windows else None
            row: dict[str, Any] = {
                "aggregate": aggregate, "windows": len(windows),
                "epsilon_total": round(sum(e for e, _ in windows.values()), 12),
                "delta_total": sum(d for _, d in windows.values()),
                "latest_window_start": latest,
                "releases": sum(1 for e in self.entries.values() if e.aggregate == aggregate),
            }
            if spec is not None:
                period = (self.period_spend(aggregate, latest, spec.period_ms) if latest is not None
                          else (0.0, 0.0))
                row.update(period_s=spec.period_ms // 1000, epsilon_in_period=round(period[0], 12),
                           epsilon_cap=spec.period_epsilon_cap,
                           epsilon_remaining=round(spec.period_epsilon_cap - period[0], 12))
            rows.append(row)
        return rows
