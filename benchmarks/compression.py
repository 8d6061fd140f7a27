"""`output_compression` on the sanitize path: the worker's CPU, the broker's CPU and the bytes the broker
stores per event, for each codec, in interleaved rounds on one embedded broker.

    python -m benchmarks.compression [--events 30000] [--rounds 3] [--out benchmarks/results.json]

The broker's CPU is taken over each whole stage (the raw backlog's publishing included, the same for
every codec); the bytes are the sanitized, dead-letter and audit topics' log segments on disk.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench import KafkaStage, measure_sanitize_cost, update_results, warmed_broker
from benchmarks.events import REPO, by_short_name, make_events
from gateway.core.policy.lint import load_plans

CODECS = ("none", "lz4", "zstd")


def stored_bytes(log_dir: Path, stage: KafkaStage) -> int:
    topics = [stage.audit_topic] + [t for p in stage.plans.values() for t in (p.sanitized_topic, p.dlq_topic)]
    return sum(f.stat().st_size for t in topics for f in log_dir.glob(f"{t}-*/*.log"))


def run(events: int = 30_000, rounds: int = 3) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-compression-"))
    runs: dict[str, list[dict[str, float]]] = {codec: [] for codec in CODECS}
    with warmed_broker(workdir) as (broker, pid):
        batch = make_events(by_short_name(load_plans(REPO / "schemas")), events)
        for round_no in range(1, rounds + 1):
            for codec in CODECS:
                print(f"  round {round_no}/{rounds}: {codec} ...", flush=True)
                stage = KafkaStage("sanitize", broker.bootstrap, workdir, extra=("--output-compression", codec))
                cost = measure_sanitize_cost(stage, batch, pid)
                runs[codec].append(cost | {"stored_bytes_per_event":
                                           stored_bytes(broker.data_dir / "log", stage) / events})
    out: dict[str, Any] = {"events": events, "rounds": rounds}
    for codec, codec_runs in runs.items():
        out[codec] = {key: round(statistics.median(r[key] for r in codec_runs), 4) for key in codec_runs[0]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="a results.json whose output_compression key to update")
    args = parser.parse_args()
    figures = run(args.events, args.rounds) | {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.out:
        update_results(args.out, "output_compression", figures)
    print(f"\n{'codec':<8}{'events/s':>10}{'worker CPU s/1k':>17}{'broker CPU s/1k':>17}{'stored B/event':>16}")
    for codec in CODECS:
        f = figures[codec]
        print(f"{codec:<8}{f['eps']:>10.0f}{f['worker_cpu_s_per_1000']:>17.4f}{f['broker_cpu_s_per_1000']:>17.4f}"
              f"{f['stored_bytes_per_event']:>16.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
