"""`make demo`: the embedded broker, one gateway worker and sample events, end to end.

Starts everything it needs, shows raw vs sanitized events side by side and a summary, proves an
authorized consumer can decrypt, then stops everything it started.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Mapping
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from gateway.audit import verify_chains
from gateway.config import GatewayConfig
from gateway.decrypt import decrypt_record
from gateway.embedded.broker import EmbeddedBroker
from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import FieldDecryptor, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.policy import Plan, load_plans
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import ensure_topics
from gateway.samples import SampleEvents, broken_payment_events
from gateway.sanitized import SanitizedDecoder
from gateway.schema import avro_bytes, decoded_for_json, frame_confluent, json_bytes

COLUMN = 58


def encode_raw(plan: Plan, record: dict[str, Any], encoding: str) -> bytes:
    if encoding == "json":
        return json_bytes(record)
    payload = avro_bytes(plan.schema.parsed, record)
    if encoding == "confluent":
        assert plan.schema_id is not None
        return frame_confluent(plan.schema_id, payload)
    return payload


def _sample_source(samples: SampleEvents, plan: Plan) -> tuple[Any, list[str]]:
    """The sample generator for a plan's schema and the input encodings it rotates through."""
    make = samples.payment if plan.name.endswith("Payment") else samples.clinical_visit
    encodings = ["confluent", "avro", "json"] if plan.schema_id is not None else ["avro", "json"]
    return make, encodings


def _broken(plan: Plan, valid: dict[str, Any]) -> list[tuple[str, bytes]]:
    assert plan.schema_id is not None
    return broken_payment_events(valid, plan.schema_id, lambda r: avro_bytes(plan.schema.parsed, r))


def publish_samples(kafka: Mapping[str, str], plans: list[Plan], per_schema: int,
                    seed: int = 7) -> dict[str, Any]:
    """Publish valid events (mixed encodings) and a corpus of broken ones; return what was sent.

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config())."""
    samples = SampleEvents(seed)
    producer = Producer({**kafka, "linger.ms": 5, "enable.idempotence": True,
                         "message.max.bytes": 4_000_000})
    sent: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for plan in plans:
        make, encodings = _sample_source(samples, plan)
        for i in range(per_schema):
            record = make(canary=(i == 0))
            producer.produce(plan.source_topic, encode_raw(plan, record, encodings[i % len(encodings)]),
                             key=str(i).encode())
            examples.setdefault(plan.source_topic, []).append(record) if i < 3 else None
            sent[plan.source_topic] += 1
        if plan.name.endswith("Payment") and plan.schema_id is not None:
            for _reason, value in _broken(plan, make(canary=True)):
                producer.produce(plan.source_topic, value)
                sent[plan.source_topic] += 1
        producer.poll(0)
    producer.flush(30)
    return {"sent": sent, "examples": examples}


TIME_FIELDS = ("occurred_at", "visit_time")  # the example schemas' event-time fields


def produce_samples(kafka: Mapping[str, str], plans: list[Plan], count: int, rate: float, seed: int = 7,
                    broken_every: int = 1000, stop: Callable[[], bool] = lambda: False,
                    progress: Callable[[Counter[str]], None] | None = None) -> Counter[str]:
    """`count` valid events per schema at `rate` events/s per schema (0: as fast as possible), event
    time stamped now (so DP windows close as they would in production), plus one broken payment
    every `broken_every` events so the dead-letter path is exercised. Stops early when `stop()`."""
    samples = SampleEvents(seed)
    producer = Producer({**kafka, "linger.ms": 5, "enable.idempotence": True})
    sent: Counter[str] = Counter()
    started = time.monotonic()
    next_progress = started + 10
    for i in range(count):
        if stop():
            break
        if rate > 0:
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
        now_ms = int(time.time() * 1000)
        for plan in plans:
            make, encodings = _sample_source(samples, plan)
            record = make()
            record.update({f: now_ms for f in TIME_FIELDS if f in record})
            producer.produce(plan.source_topic, encode_raw(plan, record, encodings[i % len(encodings)]))
            sent[plan.source_topic] += 1
            if make == samples.payment and plan.schema_id is not None and i % broken_every == broken_every - 1:
                broken = _broken(plan, record)
                producer.produce(plan.source_topic, broken[(i // broken_every) % len(broken)][1])
                sent[f"{plan.source_topic} (broken)"] += 1
        producer.poll(0)
        if progress is not None and time.monotonic() >= next_progress:
            progress(sent)
            next_progress += 10
    if producer.flush(30):
        raise GatewayError("some sample events were not delivered within 30 s")
    return sent


def _display(value: Any) -> Any:
    """Readable form for the terminal: ciphertexts shortened to their key id and size."""
    if isinstance(value, dict):
        return {k: _display(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_display(v) for v in value]
    if isinstance(value, str) and len(value) > 60:
        try:
            value = base64.b64decode(value, validate=True)
        except ValueError:
            return value
    if isinstance(value, bytes):
        try:
            parsed = parse_ciphertext(value)
        except DecryptError:
            return f"<{len(value)} bytes>"
        return f"<encrypted {len(value)}B key {parsed.kek_id}/{parsed.dek_id.hex()[:8]}>"
    return value


def _side_by_side(title: str, left: dict[str, Any], right: dict[str, Any]) -> str:
    def lines(obj: dict[str, Any]) -> list[str]:
        out: list[str] = []
        for key, value in obj.items():
            text = orjson.dumps(decoded_for_json(_display(value))).decode()
            out += textwrap.wrap(f"{key}: {text}", COLUMN, subsequent_indent="    ") or [key]
        return out

    rows = [f"{'RAW (producer)':<{COLUMN}} | SANITIZED (consumers)", f"{'-' * COLUMN}-+-{'-' * COLUMN}"]
    rows += [f"{a:<{COLUMN}} | {b}" for a, b in zip_longest(lines(left), lines(right), fillvalue="")]
    return f"\n== {title} ==\n" + "\n".join(rows)


def _wait_for_audit(kafka: Mapping[str, str], topic: str, expected: int, worker: subprocess.Popen[bytes],
                    timeout_s: float = 180.0) -> int:
    """Wait until `expected` audit records are committed, counting them by reading the topic:
    partition ends from ListOffsets count transaction markers as well as records."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise GatewayError(f"the gateway worker exited with code {worker.returncode}")
        seen = len(read_topic(kafka, topic))
        print(f"\r  gateway progress: {min(seen, expected)}/{expected} events audited", end="", flush=True)
        if seen >= expected:
            print()
            return seen
        time.sleep(0.5)
    print()
    raise GatewayError(f"only {seen} of {expected} events were audited within {timeout_s:.0f}s")


def run_demo(schemas: Path, per_schema: int) -> int:
    plans = load_plans(schemas)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    keyring_path = workdir / "keyring.json"
    print("1. starting the embedded broker (Apache Kafka, KRaft) on 127.0.0.1 ... ", end="", flush=True)
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        print(broker.bootstrap)
        config = GatewayConfig(bootstrap=broker.bootstrap, schemas=schemas, keyring=keyring_path,
                               instance_id="demo-worker", partitions=3)
        print("2. creating topics ... ", end="", flush=True)
        counts = ensure_topics(plans, config)
        print(", ".join(sorted(counts)))
        print("3. starting the gateway worker (gateway run) ...")
        log_path = workdir / "worker.log"
        with open(log_path, "wb") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--bootstrap", broker.bootstrap, "--schemas",
                 str(schemas), "--keyring", str(keyring_path), "--instance-id", "demo-worker",
                 "--session-timeout-ms", "6000"],
                stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            print(f"4. publishing {per_schema} valid events per schema (Confluent, bare Avro and JSON) "
                  "and a corpus of broken ones ...")
            published = publish_samples(config.kafka_client_config(), plans, per_schema)
            expected = sum(published["sent"].values())
            audited = _wait_for_audit(config.kafka_client_config(), config.audit_topic, expected, worker)
            _report(config.kafka_client_config(), plans, published, audited, keyring_path)
        finally:
            worker.terminate()
            try:
                code = worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
            print(f"\n5. stopped the gateway (exit {code}) and the broker; worker log was {log_path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _report(kafka: Mapping[str, str], plans: list[Plan], published: dict[str, Any], audited: int,
            keyring_path: Path) -> None:
    decoder = SanitizedDecoder(plans)
    decryptor = FieldDecryptor(Keyring.open(keyring_path, create=False))
    sanitized_total = 0
    dead = Counter()
    decrypted_ok = 0
    for plan in plans:
        sanitized = read_topic(kafka, plan.sanitized_topic)
        sanitized_total += len(sanitized)
        by_key: dict[str, dict[str, Any]] = {}
        for stored in sanitized:
            _, record = decoder.decode(stored)
            by_key[str(record.get(plan.event_id_field or ""))] = record
            _, report = decrypt_record(record, plan, decryptor)
            decrypted_ok += report.ok
        for raw in published["examples"].get(plan.source_topic, [])[1:3]:
            match = by_key.get(str(raw.get(plan.event_id_field or "")))
            if match is not None:
                print(_side_by_side(f"{plan.source_topic} -> {plan.sanitized_topic}", raw, match))
        for stored in read_topic(kafka, plan.dlq_topic):
            dead[orjson.loads(stored.value or b"{}")["reason"]] += 1
    audit = read_topic(kafka, "privacy.audit")
    chain = verify_chains((r.partition, r.offset, r.value or b"") for r in audit)
    published_total = sum(published["sent"].values())
    print("\n== summary ==")
    print(f"  published      {published_total}")
    print(f"  sanitized      {sanitized_total}")
    print(f"  dead-lettered  {sum(dead.values())}  ({', '.join(f'{r}: {n}' for r, n in sorted(dead.items()))})")
    print(f"  audited        {audited}  (hash chains: {'verified' if chain.ok else 'BROKEN'}, {chain.chains} chains)")
    print(f"  decrypted      {decrypted_ok}/{sanitized_total} sanitized records opened by an authorized "
          "consumer holding the keyring")
    lost = published_total - sanitized_total - sum(dead.values())
    print(f"  lost           {lost}")
    if lost or audited != published_total or not chain.ok:
        raise GatewayError("the demo's invariants did not hold (see the summary above)")
