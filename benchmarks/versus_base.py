"""The sanitize worker's CPU per 1,000 events against an earlier checkout's, in one run on one broker.

    python -m benchmarks.versus_base [--base REV] [--events 200000] [--rounds 9] [--out benchmarks/results.json]

Both workers run `gateway run` over the same backlog of the same mixed events (bench.py's generator,
this checkout's schemas), one process each, rounds interleaved (base, current, base, ...), so a change
in the host's load hits both alike. The base is extracted with `git archive` into a temporary folder
and run with this checkout's virtualenv. The figure is the worker's own CPU (process and threads,
librdkafka's included) over the drain, and the broker's CPU over the same stage; the ratio is
taken per round (current over the base run beside it) and its median reported.

A round drains 200,000 events (about ten seconds of the worker) by default. At 60,000 a drain lasted
three seconds, and the start of a drain and the broker's own moments (its CPU per round varied
0.66-1.27x between the paired runs) moved a round's events/s ratio between 0.76 and 1.19; at 200,000
the same comparison's rounds spread 0.93-1.08.
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import KafkaStage, measure_sanitize_cost, update_results, warmed_broker
from benchmarks.events import REPO, by_short_name, make_events
from gateway.core.policy.lint import load_plans

# main before issue 35 (the latency tail): its goal is events/s at least 0.95x and CPU per 1,000 events at
# most 1.05x of this revision's, in the same run (issue 20's base, before its floor work, was ab42a5f)
DEFAULT_BASE = "0784528"


def extract(rev: str, into: Path) -> Path:
    """The tree of `rev` (its gateway package is all the worker imports) in a folder of its own."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev], check=True,
                             capture_output=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


EVENTS = 200_000
ROUNDS = 9


def run(base: str, events: int = EVENTS, rounds: int = ROUNDS) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-versus-"))
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", base], check=True,
                            capture_output=True, text=True).stdout.strip()
    checkouts = {"base": extract(base, workdir / "base"), "current": REPO}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in checkouts}
    with warmed_broker(workdir) as (broker, pid):
        batch = make_events(by_short_name(load_plans(REPO / "schemas")), events)
        for round_no in range(1, rounds + 1):
            for side, checkout in (checkouts.items() if round_no % 2 else reversed(checkouts.items())):
                print(f"  round {round_no}/{rounds}: {side} ...", flush=True)
                stage = KafkaStage("sanitize", broker.bootstrap, workdir, checkout=checkout)
                runs[side].append(measure_sanitize_cost(stage, batch, pid))
    out: dict[str, Any] = {"base_commit": commit, "events": events, "rounds": rounds}
    for side, side_runs in runs.items():
        out[side] = {key: round(statistics.median(r[key] for r in side_runs), 4) for key in side_runs[0]}
        out[side]["worker_cpu_s_per_1000_runs"] = [round(r["worker_cpu_s_per_1000"], 4) for r in side_runs]
    for key in ("worker_cpu_s_per_1000", "broker_cpu_s_per_1000", "eps"):
        ratios = [c[key] / b[key] for b, c in zip(runs["base"], runs["current"], strict=True)]
        out[f"{key.removesuffix('_s_per_1000')}_ratio"] = round(statistics.median(ratios), 3)
        out[f"{key.removesuffix('_s_per_1000')}_ratio_runs"] = [round(r, 3) for r in ratios]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help=f"the earlier revision (default {DEFAULT_BASE})")
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", type=Path, help="a results.json whose versus_base key to update")
    args = parser.parse_args()
    figures = run(args.base, args.events, args.rounds) | {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.out:
        update_results(args.out, "versus_base", figures)
    print(f"\n{'':<10}{'events/s':>10}{'worker CPU s/1k':>17}{'broker CPU s/1k':>17}")
    for side in ("base", "current"):
        f = figures[side]
        print(f"{side:<10}{f['eps']:>10.0f}{f['worker_cpu_s_per_1000']:>17.4f}{f['broker_cpu_s_per_1000']:>17.4f}")
    print(f"current over base ({figures['base_commit']}), median of {args.rounds} paired rounds: worker CPU "
          f"{figures['worker_cpu_ratio']:.3f}x (rounds {figures['worker_cpu_ratio_runs']}), broker CPU "
          f"{figures['broker_cpu_ratio']:.3f}x (rounds {figures['broker_cpu_ratio_runs']}), events/s "
          f"{figures['eps_ratio']:.3f}x (rounds {figures['eps_ratio_runs']})")
    print(f"worker CPU s/1k per round: base {figures['base']['worker_cpu_s_per_1000_runs']}, "
          f"current {figures['current']['worker_cpu_s_per_1000_runs']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
