"""Continual release of running totals: the binary-tree mechanism (Dwork, Naor, Pitassi and Rothblum
2010; Chan, Shi and Song 2011), noise from OpenDP.

Why: a running total (count or sum per group since a start) released at every window close. Noising
each window and summing makes the error variance grow linearly in t; the tree makes each total a sum
of at most L = O(log T) noisy nodes, at the price of a larger per-node scale.

Tree. Windows are 1..T. There is one node per window t: it covers the windows (t - lowbit(t), t],
lowbit(t) being the largest power of two dividing t, and its level is log2(lowbit(t)). Node t is
complete at window t, and its noise is drawn then, once. The running total after window t is the
sum of the nodes of t's binary decomposition (t = 2^j1 + 2^j2 + ..., j1 > j2 > ...: nodes 2^j1,
2^j1 + 2^j2, ..., t), popcount(t) of them. The spans of one level are disjoint and there are
L = T.bit_length() = floor(log2 T) + 1 levels, so window i lies in d(i) <= L nodes (window 1 in L).
(ceil(log2 T) + 1 levels, as often written, counts a top level that never completes unless T is a
power of two: it is never released and costs nothing.)

Privacy unit: one subject over the whole horizon, added or removed, with two declared bounds the
caller enforces (stage 1 enforces the first per window; the second needs a per-horizon bounder):

* c = ``per_window_bound``: in any window the subject changes the window's value by at most c. For
  several group counters sharing one plan, c bounds the sum over groups of the absolute changes
  (stage 1's k*m for counts, k*m*M for sums): the guarantee below then holds for all of them together.
* w = ``max_windows_per_subject``: the subject changes at most w windows of the horizon. Default T,
  which needs no assumption beyond the per-window one. w = 1 is the papers' event-level unit.

A per-window bound alone (w = T) is a horizon guarantee too, only a weaker one per unit of noise.

Proof (sensitivity). If the subject changes window i by delta_i, node t changes by the sum of delta_i
over its span, so the node vector changes in L1 by at most sum_i |delta_i| d(i) <= c * D_w, where D_w
is the sum of the w largest d(i); a subject adding c to the w deepest windows attains it, so
Delta = c * D_w is the node vector's L1 sensitivity (D_1 = L: the papers' scale L*c/eps). Discrete
Laplace noise of scale Delta/eps on each of the T nodes is the Laplace mechanism on Z^T under L1:
eps-DP for the whole node vector (OpenDP's privacy map of that vector measurement is checked when the
plan is built). Every running total is post-processing of the nodes, so releasing all T of them costs
eps over the whole horizon: no composition across windows is left to do.

Baseline, same unit and eps: noise each window independently and sum. The window vector has L1
sensitivity c*w, so per-window scale c*w/eps; the total at t sums t noisy windows.

Error. Tree: Var = popcount(t) * V(b), baseline: t * V(b0), V the discrete Laplace variance. The sum
of n discrete Laplace noises has no simple closed-form tail: the 95% half-width is the smallest of
three sound bounds (``sum_tail_bound``): a union bound (each noise within its 1 - 0.05/n bound), a
Chernoff bound from the moment generating function, and the exact continuous Laplace sum's bound
plus n (a coupling). All are conservative: coverage is above 95%.

State. A counter holds only the popcount(t) <= L nodes of t's decomposition. Each carries its noisy
value (a DP output, safe to publish) and its exact span sum, which is NOT a DP output: the higher nodes
that will contain the span need it, so it must stay inside the DP boundary (like stage 1's bounding
state). Restore only the latest state: restoring an older one and feeding its windows again would
draw fresh noise for nodes already released and spend the budget a second time.

Limit: which groups have counters must not depend on the data (declared or public group values): a
counter per group seen would release the group's presence, and key selection over a horizon (a
threshold, as the per-window aggregates use) is not covered here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import opendp.prelude as dp

from gateway.dp.laplace import noise_variance, tail_bound
from gateway.errors import ConfigError, GatewayError

dp.enable_features("contrib")
MECHANISM = f"binary_tree+discrete_laplace (opendp {version('opendp')})"
MAX_HORIZON = 100_000
_EPS_TOLERANCE = 1e-9
_LN2 = math.log(2.0)
_COUPLING_MAX_N = 32  # O(n) per tail evaluation; beyond, the +n offset makes it the loosest anyway


class ContinualReleaseError(GatewayError):
    """A continual counter was fed past its horizon, or given a state it cannot continue from."""


def lowbit(t: int) -> int:
    """The largest power of two dividing t (t >= 1): the length of node t's span."""
    return t & -t


def node_depths(horizon: int) -> list[int]:
    """d(i) for windows i = 1..T: how many of the T nodes contain window i (difference array, O(T))."""
    diff = [0] * (horizon + 2)
    for t in range(1, horizon + 1):
        diff[t - lowbit(t) + 1] += 1
        diff[t + 1] -= 1
    return list(itertools.accumulate(diff[1:horizon + 1]))


def _log_mgf(scale: float, lam: float) -> float:
    """log E[exp(lam Z)] for discrete Laplace(scale), 0 < lam < 1/scale:
    2 log(1 - a) - log(1 - a e^lam) - log(1 - a e^-lam), written with expm1 for small 1/scale."""
    r = 1.0 / scale
    return 2.0 * math.log(-math.expm1(-r)) - math.log(-math.expm1(lam - r)) - math.log(-math.expm1(-lam - r))


def _chernoff_bound(scale: float, n: int, p: float) -> int:
    """Smallest integer x the Chernoff bound proves: P(|S| > x) <= p for S a sum of n iid noises.

    P(|S| >= y) <= 2 exp(n log M(lam) - lam y) for every lam, which is <= p once
    y >= h(lam) = (n log M(lam) + ln(2/p)) / lam. h is unimodal on (0, 1/scale) (the derivative of
    lam*h' = n lam (log M)' - n log M - ln(2/p) is n lam (log M)'' >= 0), so a golden-section search
    finds its minimum; any lam gives a valid bound, so a search that stops short stays sound."""
    k = math.log(2.0 / p)
    lo, hi = 1e-9 / scale, (1.0 - 1e-9) / scale
    g = (math.sqrt(5.0) - 1.0) / 2.0

    def h(lam: float) -> float:
        return (n * _log_mgf(scale, lam) + k) / lam

    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    h1, h2 = h(x1), h(x2)
    for _ in range(100):
        if h1 <= h2:
            hi, x2, h2 = x2, x1, h1
            x1 = hi - g * (hi - lo)
            h1 = h(x1)
        else:
            lo, x1, h1 = x1, x2, h2
            x2 = lo + g * (hi - lo)
            h2 = h(x2)
    y = min(h1, h2) * (1.0 + 1e-12)  # margin for the rounding of h
    return max(0, math.ceil(y) - 1)


def _logaddexp(x: float, y: float) -> float:
    hi, lo = max(x, y), min(x, y)
    return hi if lo == -math.inf else hi + math.log1p(math.exp(lo - hi))


def _laplace_sum_tail(n: int, u: float) -> float:
    """P(|X_1 + ... + X_n| > u*b) for iid continuous Laplace(b), u > 0, exactly: the sum's density is
    e^-|x| / ((n-1)! 2^n) * sum_{j<n} (n-1+j)! / (j! (n-1-j)!) |x|^(n-1-j) 2^-j (Kotz, Kozubowski and
    Podgorski 2001, b = 1), whose tail integrates term by term to Poisson distribution functions."""
    log_u = math.log(u)
    log_poisson_cdf, acc = [], -math.inf  # log P(Poisson(u) <= m), m = 0..n-1
    for i in range(n):
        acc = _logaddexp(acc, i * log_u - math.lgamma(i + 1))
        log_poisson_cdf.append(acc - u)
    total = -math.inf
    for j in range(n):
        total = _logaddexp(total, math.lgamma(n + j) - math.lgamma(j + 1) - j * _LN2 + log_poisson_cdf[n - 1 - j])
    return math.exp(_LN2 - math.lgamma(n) - n * _LN2 + total)


def _coupling_bound(scale: float, n: int, p: float) -> int:
    """Discrete Laplace is floor(E1) - floor(E2) with E1, E2 exponential of mean `scale`, which differs
    from the continuous Laplace E1 - E2 by less than 1. So |S_discrete| < |S_continuous| + n, and
    ceil(q) + n bounds the discrete sum where q bounds the continuous one (exact tail, bisection)."""
    lo, hi = 0.0, 1.0
    while _laplace_sum_tail(n, hi) > p:
        lo, hi = hi, 2.0 * hi
    for _ in range(80):  # keep hi on the sound side
        mid = (lo + hi) / 2.0
        if _laplace_sum_tail(n, mid) > p:
            lo = mid
        else:
            hi = mid
    return math.ceil(scale * hi * (1.0 + 1e-12)) + n


def sum_tail_bound(scale: float, n: int, p: float) -> int:
    """An integer x with P(|Z_1 + ... + Z_n| > x) <= p, Z_i iid discrete Laplace(scale). Exact for n = 1;
    else the smallest of three sound bounds: union (n * tail_bound(scale, p/n)), Chernoff, and (n <= 32)
    the exact continuous Laplace sum's bound plus n. Conservative: the true tail is below p."""
    if n == 1:
        return tail_bound(scale, p)
    bounds = [n * tail_bound(scale, p / n), _chernoff_bound(scale, n, p)]
    if n <= _COUPLING_MAX_N:
        bounds.append(_coupling_bound(scale, n, p))
    return min(bounds)


def _laplace_vector(scale: float) -> Any:
    return dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T=dp.i64)), dp.l1_distance(T=dp.i64), scale=scale)


@dataclass(frozen=True)
class TreePlan:
    """The tree mechanism for one horizon: noise scale from the unit's bounds, budget, error figures.

    One plan serves every group counter of the aggregate (their nodes are noised independently with
    the same measurement, built once here)."""

    horizon: int
    epsilon: float
    per_window_bound: int
    max_windows_per_subject: int | None = None  # None: the whole horizon (no assumption)
    levels: int = field(init=False)
    node_l1_sensitivity: int = field(init=False)  # Delta = c * D_w
    scale: float = field(init=False)
    node_variance: float = field(init=False)
    epsilon_total: float = field(init=False)  # OpenDP's charge for the whole node vector
    baseline_scale: float = field(init=False)  # independent per-window releases, same unit and eps
    baseline_epsilon_total: float = field(init=False)
    node_measurement: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        T, eps, c = self.horizon, self.epsilon, self.per_window_bound
        if isinstance(T, bool) or not isinstance(T, int) or not 1 <= T <= MAX_HORIZON:
            raise ConfigError(f"continual release: horizon must be an integer from 1 to {MAX_HORIZON} windows, "
                              f"got {T!r}; split a longer run into several horizons")
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"continual release: epsilon must be a finite number above 0, got {eps!r}")
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ConfigError(f"continual release: per_window_bound must be an integer >= 1, got {c!r}")
        w = T if self.max_windows_per_subject is None else self.max_windows_per_subject
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= T:
            raise ConfigError(f"continual release: max_windows_per_subject must be an integer from 1 to the "
                              f"horizon ({T}), got {w!r}; leave it unset to assume nothing")
        sensitivity = c * sum(sorted(node_depths(T), reverse=True)[:w])
        scale = sensitivity / eps
        baseline_scale = c * w / eps
        spent = _laplace_vector(scale).map(sensitivity)
        baseline_spent = _laplace_vector(baseline_scale).map(c * w)
        for name, value in (("tree", spent), ("baseline", baseline_spent)):
            if value > eps * (1 + _EPS_TOLERANCE):
                raise ConfigError(f"continual release: OpenDP charges epsilon {value} for the {name} over the "
                                  f"horizon, above {eps}")
        for name, value in (
            ("max_windows_per_subject", w), ("levels", T.bit_length()), ("node_l1_sensitivity", sensitivity),
            ("scale", scale), ("node_variance", noise_variance(scale)), ("epsilon_total", spent),
            ("baseline_scale", baseline_scale), ("baseline_epsilon_total", baseline_spent),
            ("node_measurement", dp.m.make_laplace(dp.atom_domain(T=dp.i64), dp.absolute_distance(T=dp.i64),
                                                   scale=scale)),
        ):
            object.__setattr__(self, name, value)

    def _check_t(self, t: int) -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= self.horizon:
            raise ConfigError(f"continual release: window {t!r} is outside the horizon 1..{self.horizon}")

    def nodes_at(self, t: int) -> int:
        """How many noisy nodes the running total after window t sums: popcount(t)."""
        self._check_t(t)
        return t.bit_count()

    def variance_at(self, t: int) -> float:
        """Variance of the released running total after window t (1-based)."""
        return self.nodes_at(t) * self.node_variance

    def half_width_95(self, t: int) -> int:
        """|released - true| <= this after window t with probability >= 95% (conservative)."""
        return sum_tail_bound(self.scale, self.nodes_at(t), 0.05)

    def baseline_variance_at(self, t: int) -> float:
        """Variance of the sum of t independently noised windows (the baseline at the same unit and eps)."""
        self._check_t(t)
        return t * noise_variance(self.baseline_scale)

    def baseline_half_width_95(self, t: int) -> int:
        self._check_t(t)
        return sum_tail_bound(self.baseline_scale, t, 0.05)

    def describe(self) -> dict[str, Any]:
        return {"mechanism": MECHANISM, "horizon": self.horizon, "epsilon": self.epsilon,
                "epsilon_total": self.epsilon_total, "per_window_bound": self.per_window_bound,
                "max_windows_per_subject": self.max_windows_per_subject, "levels": self.levels,
                "node_l1_sensitivity": self.node_l1_sensitivity, "noise_scale": self.scale}


@dataclass(frozen=True)
class Node:
    """One node of the running decomposition: windows (end - 2**level, end]."""

    level: int
    end: int
    noisy: int  # exact + noise drawn once when the node completed: a DP output, safe to publish
    exact: int  # exact sum over the span: NOT a DP output, keep it inside the DP boundary


class ContinualCounter:
    """Running total of one group over one horizon, released after every window.

    Noise is the plan's OpenDP measurement, applied once per node in `noisy_node`; there is no way to
    switch it off here (tests subclass the counter and override `noisy_node` with a seeded sampler)."""

    def __init__(self, plan: TreePlan) -> None:
        self.plan = plan
        self._nodes: list[Node] = []  # t's decomposition, highest level first
        self._t = 0

    def noisy_node(self, exact: int) -> int:
        """A completed node's exact value in, its noisy value out (called once per node)."""
        return int(self.plan.node_measurement(exact))

    @property
    def t(self) -> int:
        """Windows fed so far."""
        return self._t

    def total(self) -> int:
        """The released running total after window t (0 before the first window)."""
        return sum(n.noisy for n in self._nodes)

    def add_window(self, value: int) -> int:
        """Feed the next window's true (already bounded) value; return the noisy running total."""
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContinualReleaseError(f"continual counter: a window's value must be an integer, got "
                                        f"{type(value).__name__}")
        if self._t >= self.plan.horizon:
            raise ContinualReleaseError(f"continual counter: window {self._t + 1} is past the horizon of "
                                        f"{self.plan.horizon} windows; start a new horizon (a new budget)")
        t = self._t + 1
        level = lowbit(t).bit_length() - 1
        exact = value
        while self._nodes and self._nodes[-1].level < level:  # the lower levels of t - 1, merged into node t
            exact += self._nodes.pop().exact
        self._nodes.append(Node(level, t, self.noisy_node(exact), exact))
        self._t = t
        return self.total()

    def nodes(self) -> tuple[Node, ...]:
        """What a restart needs to continue: the popcount(t) nodes of t's decomposition."""
        return tuple(self._nodes)

    def restore(self, nodes: Sequence[Node]) -> None:
        """Continue from `nodes()` of a previous counter with the same plan. Draws no noise."""
        if self._t or self._nodes:
            raise ContinualReleaseError("continual counter: restore into a fresh counter only; a used one has "
                                        "drawn noise of its own")
        end, prev_level = 0, None
        for n in nodes:
            if not isinstance(n, Node) or (prev_level is not None and n.level >= prev_level) or n.level < 0 \
                    or n.end != end + (1 << n.level):
                raise ContinualReleaseError("continual counter: the nodes to restore are not a binary "
                                            "decomposition (levels must fall, each node must start where the "
                                            "previous one ended); pass nodes() of the previous counter")
            end, prev_level = n.end, n.level
        if end > self.plan.horizon:
            raise ContinualReleaseError(f"continual counter: the nodes to restore reach window {end}, past the "
                                        f"horizon of {self.plan.horizon}")
        self._nodes = list(nodes)
        self._t = end
