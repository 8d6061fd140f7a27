"""Running totals of one aggregate over its horizon: a continual counter per declared group.

Stage 2 feeds each closed window in horizon order (gateway/dp/continual.py does the noise). A
window that closed with no contributions, or never opened because nobody contributed, is a zero:
when a later window closes, the skipped ones are fed first, and their totals are released too, so
every declared group has one running total per window of the horizon, whatever the data.

The state (each counter's nodes: noisy values, and the exact span sums they are built from) stays
inside the DP boundary: it is written to the compacted ``<group_id>.dp-continual`` topic in the
release's transaction and read back when stage 2 takes the aggregate's partition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.dp.continual import ContinualCounter, Node, TreePlan
from gateway.dp.declarations import AggregateSpec
from gateway.dp.windows import WindowState
from gateway.errors import GatewayError

CounterFactory = Callable[[TreePlan], ContinualCounter]


@dataclass(frozen=True)
class RunningRelease:
    """The running totals after one window of the horizon."""

    window_start: int
    t: int  # 1-based window number in the horizon
    totals: dict[str, int]  # group (canonical JSON) -> noisy running total


class RunningTotals:
    def __init__(self, spec: AggregateSpec, counter: CounterFactory = ContinualCounter) -> None:
        self.spec = spec
        self.plan = TreePlan(spec.continual_windows, spec.epsilon, spec.per_window_bound)
        self._counter = counter
        self.counters = {g: counter(self.plan) for g in spec.continual_groups}
        self.t = 0  # windows fed so far

    def release(self, window_start: int, state: WindowState) -> list[RunningRelease]:
        """Feed the skipped windows (as zeros), then this one; their releases in order."""
        t = self.spec.horizon_index(window_start)
        if t is None or t <= self.t:
            return []
        values = state.counts if self.spec.metric == "count" else state.sums
        out = []
        for i in range(self.t + 1, t + 1):
            start = self.spec.continual_start_ms + (i - 1) * self.spec.window_ms
            totals = {g: c.add_window(int(values.get(g, 0)) if i == t else 0) for g, c in self.counters.items()}
            out.append(RunningRelease(start, i, totals))
        self.t = t
        return out

    def record(self, release: RunningRelease, group: str, released_at: int) -> dict[str, Any]:
        """The published record of one group's running total (all the release's facts in it)."""
        spec, plan = self.spec, self.plan
        return {
            "aggregate": spec.id, "schema": spec.schema, "name": spec.name, "metric": spec.metric,
            "release": "running_total",
            "field": spec.field, "group": dict(zip(spec.group_by, orjson.loads(group), strict=True)),
            "window": {"start": release.window_start, "end": release.window_start + spec.window_ms},
            "horizon": {"start": spec.continual_start_ms, "windows": spec.continual_windows, "t": release.t},
            "running_total": release.totals[group],
            "mechanism": plan.describe()["mechanism"], "noise_scale": plan.scale,
            "epsilon": spec.epsilon, "delta": 0.0, "epsilon_over": "horizon",
            "bounds": spec.bounds(), "per_window_bound": plan.per_window_bound,
            "error_95": plan.half_width_95(release.t), "released_at": released_at,
        }

    # ---- state ----------------------------------------------------------------------------------
    def state_json(self) -> bytes:
        return orjson.dumps({"t": self.t, "groups": {
            g: [[n.level, n.end, n.noisy, n.exact] for n in c.nodes()] for g, c in self.counters.items()}})

    def restore(self, data: bytes) -> None:
        """Continue from `state_json()` (the latest one: an older state would redraw released noise)."""
        body = orjson.loads(data)
        counters = {g: self._counter(self.plan) for g in self.spec.continual_groups}
        for group, nodes in body.get("groups", {}).items():
            if group not in counters:
                raise GatewayError(f"continual state of '{self.spec.id}' names group {group}, which the policy "
                                   "no longer declares: a changed group list needs a new horizon")
            counters[group].restore([Node(int(a), int(b), int(c), int(d)) for a, b, c, d in nodes])
        self.counters = counters
        self.t = int(body.get("t", 0))
