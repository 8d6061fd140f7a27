"""The DP stages' per-event work beside the sanitize stage's, in one process, on the same events.

    python -m benchmarks.dp_stages [--events 20000] [--reps 5]

- **sanitize**: `Pipeline.process` on the payments (decode, minimize, tokenize, encrypt, encode,
  audit): what one sanitize worker does per event.
- **stage 1**: what `gateway aggregate`'s bounding stage does per sanitized record: decode it
  (`SanitizedDecoder`), bound it against the policy's aggregates (`ContributionBounder.offer`, two
  aggregates on the shipped payments schema) and serialize the accepted contributions.
- **stage 2**: per contribution: parse it and fold it into its window (`GroupWindows.add`).

CPU seconds of this process, medians over ``--reps`` runs; events per second and µs per event. The
ratio says how many events a DP worker handles per sanitize worker's event: stage 1 sees every
sanitized record of a schema with aggregates, stage 2 one contribution per accepted (record,
aggregate). `run(events, reps) -> dict` returns the figures (benchmarks/bench.py includes them).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.app import tokenizers
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord
from gateway.core.pipeline import RawEvent
from gateway.core.policy.lint import load_plans
from gateway.dp.bounding import ACCEPTED, Contribution, ContributionBounder
from gateway.dp.windows import GroupWindows
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

REPO = Path(__file__).resolve().parents[1]


def _cpu(fn: Any, reps: int) -> float:
    times = []
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return statistics.median(times)


def run(events: int = 20_000, reps: int = 5) -> dict[str, Any]:
    from benchmarks.events import make_events
    from gateway.core.pipeline import Pipeline

    plans = {p.name.rsplit(".", 1)[-1]: p for p in load_plans(REPO / "schemas")}
    payments = plans["Payment"]
    workdir = Path(tempfile.mkdtemp(prefix="gateway-dp-bench-"))
    config = GatewayConfig(keyring=workdir / "keyring.json", instance_id="bench")
    keyring = Keyring.open(config.keyring)
    pipeline = Pipeline([payments], keyring, config, 6, tokenizers(keyring, [payments]))
    raw = [RawEvent(payments.source_topic, i % 6, i, 0, None, value, None)
           for i, (name, value, _) in enumerate(make_events(plans, events * 2)) if name == "Payment"][:events]

    def sanitize() -> list[Any]:
        out = []
        for start in range(0, len(raw), 1000):
            out += pipeline.process(raw[start:start + 1000]).records
        return out

    outputs = sanitize()
    sanitized = [StoredRecord(r.topic, 0, i, r.key, r.value, dict(r.headers or []))
                 for i, r in enumerate(outputs) if r.topic == payments.sanitized_topic]
    decoder = SanitizedDecoder([payments])
    upstreams = frozenset(f"{payments.source_topic}/{p}" for p in range(6))
    accepted_out: list[bytes] = []

    def stage1() -> None:
        bounder = ContributionBounder(payments.aggregates, "0", upstreams)
        accepted_out.clear()
        for record in sanitized:
            _, decoded = decoder.decode(record)
            for _spec, outcome, c in bounder.offer(record.key.decode() if record.key else "", decoded,
                                                   decoded.get("occurred_at", 0), "payments.raw/0"):
                if outcome == ACCEPTED and c is not None:
                    accepted_out.append(c.to_json())
            bounder.drain_changes()

    stage1()
    accepted = len(accepted_out)
    # stage 2 on one contribution per sanitized record and aggregate (as if every record were within
    # its bounds), so the per-contribution cost is measured on as many items as stage 1 saw
    from gateway.dp.bounding import event_time, group_key

    specs = {s.id: s for s in payments.aggregates}
    contributions = []
    for record in sanitized:
        _, decoded = decoder.decode(record)
        for spec in payments.aggregates:
            t, group = event_time(spec, decoded, 0), group_key(spec, decoded)
            if t is not None and group is not None:
                contributions.append(Contribution(spec.id, spec.window_start(t), group, 1, t,
                                                  f"{record.offset % 6}|payments.raw/{record.offset % 6}").to_json())

    def stage2() -> None:
        windows = GroupWindows(specs, settle_ms=10**9)
        for aggregate in specs:  # every window from the epoch on is scheduled: no contribution is late
            windows.schedule(aggregate, 0, None, 0)
        added = sum(windows.add(Contribution.from_json(value), 0, offset, 0)
                    for offset, value in enumerate(contributions))
        assert added == len(contributions), f"{len(contributions) - added} contributions taken for late"

    figures: dict[str, Any] = {"events": len(raw), "aggregates": len(payments.aggregates), "reps": reps,
                               "accepted_in_stage1": accepted, "contributions": len(contributions)}
    for name, fn, n in (("sanitize", sanitize, len(raw)), ("stage1", stage1, len(sanitized)),
                        ("stage2", stage2, len(contributions))):
        seconds = _cpu(fn, reps)
        figures[name] = {"items": n, "cpu_s": round(seconds, 4), "per_s": round(n / seconds, 1),
                         "us_per_item": round(seconds / n * 1e6, 2)}
    figures["dp_events_per_sanitized_event"] = round(figures["stage1"]["per_s"] / figures["sanitize"]["per_s"], 2)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dp_stages", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    fig = run(args.events, args.reps)
    print(f"{fig['events']} payments, {fig['aggregates']} aggregates, {fig['contributions']} contributions "
          f"for stage 2; CPU time, median of {fig['reps']}")
    for name in ("sanitize", "stage1", "stage2"):
        row = fig[name]
        print(f"  {name:<9}{row['per_s']:>12,.0f}/s {row['us_per_item']:>8} us per item")
    print(f"  stage 1 handles {fig['dp_events_per_sanitized_event']}x the sanitize stage's events per CPU second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
