"""`gateway scan` throughput: the pure scan, decode + scan, and optionally end to end via a broker.

    python -m benchmarks.scan [--events 5000] [--reps 5] [--broker]

- **scan**: `gateway.core.scan.Scanner.add` over decoded events of the example schemas (payments and
  clinical visits from `gateway.embedded.samples`, the bench's seed): the schema walk, the keyed hash per
  string value, the detectors (all entity types) on each distinct value, the counters. A fresh
  Scanner per repetition, so every distinct value meets the detectors once per run, as in a scan.
- **walk only**: the same with a detector that finds nothing: the scanner's own cost per event.
- **decode+scan**: the same from the wire bytes (payments Confluent-framed, visits bare Avro)
  through `gateway.core.codec.raw.EventDecoder`, as `gateway scan` does per event.
- **end to end** (``--broker``): the embedded Apache Kafka broker, the events published to a topic
  per schema, then `gateway.runtime.sample` reading them from the beginning, decoded and scanned in
  this process (the time of `gateway scan` without interpreter start-up and the report).

Times are wall-clock medians over ``--reps`` repetitions; figures are events per second.
`run(...)` returns them as a dict (benchmarks/bench.py can include it).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import orjson

from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.raw import EventDecoder, SchemaFile, load_schema_file, strip_logical_types
from gateway.core.codec.writer import avro_bytes

REPO = Path(__file__).resolve().parents[1]
SEED = 7
SCHEMAS = {"Payment": "payments.avsc", "ClinicalVisit": "clinical_visits.avsc"}


def _events(count: int) -> dict[str, tuple[SchemaFile, list[dict[str, Any]], list[bytes]]]:
    from gateway.embedded.samples import SampleEvents

    samples = SampleEvents(seed=SEED)
    out = {}
    for name, file in SCHEMAS.items():
        schema = load_schema_file(REPO / "schemas" / file)
        make = samples.payment if name == "Payment" else samples.clinical_visit
        records = [make() for _ in range(count)]
        parsed = fastavro.parse_schema(strip_logical_types(schema.raw))
        schema_id = schema.privacy.get("schema_id")
        wire = [frame_confluent(schema_id, avro_bytes(parsed, r)) if schema_id is not None else avro_bytes(parsed, r)
                for r in records]
        out[name] = (schema, records, wire)
    return out


def _median_rate(count: int, seconds: list[float]) -> float:
    return round(count / statistics.median(seconds), 1)


class _NoDetector:
    """Finds nothing: what the scanner itself costs (walk, hash, memo, counters) without detection."""

    def find(self, text: str) -> list[Any]:
        return []


def _scan_once(schema: SchemaFile, records: list[dict[str, Any]], detector: Any = None) -> float:
    from gateway.core.scan import Scanner

    scanner = Scanner(schema, detector)
    start = time.perf_counter()
    scanner.add_all(records)
    elapsed = time.perf_counter() - start
    scanner.report("bench")  # the verdicts, outside the timing (once per scan, not per event)
    return elapsed


def _decode_scan_once(schema: SchemaFile, wire: list[bytes]) -> float:
    from gateway.core.scan import Scanner
    from gateway.errors import RejectedEvent

    scanner = Scanner(schema)
    decoder = EventDecoder(schema, "auto", schema.privacy.get("schema_id"), 1 << 20)
    decode, add = decoder.decode, scanner.add
    start = time.perf_counter()
    for value in wire:
        try:
            record, _ = decode(value)
        except RejectedEvent as exc:
            scanner.failed(exc.reason)
            continue
        add(record)
    return time.perf_counter() - start


def _end_to_end(data: dict[str, tuple[SchemaFile, list[dict[str, Any]], list[bytes]]], reps: int) -> dict[str, Any]:
    from confluent_kafka import Producer

    from gateway.core.scan import Scanner
    from gateway.embedded.broker import EmbeddedBroker
    from gateway.errors import RejectedEvent
    from gateway.runtime.sample import sample_topic

    figures: dict[str, Any] = {}
    with EmbeddedBroker(0) as broker:
        kafka = {"bootstrap.servers": broker.bootstrap}
        producer = Producer({**kafka, "linger.ms": 20, "enable.idempotence": True})
        topics = {}
        for name, (_schema, _records, wire) in data.items():
            topics[name] = f"bench.scan.{name.lower()}.{uuid.uuid4().hex[:6]}"
            for value in wire:
                producer.produce(topics[name], value)
                producer.poll(0)
        producer.flush(60)
        for name, (schema, _records, wire) in data.items():
            seconds = []
            for _ in range(reps):
                scanner = Scanner(schema)
                decoder = EventDecoder(schema, "auto", schema.privacy.get("schema_id"), 1 << 20)
                start = time.perf_counter()
                for value in sample_topic(kafka, topics[name], len(wire), "beginning", 120.0):
                    try:
                        scanner.add(decoder.decode(value)[0])
                    except RejectedEvent as exc:
                        scanner.failed(exc.reason)
                seconds.append(time.perf_counter() - start)
                assert scanner.events == len(wire), (scanner.events, len(wire))
            figures[name] = _median_rate(len(wire), seconds)
    return figures


def run(events: int = 5000, reps: int = 5, broker: bool = False) -> dict[str, Any]:
    """Events per second of the scan, per schema: {"scan": {...}, "walk_only": {...}, "decode_scan": {...},
    ["end_to_end": {...}], "events": n, "reps": r}."""
    data = _events(events)
    result: dict[str, Any] = {"events": events, "reps": reps, "scan": {}, "walk_only": {}, "decode_scan": {}}
    for name, (schema, records, wire) in data.items():
        _scan_once(schema, records[: min(200, events)])  # warm-up: detectors built, patterns compiled
        result["scan"][name] = _median_rate(events, [_scan_once(schema, records) for _ in range(reps)])
        result["walk_only"][name] = _median_rate(events, [_scan_once(schema, records, _NoDetector())
                                                          for _ in range(reps)])
        result["decode_scan"][name] = _median_rate(events, [_decode_scan_once(schema, wire) for _ in range(reps)])
    if broker:
        result["end_to_end"] = _end_to_end(data, reps)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scan", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events per schema (default 5000)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--broker", action="store_true", help="also end to end through the embedded broker")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    result = run(args.events, args.reps, args.broker)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"gateway scan throughput, {args.events} events per schema, median of {args.reps} (events/s)")
    for row in ("scan", "walk_only", "decode_scan", "end_to_end"):
        for name, rate in result.get(row, {}).items():
            print(f"  {row:<12} {name:<14} {rate:>12,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
