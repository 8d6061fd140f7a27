"""The per-event cost of each schema format family, beside Avro, in one process.

    python -m benchmarks.formats [--events 5000] [--reps 5]

One policy, written once as a JSON Schema (examples/schemas/json/signups.schema.json) and once as the
Avro record it converts to (the same fields, annotations and operators), so the rows differ only in the
format: Confluent-framed Avro (fastavro decode, the generated writer) and Confluent-framed JSON validated
against the JSON Schema (orjson, jsonschema, orjson). Each row is TopicStage.transform, the whole per-event
work before the audit entry: decode and validate, sanitize (tokens, AES-GCM), encode. CPU seconds of this
process, timed in pairs over the same chunks (benchmarks.microbench.paired: the format under test on one
side, Avro on the other), so the host's changing speed hits both sides of a ratio; medians over the pairs.
`run(events, reps) -> dict` returns the figures (µs per event per format, and each format's ratio to Avro).
Another family adds its row in `_stages` (a plan of the same policy in its format, and its framed events).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.microbench import paired, transform_fn
from gateway.app import tokenizers
from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.formats import load_schema_file
from gateway.core.codec.writer import avro_bytes
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

REPO = Path(__file__).resolve().parents[1]
JSON_SCHEMA = REPO / "examples" / "schemas" / "json" / "signups.schema.json"
RAW_ID, SANITIZED_ID = 1, 2


def _events(n: int) -> list[dict[str, Any]]:
    return [{"signup_id": f"s-{i}", "user_id": f"user-{i % 997}", "email": f"person{i}@example.org",
             "full_name": f"Person Number {i}", "phone": None if i % 3 == 0 else f"+4477009{i % 100000:05d}",
             "age": 18 + i % 60, "country": "GB", "plan": ("free", "pro", "team")[i % 3],
             "address": {"street": f"{i} High Street", "city": "London", "postcode": "E14 5AB"},
             "referrer_url": "https://example.org/", "marketing_opt_in": i % 2 == 0} for i in range(n)]


def _plans(workdir: Path) -> dict[str, Plan]:
    """The JSON Schema policy and the same policy as its Avro record, each with static registry ids."""
    document = orjson.loads(JSON_SCHEMA.read_bytes())
    document["privacy"].update(schema_id=RAW_ID, sanitized_schema_id=SANITIZED_ID,
                               source_topic="bench.json", sanitized_topic="bench.json.sanitized")
    (workdir / "signups.schema.json").write_bytes(orjson.dumps(document))
    json_plan = compile_plan(load_schema_file(workdir / "signups.schema.json"))
    avro = dict(json_plan.schema.raw)
    avro["privacy"] = dict(document["privacy"], source_topic="bench.avro", sanitized_topic="bench.avro.sanitized")
    (workdir / "signups.avsc").write_bytes(orjson.dumps(avro))
    return {"avro": compile_plan(load_schema_file(workdir / "signups.avsc")), "json_schema": json_plan}


def _stages(plans: dict[str, Plan], events: list[dict[str, Any]],
            workdir: Path) -> dict[str, tuple[Callable[[bytes], Any], list[bytes]]]:
    """Each format's transform and its events (the same records), framed as its producers frame them."""
    config = GatewayConfig(keyring=workdir / "keyring.json", instance_id="bench-formats")
    keyring = Keyring.open(config.keyring)
    pipeline = Pipeline(list(plans.values()), keyring, config, 1, tokenizers(keyring, list(plans.values())))
    avro_parsed = plans["avro"].schema.parsed
    values = {"avro": [frame_confluent(RAW_ID, avro_bytes(avro_parsed, e)) for e in events],
              "json_schema": [frame_confluent(RAW_ID, orjson.dumps(e)) for e in events]}
    return {name: (transform_fn(pipeline.stages[plan.source_topic], pipeline.max_output_bytes), values[name])
            for name, plan in plans.items()}


def run(events: int = 5000, reps: int = 5, chunk: int = 200) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="gateway-formats-"))
    stages = _stages(_plans(workdir), _events(events), workdir)
    avro, avro_values = stages["avro"]
    for fn, values in stages.values():  # warm-up, and every event must transform
        for value in values[:500]:
            fn(value)
    out: dict[str, Any] = {"events": events, "reps": reps}
    for name, (fn, values) in stages.items():
        if name == "avro":
            continue
        # Avro on the "floor" side of each pair, the format on the other, over the same records (by index,
        # so both sides pay the same indexing)
        pairs = {name: (lambda i, a=avro_values: avro(a[i]), lambda i, f=fn, v=values: f(v[i]),
                        list(range(len(values))))}
        seconds, ratios = paired(pairs, reps, chunk)
        out[name] = {"us_per_event": round(statistics.median(seconds[f"transforms {name}"]) * 1e6, 1),
                     "vs_avro": round(statistics.median(ratios[name]), 2)}
        out["avro"] = {"us_per_event": round(statistics.median(seconds[f"floor {name}"]) * 1e6, 1), "vs_avro": 1.0}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    figures = run(args.events, args.reps)
    print(f"{'format':<14}{'us/event':>10}{'vs Avro':>10}")
    for name, row in figures.items():
        if isinstance(row, dict):
            print(f"{name:<14}{row['us_per_event']:>10}{row['vs_avro']:>9}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
