"""Transforms against the primitive floor, in one process, without a broker (issue 6's ratio).

    python -m benchmarks.microbench [--events 4000] [--reps 9] [--chunk 200] [--profile]

Both sides run over the same events (``benchmarks/bench.py``'s generator and seed) in one
process: floor and transforms back to back over each chunk of ``--chunk`` events, in alternating
order, ``--reps`` times over the whole set. Times are this process's CPU time. The ratio is taken
per pair (transforms time over floor time) and its median printed, so a change in the load of a
shared machine hits both sides of a pair and the pairs it hits unevenly fall out of the median.

- **floor**: what any implementation pays per event. fastavro ``schemaless_reader`` of the Avro
  payload (parsed schema cached), a new record holding the kept fields only, one HMAC-SHA256 per
  tokenized field (keyed state copied per token), one AES-256-GCM encryption per non-null
  encrypted field (one AESGCM, an ``os.urandom(12)`` nonce, a short constant associated data),
  and fastavro ``schemaless_writer`` of the result with the sanitized schema. Before timing, every
  event's two outputs are checked to decode to the same fields with a token or a ciphertext in the
  same places: the floor does as many HMACs and encryptions as the gateway, event by event.
- **transforms**: the gateway's per-event path, ``TopicStage.transform``, which is exactly what
  ``Pipeline.process`` runs for an event before its audit event: framing and size checks, decode
  and validation, minimization, tokens (NFC, HMAC, base64url), envelope encryption (Avro
  plaintext, DEK from the cache with its use count, v1 header, nonce, associated data binding
  header, topic, field path and subject), Avro encoding with Confluent framing, the output size
  check.
- **pipeline**: ``Pipeline.process`` in batches of 1,000, which adds the audit entries (orjson,
  one SHA-256-chained record per partition and batch), counters and output records. Reported, not part
  of the ratio.

Rows: payments alone (the issue's record), and bench.py's mix (half payments, half clinical
visits) against a floor built the same way for clinical visits.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import hmac
import io
import os
import pstats
import secrets
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks.events import REPO, by_short_name, make_events
from gateway.app import tokenizers
from gateway.core.codec.raw import strip_logical_types
from gateway.core.codec.writer import zigzag_varint
from gateway.core.pipeline import Pipeline, RawEvent, TopicStage
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig


# ---- the floor -------------------------------------------------------------------------------
class _Primitives:
    def __init__(self) -> None:
        self.mac = hmac.new(secrets.token_bytes(32), digestmod=hashlib.sha256)
        self.aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self.aad = b"\x00\x00\x00\x12payments.sanitized"  # constant, the size of a topic context

    def token(self, value: str) -> str:
        m = self.mac.copy()
        m.update(value.encode())
        return m.hexdigest()

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self.aead.encrypt(nonce, plaintext, self.aad)


def _floor_parts(plan: Plan) -> tuple[Any, Any, Callable[[str], str], Callable[[bytes], bytes]]:
    """(raw reader schema, sanitized writer schema, token, encrypt): what both floors start from."""
    p = _Primitives()
    return fastavro.parse_schema(strip_logical_types(plan.schema.raw)), plan.sanitized_parsed, p.token, p.encrypt


def floor_payments(plan: Plan) -> Callable[[bytes], bytes]:
    reader, writer, token, encrypt = _floor_parts(plan)
    schemaless_reader, schemaless_writer, BytesIO = fastavro.schemaless_reader, fastavro.schemaless_writer, io.BytesIO

    def one(value: bytes) -> bytes:
        rec = schemaless_reader(BytesIO(value[5:]), reader, None)
        billing = rec["billing_address"]
        expiry = rec["card_expiry"]
        out = {
            "event_id": rec["event_id"], "occurred_at": rec["occurred_at"],
            "user_id": token(rec["user_id"]), "email": token(rec["email"]),
            "customer_name": encrypt(rec["customer_name"].encode()),
            "card_number": encrypt(rec["card_number"].encode()),
            "card_expiry": None if expiry is None else encrypt(expiry.encode()),
            "amount_minor": rec["amount_minor"], "currency": rec["currency"], "country": rec["country"],
            "billing_address": {"street": encrypt(billing["street"].encode()), "city": billing["city"],
                                "country": billing["country"]},
            "merchant": rec["merchant"],
        }
        buf = BytesIO()
        schemaless_writer(buf, writer, out)
        return b"\x00\x00\x00\x00\x65" + buf.getvalue()

    return one


def floor_clinical(plan: Plan) -> Callable[[bytes], bytes]:
    reader, writer, token, encrypt = _floor_parts(plan)
    schemaless_reader, schemaless_writer, BytesIO = fastavro.schemaless_reader, fastavro.schemaless_writer, io.BytesIO

    def codes(values: list[str]) -> bytes:
        if not values:
            return b"\x00"
        data = [v.encode() for v in values]
        return zigzag_varint(len(data)) + b"".join(zigzag_varint(len(d)) + d for d in data) + b"\x00"

    def one(value: bytes) -> bytes:
        rec = schemaless_reader(BytesIO(value), reader, None)
        email, location, clinic = rec["email"], rec["location"], rec["clinic"]
        out = {
            "visit_id": rec["visit_id"], "visit_time": rec["visit_time"],
            "patient_id": token(rec["patient_id"]), "email": None if email is None else token(email),
            "date_of_birth": encrypt(zigzag_varint(rec["date_of_birth"])),
            "diagnosis_codes": encrypt(codes(rec["diagnosis_codes"])),
            "procedures": [{"code": p["code"], "notes": None if p["notes"] is None else encrypt(p["notes"].encode())}
                           for p in rec["procedures"]],
            "clinic": {"clinic_id": clinic["clinic_id"], "region": clinic["region"]},
            "location": None if location is None else encrypt(struct.pack("<dd", location["lat"], location["lon"])),
            "severity": rec["severity"],
        }
        buf = BytesIO()
        schemaless_writer(buf, writer, out)
        return buf.getvalue()

    return one


# ---- the gateway -----------------------------------------------------------------------------
def transform_fn(stage: TopicStage, max_output_bytes: int) -> Callable[[bytes], Any]:
    """The per-event work Pipeline.process does before the audit event (TopicStage.transform)."""
    transform = getattr(stage, "transform", None)
    if transform is not None:
        return lambda value: transform(value, max_output_bytes)

    def one(value: bytes) -> Any:  # the pipeline before TopicStage.transform existed (for before/after runs)
        record, encoding = stage.decoder.decode(value)
        result = stage.sanitizer.sanitize(record)
        out, _out_encoding = stage.encode(result.record, encoding)
        if len(out) > max_output_bytes:
            raise AssertionError("output too large")
        return out

    return one


def _check_same_work(plan: Plan, floor_out: bytes, gateway_out: Any) -> None:
    """Both outputs decode with the sanitized schema to the same fields, with a token (str) or a
    ciphertext (bytes) in the same places: the floor did as many HMACs and AES-GCM encryptions."""
    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(v) for v in value]
        return type(value).__name__

    def decoded(out: bytes) -> Any:
        payload = out[5:] if plan.sanitized_schema_id is not None else out
        return fastavro.schemaless_reader(io.BytesIO(payload), plan.sanitized_parsed, None)

    if isinstance(gateway_out, tuple):  # TopicStage.transform: (value, encoding, result)
        gateway_out = gateway_out[0]
    assert shape(decoded(floor_out)) == shape(decoded(gateway_out))


def _timed(fn: Callable[[Any], Any], values: list[Any]) -> float:
    """CPU seconds of this process for fn over values (another process's load does not count)."""
    t0 = time.process_time()
    for value in values:
        fn(value)
    return time.process_time() - t0


def _timed_pipeline(pipeline: Pipeline, raw: list[RawEvent]) -> float:
    t0 = time.process_time()
    for start in range(0, len(raw), 1000):
        pipeline.process(raw[start:start + 1000])
    return time.process_time() - t0


def paired(pairs: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any], list[Any]]], reps: int,
           chunk_size: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Floor and transforms back to back over the same chunk, in alternating order, many short
    pairs: a change in the machine's load hits both sides of a pair, and the median of the per-pair
    ratios drops the pairs it hit unevenly. Returns (CPU seconds per event by "side label", ratios
    by label), one entry per pair."""
    seconds: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {label: [] for label in pairs}
    flip = False
    for _rep in range(reps):
        gc.collect()
        for label, (floor, transform, values) in pairs.items():
            for start in range(0, len(values), chunk_size):
                chunk = values[start:start + chunk_size]
                order = [("floor", floor), ("transforms", transform)]
                flip = not flip
                times = {side: _timed(fn, chunk) for side, fn in (order[::-1] if flip else order)}
                for side, secs in times.items():
                    seconds.setdefault(f"{side} {label}", []).append(secs / len(chunk))
                ratios[label].append(times["transforms"] / times["floor"])
    return seconds, ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events per workload (half payments)")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--chunk", type=int, default=200, help="events per timed floor/transforms pair")
    parser.add_argument("--profile", action="store_true", help="cProfile the payments transforms, then exit")
    args = parser.parse_args(argv)

    plans = by_short_name(load_plans(REPO / "schemas"))
    events = make_events(plans, args.events)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-micro-"))
    config = GatewayConfig(keyring=workdir / "keyring.json", instance_id="microbench")
    keyring = Keyring.open(config.keyring)
    pipeline = Pipeline(list(plans.values()), keyring, config, 6, tokenizers(keyring, list(plans.values())))
    stages = {name: pipeline.stages[plan.source_topic] for name, plan in plans.items()}
    gateway = {name: transform_fn(stage, pipeline.max_output_bytes) for name, stage in stages.items()}
    floors = {"Payment": floor_payments(plans["Payment"]), "ClinicalVisit": floor_clinical(plans["ClinicalVisit"])}

    payments = [v for name, v, _ in events if name == "Payment"]
    mixed = [(name, v) for name, v, _ in events]
    raw = [RawEvent(plans[name].source_topic, i % 3, i, 0, None, v, None) for i, (name, v) in enumerate(mixed)]

    def run_mixed(fns: dict[str, Callable[[bytes], Any]]) -> Callable[[bytes], Any]:
        return lambda item: fns[item[0]](item[1])  # type: ignore[index]

    for name, value in mixed:  # honest floor: the same fields dropped, tokenized and encrypted per event
        _check_same_work(plans[name], floors[name](value), gateway[name](value))

    if args.profile:
        profiler = cProfile.Profile()
        for _ in range(3):
            _timed(gateway["Payment"], payments)
        profiler.enable()
        for _ in range(5):
            _timed(gateway["Payment"], payments)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return 0

    for _ in range(2):  # warm-up
        _timed(gateway["Payment"], payments)
        _timed(floors["Payment"], payments)
        _timed_pipeline(pipeline, raw)

    mixed_floor, mixed_gateway = run_mixed(floors), run_mixed(gateway)
    pairs = {"payments": (floors["Payment"], gateway["Payment"], payments),
             "mixed": (mixed_floor, mixed_gateway, mixed)}
    seconds, ratios = paired(pairs, args.reps, args.chunk)
    for _rep in range(args.reps):
        seconds.setdefault("pipeline mixed (with audit)", []).append(_timed_pipeline(pipeline, raw) / len(raw))

    print(f"{len(payments)} payments, {len(mixed)} mixed events; {args.reps} repetitions in pairs of "
          f"{args.chunk}-event chunks; CPU time; medians")
    print(f"{'':<30}{'events/s':>10}{'us/event':>10}")
    for key, values in sorted(seconds.items(), key=lambda kv: ("pipeline" in kv[0], "mixed" in kv[0], kv[0])):
        per_event = statistics.median(values)
        print(f"{key:<30}{1 / per_event:>10,.0f}{per_event * 1e6:>10.1f}")
    for label, values in ratios.items():
        q = statistics.quantiles(values, n=4)
        print(f"transforms vs floor, {label + ':':<10} {statistics.median(values):.2f}x "
              f"(quartiles {q[0]:.2f}-{q[2]:.2f} over {len(values)} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
