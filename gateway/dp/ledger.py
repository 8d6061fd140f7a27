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

Scaled out, two workers may close different windows at the same moment, each with a view of the
ledger that lacks the other's release; both would pass the cap check and together exceed it. So the
cap is decided by the log, not by a worker's view: before releasing, a worker commits a *charge*
record (key ``charge|<aggregate>|<window>|<partition>``) to the one-partition ledger topic and waits
until it has read it back. The first charge of a window, in log order, decides for that window,
counting only windows admitted before it; every worker replaying the same log reaches the same
decision. A charge whose release never follows (a crash) stays spent: conservative, never over.
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

    @classmethod
    def for_release(cls, spec: AggregateSpec, window_start: int, partition: int, groups: int, released_at: int,
                    instance: str) -> LedgerEntry:
        return cls(spec.id, window_start, window_start + spec.window_ms, partition, spec.epsilon, spec.delta,
                   groups, released_at, instance)

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


@dataclass(frozen=True)
class Charge:
    """A request to spend a window's budget, decided by its position in the ledger topic."""

    aggregate: str
    window_start: int
    partition: int
    epsilon: float
    delta: float
    period_ms: int
    period_epsilon_cap: float
    period_delta_cap: float
    charged_at: int
    instance: str

    @classmethod
    def for_release(cls, spec: AggregateSpec, window_start: int, partition: int, now_ms: int,
                    instance: str) -> Charge:
        return cls(spec.id, window_start, partition, spec.epsilon, spec.delta, spec.period_ms,
                   spec.period_epsilon_cap, spec.period_delta_cap, now_ms, instance)

    @property
    def key(self) -> bytes:
        return f"charge|{self.aggregate}|{self.window_start}|{self.partition}".encode()

    def to_json(self) -> bytes:
        return orjson.dumps({"type": "charge", **asdict(self)})

    @classmethod
    def from_json(cls, data: bytes) -> Charge:
        d = orjson.loads(data)
        return cls(str(d["aggregate"]), int(d["window_start"]), int(d["partition"]), float(d["epsilon"]),
                   float(d["delta"]), int(d["period_ms"]), float(d["period_epsilon_cap"]),
                   float(d["period_delta_cap"]), int(d["charged_at"]), str(d["instance"]))


@dataclass
class Ledger:
    entries: dict[bytes, LedgerEntry] = field(default_factory=dict)
    charges: dict[bytes, Charge] = field(default_factory=dict)
    # (aggregate, window start) -> None (admitted) or the refusal, decided by the window's first charge
    decisions: dict[tuple[str, int], str | None] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[tuple[bytes | None, bytes | None]]) -> Ledger:
        ledger = cls()
        for key, value in records:
            if key is None:
                continue
            ledger.apply_record(key, value)
        return ledger

    def apply_record(self, key: bytes, value: bytes | None) -> None:
        """Apply one ledger-topic record, in log order."""
        if value is None:  # tombstone (an operator retiring an entry)
            self.entries.pop(key, None)
        elif key.startswith(b"charge|"):
            self.apply_charge(Charge.from_json(value))
        else:
            self.apply(LedgerEntry.from_json(value))

    def apply(self, entry: LedgerEntry) -> None:
        self.entries[entry.key] = entry

    def apply_charge(self, charge: Charge) -> None:
        """The window's first charge decides, against the windows admitted before it."""
        self.charges.setdefault(charge.key, charge)
        window = (charge.aggregate, charge.window_start)
        if window in self.decisions:
            return
        eps, delta = self.period_spend(charge.aggregate, charge.window_start, charge.period_ms,
                                       (charge.epsilon, charge.delta))
        refusal = None
        if eps > charge.period_epsilon_cap * (1 + _TOLERANCE):
            refusal = EPSILON_CAP
        elif delta > charge.period_delta_cap * (1 + _TOLERANCE):
            refusal = DELTA_CAP
        self.decisions[window] = refusal

    def charged(self, aggregate: str, window_start: int, partition: int) -> bool:
        return f"charge|{aggregate}|{window_start}|{partition}".encode() in self.charges

    def released(self, aggregate: str, window_start: int, partition: int) -> bool:
        return f"{aggregate}|{window_start}|{partition}".encode() in self.entries

    def windows(self, aggregate: str) -> dict[int, tuple[float, float]]:
        """Window start -> (epsilon, delta) spent, each window counted once: released windows and
        admitted charges (a charge admitted but never released still counts)."""
        out: dict[int, tuple[float, float]] = {}
        spent = [(e.window_start, e.epsilon, e.delta) for e in self.entries.values() if e.aggregate == aggregate]
        spent += [(c.window_start, c.epsilon, c.delta) for c in self.charges.values()
                  if c.aggregate == aggregate and self.decisions.get((aggregate, c.window_start)) is None]
        for window_start, epsilon, delta in spent:
            eps, dlt = out.get(window_start, (0.0, 0.0))
            out[window_start] = (max(eps, epsilon), max(dlt, delta))
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
        """None if the release may go ahead, else the refusal reason. Once the window is charged, the
        log's decision stands; before, this is the worker's own view (a pre-check)."""
        if self.released(spec.id, window_start, partition):
            return ALREADY_RELEASED
        if (spec.id, window_start) in self.decisions:
            return self.decisions[(spec.id, window_start)]
        eps, delta = self.period_spend(spec.id, window_start, spec.period_ms, (spec.epsilon, spec.delta))
        if eps > spec.period_epsilon_cap * (1 + _TOLERANCE):
            return EPSILON_CAP
        if delta > spec.period_delta_cap * (1 + _TOLERANCE):
            return DELTA_CAP
        return None

    def charge(self, spec: AggregateSpec, window_start: int, partition: int, groups: int, released_at: int,
               instance: str) -> LedgerEntry:
        entry = LedgerEntry.for_release(spec, window_start, partition, groups, released_at, instance)
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
