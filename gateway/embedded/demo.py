"""`make demo`: the embedded broker, the gateway's workers and sample events, end to end.

Starts everything it needs (the broker, `gateway run`, `gateway aggregate`), then tours what the
gateway is for, one numbered step each: raw vs sanitized events side by side; a purpose view gated
by consent, one subject revoking mid-run; a DP aggregate released at a short window's close and the
budget refusing once spent; `forget` of one subject and decryption failing with key_erased for it
only; `audit verify` and the HTML report. Then a summary (published, sanitized, dead-lettered,
lost), and it stops everything it started. The steps live in demo_steps.py, the tuned policy they
need in demo_policy.py; the gateway's and the libraries' log lines go to a file, not the terminal.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import orjson

from gateway.core.audit import ChainReport
from gateway.core.codec.encoding import Encoding, frame_confluent
from gateway.core.codec.raw import decoded_for_json
from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.codec.writer import avro_bytes, json_bytes
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.embedded.broker import EmbeddedBroker
from gateway.embedded.demo_policy import PAYMENTS, write_demo_schemas
from gateway.embedded.demo_steps import Tour, audit_step, consent_step, dp_step, forget_step
from gateway.embedded.samples import SampleEvents, broken_events, json_encodable, sample_maker
from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import FieldDecryptor, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.ops.logs import log_to_file
from gateway.runtime import clients
from gateway.runtime.keytopic import load_subject_keys
from gateway.runtime.reader import AuditedCounter, read_topic
from gateway.runtime.topics import ensure_topics
from gateway.settings import GatewayConfig

COLUMN = 58


def encode_raw(plan: Plan, record: dict[str, Any], encoding: str) -> bytes:
    if encoding == Encoding.JSON:
        return json_bytes(record)
    payload = avro_bytes(plan.schema.parsed, record)
    if encoding == Encoding.CONFLUENT:
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
    encodings = [Encoding.CONFLUENT, Encoding.AVRO, Encoding.JSON] if plan.schema_id is not None else [
        Encoding.AVRO, Encoding.JSON]
    if not json_encodable(plan.schema.raw):  # bytes or fixed fields: the gateway's JSON input has no bytes
        encodings.remove(Encoding.JSON)
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
                    seed: int = 7, time_ms: int | None = None) -> dict[str, Any]:
    """Publish valid events (mixed encodings) and a corpus of broken ones; return what was sent.

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config()).
    `time_ms`: the event time stamped on every valid event's timestamp fields (the demo's DP window)."""
    sources = sample_sources(plans, SampleEvents(seed))
    producer = clients.plain_producer(kafka, **{"linger.ms": 5, "message.max.bytes": 4_000_000})
    sent: Counter[str] = Counter()
    examples: dict[str, list[dict[str, Any]]] = {}
    for plan in plans:
        source = sources[plan.source_topic]
        make, encodings = source.make, source.encodings
        for i in range(per_schema):
            record = make(canary=(i == 0))
            if time_ms is not None:
                record.update({f: time_ms * unit for f, unit in source.time_fields.items()
                               if record.get(f) is not None})
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
    counter = AuditedCounter(kafka, topic, kind="event")  # the sanitize outcomes (other jobs audit there too)
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


def run_demo(schemas: Path, per_schema: int, out: Path | None = None) -> int:
    """The demo in a folder of its own (keyring, schemas, worker and broker logs): removed when the
    demo succeeds, kept (and named) when it fails, so its logs can be read. What it hands the user
    (the HTML report, its own log lines) goes to `out` (default: a new temporary folder), kept."""
    plans = load_plans(schemas)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    try:
        _run_demo(schemas, per_schema, plans, workdir, out)
    except BaseException:
        print(f"\nthe demo failed: its folder is kept for a look at {workdir} (worker.log, aggregate.log, "
              "broker.log, keyring.json); remove it when done", file=sys.stderr, flush=True)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


class _Workers:
    """The demo's two jobs, as their commands run them: `gateway run` and `gateway aggregate`, each a
    process with its log in the demo's folder."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self, name: str, args: list[str]) -> None:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            self.procs[name] = (subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=log_file,
                                                 stderr=subprocess.STDOUT,
                                                 env=dict(os.environ, PYTHONUNBUFFERED="1")), log_path)

    def alive(self) -> None:
        for name, (proc, log_path) in self.procs.items():
            if proc.poll() is not None:
                raise GatewayError(f"the {name} process exited with code {proc.returncode} (log: {log_path})")

    def wait_for_log(self, name: str, needles: tuple[bytes, ...], timeout_s: float = 120.0) -> None:
        """Until the process's JSON log holds every one of `needles` (it has its partitions)."""
        _, log_path = self.procs[name]
        deadline = time.monotonic() + timeout_s
        while not all(n in log_path.read_bytes() for n in needles):
            self.alive()
            if time.monotonic() > deadline:
                raise GatewayError(f"the {name} process did not join its group within {timeout_s:.0f}s "
                                   f"(log: {log_path})")
            time.sleep(0.2)

    def stop(self) -> dict[str, int]:
        codes = {}
        for _, (proc, _) in self.procs.items():
            proc.terminate()
        for name, (proc, _) in self.procs.items():
            try:
                codes[name] = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def _run_demo(schemas: Path, per_schema: int, plans: list[Plan], workdir: Path, out: Path | None) -> None:
    out = out if out is not None else Path(tempfile.mkdtemp(prefix="gateway-demo-out-"))
    out.mkdir(parents=True, exist_ok=True)
    log_to_file(out / "demo.log")  # the demo's own log lines: its output is the steps
    keyring_path = workdir / "keyring.json"
    # the schemas, the shipped payments policy tuned so each step shows in seconds (demo_policy.py)
    plans, payments = write_demo_schemas(schemas, workdir / "schemas")
    print("1. starting the embedded broker (Apache Kafka, KRaft) on 127.0.0.1 ... ", end="", flush=True)
    # the demo's folder holds the broker log: kept with the folder when the demo fails
    with EmbeddedBroker(log_path=workdir / "broker.log", keep_log=True) as broker:
        print(broker.bootstrap)
        config = GatewayConfig(bootstrap=broker.bootstrap, schemas=workdir / "schemas", keyring=keyring_path,
                               instance_id="demo-worker", partitions=3,
                               consent_input_topic=CONSENT_INPUT if payments is not None else "")
        print("2. creating topics ... ", end="", flush=True)
        counts = ensure_topics(plans, config)
        print(", ".join(sorted(counts)))
        keyring = Keyring.open(keyring_path, create=True)
        keyring.export_audit(workdir / "audit-keys.json")  # the aggregate worker holds the audit keys only
        workers = _Workers(workdir)
        common = ["--bootstrap", broker.bootstrap, "--schemas", str(config.schemas), "--session-timeout-ms", "6000"]
        consent = ["--consent-input-topic", CONSENT_INPUT] if payments is not None else []
        print("3. starting the gateway worker (gateway run)"
              + (" and the DP aggregate worker (gateway aggregate)" if payments is not None else "") + " ...",
              flush=True)
        workers.start("worker", ["run", *common, "--keyring", str(keyring_path), "--instance-id", "demo-worker",
                                 *consent, "--processes", "1"])  # one worker: its log is the demo's
        if payments is not None:
            workers.start("aggregate", ["aggregate", *common, "--keyring", str(workdir / "audit-keys.json"),
                                        "--instance-id", "demo-aggregate", "--dp-idle-close-s", str(DP_SETTLE_S)])
        tour: Tour | None = None
        try:
            workers.wait_for_log("worker", (b'"msg":"partitions assigned"',))
            if payments is not None:
                workers.wait_for_log("aggregate", (b'"stage":"bound"', b'"stage":"release"'))
            kafka = config.kafka_client_config()
            # the sample events' time: the next DP window starting a second from now, so the events
            # pass both DP stages before it closes
            window_ms = payments.aggregates[0].window_ms if payments is not None else 1
            data_window = (int(time.time() * 1000) + 1000 + window_ms - 1) // window_ms * window_ms
            print(f"4. publishing {per_schema} valid events per schema (Confluent, bare Avro and JSON) "
                  "and a corpus of broken ones ...", flush=True)
            published = publish_samples(kafka, plans, per_schema,
                                        time_ms=data_window + 1 if payments is not None else None)
            expected = sum(published["sent"].values())
            worker, worker_log = workers.procs["worker"]
            _wait_for_audit(kafka, config.audit_topic, expected, worker, worker_log)
            _show_samples(kafka, plans, published)
            # the keyring as the worker left it (it added the token domains): the demo holds it, as an
            # authorized consumer would
            tour = Tour(config, plans, Keyring.open(keyring_path, create=False), workers.alive, _publisher(kafka))
            if payments is not None:
                expected += consent_step(tour, 5, payments)
                dp_step(tour, 6, payments, data_window)
                forget_step(tour, 7, payments)
            else:
                print(f"5-7. consent, differential privacy and forget tour the shipped payments schema ({PAYMENTS}), "
                      f"which '{schemas}' lacks: skipped")
            chain, html = audit_step(tour, 8, out)
            _summary(tour, expected, chain)
        finally:
            if tour is not None:
                tour.close()
            codes = workers.stop()
    stopped = ", ".join(f"{'the gateway' if name == 'worker' else 'the aggregate worker'} (exit {code})"
                        for name, code in codes.items())
    print(f"\n9. stopped {stopped} and the broker")
    if broker.failure is not None:
        raise GatewayError(f"the broker did not stop cleanly ({broker.failure}; log: {broker.log_path})")
    for name, code in codes.items():
        if code != 0:
            raise GatewayError(f"the {name} process exited with code {code} when stopped "
                               f"(log: {workers.procs[name][1]})")
    print(f"   kept in {out}: {html.name} (open it in a browser) and demo.log (what the gateway and its libraries "
          "reported)")


CONSENT_INPUT = "consent.raw"  # where `gateway consent` and producers queue raw consent changes
DP_SETTLE_S = 2  # dp_idle_close_s: a window closes this long after its end + grace


def _publisher(kafka: Mapping[str, str]) -> Callable[[Plan, Sequence[dict[str, Any]]], None]:
    def publish(plan: Plan, records: Sequence[dict[str, Any]]) -> None:
        producer = clients.plain_producer(kafka, **{"linger.ms": 5})
        for record in records:
            producer.produce(plan.source_topic, encode_raw(plan, record, Encoding.AVRO))
        if producer.flush(30):
            raise GatewayError("some demo events were not delivered within 30 s")
    return publish


def _show_samples(kafka: Mapping[str, str], plans: list[Plan], published: dict[str, Any]) -> None:
    """One published event per schema beside what the gateway wrote of it."""
    decoder = SanitizedDecoder(plans)
    for plan in plans:
        if not plan.event_id_field:
            continue
        by_id = {}
        for stored in read_topic(kafka, plan.sanitized_topic):
            _, record = decoder.decode(stored)
            by_id[str(record.get(plan.event_id_field))] = record
        for raw in published["examples"].get(plan.source_topic, [])[1:2]:
            match = by_id.get(str(raw.get(plan.event_id_field)))
            if match is not None:
                print(_side_by_side(f"{plan.source_topic} -> {plan.sanitized_topic}", raw, match))


def _summary(tour: Tour, published_total: int, chain: ChainReport) -> None:
    """Every event published has exactly one outcome, audited (`chain`: the audit step's
    verification); every sanitized record opens for the keyring's holder but the forgotten
    subject's erased fields."""
    kafka = tour.config.kafka_client_config()
    audited = tour.wait(lambda es: n if (n := sum(e.get("type") == "event" for e in es)) >= published_total else None,
                        "every event to be audited")
    decoder = SanitizedDecoder(tour.plans)
    subject_keys = load_subject_keys(kafka, tour.config.key_topic, SubjectKeys(tour.keyring))
    decryptor = FieldDecryptor(tour.keyring, subject_keys=subject_keys)
    sanitized_total, decrypted_ok, erased = 0, 0, 0
    dead: Counter[str] = Counter()
    for plan in tour.plans:
        for stored in read_topic(kafka, plan.sanitized_topic):
            _, record = decoder.decode(stored)
            _, report = decrypt_record(record, plan, decryptor)
            sanitized_total += 1
            decrypted_ok += report.ok
            erased += any(v.startswith("key_erased") for v in report.fields.values())
        for stored in read_topic(kafka, plan.dlq_topic):
            dead[orjson.loads(stored.value or b"{}")["reason"]] += 1
    print("\n== summary ==")
    print(f"  published      {published_total}")
    print(f"  sanitized      {sanitized_total}")
    print(f"  dead-lettered  {sum(dead.values())}  ({', '.join(f'{r}: {n}' for r, n in sorted(dead.items()))})")
    print(f"  audited        {audited}  (hash chains: {'verified' if chain.ok else 'BROKEN'}, "
          f"{chain.records} records in {chain.chains} chains)")
    print(f"  decrypted      {decrypted_ok}/{sanitized_total} sanitized records opened by an authorized "
          "consumer holding the keyring" + (f" ({erased} of the forgotten subject: key_erased)" if erased else ""))
    lost = published_total - sanitized_total - sum(dead.values())
    print(f"  lost           {lost}")
    if lost or audited != published_total or not chain.ok or decrypted_ok + erased != sanitized_total:
        raise GatewayError("the demo's invariants did not hold (see the summary above)")
