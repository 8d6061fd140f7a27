"""What the quality rules add to the sanitize path, per event, in one process.

    python -m benchmarks.quality [--events 20000] [--reps 7]

The shipped payments schema through `Pipeline.process` twice, on the same events, paired run by
run: as shipped, and with ten rules (required, range, allowed values, two formats, two maximum
lengths, an outlier rule, a cross-field check and freshness) plus duplicate detection on the event
id. CPU seconds of this process, chunks of 500 events timed in turn, medians over ``--reps`` runs; µs per event and the
added share (the issue's goal: under 15%). `run(events, reps) -> dict` returns the figures.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import load_plans
from gateway.keys.keyring import Keyring
from gateway.runtime.jobs import settle_heap
from gateway.settings import GatewayConfig

REPO = Path(__file__).resolve().parents[1]
FIELD_RULES = {
    "event_id": {"required": True, "max_length": 64},
    "email": {"format": {"detector": "EMAIL"}},
    "amount_minor": {"range": [0, 10_000_000], "outlier": {"threshold": 6.0}},
    "currency": {"allowed": ["EUR", "USD", "GBP"]},
    "country": {"format": {"regex": "^[A-Z]{2}$"}, "max_length": 2},
}
RECORD_QUALITY = {
    "checks": [{"name": "positive_amount", "rule": ["amount_minor", ">=", {"value": 0}]}],
    "freshness": {"max_lag_s": 3600},
    "duplicates": {"action": "flag"},
}


def with_rules(schema: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["privacy"]["quality"] = RECORD_QUALITY
    for field in out["fields"]:
        if field["name"] in FIELD_RULES:
            field["quality"] = FIELD_RULES[field["name"]]
    return out


def run(events: int = 20_000, reps: int = 7) -> dict[str, Any]:
    from benchmarks.events import make_events

    plans = {p.name.rsplit(".", 1)[-1]: p for p in load_plans(REPO / "schemas")}
    payments = plans["Payment"]
    workdir = Path(tempfile.mkdtemp(prefix="gateway-quality-bench-"))
    ruled_path = workdir / "payments.avsc"
    ruled_path.write_bytes(orjson.dumps(with_rules(orjson.loads((REPO / "schemas" / "payments.avsc").read_bytes()))))
    ruled = compile_plan(load_schema_file(ruled_path))
    assert ruled.quality is not None and len(ruled.quality.rules) == 11  # ten rules (freshness one) + duplicate
    config = GatewayConfig(keyring=workdir / "keyring.json", instance_id="bench")
    keyring = Keyring.open(config.keyring)
    now_ms = int(time.time() * 1000)
    raw = [RawEvent(payments.source_topic, i % 6, i, now_ms, None, value, None)
           for i, (name, value, _) in enumerate(make_events(plans, events * 2)) if name == "Payment"][:events]

    def paired() -> tuple[float, float]:
        """Both pipelines fresh (the duplicate filter starts empty), timed chunk by chunk in turn, so
        the machine's drift (this host's speed varies by 2x within a minute) hits both alike."""
        plain = Pipeline([payments], keyring, config, 6, tokenizers(keyring, [payments]))
        checked = Pipeline([ruled], keyring, config, 6, tokenizers(keyring, [ruled]))
        settle_heap()  # as a worker does before its loop: no full collection over start-up's objects
        spent = [0.0, 0.0]
        for start in range(0, len(raw), 500):
            chunk = raw[start:start + 500]
            for side, pipeline in enumerate((plain, checked)):
                c0 = time.process_time()
                pipeline.process(chunk)
                spent[side] += time.process_time() - c0
        return spent[0], spent[1]

    runs = [paired() for _ in range(reps)]
    base, rules = [b for b, _ in runs], [r for _, r in runs]
    base_us = statistics.median(base) / len(raw) * 1e6
    rules_us = statistics.median(rules) / len(raw) * 1e6
    added = statistics.median(r / b - 1 for b, r in runs)
    return {"events": len(raw), "reps": reps, "rules": len(ruled.quality.rules) - 1, "duplicates": True,
            "sanitize_us_per_event": round(base_us, 2), "with_rules_us_per_event": round(rules_us, 2),
            "added_us_per_event": round(rules_us - base_us, 2), "added_share": round(added, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args(argv)
    figures = run(args.events, args.reps)
    print(f"payments, {figures['events']} events, median of {figures['reps']} paired runs")
    print(f"  sanitize as shipped           {figures['sanitize_us_per_event']:8.2f} us/event")
    print(f"  + ten rules and duplicates    {figures['with_rules_us_per_event']:8.2f} us/event")
    print(f"  added                         {figures['added_us_per_event']:8.2f} us/event "
          f"({figures['added_share']:.1%}; goal under 15%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
