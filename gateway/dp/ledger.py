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
  ``period_s`` (in event time) containing its window would then spend more than the aggregate's cap;
* and (``budget_epsilon_cap`` / ``budget_delta_cap``) if that period's spend summed over every
  aggregate of the same budget (all aggregates about the same subjects: one source, or every source
  tokenizing its subject into one domain) would exceed the budget's cap. That is basic composition
  across aggregates: a subject's privacy loss is the sum over everything released about them.

Scaled out, two workers may close different windows at the same moment, each with a view of the
ledger that lacks the other's release; both would pass the cap check and together exceed it. So the
cap is decided by the log, not by a worker's view: before releasing, a worker commits a *charge*
record (key ``charge|<aggregate>|<window>|<partition>``) to the one-partition ledger topic and waits
until it has read it back. The first charge of a window, in log order, decides for that window,
counting only windows admitted before it; every worker replaying the same log reaches the same
decision. A charge whose release never follows (a crash) stays spent: conservative, never over.

A release is drawn once. The charge carries the window's noisy values (``drawn``: the groups key
selection kept with their noisy count and sum, or a continual aggregate's running totals and the
counter state after them), drawn from OpenDP before the charge is committed; the release publishes
exactly those, and every retry (an aborted release transaction, a worker killed before the commit, a
partition moved) publishes them again byte for byte, never a fresh draw. The ledger topic is inside
the DP boundary (it holds pre-release values), like the bounding state. The first charge of a
(aggregate, window, partition) in log order is the one every worker uses. Charges written before
this (no ``drawn``) are still read; their window is drawn when released, as it used to be.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from gateway.dp.declarations import AggregateSpec
from gateway.errors import MalformedStateRecord

ALREADY_RELEASED = "already_released"
EPSILON_CAP = "period_epsilon_cap"
DELTA_CAP = "period_delta_cap"
BUDGET_EPSILON_CAP = "budget_epsilon_cap"
BUDGET_DELTA_CAP = "budget_delta_cap"
_TOLERANCE = 1e-9


def horizon_end(spec: AggregateSpec, epsilon: float) -> int:
    """Where the epsilon a continual horizon pays with its first window stops counting: the horizon's
    end. The running totals of every later window release data of that period too, so the horizon's
    epsilon is charged to every rolling period it overlaps, not only to its first window's."""
    if not spec.continual or epsilon <= 0:
        return 0
    return spec.continual_start_ms + spec.continual_windows * spec.window_ms


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
    budget: str = ""  # "": an entry written before budgets, its aggregate's own
    span_end: int = 0  # a continual horizon's end: its epsilon counts in every period up to it (0: none)

    @classmethod
    def for_release(cls, spec: AggregateSpec, window_start: int, partition: int, groups: int, released_at: int,
                    instance: str, cost: tuple[float, float] | None = None) -> LedgerEntry:
        epsilon, delta = cost or (spec.epsilon, spec.delta)
        return cls(spec.id, window_start, window_start + spec.window_ms, partition, epsilon, delta,
                   groups, released_at, instance, spec.budget, horizon_end(spec, epsilon))

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
                   str(d["instance"]), str(d.get("budget", "")), int(d.get("span_end", 0)))


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
    budget: str = ""  # "": a charge written before budgets, its aggregate's own
    budget_period_ms: int = 0  # 0: the aggregate's period
    budget_epsilon_cap: float = math.inf
    budget_delta_cap: float = math.inf
    # the window's noisy values, drawn once before this charge was committed (see the module
    # docstring); None: a charge of an older version, drawn at release
    drawn: dict[str, Any] | None = field(default=None, compare=False)
    span_end: int = 0  # a continual horizon's end: its epsilon counts in every period up to it (0: none)

    @classmethod
    def for_release(cls, spec: AggregateSpec, window_start: int, partition: int, now_ms: int,
                    instance: str, cost: tuple[float, float] | None = None,
                    drawn: dict[str, Any] | None = None) -> Charge:
        """`cost`: (epsilon, delta) of this window, if not the spec's (a continual aggregate pays its
        horizon's epsilon with its first window). `drawn`: the release's noisy values."""
        epsilon, delta = cost or (spec.epsilon, spec.delta)
        return cls(spec.id, window_start, partition, epsilon, delta, spec.period_ms,
                   spec.period_epsilon_cap, spec.period_delta_cap, now_ms, instance, spec.budget,
                   spec.budget_period_ms, spec.budget_epsilon_cap, spec.budget_delta_cap, drawn,
                   horizon_end(spec, epsilon))

    @property
    def key(self) -> bytes:
        return f"charge|{self.aggregate}|{self.window_start}|{self.partition}".encode()

    def to_json(self) -> bytes:
        body = asdict(self)
        for cap in ("budget_epsilon_cap", "budget_delta_cap"):  # JSON has no infinity: null is no cap
            body[cap] = body[cap] if math.isfinite(body[cap]) else None
        if body["drawn"] is None:
            del body["drawn"]
        return orjson.dumps({"type": "charge", **body})

    @classmethod
    def from_json(cls, data: bytes) -> Charge:
        d = orjson.loads(data)

        def cap(name: str) -> float:
            return math.inf if d.get(name) is None else float(d[name])

        return cls(str(d["aggregate"]), int(d["window_start"]), int(d["partition"]), float(d["epsilon"]),
                   float(d["delta"]), int(d["period_ms"]), float(d["period_epsilon_cap"]),
                   float(d["period_delta_cap"]), int(d["charged_at"]), str(d["instance"]),
                   str(d.get("budget", "")), int(d.get("budget_period_ms", 0)), cap("budget_epsilon_cap"),
                   cap("budget_delta_cap"), d.get("drawn") if isinstance(d.get("drawn"), dict) else None,
                   int(d.get("span_end", 0)))


@dataclass
class Ledger:
    entries: dict[bytes, LedgerEntry] = field(default_factory=dict)
    charges: dict[bytes, Charge] = field(default_factory=dict)
    # (aggregate, window start) -> None (admitted) or the refusal, decided by the window's first charge
    decisions: dict[tuple[str, int], str | None] = field(default_factory=dict)
    # (aggregate, window start) -> the partition whose charge decided it: the one release whose
    # epsilon is reported (a window costs its epsilon once, however many partitions release it)
    decided_by: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: Iterable[tuple[bytes | None, bytes | None]]) -> Ledger:
        ledger = cls()
        for key, value in records:
            if key is None:
                continue
            ledger.apply_record(key, value)
        return ledger

    def apply_record(self, key: bytes, value: bytes | None) -> None:
        """Apply one ledger-topic record, in log order.

        A record that is neither an entry nor a charge raises MalformedStateRecord (its reader skips
        and counts it) and leaves no entry under its key, as a tombstone would and as the compacted
        topic will: every worker, running or fresh, decides from the same state."""
        if value is None:  # tombstone (an operator retiring an entry)
            self.entries.pop(key, None)
            return
        charge = key.startswith(b"charge|")
        try:
            parsed = Charge.from_json(value) if charge else LedgerEntry.from_json(value)
        except (ValueError, KeyError, TypeError, AttributeError):  # not JSON, not an object, a field missing
            self.entries.pop(key, None)
            raise MalformedStateRecord(f"a ledger record is not a {'charge' if charge else 'ledger entry'}") from None
        if isinstance(parsed, Charge):
            self.apply_charge(parsed)
        else:
            self.apply(parsed)

    def apply(self, entry: LedgerEntry) -> None:
        self.entries[entry.key] = entry

    def apply_charge(self, charge: Charge) -> None:
        """The window's first charge decides, against the windows admitted before it."""
        self.charges.setdefault(charge.key, charge)
        window = (charge.aggregate, charge.window_start)
        if window in self.decisions:
            return
        self.decided_by[window] = charge.partition
        self.decisions[window] = self._refusal(charge.aggregate, charge.budget or charge.aggregate,
                                               charge.window_start, (charge.period_ms, charge.budget_period_ms),
                                               (charge.epsilon, charge.delta),
                                               (charge.period_epsilon_cap, charge.period_delta_cap),
                                               (charge.budget_epsilon_cap, charge.budget_delta_cap), charge.span_end)

    def _refusal(self, aggregate: str, budget: str, window_start: int, periods: tuple[int, int],
                 cost: tuple[float, float], caps: tuple[float, float],
                 budget_caps: tuple[float, float], span_end: int = 0) -> str | None:
        """Why a window's release (costing `cost`, up to `span_end` for a horizon) would break its
        aggregate's cap (over its own period) or its budget's (over the budget's period; 0: the
        aggregate's), in any rolling period it overlaps."""
        eps, delta = self.period_spend(aggregate, window_start, periods[0], cost, span_end)
        if eps > caps[0] * (1 + _TOLERANCE):
            return EPSILON_CAP
        if delta > caps[1] * (1 + _TOLERANCE):
            return DELTA_CAP
        eps, delta = self.budget_spend(budget, aggregate, window_start, periods[1] or periods[0], cost, span_end)
        if eps > budget_caps[0] * (1 + _TOLERANCE):
            return BUDGET_EPSILON_CAP
        if delta > budget_caps[1] * (1 + _TOLERANCE):
            return BUDGET_DELTA_CAP
        return None

    def charge_of(self, aggregate: str, window_start: int, partition: int) -> Charge | None:
        return self.charges.get(f"charge|{aggregate}|{window_start}|{partition}".encode())

    def charged(self, aggregate: str, window_start: int, partition: int) -> bool:
        return f"charge|{aggregate}|{window_start}|{partition}".encode() in self.charges

    def released(self, aggregate: str, window_start: int, partition: int) -> bool:
        return f"{aggregate}|{window_start}|{partition}".encode() in self.entries

    def reported_cost(self, aggregate: str, window_start: int, partition: int) -> float:
        """The epsilon a release of this partition adds to what the ledger says was spent: the
        window's cost for the partition whose charge decided it, 0 for the others (and for a refusal)."""
        window = (aggregate, window_start)
        if self.decided_by.get(window) != partition or self.decisions.get(window) is not None:
            return 0.0
        charge = self.charge_of(aggregate, window_start, partition)
        return charge.epsilon if charge is not None else 0.0

    def last_window(self, aggregate: str, partition: int) -> int | None:
        """The latest window of `aggregate` done on `partition` (released, or refused by its
        charge): where its schedule goes on after a restart (gateway/dp/windows.py). A window charged
        and admitted but not released yet is not done: it is released again, from its charge."""
        starts = [e.window_start for e in self.entries.values()
                  if e.aggregate == aggregate and e.partition == partition]
        starts += [c.window_start for c in self.charges.values() if c.aggregate == aggregate
                   and c.partition == partition and self.decisions.get((aggregate, c.window_start)) is not None]
        return max(starts, default=None)

    def spent(self, aggregate: str | None = None,
              budget: str | None = None) -> dict[tuple[str, int], tuple[float, float]]:
        """(aggregate, window start) -> (epsilon, delta) spent, each window counted once: released
        windows and admitted charges (a charge admitted but never released still counts); of one
        aggregate, or of every aggregate of one budget."""
        def wanted(name: str, of_budget: str) -> bool:
            return (aggregate is None or name == aggregate) and (budget is None or (of_budget or name) == budget)

        out: dict[tuple[str, int], tuple[float, float]] = {}
        spent = [(e.aggregate, e.window_start, e.epsilon, e.delta) for e in self.entries.values()
                 if wanted(e.aggregate, e.budget)]
        spent += [(c.aggregate, c.window_start, c.epsilon, c.delta) for c in self.charges.values()
                  if wanted(c.aggregate, c.budget) and self.decisions.get((c.aggregate, c.window_start)) is None]
        for name, window_start, epsilon, delta in spent:
            eps, dlt = out.get((name, window_start), (0.0, 0.0))
            out[(name, window_start)] = (max(eps, epsilon), max(dlt, delta))
        return out

    def spans(self) -> dict[tuple[str, int], int]:
        """(aggregate, window start) -> the end of the period its epsilon covers, for continual
        horizons (the others count at their window's start only)."""
        out: dict[tuple[str, int], int] = {}
        for item in [*self.entries.values(), *self.charges.values()]:
            if item.span_end:
                key = (item.aggregate, item.window_start)
                out[key] = max(out.get(key, 0), item.span_end)
        return out

    def windows(self, aggregate: str) -> dict[int, tuple[float, float]]:
        """Window start -> (epsilon, delta) spent by one aggregate."""
        return {start: cost for (_, start), cost in self.spent(aggregate=aggregate).items()}

    def period_spend(self, aggregate: str, window_start: int, period_ms: int,
                     extra: tuple[float, float] | None = None, span_end: int = 0) -> tuple[float, float]:
        """Largest (epsilon, delta) one aggregate spent in any rolling period of `period_ms` that
        overlaps the window starting at `window_start` (up to `span_end` for a horizon), counting
        `extra` for that window if it is not charged yet."""
        return _worst_period(self.spent(aggregate=aggregate), self.spans(), aggregate, window_start, period_ms,
                             extra, span_end)

    def budget_spend(self, budget: str, aggregate: str, window_start: int, period_ms: int,
                     extra: tuple[float, float] | None = None, span_end: int = 0) -> tuple[float, float]:
        """The same summed over every aggregate of `budget` (`extra`: the window of `aggregate`)."""
        return _worst_period(self.spent(budget=budget), self.spans(), aggregate, window_start, period_ms, extra,
                             span_end)

    def check(self, spec: AggregateSpec, window_start: int, partition: int,
              cost: tuple[float, float] | None = None) -> str | None:
        """None if the release may go ahead, else the refusal reason. Once the window is charged, the
        log's decision stands; before, this is the worker's own view (a pre-check). `cost`: the
        window's (epsilon, delta) if not the spec's."""
        if self.released(spec.id, window_start, partition):
            return ALREADY_RELEASED
        if (spec.id, window_start) in self.decisions:
            return self.decisions[(spec.id, window_start)]
        cost = cost or (spec.epsilon, spec.delta)
        return self._refusal(spec.id, spec.budget or spec.id, window_start, (spec.period_ms, spec.budget_period_ms),
                             cost, (spec.period_epsilon_cap, spec.period_delta_cap),
                             (spec.budget_epsilon_cap, spec.budget_delta_cap), horizon_end(spec, cost[0]))

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
                row["budget"] = spec.budget or aggregate
                period = (self.period_spend(aggregate, latest, spec.period_ms) if latest is not None
                          else (0.0, 0.0))
                row.update(period_s=spec.period_ms // 1000, epsilon_in_period=round(period[0], 12),
                           epsilon_cap=spec.period_epsilon_cap,
                           epsilon_remaining=round(spec.period_epsilon_cap - period[0], 12))
            rows.append(row)
        return rows

    def budget_summary(self, specs: dict[str, AggregateSpec]) -> list[dict[str, Any]]:
        """One row per budget of `specs`: what everything released about its subjects spent in the
        period holding its latest window, against the budget's cap, and each aggregate's part."""
        rows = []
        for budget in sorted({s.budget or s.id for s in specs.values()}):
            members = sorted((s for s in specs.values() if (s.budget or s.id) == budget), key=lambda s: s.id)
            spent = self.spent(budget=budget)
            latest = max((start for _, start in spent), default=None)
            first = members[0]
            period_ms = first.budget_period_ms or first.period_ms
            row: dict[str, Any] = {"budget": budget, "period_s": period_ms // 1000,
                                   "epsilon_total": round(sum(e for e, _ in spent.values()), 12),
                                   "epsilon_cap": first.budget_epsilon_cap, "delta_cap": first.budget_delta_cap,
                                   "latest_window_start": latest}
            # the latest period: the windows starting in (latest - period, latest], and the horizons
            # overlapping it
            in_period: dict[str, float] = {s.id: 0.0 for s in members}
            delta_in_period = 0.0
            spans = self.spans()
            for (aggregate, start), (e, d) in spent.items():
                end = spans.get((aggregate, start), start + 1)
                if latest is not None and start <= latest and end > latest - period_ms + 1:
                    in_period[aggregate] = in_period.get(aggregate, 0.0) + e
                    delta_in_period += d
            eps = sum(in_period.values())
            row.update(epsilon_in_period=round(eps, 12), delta_in_period=delta_in_period,
                       epsilon_remaining=round(first.budget_epsilon_cap - eps, 12),
                       aggregates={a: round(e, 12) for a, e in in_period.items()})
            rows.append(row)
        return rows


def describe(ledger: Ledger, specs: dict[str, AggregateSpec]) -> str:
    """`gateway budget show`: each aggregate's spend, then each budget's total and the parts."""
    rows = ledger.summary(specs=specs)
    if not rows:
        return "ledger is empty"
    lines = []
    for r in rows:
        line = (f"{r['aggregate']}: {r['windows']} window(s), {r['releases']} release(s), "
                f"epsilon spent {r['epsilon_total']:g} (delta {r['delta_total']:g})")
        if "epsilon_cap" in r:
            line += (f"; latest {r['period_s']} s period: {r['epsilon_in_period']:g} of cap {r['epsilon_cap']:g}, "
                     f"remaining {r['epsilon_remaining']:g}")
        lines.append(line)
    for b in ledger.budget_summary(specs):
        parts = ", ".join(f"{a} {e:g}" for a, e in b["aggregates"].items())
        lines.append(f"budget {b['budget']}: latest {b['period_s']} s period: {b['epsilon_in_period']:g} of cap "
                     f"{b['epsilon_cap']:g}, remaining {b['epsilon_remaining']:g} ({parts})")
    return "\n".join(lines)


def _worst_period(spent: dict[tuple[str, int], tuple[float, float]], spans: dict[tuple[str, int], int],
                  aggregate: str, window_start: int, period_ms: int, extra: tuple[float, float] | None,
                  span_end: int = 0) -> tuple[float, float]:
    """Largest (epsilon, delta) summed over what spends in any rolling period [p, p + period_ms)
    overlapping [window_start, span_end) (a window: its start only), counting `extra` for
    (aggregate, window_start) if not spent yet. A window spends at its start; a continual horizon
    over its whole span (`spans`), so it counts in every period it overlaps."""
    items = {key: (key[1], max(spans.get(key, 0), key[1] + 1), cost) for key, cost in spent.items()}
    new_end = max(span_end, window_start + 1)
    if extra is not None and (aggregate, window_start) not in items:
        items[(aggregate, window_start)] = (window_start, new_end, extra)
    elif (aggregate, window_start) in items:
        new_end = max(new_end, items[(aggregate, window_start)][1])
    # an item counts in [p, p + period) for p in [start - period + 1, end): sweep those bounds in order
    # (O(n log n)), the largest sums among the periods overlapping the new span
    bounds: dict[int, list[float]] = {}
    for start, end, (eps, dlt) in items.values():
        if start < new_end + period_ms and end > window_start - period_ms:
            for at, sign in ((start - period_ms + 1, 1.0), (end, -1.0)):
                delta = bounds.setdefault(at, [0.0, 0.0])
                delta[0] += sign * eps
                delta[1] += sign * dlt
    worst, eps_sum, dlt_sum = (0.0, 0.0), 0.0, 0.0
    for p in sorted(bounds):
        eps_sum += bounds[p][0]
        dlt_sum += bounds[p][1]
        if window_start - period_ms < p < new_end:
            worst = (max(worst[0], eps_sum), max(worst[1], dlt_sum))
    return worst
