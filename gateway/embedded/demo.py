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
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson

from gateway.core.audit import AuditKeys, verify_chains
from gateway.core.codec.raw import decoded_for_json, frame_confluent
from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.codec.writer import avro_bytes, json_bytes
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.embedded.broker import EmbeddedBroker
from gateway.embedded.samples import SampleEvents, broken_events, json_encodable, sample_maker
from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import FieldDecryptor, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.runtime import clients
from gateway.runtime.reader import AuditedCounter, read_topic
from gateway.runtime.topics import ensure_topics
from gateway.settings import GatewayConfig

COLUMN = 58


def encode_raw(plan: Plan, record: dict[str, Any], encoding: str) -> bytes:
    if encoding == "json":
        return json_bytes(record)
    payload = avro_bytes(plan.schema.parsed, record)
    if encoding == "confluent":
        assert plan.schema_id is not None
        return frame_confluent(plan.schema_id, payload)
    return payload


@dataclass(frozen=True)
class SampleSource:
    """How to make one schema's sample events: the generator, the input encodings it rotates
    through, its broken-event corpus (None: none for this schema) and its top-level timestamp
    fields (name -> units per millisecond) that produce_samples stamps with the current time."""

    make: Callable[..., dict[str, Any]]
    encodings: tuple[str, ...]
    broken: Callable[[dict[str, Any]], list[tuple[str, bytes]]] | None
    time_fields: Mapping[str, int]


_TIMESTAMP_UNITS = {"timestamp-millis": 1, "timestamp-micros": 1000, "local-timestamp-millis": 1,
                    "local-timestamp-micros": 1000}


def _time_fields(plan: Plan) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in plan.schema.raw.get("fields", []):
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for branch in branches:
            if isinstance(branch, dict) and branch.get("logicalType") in _TIMESTAMP_UNITS:
                out[f["name"]] = _TIMESTAMP_UNITS[branch["logicalType"]]
    return out


def _encodings(plan: Plan) -> tuple[str, ...]:
    if plan.input_mode != "auto":
        return (plan.input_mode,)
    encodings = ["confluent", "avro", "json"] if plan.schema_id is not None else ["avro", "json"]
    if not json_encodable(plan.schema.raw):  # bytes or fixed fields: the gateway's JSON input has no bytes
        encodings.remove("json")
    return tuple(encodings)


# Schemas sent without a broken corpus: the shipped clinical visits are the demo's control, whose
# dead-letter topic stays empty (the demo's summary and produce-samples count on it).
NO_BROKEN_CORPUS = frozenset({"example.clinical.ClinicalVisit"})


def sample_sources(plans: list[Plan], samples: SampleEvents) -> dict[str, SampleSource]:
    """A SampleSource per plan (by source topic): the one generator for its schema, with the broken
    corpus built for that schema (none for NO_BROKEN_CORPUS)."""
    sources: dict[str, SampleSource] = {}
    for plan in plans:
        broken: Callable[[dict[str, Any]], list[tuple[str, bytes]]] | None = None
        if plan.schema.fullname not in NO_BROKEN_CORPUS:
            def broken(valid: dict[str, Any], plan: Plan = plan) -> list[tuple[str, bytes]]:
                return broken_events(valid, plan.schema, plan.schema_id, plan.input_mode)
        sources[plan.source_topic] = SampleSource(sample_maker(plan.schema, samples), _encodings(plan), broken,
                                                  _time_fields(plan))
    return sources


def publish_samples(kafka: Mapping[str, str], plans: list[Plan], per_schema: int,
                    seed: int = 7) -> dict[str, Any]:
    """Publish valid events (mixed encodings) and a corpus of broken ones; return what was sent.

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config())."""
    sources = sample_sources(plans, SampleEvents(seed))
    producer = clients.plain_producer(kafka, **{"linger.ms": 5, "message.max.bytes": 4_000_000})
    sent: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for plan in plans:
        source = sources[plan.source_topic]
        make, encodings = source.make, source.encodings
        for i in range(per_schema):
            record = make(canary=(i == 0))
            producer.produce(plan.source_topic, encode_raw(plan, record, encodings[i % len(encodings)]),
                             key=str(i).encode())
            examples.setdefault(plan.source_topic, []).append(record) if i < 3 else None
            sent[plan.source_topic] += 1
        if source.broken is not None:
            for _reason, value in source.broken(make(canary=True)):
                producer.produce(plan.source_topic, value)
                sent[plan.source_topic] += 1
        producer.poll(0)
    producer.flush(30)
    return {"sent": sent, "examples": examples}


def produce_samples(kafka: Mapping[str, str], plans: list[Plan], count: int, rate: float, seed: int = 7,
                    broken_every: int = 1000, stop: Callable[[], bool] = lambda: False,
                    progress: Callable[[Counter[str]], None] | None = None) -> Counter[str]:
    """`count` valid events per schema at `rate` events/s per schema (0: as fast as possible), event
    time stamped now (so DP windows close as they would in production), plus one broken event
    every `broken_every` events of each schema with a broken corpus (every schema but
    NO_BROKEN_CORPUS), so the dead-letter path is exercised. Stops early when
    `stop()`."""
    sources = sample_sources(plans, SampleEvents(seed))
    producer = clients.plain_producer(kafka, **{"linger.ms": 5, "message.max.bytes": 4_000_000})
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
            source = sources[plan.source_topic]
            record = source.make()
            record.update({f: now_ms * unit for f, unit in source.time_fields.items() if record.get(f) is not None})
            producer.produce(plan.source_topic, encode_raw(plan, record, source.encodings[i % len(source.encodings)]))
            sent[plan.source_topic] += 1
            if source.broken is not None and i % broken_every == broken_every - 1:
                broken = source.broken(record)
                if broken:
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


class _Progress:
    """The wait's progress: a rich bar on a terminal; on a pipe, a line when the phase changes and at
    most one every 10 s while events are being audited (no carriage-return spam in logs)."""

    def __init__(self, expected: int, tty: bool) -> None:
        self.expected, self.tty = expected, tty
        self.phase = ""
        self.started = time.monotonic()
        self.first_at: float | None = None  # when the first audit record was seen
        self.next_line = 0.0
        self.bar = None
        if tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            # fits 80 columns: the phase, the bar, "6013/6013 audited  4,509 events/s"
            self.bar = Progress(TextColumn("  {task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                                TextColumn("audited  {task.fields[rate]}"), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=expected, rate="")

    def update(self, phase: str, audited: int) -> None:
        now = time.monotonic()
        if audited and self.first_at is None:
            self.first_at = now
        rate = self.rate(audited, now)
        if self.bar is not None:
            self.bar.update(self.task, description=phase, completed=min(audited, self.expected),
                            rate=f"{rate:,.0f} events/s" if rate else "")
        elif phase != self.phase or (audited and now >= self.next_line):
            print(f"  {phase}: {min(audited, self.expected)}/{self.expected} events audited"
                  + (f" ({rate:,.0f} events/s)" if rate else ""), flush=True)
            self.next_line = now + 10
        self.phase = phase

    def rate(self, audited: int, now: float) -> float:
        """Events audited per second since the first one (0 until there are two moments to compare)."""
        if self.first_at is None or now - self.first_at < 0.2:
            return 0.0
        return audited / (now - self.first_at)

    def close(self, audited: int | None = None) -> None:
        if self.bar is not None:
            self.bar.stop()
        if audited is not None:
            now = time.monotonic()
            took = now - (self.first_at or now)
            print(f"  {audited}/{self.expected} events audited {now - self.started:.1f} s after publishing"
                  + (f" ({audited / took:,.0f} events/s from the first audited event)" if took >= 0.2 else ""),
                  flush=True)


def _wait_for_audit(kafka: Mapping[str, str], topic: str, expected: int, worker: subprocess.Popen[bytes],
                    worker_log: Path, timeout_s: float = 180.0) -> int:
    """Wait until `expected` events are audited in committed records, counting them as they commit (partition
    ends from ListOffsets would count transaction markers as well as records), and show it."""
    deadline = time.monotonic() + timeout_s
    counter = AuditedCounter(kafka, topic)
    progress = _Progress(expected, sys.stdout.isatty())
    joined, log_offset, seen = False, 0, 0
    try:
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise GatewayError(f"the gateway worker exited with code {worker.returncode} (log: {worker_log})")
            if not joined:  # the worker's JSON log says when it has its partitions
                with open(worker_log, "rb") as log:
                    log.seek(max(0, log_offset - 64))  # a line split between two reads is still found
                    chunk = log.read()
                    log_offset = log.tell()
                joined = b'"msg":"partitions assigned"' in chunk
            seen = counter.poll(0.25)
            phase = "sanitizing" if joined or seen else "waiting for the worker to join"
            progress.update(phase, seen)
            if seen >= expected:
                progress.close(seen)
                return seen
    except BaseException:
        progress.close()
        raise
    finally:
        counter.close()
    progress.close()
    raise GatewayError(f"only {seen} of {expected} events were audited within {timeout_s:.0f}s (worker log: "
                       f"{worker_log})")


def run_demo(schemas: Path, per_schema: int) -> int:
    """The demo in a folder of its own (keyring, worker and broker logs): removed when the demo
    succeeds, kept (and named) when it fails, so its logs can be read."""
    plans = load_plans(schemas)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        _run_demo(schemas, per_schema, plans, workdir)
    except BaseException:
        print(f"\nthe demo failed: its folder is kept for a look at {workdir} (worker.log, broker.log, "
              "keyring.json); remove it when done", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _run_demo(schemas: Path, per_schema: int, plans: list[Plan], workdir: Path) -> None:
    keyring_path = workdir / "keyring.json"
    print("1. starting the embedded broker (Apache Kafka, KRaft) on 127.0.0.1 ... ", end="", flush=True)
    # the demo's folder holds the broker log: kept with the folder when the demo fails
    with EmbeddedBroker(log_path=workdir / "broker.log", keep_log=True) as broker:
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
                 "--session-timeout-ms", "6000", "--processes", "1"],  # one worker: its log is the demo's
                stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            print(f"4. publishing {per_schema} valid events per schema (Confluent, bare Avro and JSON) "
                  "and a corpus of broken ones ...")
            published = publish_samples(config.kafka_client_config(), plans, per_schema)
            expected = sum(published["sent"].values())
            audited = _wait_for_audit(config.kafka_client_config(), config.audit_topic, expected, worker, log_path)
            _report(config.kafka_client_config(), plans, published, audited, keyring_path)
        finally:
            worker.terminate()
            try:
                code = worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                code = worker.wait()
    print(f"\n5. stopped the gateway (exit {code}) and the broker")
    if broker.failure is not None:
        raise GatewayError(f"the broker did not stop cleanly ({broker.failure}; log: {broker.log_path})")
    if code != 0:
        raise GatewayError(f"the gateway worker exited with code {code} when stopped (log: {log_path})")


def _report(kafka: Mapping[str, str], plans: list[Plan], published: dict[str, Any], audited: int,
            keyring_path: Path) -> None:
    decoder = SanitizedDecoder(plans)
    keyring = Keyring.open(keyring_path, create=False)
    decryptor = FieldDecryptor(keyring)
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
        for raw in published["examples"].get(plan.source_topic, [])[1:3] if plan.event_id_field else []:
            match = by_key.get(str(raw.get(plan.event_id_field)))
            if match is not None:
                print(_side_by_side(f"{plan.source_topic} -> {plan.sanitized_topic}", raw, match))
        for stored in read_topic(kafka, plan.dlq_topic):
            dead[orjson.loads(stored.value or b"{}")["reason"]] += 1
    audit = read_topic(kafka, "privacy.audit")
    chain = verify_chains(((r.partition, r.offset, r.value or b"") for r in audit),
                          AuditKeys(*keyring.audit_keys(create=False)))  # hashes and MACs
    published_total = sum(published["sent"].values())
    print("\n== summary ==")
    print(f"  published      {published_total}")
    print(f"  sanitized      {sanitized_total}")
    print(f"  dead-lettered  {sum(dead.values())}  ({', '.join(f'{r}: {n}' for r, n in sorted(dead.items()))})")
    print(f"  audited        {audited}  (hash chains: {'verified' if chain.ok else 'BROKEN'}, "
          f"{chain.records} records in {chain.chains} chains)")
    print(f"  decrypted      {decrypted_ok}/{sanitized_total} sanitized records opened by an authorized "
          "consumer holding the keyring")
    lost = published_total - sanitized_total - sum(dead.values())
    print(f"  lost           {lost}")
    if lost or audited != published_total or not chain.ok:
        raise GatewayError("the demo's invariants did not hold (see the summary above)")
