"""`make bench`: the gateway beside its ceiling and its alternatives, in one run on one machine.

1. passthrough: the worker's own loop (batch consume, transactional produce) with no transform
2. sanitize: `gateway run`, end to end through the embedded broker
   floor through Kafka: the same loop around the primitive floor alone (what any implementation
   of the policy with these libraries pays), and one broker hop with no worker, for latency
3. transforms: the gateway's pipeline alone, in-process (decode, minimize, tokenize, encrypt,
   encode, dead letters, audit chain), plus the primitive floor it is measured against
4. naive per-record code, Confluent CSFLE and Presidio operators (benchmarks/peers.py)

Prints events/s, MB/s, CPU seconds per 1,000 events and p50/p99 latency (event timestamp to the
sanitized record reaching a read_committed reader) at half the saturated sanitize rate and below
it, with the CPU each process used meanwhile; writes benchmarks/results.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from gateway.config import GatewayConfig
from gateway.demo import encode_raw
from gateway.embedded.broker import EmbeddedBroker
from gateway.embedded.jars import KAFKA_VERSION
from gateway.keys.keyring import Keyring
from gateway.pipeline import BatchResult, OutRecord, Pipeline, RawEvent
from gateway.policy import Plan, load_plans
from gateway.runtime.topics import admin_client, create_topics, ensure_topics
from gateway.samples import SampleEvents

REPO = Path(__file__).resolve().parents[1]
SEED = 20261123


# ---- data ------------------------------------------------------------------------------------
def unique_schemas(root: Path, suffix: str) -> Path:
    """Copies of the example schemas whose topics carry `suffix`, so each stage reads its own data."""
    target = root / f"schemas-{suffix}"
    target.mkdir(parents=True)
    for source in sorted((REPO / "schemas").glob("*.avsc")):
        schema = orjson.loads(source.read_bytes())
        for key in ("source_topic", "sanitized_topic"):
            schema["privacy"][key] += f".{suffix}"
        (target / source.name).write_bytes(orjson.dumps(schema))
    return target


def make_events(plans: dict[str, Plan], count: int) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(schema short name, Avro bytes, record): half payments (Confluent framing), half visits."""
    samples = SampleEvents(seed=SEED)
    events = []
    for i in range(count):
        if i % 2 == 0:
            record = samples.payment()
            events.append(("Payment", encode_raw(plans["Payment"], record, "confluent"), record))
        else:
            record = samples.clinical_visit()
            events.append(("ClinicalVisit", encode_raw(plans["ClinicalVisit"], record, "avro"), record))
    return events


def by_short_name(plans: list[Plan]) -> dict[str, Plan]:
    return {p.name.rsplit(".", 1)[-1]: p for p in plans}


# ---- process measurements --------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU of `pid` and its live descendants (`gateway run --processes N`: the supervisor's workers)."""
    return sum(_own_cpu_seconds(p) for p in (pid, *descendants(pid)))


def _own_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # exited meanwhile
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children.get(child, [])
    return out


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- the Kafka stages ------------------------------------------------------------------------
def publish(producer: Producer, records: list[tuple[str, bytes]], rate: float = 0.0,
            ends: dict[tuple[str, int], int] | None = None) -> None:
    """(topic, value) records, as fast as the producer takes them or paced at `rate` per second.
    `ends`: kept at each (topic, partition)'s offset after its last delivered record."""
    def delivered(err: Any, msg: Any) -> None:
        if err is None and ends is not None:
            where = (msg.topic(), msg.partition())
            ends[where] = max(ends.get(where, 0), msg.offset() + 1)

    started = time.monotonic()
    for i, (topic, value) in enumerate(records):
        producer.produce(topic, value, on_delivery=delivered)
        if rate and i % 50 == 0:
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
            producer.poll(0)
    producer.flush(60)


class PassthroughPipeline:
    """Same interface as Pipeline: copies each event to the sanitized topic, untouched."""

    def __init__(self, plans: list[Plan]) -> None:
        self.out = {p.source_topic: p.sanitized_topic for p in plans}
        self.dek_cache = type("NoKms", (), {"kms_calls": 0, "hits": 0})()

    @property
    def source_topics(self) -> list[str]:
        return list(self.out)

    # no audit chain: nothing to resume, forget or commit with the offsets
    def resume_chain(self, topic: str, partition: int, head: str | None, fresh: bool) -> None:
        return None

    def forget_chain(self, topic: str, partition: int) -> None:
        return None

    def chain_head(self, topic: str, partition: int) -> str | None:
        return None

    def commit_metadata(self, topic: str, partition: int) -> str | None:
        return None

    def resume_quality(self, topic: str, partition: int, committed: object) -> None:  # no quality rules
        return None

    def forget_quality(self, sources: object) -> None:
        return None

    def process(self, events: list[RawEvent], _replay: object = None) -> BatchResult:
        records = [OutRecord(self.out[e.topic], e.key, e.value or b"", None, None, e.timestamp_ms) for e in events]
        return BatchResult(records, Counter({(events[0].topic, "passed"): len(events)}))


class FloorPipeline(PassthroughPipeline):
    """Passthrough plus the primitive floor of each event (benchmarks/microbench.py: decode, one
    HMAC per token, one AES-GCM per encrypted field, encode; no audit event, no dead letters): what
    any implementation of the same policy with these libraries pays per event in the same loop."""

    def __init__(self, plans: list[Plan]) -> None:
        from benchmarks.microbench import floor_clinical, floor_payments  # microbench imports this module

        super().__init__(plans)
        self.floors = {p.source_topic: (floor_payments if p.name.endswith(".Payment") else floor_clinical)(p)
                       for p in plans}

    def process(self, events: list[RawEvent], _replay: object = None) -> BatchResult:
        floors, out = self.floors, self.out
        records = [OutRecord(out[e.topic], e.key, floors[e.topic](e.value), None, None, e.timestamp_ms)
                   for e in events]
        return BatchResult(records, Counter({(events[0].topic, "passed"): len(events)}))


def loop_main(argv: list[str]) -> int:
    """Entry for the passthrough and floor worker processes: the gateway's worker loop around them."""
    from gateway.logs import setup_logging
    from gateway.runtime.jobs.sanitize import Worker

    kind, bootstrap, schemas, group = argv
    setup_logging("INFO")
    plans = load_plans(Path(schemas))
    config = GatewayConfig(bootstrap=bootstrap, schemas=Path(schemas), keyring=Path(schemas) / "k.json",
                           group_id=group, instance_id=group, session_timeout_ms=6000, partitions=3,
                           audit_topic=f"audit.{group}")
    pipeline = {"passthrough": PassthroughPipeline, "floor": FloorPipeline}[kind]
    return Worker(config, plans, Keyring.open(config.keyring), lambda _n: pipeline(plans)).run()


class LatencyProbe:
    """End-to-end latency as a downstream reader sees it: from the event's timestamp (stamped by
    the producer that published it, carried over to the sanitized record) to the moment a
    read_committed consumer receives the sanitized record, i.e. after the gateway's commit."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                                  "isolation.level": "read_committed", "enable.auto.commit": False,
                                  "fetch.wait.max.ms": 10})
        assignment = []
        for topic in topics:
            for partition in self.consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
                assignment.append(TopicPartition(topic, partition, high))  # only what comes next
        self.consumer.assign(assignment)
        # the high watermark can lag the last commit: earlier records are told apart by timestamp
        self.since_ms = int(time.time() * 1000)
        self.received: list[tuple[int, float]] = []  # (record timestamp, latency ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self.consumer.consume(1000, 0.05):
                if msg.error() is None:
                    stamp = msg.timestamp()[1]
                    self.received.append((stamp, time.time() * 1000 - stamp))

    def count_from_now(self) -> None:
        """Count only records stamped from now on: the reader was started and warmed up before."""
        self.since_ms = int(time.time() * 1000)

    def latencies(self) -> list[float]:
        since = self.since_ms
        return [latency for stamp, latency in self.received if stamp >= since]

    def wait(self, expected: int, timeout_s: float = 60) -> list[float]:
        deadline = time.monotonic() + timeout_s
        while len(self.latencies()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        self._thread.join()
        self.consumer.close()
        latencies = self.latencies()
        if len(latencies) < expected:
            raise RuntimeError(f"only {len(latencies)} of {expected} records reached the reader")
        return latencies


class KafkaStage:
    """Runs one worker process over a preloaded backlog, then at a paced rate for latency."""

    def __init__(self, kind: str, bootstrap: str, workdir: Path, processes: int = 1) -> None:
        self.kind = kind
        self.processes = processes
        self.bootstrap = bootstrap
        self.suffix = f"{kind}-{uuid.uuid4().hex[:6]}"
        self.schemas = unique_schemas(workdir, self.suffix)
        self.plans = by_short_name(load_plans(self.schemas))
        self.group = f"bench-{self.suffix}"
        self.log_path = workdir / f"{self.suffix}.log"
        config = GatewayConfig(bootstrap=bootstrap, schemas=self.schemas, partitions=3,
                               audit_topic=f"privacy.audit.{self.suffix}", keyring=workdir / "keyring.json")
        ensure_topics(list(self.plans.values()), config)
        self.audit_topic = config.audit_topic
        self.keyring = config.keyring
        self.proc: subprocess.Popen[bytes] | None = None
        # one producer for the stage's life: a new idempotent producer's first ~0.5 s of records
        # wait for its producer id, which a paced run would otherwise count as gateway latency
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
        self.ends: dict[tuple[str, int], int] = {}  # (source topic, partition) -> offset after the last published

    def publish(self, events: list[tuple[str, bytes, dict[str, Any]]], rate: float = 0.0) -> None:
        publish(self.producer, [(self.plans[name].source_topic, value) for name, value, _ in events], rate,
                self.ends)

    def start(self) -> None:
        if self.kind == "sanitize":
            cmd = [sys.executable, "-m", "gateway", "run", "--bootstrap", self.bootstrap, "--schemas",
                   str(self.schemas), "--keyring", str(self.keyring), "--group-id", self.group,
                   "--instance-id", self.group, "--audit-topic", self.audit_topic, "--session-timeout-ms", "6000",
                   "--processes", str(self.processes)]
        else:
            cmd = [sys.executable, str(Path(__file__)), "_loop", self.kind, self.bootstrap, str(self.schemas),
                   self.group]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        deadline = time.monotonic() + 90
        while self.log_path.read_bytes().count(b'"msg":"partitions assigned"') < self.processes:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.kind} worker did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def _lag(self, consumer: Consumer) -> int:
        """Events published and not yet committed by the worker: the end of each partition is taken
        from the publisher's delivery reports (exact, and no extra request)."""
        parts = [TopicPartition(topic, partition) for topic, partition in self.ends]
        return sum(max(0, self.ends[(tp.topic, tp.partition)] - max(tp.offset, 0))
                   for tp in consumer.committed(parts, timeout=10))

    def drain(self, timeout_s: float = 600) -> float:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        deadline = time.monotonic() + timeout_s
        try:
            while self._lag(consumer) > 0:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} worker exited ({self.proc.returncode}): "
                                       f"{self.log_path.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} did not drain its backlog")
                time.sleep(0.02)
            return time.monotonic()
        finally:
            consumer.close()

    def latency_probe(self) -> LatencyProbe:
        topics = [p.sanitized_topic for p in self.plans.values()]
        return LatencyProbe(self.bootstrap, topics)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.log.close()


def measure_latency(stage: KafkaStage | BrokerHop, events: list[tuple[str, bytes, dict[str, Any]]],
                    rates: list[float], pids: dict[str, int]) -> list[dict[str, Any]]:
    """p50/p99 at each paced rate, and the CPU each process used meanwhile (in cores): on a shared
    machine the publisher, the reader and the broker take their part of the cores at every rate."""
    out = []
    for rate in rates:
        probe = stage.latency_probe()
        # a second at the rate first: the worker, the broker and the reader in steady state
        stage.publish(events[-int(rate):], rate=rate)
        probe.count_from_now()
        count = int(min(rate * 8, 20_000))
        before, t0 = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
        stage.publish(events[:count], rate=rate)
        lat = probe.wait(count)
        wall = time.monotonic() - t0
        out.append({"rate": round(rate), "p50_ms": round(statistics.median(lat), 1),
                    "p99_ms": round(statistics.quantiles(lat, n=100)[98], 1),
                    "cpu_cores": {name: round((cpu_seconds(pid) - before[name]) / wall, 2)
                                  for name, pid in pids.items()}})
    return out


def measure_kafka(stage: KafkaStage, events: list[tuple[str, bytes, dict[str, Any]]], latency_rates: list[float],
                  broker_pid: int, profile: bool = False) -> dict[str, Any]:
    stage.publish(events)
    stage.start()
    assert stage.proc is not None
    t0, cpu0 = time.monotonic(), cpu_seconds(stage.proc.pid)
    t1 = stage.drain()
    cpu1 = cpu_seconds(stage.proc.pid)
    result: dict[str, Any] = {"events": len(events), "seconds": t1 - t0, "cpu_s": cpu1 - cpu0,
                              "bytes_in": sum(len(v) for _, v, _ in events)}
    if latency_rates:
        pids = {"worker": stage.proc.pid, "broker": broker_pid, "publisher and reader": os.getpid()}
        result["latency"] = measure_latency(stage, events, latency_rates, pids)
        last = result["latency"][-1]  # the highest rate: half the saturated sanitize rate
        result.update(latency_rate=last["rate"], p50_ms=last["p50_ms"], p99_ms=last["p99_ms"])
    if profile:
        print("  profiling the saturated worker (py-spy) ...", flush=True)
        result["profile"] = profile_worker(stage, events, seconds=result["seconds"] * 0.8)
    result["rss_mb"] = peak_rss_mb(stage.proc.pid)
    stage.stop()
    return result


class BrokerHop:
    """One hop through the broker and nothing else: the same warm publisher settings straight into
    a topic, read by the same read_committed reader. The gateway's path is two such hops (publisher
    to source topic, worker to sanitized topic) plus the worker's batch."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = f"hop-{uuid.uuid4().hex[:6]}"
        create_topics(admin_client({"bootstrap.servers": bootstrap}), {self.topic: 3})
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})

    def publish(self, events: list[tuple[str, bytes, dict[str, Any]]], rate: float = 0.0) -> None:
        publish(self.producer, [(self.topic, value) for _, value, _ in events], rate)

    def latency_probe(self) -> LatencyProbe:
        return LatencyProbe(self.bootstrap, [self.topic])


# the worker's own frames that make up a batch, for the profile's inclusive shares
STAGES = {"decode": "decode (gateway/schema.py", "sanitize": "sanitize (gateway/transforms.py",
          "encode": "encode (gateway/pipeline.py", "audit event": "_audit_record (gateway/pipeline.py",
          "produce": "_produce (gateway/worker.py", "wait for the last commit": "_settle (gateway/worker.py"}


def profile_worker(stage: KafkaStage, events: list[tuple[str, bytes, dict[str, Any]]],
                   seconds: float) -> dict[str, Any]:
    """py-spy samples the saturated worker while it drains another backlog: where a batch's time goes."""
    assert stage.proc is not None
    beside = Path(sys.executable).with_name("py-spy")
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        print("  profile skipped: py-spy is not installed (pip install -e '.[bench]')")
        return {}
    out = stage.log_path.with_suffix(".pyspy.txt")
    stage.publish(events)
    spy = subprocess.Popen([py_spy, "record", "--pid", str(stage.proc.pid), "--duration",
                            str(max(1, round(seconds))), "--rate", "250", "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stage.drain()
    spy.wait(60)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if "Worker.run (gateway/runtime/jobs/sanitize.py" not in stack:  # the committer, librdkafka and probe threads
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for name, frame in STAGES.items():
            if frame in stack:
                inclusive[name] += int(count)
    share = {name: round(inclusive[name] / total, 3) for name in STAGES} if total else {}
    top = [(frame, round(n / total, 3)) for frame, n in own.most_common(12)] if total else []
    return {"samples": total, "stage_share": share, "top_self": top, "raw": str(out)}


# ---- in-process ------------------------------------------------------------------------------
def measure_transforms(events: list[tuple[str, bytes, dict[str, Any]]], workdir: Path) -> dict[str, Any]:
    plans = load_plans(REPO / "schemas")
    topics = by_short_name(plans)
    config = GatewayConfig(keyring=workdir / "transforms-keyring.json", instance_id="bench")
    pipeline = Pipeline(plans, Keyring.open(config.keyring), config, 6)
    raw = [RawEvent(topics[name].source_topic, i % 3, i, 0, None, value, None)
           for i, (name, value, _r) in enumerate(events)]
    pipeline.process(raw[:2000])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(raw), 1000):
        result = pipeline.process(raw[start:start + 1000])
        assert all(r.topic.endswith((".sanitized", "audit")) for r in result.records)
    return {"events": len(raw), "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "bytes_in": sum(len(v) for _, v, _ in events)}


def measure_transforms_vs_floor(events: list[tuple[str, bytes, dict[str, Any]]], workdir: Path,
                                reps: int = 3, chunk: int = 200) -> dict[str, Any]:
    """TopicStage.transform alone on the payments (the issue's "transforms alone") against the
    primitive floor for the same payments (benchmarks/microbench.py: fastavro decode, one HMAC per
    tokenized field, one AES-GCM per non-null encrypted field, fastavro encode), timed in pairs over
    the same chunks so that the host's changing speed hits both sides of a ratio."""
    from benchmarks.microbench import floor_payments, paired, transform_fn  # microbench imports this module

    plans = by_short_name(load_plans(REPO / "schemas"))
    config = GatewayConfig(keyring=workdir / "floor-keyring.json", instance_id="bench")
    pipeline = Pipeline(list(plans.values()), Keyring.open(config.keyring), config, 6)
    transform = transform_fn(pipeline.stages[plans["Payment"].source_topic], pipeline.max_output_bytes)
    floor = floor_payments(plans["Payment"])
    payloads = [v for name, v, _ in events if name == "Payment"]
    for value in payloads[:2000]:  # warm-up
        transform(value)
        floor(value)
    seconds, ratios = paired({"payments": (floor, transform, payloads)}, reps, chunk)
    quartiles = statistics.quantiles(ratios["payments"], n=4)
    per_event = {side: statistics.median(seconds[f"{side} payments"]) for side in ("transforms", "floor")}
    n = len(payloads)
    return {"transforms": {"events": n, "seconds": per_event["transforms"] * n, "cpu_s": per_event["transforms"] * n},
            "floor": {"events": n, "seconds": per_event["floor"] * n},
            "ratio": round(statistics.median(ratios["payments"]), 2),
            "ratio_quartiles": [round(quartiles[0], 2), round(quartiles[2], 2)], "pairs": len(ratios["payments"])}


# ---- report ----------------------------------------------------------------------------------
def summarize(name: str, r: dict[str, Any]) -> dict[str, Any]:
    eps = r["events"] / r["seconds"]
    row = {"eps": round(eps), "us_per_event": round(1e6 / eps, 1)}
    if "bytes_in" in r:
        row["mb_s"] = round(r["bytes_in"] / r["seconds"] / 1e6, 2)
    if "cpu_s" in r:
        row["cpu_s_per_1000"] = round(r["cpu_s"] / r["events"] * 1000, 4)
    for key in ("p50_ms", "p99_ms", "rss_mb", "latency_rate"):
        if key in r:
            row[key] = round(r[key], 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--peer-events", type=int, default=4_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile of the saturated sanitize worker")
    parser.add_argument("--only-text", action="store_true",
                        help="run only the in-process rows (quality rules, redaction, scan, DP stages, continual "
                             "release), "
                             "updating those keys of --out")
    args = parser.parse_args(argv)
    if args.only_text:
        results = orjson.loads(args.out.read_bytes()) if args.out.exists() else {}
        results.update(measure_text())
        args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"\nwrote the quality, redaction, scan, DP-stage and continual-release rows into {args.out}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    rows: dict[str, dict[str, Any]] = {}
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        print(f"embedded broker {broker.bootstrap}; {args.events} events per stage (half payments, half visits)")
        sanitize = KafkaStage("sanitize", broker.bootstrap, workdir)
        events = make_events(sanitize.plans, args.events)
        print("  sanitize (gateway run, end to end) ...", flush=True)
        assert broker.process is not None
        broker_pid = broker.process.pid
        sanitize_raw = measure_kafka(sanitize, events, [], broker_pid)
        half_rate = args.events / sanitize_raw["seconds"] / 2
        # the rate (half the saturated sanitize rate) and, below it, fixed rates to compare runs by
        rates = [r for r in (1000.0, 2500.0) if r < half_rate * 0.9] + [half_rate]
        print(f"  sanitize latency at {', '.join(f'{r:,.0f}' for r in rates)} events/s ...", flush=True)
        sanitize_lat = measure_kafka(KafkaStage("sanitize", broker.bootstrap, workdir), events, rates, broker_pid,
                                     profile=args.profile)
        rows["sanitize"] = summarize("sanitize", sanitize_raw) | {
            k: summarize("sanitize", sanitize_lat)[k] for k in ("p50_ms", "p99_ms", "latency_rate")}
        rows["sanitize"]["rss_mb"] = round(max(sanitize_raw["rss_mb"], sanitize_lat["rss_mb"]), 1)
        print("  sanitize with --processes 2 (one supervisor, two workers in the group) ...", flush=True)
        rows["sanitize_2_processes"] = summarize("sanitize", measure_kafka(
            KafkaStage("sanitize", broker.bootstrap, workdir, processes=2), events, [], broker_pid))
        profile = sanitize_lat.get("profile")
        latency = {"sanitize": sanitize_lat["latency"]}
        print("  one broker hop (publisher to reader, no worker) ...", flush=True)
        latency["broker_hop"] = measure_latency(BrokerHop(broker.bootstrap), events, rates,
                                                {"broker": broker_pid, "publisher and reader": os.getpid()})
        print("  passthrough (same loop, no transform) ...", flush=True)
        passthrough = measure_kafka(KafkaStage("passthrough", broker.bootstrap, workdir), events, rates, broker_pid)
        rows["passthrough"] = summarize("passthrough", passthrough)
        latency["passthrough"] = passthrough["latency"]
        print("  primitive floor through the same loop (no audit) ...", flush=True)
        rows["floor_through_kafka"] = summarize("floor", measure_kafka(
            KafkaStage("floor", broker.bootstrap, workdir), events, [], broker_pid))
    print("  transforms in-process ...", flush=True)
    rows["transforms"] = summarize("transforms", measure_transforms(events, workdir))
    versus_floor = measure_transforms_vs_floor(events, workdir)
    rows["transforms_payments"] = summarize("transforms", versus_floor["transforms"])
    rows["primitive_floor_payments"] = summarize("floor", versus_floor["floor"])
    peer_events = events[: args.peer_events]
    try:
        from benchmarks import peers
    except ImportError as exc:  # the bench extra is not installed
        print(f"  peers skipped: {exc} (pip install -e '.[bench]')")
    else:
        stems = {"Payment": "payments", "ClinicalVisit": "clinical_visits"}
        records: dict[str, list[dict[str, Any]]] = {}
        for name, _value, record in peer_events:
            records.setdefault(stems[name], []).append(record)
        print("  naive per-record (KMS data key per record) ...", flush=True)
        with peers.local_kms() as (endpoint, key_id):
            rows["naive"] = summarize("naive", peers.naive_per_record(records, endpoint, key_id))
        print("  Confluent CSFLE serializer ...", flush=True)
        rows["confluent_csfle"] = summarize("csfle", peers.confluent_csfle(records))
        print("  Presidio anonymizer operators ...", flush=True)
        rows["presidio"] = summarize("presidio", peers.presidio(records))
    report(rows, args.out, profile, latency, versus_floor, measure_text())
    return 0


def measure_text() -> dict[str, Any]:
    """The in-process rows: redaction beside Presidio's analyzer and anonymizer on the labelled corpus,
    `gateway scan`'s throughput, the DP stages' per-event cost beside the sanitize stage's, and the
    continual-release accuracy against per-window summing (benchmarks/redaction.py, scan.py,
    dp_stages.py and continual.py print the details)."""
    from benchmarks import continual, dp_stages, quality, scan

    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out: dict[str, Any] = {}
    print("  quality rules beside the sanitize path ...", flush=True)
    out["quality_rules"] = quality.run(events=10_000, reps=5) | {"when": when}
    print("  DP stages beside the sanitize stage ...", flush=True)
    out["dp_stages"] = dp_stages.run(events=20_000, reps=5) | {"when": when}
    print("  continual release vs per-window summing (T = 24, 168) ...", flush=True)
    out["continual_release"] = continual.run() | {"when": when}
    print("  gateway scan throughput ...", flush=True)
    out["scan"] = scan.run(events=5000, reps=5, broker=False) | {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime())}
    try:
        from benchmarks import redaction
    except ImportError as exc:  # presidio-analyzer comes with the bench extra
        print(f"  redaction vs Presidio skipped: {exc} (pip install -e '.[bench]')")
        return out
    print("  redaction beside Presidio's recognizers and anonymizer ...", flush=True)
    figures = redaction.run(texts=800, reps=5)
    redaction.print_table(figures)
    out["redaction"] = figures | {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return out


def report(rows: dict[str, dict[str, Any]], out: Path, profile: dict[str, Any] | None,
           latency: dict[str, list[dict[str, Any]]], versus_floor: dict[str, Any], text: dict[str, Any]) -> None:
    base = rows["passthrough"]["eps"]
    print(f"\n{'path':<26}{'events/s':>10}{'us/event':>10}{'MB/s':>8}{'CPU s/1k':>10}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'vs passthrough':>16}")
    for name, row in rows.items():
        print(f"{name:<26}{row['eps']:>10}{row['us_per_event']:>10}{row.get('mb_s', ''):>8}"
              f"{row.get('cpu_s_per_1000', ''):>10}{row.get('p50_ms', ''):>8}{row.get('p99_ms', ''):>8}"
              f"{row['eps'] / base:>15.2f}x")
    results: dict[str, Any] = {
        "passthrough_eps": rows["passthrough"]["eps"],
        "sanitize_eps": rows["sanitize"]["eps"],
        "transforms_eps": rows["transforms"]["eps"],
        "naive_eps": rows.get("naive", {}).get("eps"),
        "confluent_csfle_eps": rows.get("confluent_csfle", {}).get("eps"),
        "presidio_eps": rows.get("presidio", {}).get("eps"),
        "p99_ms": rows["sanitize"]["p99_ms"],
        "rss_mb": rows["sanitize"]["rss_mb"],
        "sanitize_vs_passthrough": round(rows["sanitize"]["eps"] / base, 3),
        # the same worker loop around the primitive floor alone: the most any implementation of the
        # policy with these libraries can keep of passthrough on this machine
        "floor_through_kafka_vs_passthrough": round(rows["floor_through_kafka"]["eps"] / base, 3),
        "transforms_payments_eps": rows["transforms_payments"]["eps"],
        # like for like: TopicStage.transform on payments against the payments floor, median of paired chunks
        "transforms_vs_floor": versus_floor["ratio"],
        "transforms_vs_floor_quartiles": versus_floor["ratio_quartiles"],
        # by rate, for the broker hop (the lower bound: the sanitized path is two hops plus the
        # worker), passthrough and sanitize, with the CPU (cores) each process used meanwhile
        "latency": latency,
        "rows": rows,
        "sanitize_profile": profile,
        "broker": f"Apache Kafka {KAFKA_VERSION} (KRaft, single node, embedded: gateway.embedded.broker)",
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **text,
    }
    print(f"\ntransforms vs primitive floor, payments: {versus_floor['ratio']:.2f}x (median of "
          f"{versus_floor['pairs']} paired chunks, quartiles {versus_floor['ratio_quartiles'][0]:.2f}-"
          f"{versus_floor['ratio_quartiles'][1]:.2f})")
    print("\nlatency, event timestamp to a read_committed reader, and the CPU (cores) each process used meanwhile:")
    print(f"  {'events/s':>8}  {'path':<12}{'p50 ms':>8}{'p99 ms':>8}{'worker':>8}{'broker':>8}"
          f"{'publisher+reader':>18}")
    for i, point in enumerate(latency["sanitize"]):
        for path in ("broker_hop", "passthrough", "sanitize"):
            p, cpu = latency[path][i], latency[path][i]["cpu_cores"]
            print(f"  {point['rate']:>8,}  {path:<12}{p['p50_ms']:>8.0f}{p['p99_ms']:>8.0f}{cpu.get('worker', ''):>8}"
                  f"{cpu['broker']:>8}{cpu['publisher and reader']:>18}")
    if profile:
        print(f"\nsanitize worker at saturation, py-spy ({profile['samples']} samples of the main thread):")
        print("  share of time in: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["stage_share"].items()))
        for frame, share in profile["top_self"]:
            print(f"  {share:>6.1%}  {frame}")
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loop":
        raise SystemExit(loop_main(sys.argv[2:]))
    raise SystemExit(main())
