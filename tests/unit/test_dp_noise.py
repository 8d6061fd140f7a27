"""Noise scale, key selection and error bounds of the OpenDP mechanisms, checked statistically.

The statistical tests draw fresh OpenDP noise (a CSPRNG: no seed), so each bound below is chosen so
that a correct mechanism fails it with negligible probability, and a mechanism whose scale is off by
a factor of 2 fails it reliably. The math is next to each test.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from gateway.dp.declarations import AggregateSpec
from gateway.dp.laplace import noise_variance, tail_bound
from gateway.dp.mechanisms import AggregateMechanism, single_subject_release_probability
from tests.dp_doubles import NoiseFreeMechanism

SPEC = AggregateSpec(
    schema="t.Payment", name="spend", metric="sum", field="amount", group_by=("country",), window_ms=60_000,
    grace_ms=0, epsilon=1.0, delta=1e-6, max_groups_per_subject=2, max_records_per_group=5, clamp=(-40, 100),
    time_field=None, output_topic="out", source_topic="src", sanitized_topic="san", period_ms=86_400_000,
    period_epsilon_cap=100.0, period_delta_cap=1e-3)


def _variance_ratio(samples: list[int], scale: float) -> float:
    n = len(samples)
    mean = sum(samples) / n
    s2 = sum((x - mean) ** 2 for x in samples) / (n - 1)
    return s2 / noise_variance(scale)


# Variance test. For N iid draws with variance s^2 and kurtosis kappa, the sample variance S^2 has
# mean s^2 and standard deviation s^2 * sqrt((kappa - 1)/N) (CLT). Laplace noise has kappa = 6 (the
# discrete version's is within 1e-3 of that at these scales), so R = S^2 / s^2 has sd sqrt(5/N):
#   N = 10000 -> sd(R) = 0.0224.  We accept R in [0.8, 1.25]: 8.9 sd below and 11 sd above 1, so a
#   correct mechanism fails with probability below 1e-15 (normal tail at 8.9 sd: ~3e-19).
#   A scale off by 2x makes the true variance 4x or 0.25x: R ~ 4 or 0.25, dozens of sd outside
#   the interval, so that failure is certain for practical purposes.
# The expected scale is computed here from the declared bounds, independently of the mechanism.
N = 10_000
LOW, HIGH = 0.8, 1.25


def test_sum_noise_variance_matches_the_scale_derived_from_the_bounds() -> None:
    mech = AggregateMechanism(SPEC)
    k, m, bound = 2, 5, 100  # bound = max(|-40|, |100|)
    expected_scale = k * m * bound / (SPEC.epsilon / 2)  # half the budget goes to the sum
    assert mech.sum_scale == pytest.approx(expected_scale)
    samples = [mech.sum_noise(0) for _ in range(N)]
    ratio = _variance_ratio(samples, expected_scale)
    assert LOW <= ratio <= HIGH, ratio
    # the same samples rule out the scale being off by 2x in either direction
    assert not LOW <= _variance_ratio(samples, expected_scale * 2) <= HIGH
    assert not LOW <= _variance_ratio(samples, expected_scale / 2) <= HIGH
    # unbiased: the mean of N draws has sd sqrt(2/N) * scale = 0.0141 * scale; 8 sd is negligible
    assert abs(sum(samples) / N) <= 8 * math.sqrt(2 / N) * expected_scale


def test_count_noise_variance_matches_the_scale_derived_from_the_bounds() -> None:
    spec = replace(SPEC, metric="count", field=None, clamp=None)
    mech = AggregateMechanism(spec)
    expected_scale = 2 * 5 / spec.epsilon  # L1 sensitivity k*m, all of epsilon on the count
    assert mech.count_scale == pytest.approx(expected_scale)
    true = 10**9  # far above the threshold: every group is released, so the noise is unconditioned
    released = mech.release({f"[{i}]": true for i in range(N)})  # one draw per group, one call
    assert len(released) == N
    ratio = _variance_ratio([r.noisy_count - true for r in released], expected_scale)
    assert LOW <= ratio <= HIGH, ratio


def test_error_bound_is_the_95_percent_quantile_of_the_noise() -> None:
    # exact: P(|Z| > t) = 2 a^(t+1) / (1 + a), a = exp(-1/scale)
    for scale in (0.5, 3.0, 10.0, 1000.0):
        t = tail_bound(scale, 0.05)
        a = math.exp(-1 / scale)
        assert 2 * a ** (t + 1) / (1 + a) <= 0.05
        assert t == 0 or 2 * a ** t / (1 + a) > 0.05  # the smallest such t
    mech = AggregateMechanism(SPEC)
    # empirically: about 95% of noisy sums fall within error_95 (binomial sd 0.0022 at N=10000)
    inside = sum(abs(mech.sum_noise(0)) <= mech.sum_error_95 for _ in range(N)) / N
    assert 0.95 - 0.02 <= inside <= 0.95 + 0.02 + 0.002  # integer rounding makes it slightly above 95%
    record = mech.record(mech.release({'["DE"]': 10**6}, {'["DE"]': 0})[0], 0, 0)
    assert record["error_95"] == mech.sum_error_95 == tail_bound(mech.sum_scale, 0.05)


# Key selection. A group that only one subject touched has true count c <= m. It is released iff
# c + Z >= tau, with P = a^(tau - c)/(1 + a) <= a^(tau - m)/(1 + a) = the documented probability.
def test_threshold_formula_and_documented_probability() -> None:
    mech = AggregateMechanism(replace(SPEC, metric="count", field=None, clamp=None))
    b, k, m = mech.count_scale, 2, 5
    assert mech.threshold >= m + math.ceil(b * math.log(k / SPEC.delta))
    p = mech.single_subject_release_probability
    assert p == pytest.approx(single_subject_release_probability(m, mech.threshold, b))
    assert p <= SPEC.delta / k  # all k of one subject's groups together: at most delta


def test_single_subject_group_is_released_with_at_most_the_documented_probability() -> None:
    # A large delta (allowed here, not in a schema) makes the probability measurable:
    # k=1, m=5, eps=1 -> b=5, tau = 5 + ceil(5 ln(1/0.009)) = 29, p = e^(-24/5)/(1 + e^(-1/5)) = 0.00452.
    spec = replace(SPEC, metric="count", field=None, clamp=None, max_groups_per_subject=1, delta=0.009)
    mech = AggregateMechanism(spec)
    assert mech.threshold == 29
    p = mech.single_subject_release_probability
    assert p == pytest.approx(0.0045249947, rel=1e-6)
    trials = 60_000  # 60000 single-subject groups, each holding the maximum m = 5 records
    released = len(mech.release({f"[{i}]": 5 for i in range(trials)}))
    # Released ~ Binomial(60000, p): mean 271.5, sd 16.4. The upper bound is mean + 7 sd (a correct
    # mechanism exceeds it with probability < 1e-11 by Chernoff); the lower bound (mean / 2, 8 sd
    # below) shows the threshold is not vacuously high: the documented figure is the real one.
    mean, sd = trials * p, math.sqrt(trials * p * (1 - p))
    assert released <= mean + 7 * sd, released
    assert released >= mean / 2, released


def test_production_delta_releases_no_single_subject_group() -> None:
    mech = AggregateMechanism(replace(SPEC, metric="count", field=None, clamp=None, max_groups_per_subject=1))
    assert mech.single_subject_release_probability <= 1e-6
    # 20000 single-subject groups: expected releases 20000 * 4.8e-7 = 0.01; P(3 or more) < 2e-7
    assert len(mech.release({f"[{i}]": 5 for i in range(20_000)})) <= 2
    # while a group of many subjects clears the threshold
    assert len(mech.release({'["big"]': mech.threshold + 200})) == 1


def test_mean_is_post_processing_of_noisy_sum_and_count() -> None:
    mech = AggregateMechanism(replace(SPEC, metric="mean"))
    group = mech.release({'["DE"]': 10_000}, {'["DE"]': 10_000 * 50})[0]
    record = mech.record(group, 0, 0)
    assert record["value"] == pytest.approx(min(max(group.noisy_sum / group.noisy_count, -40), 100))
    assert record["error_95"] == pytest.approx((mech.sum_error_95 + 100 * mech.count_error_95) / group.noisy_count)
    assert record["epsilon"] == 1.0 and record["delta"] == 1e-6 and record["mechanism"].startswith("discrete_laplace")
    assert record["bounds"] == {"max_groups_per_subject": 2, "max_records_per_group": 5, "clamp": [-40, 100]}


# ---- the noise-free test double (tests/dp_doubles.py; the package has no no-noise mode) -----------
def test_the_noise_free_double_releases_true_values_and_says_so() -> None:
    mech = NoiseFreeMechanism(SPEC)
    groups = mech.release({'["DE"]': 1, '["FR"]': 3}, {'["DE"]': 7, '["FR"]': -2})
    assert [(g.group, g.noisy_count, g.noisy_sum) for g in groups] == [('["DE"]', 1, 7), ('["FR"]', 3, -2)]
    record = mech.record(groups[0], 0, 0)
    assert record["mechanism"] == "none:test-double"
    # the rest is the real mechanism's: the same budget (charged to the ledger), bounds and scales
    real = AggregateMechanism(SPEC)
    assert real.mechanism.startswith("discrete_laplace")
    assert {k: v for k, v in record.items() if k != "mechanism"} == \
        {k: v for k, v in real.record(groups[0], 0, 0).items() if k != "mechanism"}
    assert record["epsilon"] == 1.0 and record["delta"] == 1e-6


def test_the_real_mechanism_takes_no_switch_and_always_adds_noise() -> None:
    with pytest.raises(TypeError):
        AggregateMechanism(SPEC, no_noise=True)  # type: ignore[call-arg]
    mech = AggregateMechanism(SPEC)
    true = {f'["g{i}"]': 10_000 for i in range(20)}
    groups = mech.release(true, dict.fromkeys(true, 10_000))
    # 40 independent discrete Laplace draws of scale >= 10 are all zero with probability < 0.1^40
    assert any(g.noisy_count != 10_000 or g.noisy_sum != 10_000 for g in groups)
