"""Continual release: the binary tree beside independent per-window releases summed, at the same epsilon.

    python -m benchmarks.continual [--runs N] [--seed S] [--opendp] [--json PATH]

Running totals over T = 24 and T = 168 windows, epsilon 1.0 over the whole horizon, per-window bound
c = 1 (one subject changes any window's value by at most 1), for two privacy units of one subject:

- event level, w = 1: the subject changes one window of the horizon (the papers' unit)
- all windows, w = T: the subject may change every window (what stage 1's per-window bounds give alone)

Tree (gateway/dp/continual.py): per-node scale c*D_w/eps, D_w the sum of the w largest node depths
(D_1 = L = T.bit_length(), D_T = sum of lowbit(t) over t <= T); the total at t sums popcount(t) nodes.
Baseline: per-window scale c*w/eps (the window vector's L1 sensitivity), the total at t sums t windows.

Figures, for each: analytic variance -> RMSE and 95% half-width (the plan's sound bound) at t = T and
averaged over t = 1..T (RMSE over t: the root of the mean over t of the variance), then the same RMSEs
measured over --runs runs (default 500) and the measured coverage of the 95% half-widths. Noise: a
seeded exact discrete Laplace sampler (a difference of two geometrics: the same law as OpenDP's,
which cannot be seeded); --opendp draws OpenDP's own noise instead (about 170 us a draw: slower).

Crossover: the smallest T from which the tree has the lower variance for every horizon up to
gateway.dp.continual.MAX_HORIZON (100,000), on average over t and at t = T, computed for every T from
the closed forms above (and checked against TreePlan at the horizons measured).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from gateway.dp.continual import MAX_HORIZON, ContinualCounter, TreePlan
from gateway.dp.laplace import noise_variance
from tests.dp_doubles import SeededCounter

EPSILON = 1.0
BOUND = 1
HORIZONS = (24, 168)
UNITS = {"event_level": lambda horizon: 1, "all_windows": lambda horizon: horizon}
SEED = 20261123


def seeded_laplace(scale: float, rng: random.Random) -> Callable[[int], int]:
    """x + Z, Z exact discrete Laplace(scale): G1 - G2 with P(G >= k) = exp(-k/scale)."""
    log_a = -1.0 / scale

    def measure(x: int) -> int:
        return (x + math.floor(math.log(1.0 - rng.random()) / log_a)
                - math.floor(math.log(1.0 - rng.random()) / log_a))

    return measure


def analytic(plan: TreePlan) -> dict[str, dict[str, float]]:
    T = plan.horizon
    ts = range(1, T + 1)
    out = {}
    for name, var, hw, scale in (
        ("tree", plan.variance_at, plan.half_width_95, plan.scale),
        ("baseline", plan.baseline_variance_at, plan.baseline_half_width_95, plan.baseline_scale),
    ):
        out[name] = {"scale": scale, "rmse_at_T": math.sqrt(var(T)),
                     "rmse_over_t": math.sqrt(sum(var(t) for t in ts) / T),
                     "half_width_95_at_T": hw(T), "half_width_95_mean_over_t": sum(hw(t) for t in ts) / T}
    return out


def empirical(plan: TreePlan, runs: int, seed: int, opendp: bool) -> dict[str, dict[str, float]]:
    T = plan.horizon
    sq = {"tree": [0.0] * T, "baseline": [0.0] * T}
    covered = {"tree": [0] * T, "baseline": [0] * T}
    hw = {"tree": [plan.half_width_95(t) for t in range(1, T + 1)],
          "baseline": [plan.baseline_half_width_95(t) for t in range(1, T + 1)]}
    opendp_window = None
    if opendp:
        import opendp.prelude as dp
        opendp_window = dp.m.make_laplace(dp.atom_domain(T=dp.i64), dp.absolute_distance(T=dp.i64),
                                          scale=plan.baseline_scale)
    for run in range(runs):
        rng = random.Random(seed * 1_000_003 + run)
        tree = ContinualCounter(plan) if opendp else SeededCounter(plan, seeded_laplace(plan.scale, rng))
        window = opendp_window if opendp_window is not None else seeded_laplace(plan.baseline_scale, rng)
        true = baseline = 0
        for i in range(T):
            value = rng.randint(0, BOUND)
            true += value
            baseline += int(window(value))
            for name, released in (("tree", tree.add_window(value)), ("baseline", baseline)):
                err = released - true
                sq[name][i] += err * err
                covered[name][i] += abs(err) <= hw[name][i]
    return {name: {"rmse_at_T": math.sqrt(sq[name][-1] / runs),
                   "rmse_over_t": math.sqrt(sum(sq[name]) / (runs * T)),
                   "coverage_95_at_T": covered[name][-1] / runs,
                   "coverage_95_over_t": sum(covered[name]) / (runs * T)} for name in sq}


def variances(max_horizon: int = MAX_HORIZON) -> dict[str, list[tuple[float, float, float, float]]]:
    """Per unit, for T = 1..max_horizon: (tree mean-over-t, baseline mean-over-t, tree at T, baseline at T)
    variance, from the closed forms: D_1 = T.bit_length(), D_T = sum of lowbit(t), t <= T."""
    out: dict[str, list[tuple[float, float, float, float]]] = {u: [] for u in UNITS}
    popcounts = lowbits = 0
    for T in range(1, max_horizon + 1):
        popcounts += T.bit_count()
        lowbits += T & -T
        for unit, depth_sum, w in (("event_level", T.bit_length(), 1), ("all_windows", lowbits, T)):
            node = noise_variance(BOUND * depth_sum / EPSILON)
            window = noise_variance(BOUND * w / EPSILON)
            out[unit].append((popcounts / T * node, (T + 1) / 2 * window, T.bit_count() * node, T * window))
    return out


def crossover(wins: list[bool]) -> int | None:
    """Smallest T (1-based) from which every later horizon in the scan is a win."""
    losses = [i for i, win in enumerate(wins) if not win]
    last = losses[-1] + 1 if losses else 0
    return last + 1 if last < len(wins) else None


def run(runs: int = 500, seed: int = SEED, opendp: bool = False) -> dict[str, Any]:
    scan = variances()
    cases = []
    for horizon in HORIZONS:
        for unit, windows in UNITS.items():
            plan = TreePlan(horizon, EPSILON, BOUND, windows(horizon))
            row = scan[unit][horizon - 1]
            tree_mean_var = sum(plan.variance_at(t) for t in range(1, horizon + 1)) / horizon
            assert math.isclose(row[0], tree_mean_var) and math.isclose(row[3], plan.baseline_variance_at(horizon))
            a = analytic(plan)
            cases.append({
                "horizon": horizon, "unit": unit, "max_windows_per_subject": plan.max_windows_per_subject,
                "levels": plan.levels, "node_l1_sensitivity": plan.node_l1_sensitivity,
                "epsilon_total": plan.epsilon_total, "analytic": a,
                "empirical": empirical(plan, runs, seed + horizon + len(cases), opendp),
                "tree_wins_at_T": a["tree"]["rmse_at_T"] < a["baseline"]["rmse_at_T"],
                "tree_wins_over_t": a["tree"]["rmse_over_t"] < a["baseline"]["rmse_over_t"],
            })
    cross = {unit: {"mean_over_t": crossover([r[0] < r[1] for r in rows]),
                    "at_T": crossover([r[2] < r[3] for r in rows]),
                    "first_win_mean_over_t": next((i + 1 for i, r in enumerate(rows) if r[0] < r[1]), None)}
             for unit, rows in scan.items()}
    return {"epsilon": EPSILON, "per_window_bound": BOUND, "runs": runs, "seed": seed,
            "noise": "opendp" if opendp else "seeded exact discrete Laplace (difference of two geometrics)",
            "cases": cases, "crossover": cross, "scan_max_horizon": MAX_HORIZON}


def print_table(fig: dict[str, Any]) -> None:
    print(f"running totals, epsilon {fig['epsilon']} over the horizon, per-window bound {fig['per_window_bound']}, "
          f"{fig['runs']} runs ({fig['noise']})")
    head = (f"{'T':>4} {'unit':<12} {'':<9} {'scale':>8} {'RMSE@T':>9} {'meas.':>9} {'RMSE/t':>9} {'meas.':>9} "
            f"{'hw95@T':>8} {'hw95/t':>9} {'cov@T':>6} {'cov/t':>6}")
    print(head)
    for case in fig["cases"]:
        for name in ("tree", "baseline"):
            a, e = case["analytic"][name], case["empirical"][name]
            print(f"{case['horizon']:>4} {case['unit']:<12} {name:<9} {a['scale']:>8.0f} {a['rmse_at_T']:>9.1f} "
                  f"{e['rmse_at_T']:>9.1f} {a['rmse_over_t']:>9.1f} {e['rmse_over_t']:>9.1f} "
                  f"{a['half_width_95_at_T']:>8} {a['half_width_95_mean_over_t']:>9.1f} "
                  f"{e['coverage_95_at_T']:>6.3f} {e['coverage_95_over_t']:>6.3f}")
    for unit, c in fig["crossover"].items():
        print(f"crossover ({unit}): the tree has the lower variance for every T >= {c['mean_over_t']} on average "
              f"over t (first win at T = {c['first_win_mean_over_t']}), and at t = T for every T >= {c['at_T']} "
              f"(scan to T = {fig['scan_max_horizon']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.continual", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500, help="seeded runs per case (default 500)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--opendp", action="store_true", help="draw OpenDP's own noise (unseeded, slower)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    fig = run(args.runs, args.seed, args.opendp)
    print_table(fig)
    if args.json:
        args.json.write_bytes(orjson.dumps(fig, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
