"""OpenDP measurements for one aggregate, built once at start-up and applied once per group per window.

Privacy unit: one subject (add or remove all of a subject's events). Stage 1 guarantees that per
window a subject touches at most k groups, at most m records per group, each value clamped to
[lo, hi]. Let M = max(|lo|, |hi|). Then, for the vector of per-group results of one window:

* counts: each group changes by at most m (L-inf), at most k groups change (L0), L1 <= k*m;
* sums:   each group changes by at most m*M, L1 <= k*m*M.

Budget split: ``count`` spends all of epsilon on the thresholded count. ``sum`` and ``mean`` spend
epsilon/2 on the thresholded count (key selection, also released as ``noisy_count``) and epsilon/2 on
the sum; ``mean`` is post-processing: noisy_sum / noisy_count, clamped to [lo, hi].

Noise: discrete Laplace on integers (OpenDP ``make_laplace`` / ``make_laplace_threshold`` over i64).
With scale b the noise Z has P(Z = z) proportional to exp(-|z|/b); write a = exp(-1/b). Then
P(Z >= t) = a^t / (1 + a) for integers t >= 1, and Var(Z) = 2a / (1 - a)^2 (about 2 b^2).

* count scale  b_c = k*m / eps_c           (eps_c = epsilon, or epsilon/2 for sum and mean)
* sum scale    b_s = k*m*M / eps_s         (eps_s = epsilon/2), applied per group: each group's
  measurement has epsilon m*M/b_s = eps_s/k, and a subject touches at most k groups.

Key selection (which groups appear at all): a group is released only when its noisy count is at
least the threshold

    tau = m + ceil(b_c * ln(k / delta)).

A group that only one subject contributes to has a true count c <= m, so it is released with
probability P(c + Z >= tau) <= a^(tau - m) / (1 + a) <= exp(-(tau - m)/b_c) <= delta / k, and the
subject's at most k such groups are together released with probability at most delta. That
per-group figure, a^(tau - m)/(1 + a), is ``single_subject_release_probability`` below. OpenDP's own
privacy map of the threshold measurement (Rogers 2023) is checked at start-up against (eps_c, delta):
if it ever disagreed, the threshold is raised until it agrees.

95% error bound: the smallest integer t with P(|Z| > t) = 2 a^(t+1) / (1 + a) <= 0.05. For mean,
count and sum each get a 97.5% bound (union bound: both hold with 95%) and, since |true mean| <= M,
|noisy_sum/noisy_count - sum/count| <= (t_s + M * t_c) / noisy_count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import opendp.prelude as dp

from gateway.dp.continual import ContinualCounter, TreePlan
from gateway.dp.declarations import AggregateSpec
from gateway.dp.laplace import tail_bound
from gateway.errors import ConfigError

dp.enable_features("contrib")
MECHANISM = f"discrete_laplace+threshold (opendp {version('opendp')})"
_EPS_TOLERANCE = 1e-9


def key_selection_threshold(m: int, k: int, count_scale: float, delta: float) -> int:
    return m + math.ceil(count_scale * math.log(k / delta))


def single_subject_release_probability(m: int, threshold: int, count_scale: float) -> float:
    """Probability that a group holding only one subject's (at most m) records is released."""
    a = math.exp(-1.0 / count_scale)
    return a ** (threshold - m) / (1.0 + a)


@dataclass(frozen=True)
class GroupResult:
    group: str  # canonical JSON list of the group-by values
    noisy_count: int
    noisy_sum: int | None


class AggregateMechanism:
    """Everything noise-related for one aggregate: scales, threshold, and the OpenDP measurements."""

    def __init__(self, spec: AggregateSpec) -> None:
        self.spec = spec
        k, m, mx = spec.max_groups_per_subject, spec.max_records_per_group, spec.max_abs_value
        self.count_epsilon = spec.epsilon if spec.metric == "count" else spec.epsilon / 2
        self.sum_epsilon = 0.0 if spec.metric == "count" else spec.epsilon / 2
        self.count_scale = k * m / self.count_epsilon
        self.sum_scale = k * m * mx / self.sum_epsilon if self.sum_epsilon else None
        self.threshold = key_selection_threshold(m, k, self.count_scale, spec.delta)
        self._count = self._build_threshold_measurement()
        self._sum = None
        if self.sum_scale is not None:
            self._sum = dp.m.make_laplace(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"),
                                          scale=self.sum_scale)
            spent = k * self._sum.map(m * mx)
            if spent > self.sum_epsilon * (1 + _EPS_TOLERANCE):
                raise ConfigError(f"aggregate '{spec.id}': OpenDP charges epsilon {spent} for the sums, above "
                                  f"{self.sum_epsilon}")
        self.single_subject_release_probability = single_subject_release_probability(
            m, self.threshold, self.count_scale)
        p = 0.025 if spec.metric == "mean" else 0.05  # mean: two 97.5% bounds, union bound 95%
        self.count_error_95 = tail_bound(self.count_scale, p)
        self.sum_error_95 = tail_bound(self.sum_scale, p) if self.sum_scale else None

    def _build_threshold_measurement(self) -> Any:
        spec = self.spec
        k, m = spec.max_groups_per_subject, spec.max_records_per_group
        domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
        metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
        for _ in range(10_000):
            meas = dp.m.make_laplace_threshold(domain, metric, scale=self.count_scale, threshold=self.threshold)
            eps, delta = meas.map((k, k * m, m))
            if eps > self.count_epsilon * (1 + _EPS_TOLERANCE):
                raise ConfigError(f"aggregate '{spec.id}': OpenDP charges epsilon {eps} for the counts, above "
                                  f"{self.count_epsilon}")
            if delta <= spec.delta:
                return meas
            self.threshold += 1
        raise ConfigError(f"aggregate '{spec.id}': no key-selection threshold meets delta {spec.delta}")

    @property
    def mechanism(self) -> str:
        return MECHANISM

    def release(self, counts: dict[str, int], sums: dict[str, int] | None = None) -> list[GroupResult]:
        """Noise once per group: thresholded noisy counts (key selection), then noisy sums of the kept
        groups. `counts` and `sums` map canonical group keys to the bounded true values."""
        if not counts:
            return []
        noisy = self.noisy_counts(counts)
        results: list[GroupResult] = []
        for group in sorted(noisy):
            noisy_sum = self.sum_noise(int((sums or {}).get(group, 0))) if self._sum is not None else None
            results.append(GroupResult(group, int(noisy[group]), noisy_sum))
        return results

    def noisy_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """The thresholded noisy counts of one window: the groups kept by key selection, and theirs."""
        return {group: int(c) for group, c in self._count(dict(counts)).items()}

    def continual_counter(self, plan: TreePlan) -> ContinualCounter:
        """A running-total counter for one group of a continual aggregate (gateway/dp/running.py)."""
        return ContinualCounter(plan)

    def sum_noise(self, true_sum: int) -> int:
        """One noisy sum (the per-group sum measurement)."""
        if self._sum is None:
            raise ConfigError(f"aggregate '{self.spec.id}' has no sum")
        return int(self._sum(int(true_sum)))

    def record(self, group: GroupResult, window_start: int, released_at: int) -> dict[str, Any]:
        """The released aggregate as published: values, window, mechanism, budget, bounds, error."""
        spec = self.spec
        if spec.metric == "count":
            value: float | int = group.noisy_count
            error: float | int = self.count_error_95
        elif spec.metric == "sum":
            value = group.noisy_sum or 0
            error = self.sum_error_95 or 0
        else:
            lo, hi = spec.clamp or (0, 0)
            count = max(group.noisy_count, 1)
            value = min(max((group.noisy_sum or 0) / count, lo), hi)
            error = ((self.sum_error_95 or 0) + spec.max_abs_value * self.count_error_95) / count
        return {
            "aggregate": spec.id, "schema": spec.schema, "name": spec.name, "metric": spec.metric, "field": spec.field,
            "window": {"start": window_start, "end": window_start + spec.window_ms},
            "group": dict(zip(spec.group_by, json.loads(group.group), strict=True)),
            "value": value, "noisy_count": group.noisy_count, "noisy_sum": group.noisy_sum,
            "error_95": error, "mechanism": self.mechanism, "epsilon": spec.epsilon, "delta": spec.delta,
            "noise_scale": {"count": self.count_scale, "sum": self.sum_scale}, "threshold": self.threshold,
            "bounds": spec.bounds(), "released_at": released_at,
        }

    def describe(self) -> dict[str, Any]:
        return {"aggregate": self.spec.id, "mechanism": self.mechanism, "count_epsilon": self.count_epsilon,
                "sum_epsilon": self.sum_epsilon, "count_scale": self.count_scale, "sum_scale": self.sum_scale,
                "threshold": self.threshold,
                "single_subject_release_probability": self.single_subject_release_probability}
