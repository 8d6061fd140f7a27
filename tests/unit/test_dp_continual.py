"""The binary-tree continual-release mechanism: structure, accounting, error figures, restore, errors.

The statistical tests override the counter's noise step with a seeded exact discrete Laplace sampler
(a difference of two geometric variables) so they are reproducible; each tolerance is chosen so that
a correct mechanism fails with negligible probability whatever the seed, and the same samples reject
a variance that is off by the amounts named next to each test. One test runs OpenDP's own (unseeded)
sampler with looser bounds.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from gateway.dp.continual import (
    MAX_HORIZON,
    ContinualCounter,
    ContinualReleaseError,
    Node,
    TreePlan,
    sum_tail_bound,
)
from gateway.dp.laplace import noise_variance
from gateway.errors import ConfigError
from tests.dp_doubles import SeededCounter


def seeded_laplace(scale: float, rng: random.Random) -> Callable[[int], int]:
    """x + Z, Z exact discrete Laplace(scale): G1 - G2 with P(G >= k) = a^k, a = exp(-1/scale)."""
    log_a = -1.0 / scale

    def measure(x: int) -> int:
        g1 = math.floor(math.log(1.0 - rng.random()) / log_a)
        g2 = math.floor(math.log(1.0 - rng.random()) / log_a)
        return x + g1 - g2

    return measure


def no_noise(x: int) -> int:
    return x


def decomposition(t: int) -> list[tuple[int, int]]:
    """The spans (start, end], written out independently of the module: peel t's bits from the top."""
    spans, start = [], 0
    for j in reversed(range(t.bit_length())):
        if t >> j & 1:
            spans.append((start, start + (1 << j)))
            start += 1 << j
    return spans


# ---- structure ----------------------------------------------------------------------------------
@pytest.mark.parametrize("horizon", [1, 2, 3, 7, 8, 24, 100, 1000])
def test_without_noise_the_running_totals_are_the_prefix_sums(horizon: int) -> None:
    rng = random.Random(horizon)
    values = [rng.randint(-50, 200) for _ in range(horizon)]
    noised: list[int] = []

    def record(x: int) -> int:
        noised.append(x)
        return x

    counter = SeededCounter(TreePlan(horizon, 1.0, 200), record)
    for t, (value, prefix) in enumerate(zip(values, itertools.accumulate(values), strict=True), start=1):
        assert counter.add_window(value) == prefix
        assert len(counter.nodes()) == t.bit_count()  # only the decomposition is kept
        assert [(n.end - (1 << n.level), n.end) for n in counter.nodes()] == decomposition(t)
    # one noise draw per window: the node ending there, over its span's exact sum
    assert noised == [sum(values[t - (t & -t):t]) for t in range(1, horizon + 1)]


# ---- accounting ---------------------------------------------------------------------------------
def released_spans(horizon: int) -> set[tuple[int, int]]:
    return {span for t in range(1, horizon + 1) for span in decomposition(t)}


def node_l1_change(spans: set[tuple[int, int]], delta: tuple[int, ...]) -> int:
    prefix = [0, *itertools.accumulate(delta)]
    return sum(abs(prefix[end] - prefix[start]) for start, end in spans)


@pytest.mark.parametrize("horizon", range(1, 13))
def test_node_sensitivity_matches_brute_force_over_neighbouring_inputs(horizon: int) -> None:
    """Neighbours within the unit: the subject adds (or removes) at most c in each of at most w windows.
    The L1 change is convex in the changes, so its maximum over that set is at a vertex: every changed
    window changed by +-c. Enumerate the vertices (all signs up to T = 7, non-negative beyond)."""
    spans = released_spans(horizon)
    assert len(spans) == horizon  # one released node per window
    c = 3
    signs = (-c, 0, c) if horizon <= 7 else (0, c)
    best = [0] * (horizon + 1)  # best[s]: max L1 change with exactly s windows changed
    for delta in itertools.product(signs, repeat=horizon):
        support = sum(1 for d in delta if d)
        best[support] = max(best[support], node_l1_change(spans, delta))
    for w in range(1, horizon + 1):
        plan = TreePlan(horizon, 0.7, c, w)
        assert plan.node_l1_sensitivity == max(best[: w + 1]), (horizon, w)
        assert plan.scale == pytest.approx(plan.node_l1_sensitivity / 0.7)
        assert plan.baseline_scale == pytest.approx(c * w / 0.7)


def test_sensitivity_bounds_random_neighbours_of_a_long_horizon_and_is_attained() -> None:
    horizon, c, w = 100, 4, 5
    plan = TreePlan(horizon, 1.0, c, w)
    spans = released_spans(horizon)
    rng = random.Random(7)
    for _ in range(300):
        delta = [0] * horizon
        for i in rng.sample(range(horizon), rng.randint(1, w)):
            delta[i] = rng.randint(-c, c)
        assert node_l1_change(spans, tuple(delta)) <= plan.node_l1_sensitivity
    depth = [sum(1 for s, e in spans if s < i <= e) for i in range(1, horizon + 1)]
    deepest = sorted(range(horizon), key=lambda i: -depth[i])[:w]
    attack = tuple(c if i in deepest else 0 for i in range(horizon))
    assert node_l1_change(spans, attack) == plan.node_l1_sensitivity


def test_epsilon_over_the_horizon_is_the_declared_epsilon_and_event_level_is_the_classic_scale() -> None:
    for horizon, eps, c, w in [(1, 1.0, 1, 1), (24, 0.5, 3, 1), (24, 1.0, 1, None), (168, 2.0, 5, 10),
                               (MAX_HORIZON, 1.0, 1, None)]:
        plan = TreePlan(horizon, eps, c, w)
        assert plan.epsilon_total == pytest.approx(eps, rel=1e-9)
        assert plan.baseline_epsilon_total == pytest.approx(eps, rel=1e-9)
        assert plan.max_windows_per_subject == (horizon if w is None else w)
    for horizon in (1, 2, 16, 1024):  # powers of two: ceil(log2 T) + 1 levels, all of them complete
        plan = TreePlan(horizon, 1.0, 2, 1)
        assert plan.levels == math.ceil(math.log2(horizon)) + 1
        assert plan.scale == pytest.approx(plan.levels * 2 / 1.0)
    assert TreePlan(24, 1.0, 1, 1).levels == 5  # levels 0..4; a level-5 node would end at window 32


# ---- error figures ------------------------------------------------------------------------------
def excess_kurtosis(scale: float) -> float:
    """Of one discrete Laplace noise: cumulants of G1 - G2 are twice the geometric's (even orders)."""
    a = math.exp(-1.0 / scale)
    return 3.0 + (1.0 - a) ** 2 / (2.0 * a)


def chi2_quantile(df: float, z: float) -> float:
    """Wilson-Hilferty: the chi-square quantile at the standard normal quantile z."""
    return df * (1.0 - 2.0 / (9.0 * df) + z * math.sqrt(2.0 / (9.0 * df))) ** 3


def variance_interval(n: int, kurtosis: float, z: float) -> tuple[float, float]:
    """Acceptance interval of S^2 / sigma^2 for n samples of a law with this excess kurtosis.

    Var(S^2) = sigma^4 (2/(n-1) + kurtosis/n); matching that with a scaled chi-square (Box) gives
    S^2/sigma^2 ~ chi2(nu)/nu with nu = 2 / (2/(n-1) + kurtosis/n). At z = 4.5 a correct mechanism
    falls outside with probability about 7e-6 per check."""
    nu = 2.0 / (2.0 / (n - 1) + kurtosis / n)
    return chi2_quantile(nu, -z) / nu, chi2_quantile(nu, z) / nu


RUNS = 2000
Z = 4.5


def errors_over_runs(plan: TreePlan, checkpoints: list[int], seed: int) -> dict[int, list[int]]:
    errors: dict[int, list[int]] = {t: [] for t in checkpoints}
    for run in range(RUNS):
        rng = random.Random(seed * 1_000_003 + run)
        counter = SeededCounter(plan, seeded_laplace(plan.scale, rng))
        true = 0
        for t in range(1, plan.horizon + 1):
            value = rng.randint(0, 3)
            true += value
            released = counter.add_window(value)
            if t in errors:
                errors[t].append(released - true)
    return errors


@pytest.mark.parametrize(("horizon", "checkpoints"), [(24, [1, 7, 15, 16, 23, 24]),
                                                       (100, [1, 31, 63, 64, 99, 100])])
def test_error_variance_mean_and_coverage_match_the_plan(horizon: int, checkpoints: list[int]) -> None:
    plan = TreePlan(horizon, 1.0, 3, 1)
    errors = errors_over_runs(plan, checkpoints, seed=horizon)
    for t in checkpoints:
        e = errors[t]
        n = plan.nodes_at(t)
        var = plan.variance_at(t)
        mean = sum(e) / RUNS
        s2 = sum((x - mean) ** 2 for x in e) / (RUNS - 1)
        lo, hi = variance_interval(RUNS, excess_kurtosis(plan.scale) / n, Z)
        assert lo <= s2 / var <= hi, (t, s2 / var, lo, hi)
        # the same samples reject a per-node scale 25% off (variance x1.56 or /1.56) and a total that
        # summed the L nodes of every level instead of popcount(t)
        assert not lo <= s2 / (var * 1.5625) <= hi
        assert not lo <= s2 / (var / 1.5625) <= hi
        if n < plan.levels:
            assert not lo <= s2 / (plan.levels * plan.node_variance) <= hi
        assert abs(mean) <= Z * math.sqrt(var / RUNS), (t, mean)  # z-test: no bias
        half_width = plan.half_width_95(t)
        coverage = sum(1 for x in e if abs(x) <= half_width) / RUNS
        assert coverage >= 0.95 - Z * math.sqrt(0.95 * 0.05 / RUNS), (t, coverage)


def discrete_laplace_sum_pmf(scale: float, n: int, reach: int) -> dict[int, float]:
    a = math.exp(-1.0 / scale)
    one = {z: (1 - a) / (1 + a) * a ** abs(z) for z in range(-reach, reach + 1)}
    pmf = {0: 1.0}
    for _ in range(n):
        out: dict[int, float] = {}
        for x, px in pmf.items():
            for z, pz in one.items():
                out[x + z] = out.get(x + z, 0.0) + px * pz
        pmf = out
    return pmf


@pytest.mark.parametrize(("scale", "n"), [(5.0, 1), (5.0, 2), (5.0, 3), (5.0, 4), (2.0, 6), (1.0, 10)])
def test_half_width_is_sound_against_the_exact_distribution_and_not_far_above_it(scale: float, n: int) -> None:
    """Exact law of the sum of n noises (scale 5: T = 24 at event level), by convolution; the pmf is
    cut at 30 scales, which leaves out mass below 1e-12."""
    pmf = discrete_laplace_sum_pmf(scale, n, math.ceil(30 * scale))
    bound = sum_tail_bound(scale, n, 0.05)
    assert sum(p for x, p in pmf.items() if abs(x) > bound) <= 0.05
    exact = min(x for x in range(1000) if sum(p for y, p in pmf.items() if abs(y) > x) <= 0.05)
    assert bound <= 1.7 * exact + 1, (bound, exact)  # conservative, but not wildly
    if scale >= 5:  # the coupling bound: at most n + 1 above the exact quantile here
        assert bound <= exact + n + 1, (bound, exact)


def test_opendp_sampler_has_the_plan_variance() -> None:
    """OpenDP's own noise (unseeded). 300 runs of T = 16: 4,800 iid node noises, read off nodes(), and
    300 totals at t = 15 (4 nodes). Bounds at z = 6 (failure about 1e-9): node variance ratio within
    [0.82, 1.22], the total's within [0.5, 1.7]; a scale off by 2x is far outside both."""
    plan = TreePlan(16, 1.0, 1, 1)
    node_noise, total_error = [], []
    for _ in range(300):
        counter = ContinualCounter(plan)
        for t in range(1, 17):
            released = counter.add_window(1)
            last = counter.nodes()[-1]
            node_noise.append(last.noisy - last.exact)
            if t == 15:
                total_error.append(released - 15)
    for sample, n in ((node_noise, 1), (total_error, plan.nodes_at(15))):
        mean = sum(sample) / len(sample)
        ratio = sum((x - mean) ** 2 for x in sample) / (len(sample) - 1) / (n * noise_variance(plan.scale))
        lo, hi = variance_interval(len(sample), excess_kurtosis(plan.scale) / n, 6.0)
        assert lo <= ratio <= hi, (n, ratio, lo, hi)


# ---- restore ------------------------------------------------------------------------------------
class Draws:
    """A seeded measurement that counts its draws."""

    def __init__(self, scale: float, rng: random.Random) -> None:
        self.calls = 0
        self._measure = seeded_laplace(scale, rng)

    def __call__(self, x: int) -> int:
        self.calls += 1
        return self._measure(x)


@pytest.mark.parametrize("cut", [0, 1, 37, 64, 99, 100])
def test_restore_continues_with_identical_outputs_and_draws_no_noise(cut: int) -> None:
    plan = TreePlan(100, 1.0, 10, 3)
    values = [random.Random(cut).randint(0, 10) for _ in range(100)]
    whole = SeededCounter(plan, Draws(plan.scale, random.Random(5)))
    expected = [whole.add_window(v) for v in values]

    rng = random.Random(5)  # the same noise stream, picked up after the restart
    first = SeededCounter(plan, Draws(plan.scale, rng))
    before = [first.add_window(v) for v in values[:cut]]
    saved = first.nodes()
    draws = Draws(plan.scale, rng)
    second = SeededCounter(plan, draws)
    second.restore(saved)
    assert draws.calls == 0 and second.nodes() == saved and second.t == cut
    if cut:
        assert second.total() == before[-1]
    after = [second.add_window(v) for v in values[cut:]]
    assert before + after == expected
    assert draws.calls == 100 - cut  # one draw per new node, none for the restored ones
    with pytest.raises(ContinualReleaseError, match="past the horizon"):
        second.add_window(1)


def test_restore_refuses_a_used_counter_and_malformed_or_foreign_state() -> None:
    plan = TreePlan(24, 1.0, 1)
    counter = SeededCounter(plan, no_noise)
    for _ in range(7):
        counter.add_window(1)
    saved = counter.nodes()  # levels 2, 1, 0
    with pytest.raises(ContinualReleaseError, match="fresh counter"):
        counter.restore(saved)
    for bad in (saved[::-1], saved[1:], (saved[0], saved[0]), (Node(0, 2, 1, 1),), ("node",)):
        with pytest.raises(ContinualReleaseError, match="binary decomposition"):
            SeededCounter(plan, no_noise).restore(bad)  # type: ignore[arg-type]
    longer = SeededCounter(TreePlan(64, 1.0, 1), no_noise)
    for _ in range(32):
        longer.add_window(1)
    with pytest.raises(ContinualReleaseError, match="past the horizon"):
        SeededCounter(plan, no_noise).restore(longer.nodes())


# ---- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"horizon": 0}, "horizon"), ({"horizon": MAX_HORIZON + 1}, "horizon"), ({"horizon": 2.0}, "horizon"),
    ({"horizon": True}, "horizon"),
    ({"epsilon": 0.0}, "epsilon"), ({"epsilon": -1.0}, "epsilon"), ({"epsilon": math.nan}, "epsilon"),
    ({"epsilon": math.inf}, "epsilon"), ({"epsilon": "1"}, "epsilon"),
    ({"per_window_bound": 0}, "per_window_bound"), ({"per_window_bound": 1.5}, "per_window_bound"),
    ({"max_windows_per_subject": 0}, "max_windows_per_subject"),
    ({"max_windows_per_subject": 25}, "max_windows_per_subject"),
])
def test_invalid_plans_are_refused(kwargs: dict, match: str) -> None:
    args = {"horizon": 24, "epsilon": 1.0, "per_window_bound": 1, **kwargs}
    with pytest.raises(ConfigError, match=match):
        TreePlan(**args)


def test_feeding_past_the_horizon_or_a_non_integer_is_refused() -> None:
    plan = TreePlan(3, 1.0, 1)
    counter = SeededCounter(plan, no_noise)
    with pytest.raises(ContinualReleaseError, match="integer"):
        counter.add_window(1.5)  # type: ignore[arg-type]
    for _ in range(3):
        counter.add_window(1)
    with pytest.raises(ContinualReleaseError, match="past the horizon of 3"):
        counter.add_window(1)
    assert counter.total() == 3 and counter.t == 3
    for t in (0, 4):
        with pytest.raises(ConfigError, match="outside the horizon"):
            plan.variance_at(t)
        with pytest.raises(ConfigError, match="outside the horizon"):
            plan.half_width_95(t)
