"""Test doubles for the DP stages. Test code only: the gateway package has no way to switch noise off.

`NoiseFreeMechanism` is an AggregateMechanism whose noise step is the identity: key selection keeps
every group with its true (bounded) count, and sums are the true bounded sums. Everything else is
the real mechanism's: the spec, bounds, scales and error bounds it would have, the release records,
and, inside the worker, the ledger check and charge of every release (its records carry the spec's
epsilon and delta, charged like any other). Its `mechanism` says what it is, so no release it makes
can be taken for a private one. Tests use it to compare pre-noise results (one worker against two,
a partition moving mid-window) with what the bounds allow.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.dp.continual import ContinualCounter, TreePlan
from gateway.dp.mechanisms import AggregateMechanism

MECHANISM = "none:test-double"


class NoiseFreeMechanism(AggregateMechanism):
    """AggregateMechanism with the noise (and so the noisy threshold) left out: true values."""

    @property
    def mechanism(self) -> str:
        return MECHANISM

    def noisy_counts(self, counts: dict[str, int]) -> dict[str, int]:
        return {group: int(c) for group, c in counts.items()}

    def sum_noise(self, true_sum: int) -> int:
        return int(true_sum)

    def continual_counter(self, plan: TreePlan) -> ContinualCounter:
        return ExactCounter(plan)


class ExactCounter(ContinualCounter):
    """A continual counter whose nodes carry their exact values: running totals are true prefix sums."""

    def noisy_node(self, exact: int) -> int:
        return exact


class SeededCounter(ContinualCounter):
    """A continual counter whose noise step is a seeded sampler of the same law (OpenDP's sampler
    cannot be seeded): for statistical tests and benchmarks over many runs."""

    def __init__(self, plan: TreePlan, measure: Callable[[int], int]) -> None:
        super().__init__(plan)
        self._measure = measure

    def noisy_node(self, exact: int) -> int:
        return self._measure(exact)
