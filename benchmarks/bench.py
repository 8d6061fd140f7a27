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
it, with the CPU each process used meanwhile: five rounds per point, interleaved, median and
min-max, the slowest 1% of events decomposed stage by stage (the workers' latency traces), and the
DP release latency (benchmarks/dp_release.py); writes benchmarks/results.json.
`--only latency` runs the latency section alone.
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
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Message, Producer, TopicPartition

if not __package__:  # run as a script (python benchmarks/bench.py): its sibling modules come as `benchmarks.*`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.events import REPO, by_short_name, make_events
from benchmarks.tail_reader import TailReader
from gateway.app import tokenizers
from gateway.core.pipeline import BatchResult, OutRecord, Pipeline, RawEvent
from gateway.core.pipeline.outcome import SANITIZED, BatchCounts
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.embedded.broker import EmbeddedBroker
from gateway.embedded.jars import KAFKA_VERSION
from gateway.keys.keyring import Keyring
from gateway.runtime.clients import produce_when_room
from gateway.runtime.topics import admin_client, create_topics, ensure_topics
from gateway.settings import GatewayConfig

SEPARATE_KEYS = ("output_compression", "versus_base")  # results.json keys other scripts write


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


# ---- process measurements --------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU of `pid` and its live descendants (`gateway run --processes N`: the supervisor's workers);
    the bench's own process alone, whose child is the broker, measured apart."""
    if pid == os.getpid():
        return process_cpu_seconds(pid)
    return sum(process_cpu_seconds(p) for p in (pid, *descendants(pid)))


def process_cpu_seconds(pid: int) -> float:
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
    # paced in steps of 5 records (2 ms at 2,500/s): steps of 50 sent 50-record bursts, and a burst
    # waits for its own last record to be processed
    for i, (topic, value) in enumerate(records):
        produce_when_room(producer, topic, value, on_delivery=delivered)
        if rate and i % 5 == 0:
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

    def finish_batch(self) -> list[OutRecord]:  # no audit records, no subject keys
        return []

    def discard_batch(self) -> None:
        return None

    def process(self, events: list[RawEvent], _replay: object = None, finish: bool = True) -> BatchResult:
        records = [OutRecord(self.out[e.topic], e.key, e.value or b"", None, None, e.timestamp_ms) for e in events]
        return BatchResult(records, BatchCounts(Counter({(events[0].topic, SANITIZED): len(events)})))


class FloorPipeline(PassthroughPipeline):
    """Passthrough plus the primitive floor of each event (benchmarks/microbench.py: decode, one
    HMAC per token, one AES-GCM per encrypted field, encode; no audit event, no dead letters): what
    any implementation of the same policy with these libraries pays per event in the same loop."""

    def __init__(self, plans: list[Plan]) -> None:
        from benchmarks.microbench import floor_clinical, floor_payments

        super().__init__(plans)
        self.floors = {p.source_topic: (floor_payments if p.name.endswith(".Payment") else floor_clinical)(p)
                       for p in plans}

    def process(self, events: list[RawEvent], _replay: object = None, finish: bool = True) -> BatchResult:
        floors, out = self.floors, self.out
        records = [OutRecord(out[e.topic], e.key, floors[e.topic](e.value), None, None, e.timestamp_ms)
                   for e in events]
        return BatchResult(records, BatchCounts(Counter({(events[0].topic, SANITIZED): len(events)})))


def loop_main(argv: list[str]) -> int:
    """Entry for the passthrough and floor worker processes: the gateway's worker loop around them."""
    from gateway.ops.logs import setup_logging
    from gateway.runtime.jobs.sanitize import Worker

    kind, bootstrap, schemas, group = argv
    setup_logging("INFO")
    plans = load_plans(Path(schemas))
    config = GatewayConfig(bootstrap=bootstrap, schemas=Path(schemas), keyring=Path(schemas) / "k.json",
                           group_id=group, instance_id=group, session_timeout_ms=6000, partitions=3,
                           audit_topic=f"audit.{group}", latency_trace=os.environ.get("GATEWAY_LATENCY_TRACE", ""))
    pipeline = {"passthrough": PassthroughPipeline, "floor": FloorPipeline}[kind]
    # the factory's pipeline tokenizes nothing: no tokenizers to give
    return Worker(config, plans, Keyring.open(config.keyring), lambda _n: pipeline(plans), tokenizers={}).run()


class LatencyProbe(TailReader):
    """End-to-end latency as a downstream reader sees it: from the event's timestamp (stamped by
    the producer that published it, carried over to the sanitized record) to the moment a
    read_committed consumer receives the sanitized record, i.e. after the gateway's commit."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(bootstrap, topics, "lat")
        # the high watermark can lag the last commit: earlier records are told apart by timestamp
        self.since_ms = int(time.time() * 1000)
        self.received: list[tuple[int, float]] = []  # (record timestamp, latency ms)
        self.topics: list[str] = []  # the topic of each received record (the latency trace's join)
        self.start()

    def received_batch(self, now_ms: float, messages: list[Message]) -> None:
        for msg in messages:
            stamp = msg.timestamp()[1]
            self.received.append((stamp, now_ms - stamp))
            self.topics.append(msg.topic())

    def count_from_now(self) -> None:
        """Count only records stamped from now on: the reader was started and warmed up before."""
        self.since_ms = int(time.time() * 1000)

    def latencies(self) -> list[float]:
        since = self.since_ms
        return [latency for stamp, latency in self.received if stamp >= since]

    def counted(self) -> list[tuple[str, int, float]]:
        """(topic, record timestamp, latency ms) of the records counted."""
        since = self.since_ms
        return [(topic, stamp, latency) for topic, (stamp, latency) in zip(self.topics, self.received, strict=False)
                if stamp >= since]

    def wait(self, expected: int, timeout_s: float = 60) -> list[float]:
        deadline = time.monotonic() + timeout_s
        while len(self.latencies()) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop()
        latencies = self.latencies()
        if len(latencies) < expected:
            raise RuntimeError(f"only {len(latencies)} of {expected} records reached the reader")
        return latencies


def warm_broker(bootstrap: str, broker_pid: int, max_s: float = 120.0) -> list[float]:
    """Transactions through the broker until the CPU each costs it settles, before anything is measured.

    A fresh JVM interprets and JIT-compiles its transaction, produce and fetch paths for minutes: on
    the reference machine a commit over nine partitions cost the broker 38 ms of CPU in its first
    300 transactions and 3-4 ms after 3,000, while the compiler took most of a core. Measured cold,
    the first stage (sanitize) paid for that warm-up in throughput and latency. Returns the broker's
    CPU milliseconds per transaction, per round of 300."""
    topic = f"warm-{uuid.uuid4().hex[:6]}"
    create_topics(admin_client({"bootstrap.servers": bootstrap}), {topic: 9})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic, "linger.ms": 5})
    producer.init_transactions(30)
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": topic, "isolation.level": "read_committed",
                       "fetch.wait.max.ms": 100, "enable.auto.commit": False})
    reader.subscribe([topic])
    rounds: list[float] = []
    deadline = time.monotonic() + max_s
    try:
        while time.monotonic() < deadline:
            before = process_cpu_seconds(broker_pid)
            for _ in range(300):
                producer.begin_transaction()
                for partition in range(9):
                    producer.produce(topic, b"w" * 200, partition=partition)
                producer.commit_transaction(30)
                reader.consume(100, 0)
            rounds.append(round((process_cpu_seconds(broker_pid) - before) / 300 * 1000, 1))
            if len(rounds) >= 4 and max(rounds[-3:]) <= 1.2 * min(rounds[-3:]):
                break
    finally:
        reader.close()
        producer.close()
    return rounds


class KafkaStage:
    """Runs one worker process over a preloaded backlog, then at a paced rate for latency."""

    def __init__(self, kind: str, bootstrap: str, workdir: Path, processes: int = 1,
                 extra: tuple[str, ...] = (), checkout: Path = REPO, trace: bool = False) -> None:
        self.kind = kind
        self.processes = processes
        self.extra = extra  # more `gateway run` options (sanitize only)
        self.checkout = checkout  # whose gateway package the worker runs (benchmarks/versus_base.py)
        self.bootstrap = bootstrap
        self.suffix = f"{kind}-{uuid.uuid4().hex[:6]}"
        self.schemas = unique_schemas(workdir, self.suffix)
        self.plans = by_short_name(load_plans(self.schemas))
        self.group = f"bench-{self.suffix}"
        self.log_path = workdir / f"{self.suffix}.log"
        # the worker's latency trace (setting latency_trace): one line per committed batch
        self.trace_path: Path | None = workdir / f"{self.suffix}.trace.jsonl" if trace else None
        config = GatewayConfig(bootstrap=bootstrap, schemas=self.schemas, partitions=3,
                               audit_topic=f"privacy.audit.{self.suffix}", keyring=workdir / "keyring.json")
        ensure_topics(list(self.plans.values()), config)
        self.audit_topic = config.audit_topic
        self.keyring = config.keyring
        self.proc: subprocess.Popen[bytes] | None = None
        # one producer for the stage's life: a new idempotent producer's first ~0.5 s of records
        # wait for its producer id, which a paced run would otherwise count as gateway latency
        self.producer: Producer | None = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                                   "enable.idempotence": True})
        self.ends: dict[tuple[str, int], int] = {}  # (source topic, partition) -> offset after the last published

    def publish(self, events: list[tuple[str, bytes, dict[str, Any]]], rate: float = 0.0) -> None:
        assert self.producer is not None, "the stage was stopped"
        publish(self.producer, [(self.plans[name].source_topic, value) for name, value, _ in events], rate,
                self.ends)

    def start(self) -> None:
        if self.kind == "sanitize":
            cmd = [sys.executable, "-m", "gateway", "run", "--bootstrap", self.bootstrap, "--schemas",
                   str(self.schemas), "--keyring", str(self.keyring), "--group-id", self.group,
                   "--instance-id", self.group, "--audit-topic", self.audit_topic, "--session-timeout-ms", "6000",
                   "--processes", str(self.processes), *self.extra]
        else:
            cmd = [sys.executable, str(Path(__file__)), "_loop", self.kind, self.bootstrap, str(self.schemas),
                   self.group]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = dict(os.environ, PYTHONPATH=str(self.checkout))
        if self.trace_path is not None:
            env["GATEWAY_LATENCY_TRACE"] = str(self.trace_path)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.checkout, env=env)
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

    def remaining(self) -> int:
        """Events not yet committed now: what a throughput measurement starting now will see processed
        (a worker starts on the backlog the moment it is assigned, before the last one has joined)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group})
        try:
            return self._lag(consumer)
        finally:
            consumer.close()

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
        if getattr(self, "log", None) is not None:  # not opened when start() failed before the worker
            self.log.close()
        close_producer(self)


# ---- latency, rounds interleaved, and where the slowest events' time went ------------------------
LATENCY_ROUNDS = 5
POINT_SECONDS = 5  # events published per point: the rate times this (at least 5,000 at 1,000/s)
LATENCY_PATHS = ("broker_hop", "passthrough", "sanitize")
# an event's way through the worker, in the latency trace's terms (gateway/runtime/latency_trace.py)
TRACE_STAGES = ("until consume was called", "batch fill", "process", "  of which key read-back",
                "  of which garbage collection", "wait for the previous commit", "produce", "send offsets", "commit",
                "commit to reader")
# rows that are part of the row above them (the batch's key topic round trips; the collector's pauses in the
# batch's span, in whichever stage they fell): not added again when the stages are summed
PART_OF_ABOVE = frozenset(i for i, name in enumerate(TRACE_STAGES) if name.startswith("  of which"))


def measure_point(stage: KafkaStage | BrokerHop, events: list[tuple[str, bytes, dict[str, Any]]], rate: float,
                  pids: dict[str, int]) -> dict[str, Any]:
    """One paced run at `rate`: p50/p99, the CPU (cores) each process used, and every record's
    (topic, timestamp, latency) for the trace's decomposition."""
    probe = stage.latency_probe()
    stage.publish(events[-int(rate):], rate=rate)  # a second at the rate first: everyone in steady state
    probe.count_from_now()
    count = int(min(rate * POINT_SECONDS, len(events)))
    before, t0 = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
    stage.publish(events[:count], rate=rate)
    lat = probe.wait(count)
    wall = time.monotonic() - t0
    return {"rate": round(rate), "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(statistics.quantiles(lat, n=100)[98], 1),
            "cpu_cores": {name: round((cpu_seconds(pid) - before[name]) / wall, 2) for name, pid in pids.items()},
            "records": probe.counted()}


def read_trace(path: Path | None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The worker's latency trace by (source topic, event timestamp): the batches that carried such an event."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    if path is None or not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        batch = orjson.loads(line)
        for topic, stamp in batch["events"]:
            out.setdefault((topic, stamp), []).append(batch)
    return out


def decompose(stamp: int, latency: float, batch: dict[str, Any]) -> list[float]:
    """One event's latency split over TRACE_STAGES (ms; they add up to `latency`, the PART_OF_ABOVE rows aside)."""
    received = stamp + latency
    polled = max(batch["polled"], stamp)
    keys = batch.get("key_store_ms", 0.0) + batch.get("key_read_back_ms", 0.0)
    return [polled - stamp, batch["started"] - polled, batch["processed"] - batch["started"], keys,
            batch.get("gc_ms", 0.0), batch["settled"] - batch["processed"], batch["produced"] - batch["settled"],
            batch["offsets_sent"] - batch["produced"], batch["committed"] - batch["offsets_sent"],
            received - batch["committed"]]


def slowest_share(points: list[dict[str, Any]], trace: dict[tuple[str, int], list[dict[str, Any]]],
                  sources: dict[str, str], share: float = 0.01) -> dict[str, Any]:
    """Mean ms per stage over the slowest `share` of each point's events (and over all of them), the
    points of one path and rate taken together. `sources`: sanitized topic -> source topic."""
    slow: list[list[float]] = []
    every: list[list[float]] = []
    unmatched = 0
    for point in points:
        records = sorted(point["records"], key=lambda r: -r[2])
        cut = max(1, int(len(records) * share))
        for i, (topic, stamp, latency) in enumerate(records):
            batches = trace.get((sources.get(topic, topic), stamp))
            if not batches:
                unmatched += 1
                continue
            # the batch that committed last before the reader had it (one carrying the same timestamp
            # could be another event of that millisecond)
            before = [b for b in batches if b["committed"] <= stamp + latency] or batches
            parts = decompose(stamp, latency, max(before, key=lambda b: b["committed"]))
            every.append(parts)
            if i < cut:
                slow.append(parts)

    def means(rows: list[list[float]]) -> dict[str, float]:
        return {name: round(statistics.fmean(r[j] for r in rows), 1) for j, name in enumerate(TRACE_STAGES)} \
            if rows else {}

    return {"slowest": means(slow), "all": means(every), "events": len(every), "slowest_events": len(slow),
            "unmatched": unmatched,
            "slowest_latency_ms": round(statistics.fmean(sum(p for j, p in enumerate(r) if j not in PART_OF_ABOVE)
                                                         for r in slow), 1) if slow else None}


def spread_of(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
            "max": round(max(values), 1), "runs": [round(v, 1) for v in values]}


def measure_latency_rounds(bootstrap: str, workdir: Path, events: list[tuple[str, bytes, dict[str, Any]]],
                           rates: list[float], broker_pid: int, rounds: int = LATENCY_ROUNDS) -> dict[str, Any]:
    """Each (rate, path) point `rounds` times, interleaved (every rate and path in a round, then the
    next round), so the host's changing speed spreads over all of them: per point the median p50/p99
    over the rounds with their min-max, and from the workers' latency traces where the slowest 1% of
    the events spent their time, stage by stage, beside the mean event."""
    hop = BrokerHop(bootstrap)
    stages: dict[str, KafkaStage] = {}
    try:
        for kind in ("passthrough", "sanitize"):
            stages[kind] = KafkaStage(kind, bootstrap, workdir, trace=True)
            stages[kind].start()
        by_path: dict[str, KafkaStage | BrokerHop] = {"broker_hop": hop, **stages}
        runs: dict[str, dict[float, list[dict[str, Any]]]] = {p: {r: [] for r in rates} for p in LATENCY_PATHS}
        for round_no in range(1, rounds + 1):
            for rate in rates:
                print(f"  latency round {round_no}/{rounds}: {rate:,.0f} events/s ...", flush=True)
                for path in LATENCY_PATHS:
                    stage = by_path[path]
                    worker = {"worker": stage.proc.pid} if isinstance(stage, KafkaStage) and stage.proc else {}
                    pids = {**worker, "broker": broker_pid, "publisher and reader": os.getpid()}
                    runs[path][rate].append(measure_point(stage, events, rate, pids))
        rss = peak_rss_mb(stages["sanitize"].proc.pid) if stages["sanitize"].proc else 0.0
    finally:
        hop.stop()
        for stage in stages.values():
            stage.stop()
    out: dict[str, Any] = {"rounds": rounds, "rates": [round(r) for r in rates], "paths": {}, "slowest_1pct": {},
                           "sanitize_rss_mb": round(rss, 1)}
    for path in LATENCY_PATHS:
        out["paths"][path] = [{"rate": round(rate), "p50_ms": spread_of([p["p50_ms"] for p in points]),
                               "p99_ms": spread_of([p["p99_ms"] for p in points]),
                               "cpu_cores": {name: round(statistics.median(p["cpu_cores"][name] for p in points), 2)
                                             for name in points[0]["cpu_cores"]}}
                              for rate, points in runs[path].items()]
    for kind, stage in stages.items():
        trace = read_trace(stage.trace_path)
        sources = {p.sanitized_topic: p.source_topic for p in stage.plans.values()}
        out["slowest_1pct"][kind] = [{"rate": round(rate), **slowest_share(points, trace, sources)}
                                     for rate, points in runs[kind].items()]
    return out


def print_latency(latency: dict[str, Any]) -> None:
    print(f"\nlatency, event timestamp to a read_committed reader: median of {latency['rounds']} interleaved rounds "
          "(min-max), and the CPU (cores, median) each process used meanwhile:")
    print(f"  {'events/s':>8}  {'path':<12}{'p50 ms':>8}{'(min-max)':>13}{'p99 ms':>8}{'(min-max)':>13}"
          f"{'worker':>8}{'broker':>8}{'publisher+reader':>18}")
    for i, rate in enumerate(latency["rates"]):
        for path in LATENCY_PATHS:
            p = latency["paths"][path][i]
            p50, p99, cpu = p["p50_ms"], p["p99_ms"], p["cpu_cores"]
            p50_range, p99_range = f"({p50['min']:.0f}-{p50['max']:.0f})", f"({p99['min']:.0f}-{p99['max']:.0f})"
            print(f"  {rate:>8,}  {path:<12}{p50['median']:>8.0f}{p50_range:>13}{p99['median']:>8.0f}{p99_range:>13}"
                  f"{cpu.get('worker', ''):>8}{cpu['broker']:>8}{cpu['publisher and reader']:>18}")
        sanitize, passthrough = latency["paths"]["sanitize"][i]["p99_ms"], latency["paths"]["passthrough"][i]["p99_ms"]
        print(f"  {'':>8}  sanitize p99 - passthrough p99: {sanitize['median'] - passthrough['median']:+.0f} ms "
              "(goal: at most +15)")
    for kind in ("sanitize", "passthrough"):
        print(f"\nslowest 1% of {kind} events: where the time went (mean ms per stage, from the worker's latency "
              "trace; 'all': the mean event)")
        rows = latency["slowest_1pct"][kind]
        heads = [f"{r['rate']:,}/s slow" for r in rows]
        print(f"  {'stage':<30}" + "".join(f"{head:>15}{'all':>7}" for head in heads))
        for name in TRACE_STAGES:
            print(f"  {name:<30}" + "".join(f"{r['slowest'].get(name, 0):>15.1f}{r['all'].get(name, 0):>7.1f}"
                                             for r in rows))
        print(f"  {'events traced':<30}" + "".join(f"{r['slowest_events']:>15}{r['events']:>7}" for r in rows))


def measure_kafka(stage: KafkaStage, events: list[tuple[str, bytes, dict[str, Any]]], broker_pid: int,
                  profile: bool = False) -> dict[str, Any]:
    # one process: a backlog published first, drained from the moment it is assigned. Several: the first
    # one assigned drained a backlog alone while the others joined (all of 8,000 events, most of 40,000),
    # so they start on empty topics, and the backlog is published once every one holds its partitions
    # (librdkafka publishes it many times faster than the workers drain it)
    backlog_first = stage.processes == 1
    if backlog_first:
        stage.publish(events)
    try:
        stage.start()
        assert stage.proc is not None
        processes = (stage.proc.pid, *descendants(stage.proc.pid))  # the supervisor's workers are up once started
        if backlog_first:
            measured = stage.remaining()  # then at once the clock and CPU: the lag read takes ~0.1 s
            t0, cpu0 = time.monotonic(), {pid: process_cpu_seconds(pid) for pid in processes}
        else:
            t0, cpu0 = time.monotonic(), {pid: process_cpu_seconds(pid) for pid in processes}
            stage.publish(events)
            measured = len(events)
        t1 = stage.drain()
        cpu = {pid: process_cpu_seconds(pid) - before for pid, before in cpu0.items()}
        result: dict[str, Any] = {"events": measured, "seconds": t1 - t0, "cpu_s": sum(cpu.values()),
                                  "bytes_in": sum(len(v) for _, v, _ in events) * measured / len(events),
                                  # per process, in cores over the drain: the supervisor first, then its workers
                                  "cpu_cores_by_process": [round(c / (t1 - t0), 2) for c in cpu.values()]}
        if profile:
            print("  profiling the saturated worker (py-spy) ...", flush=True)
            result["profile"] = profile_worker(stage, events, seconds=result["seconds"] * 0.8)
        result["rss_mb"] = max(peak_rss_mb(pid) for pid in (stage.proc.pid, *descendants(stage.proc.pid)))
    finally:
        stage.stop()  # a failed measurement leaves no worker behind
    return result


@contextmanager
def warmed_broker(workdir: Path) -> Iterator[tuple[EmbeddedBroker, int]]:
    """An embedded broker whose JIT is warmed up (warm_broker), and its pid (compression.py, versus_base.py)."""
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        assert broker.process is not None
        warm_broker(broker.bootstrap, broker.process.pid)
        yield broker, broker.process.pid


def measure_sanitize_cost(stage: KafkaStage, events: list[tuple[str, bytes, dict[str, Any]]],
                          broker_pid: int) -> dict[str, float]:
    """One sanitize stage over a backlog: the worker's CPU and the broker's (over the whole stage, the
    backlog's publishing included) per 1,000 events, and events/s (compression.py, versus_base.py)."""
    before = process_cpu_seconds(broker_pid)
    result = measure_kafka(stage, events, broker_pid)
    return {"worker_cpu_s_per_1000": result["cpu_s"] / result["events"] * 1000,
            "broker_cpu_s_per_1000": (process_cpu_seconds(broker_pid) - before) / len(events) * 1000,
            "eps": result["events"] / result["seconds"]}


def update_results(path: Path, key: str, figures: dict[str, Any]) -> None:
    """Set one key of a results.json (a separate script's figures), keeping the others."""
    results = orjson.loads(path.read_bytes()) if path.exists() else {}
    results[key] = figures
    path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")


def measure_rounds(stages: dict[str, Callable[[], dict[str, Any]]], rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Each throughput row `rounds` times, interleaved (row A, B, C, then A, B, C again), so that
    the host's changing speed spreads over every row alike instead of favouring whichever ran in a
    quiet minute."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in stages}
    for round_no in range(1, rounds + 1):
        for name, measure in stages.items():
            print(f"  round {round_no}/{rounds}: {name} ...", flush=True)
            runs[name].append(measure())
    return runs


def summarize_runs(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by events/s, with every run's events/s and CPU per 1,000 events beside it
    (CPU cost is the steadier of the two on a shared machine)."""
    rows = [summarize(name, r) for r in runs]
    median = sorted(rows, key=lambda row: row["eps"])[len(rows) // 2]
    out = dict(median)
    out["runs"] = len(rows)
    out["eps_runs"] = [row["eps"] for row in rows]
    if all("cpu_s_per_1000" in row for row in rows):
        out["cpu_s_per_1000"] = round(statistics.median(row["cpu_s_per_1000"] for row in rows), 4)
        out["cpu_s_per_1000_runs"] = [row["cpu_s_per_1000"] for row in rows]
    if all("cpu_cores_by_process" in r for r in runs):
        out["cpu_cores_by_process"] = runs[rows.index(median)]["cpu_cores_by_process"]
    out["rss_mb"] = round(max(r["rss_mb"] for r in runs), 1)
    return out


def spread(row: dict[str, Any], key: str) -> str:
    """min-max of a row's runs, as text: "7,012-7,840"."""
    values = row.get(f"{key}_runs")
    if not values:
        return ""
    low, high = min(values), max(values)
    return f"{low:,}-{high:,}" if isinstance(low, int) else f"{low:.4f}-{high:.4f}"


class BrokerHop:
    """One hop through the broker and nothing else: the same warm publisher settings straight into
    a topic, read by the same read_committed reader. The gateway's path is two such hops (publisher
    to source topic, worker to sanitized topic) plus the worker's batch."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.topic = f"hop-{uuid.uuid4().hex[:6]}"
        create_topics(admin_client({"bootstrap.servers": bootstrap}), {self.topic: 3})
        self.producer: Producer | None = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                                   "enable.idempotence": True})

    def publish(self, events: list[tuple[str, bytes, dict[str, Any]]], rate: float = 0.0) -> None:
        assert self.producer is not None, "the hop was stopped"
        publish(self.producer, [(self.topic, value) for _, value, _ in events], rate)

    def latency_probe(self) -> LatencyProbe:
        return LatencyProbe(self.bootstrap, [self.topic])

    def stop(self) -> None:
        close_producer(self)


def close_producer(stage: KafkaStage | BrokerHop) -> None:
    """Close a stage's publisher once it is done: idle, it still holds a connection and threads,
    and once the broker stops every one left open retries to connect, in the bench's own process,
    under the in-process rows that follow (two dozen of them doubled the transforms' CPU)."""
    if stage.producer is not None:
        stage.producer.flush(10)
        stage.producer.close()
        stage.producer = None


# the worker's own frames that make up a batch, for the profile's inclusive shares (py-spy names a
# frame "Class.method (file:line)")
STAGES = {"decode": "EventDecoder.decode_event (gateway/core/codec/raw.py",
          "sanitize": "RecordSanitizer.sanitize (gateway/core/sanitizer.py",
          "encode": "TopicStage.encode (gateway/core/pipeline/__init__.py",
          "audit records": "Pipeline._seal_entries (gateway/core/pipeline/__init__.py",
          "produce": "TransactionalLoop._publish (gateway/runtime/transactional.py",
          "wait for the last commit": "TransactionalLoop.settle (gateway/runtime/transactional.py"}


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
    return profile_shares(out)


def profile_shares(out: Path) -> dict[str, Any]:
    """The main thread's samples in a py-spy raw file: inclusive share per stage, top frames by self time."""
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
def shipped_pipeline(events: list[tuple[str, bytes, dict[str, Any]]], keyring_path: Path
                     ) -> tuple[Pipeline, list[RawEvent]]:
    """The shipped schemas' pipeline, in process, and `events` as its raw input (three partitions each)."""
    plans = load_plans(REPO / "schemas")
    topics = by_short_name(plans)
    config = GatewayConfig(keyring=keyring_path, instance_id="bench")
    keyring = Keyring.open(config.keyring)
    pipeline = Pipeline(plans, keyring, config, 6, tokenizers(keyring, plans))
    raw = [RawEvent(topics[name].source_topic, i % 3, i, 0, None, value, None)
           for i, (name, value, _r) in enumerate(events)]
    return pipeline, raw


def measure_transforms(events: list[tuple[str, bytes, dict[str, Any]]], workdir: Path) -> dict[str, Any]:
    pipeline, raw = shipped_pipeline(events, workdir / "transforms-keyring.json")
    pipeline.process(raw[:2000])  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(raw), 1000):
        result = pipeline.process(raw[start:start + 1000])
        assert all(r.topic.endswith((".sanitized", "audit")) for r in result.records)
    return {"events": len(raw), "seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "bytes_in": sum(len(v) for _, v, _ in events)}


def measure_peers_paired(peer_events: list[tuple[str, bytes, dict[str, Any]]],
                         records: dict[str, list[dict[str, Any]]], workdir: Path, rounds: int
                         ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Confluent CSFLE and Presidio's operators beside the gateway's transforms + audit
    (`Pipeline.process`) on the same events, per event, in `rounds` rounds: each round times the
    gateway and then each peer back to back, so the host's changing speed hits both sides of a
    round's ratio. Before, each was one run, minutes apart, and the ratio moved with the host
    (Presidio 4.2x in one committed run, 3.3x in the next). CPU seconds of this process (every side
    runs on this thread). Returns the peers' rows (their median round) and, per peer, its cost per
    event over the gateway's: the median of the rounds' ratios with their min-max."""
    from benchmarks import peers

    pipeline, raw = shipped_pipeline(peer_events, workdir / "peers-keyring.json")
    pipeline.process(raw[:500])  # warm-up

    def gateway() -> float:
        c0 = time.process_time()
        for start in range(0, len(raw), 1000):
            pipeline.process(raw[start:start + 1000])
        return (time.process_time() - c0) / len(raw)

    runners = {"confluent_csfle": peers.confluent_csfle, "presidio": peers.presidio}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    ratios: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        ours = gateway()
        for name, run in runners.items():
            result = run(records)
            results[name].append(result)
            ratios[name].append(result["cpu_s"] / result["events"] / ours)
    rows, versus = {}, {}
    for name, runs in results.items():
        middle = sorted(range(rounds), key=lambda i: ratios[name][i])[rounds // 2]
        rows[name] = summarize(name, runs[middle]) | {"runs": rounds}
        versus[name] = {"median": round(statistics.median(ratios[name]), 2), "min": round(min(ratios[name]), 2),
                        "max": round(max(ratios[name]), 2), "runs": [round(r, 2) for r in ratios[name]]}
    return rows, versus


def measure_transforms_vs_floor(events: list[tuple[str, bytes, dict[str, Any]]], workdir: Path,
                                reps: int = 3, chunk: int = 200) -> dict[str, Any]:
    """TopicStage.transform alone on the payments (the issue's "transforms alone") against the
    primitive floor for the same payments (benchmarks/microbench.py: fastavro decode, one HMAC per
    tokenized field, one AES-GCM per non-null encrypted field, fastavro encode), timed in pairs over
    the same chunks so that the host's changing speed hits both sides of a ratio."""
    from benchmarks.microbench import floor_payments, paired, transform_fn

    plans = by_short_name(load_plans(REPO / "schemas"))
    config = GatewayConfig(keyring=workdir / "floor-keyring.json", instance_id="bench")
    keyring = Keyring.open(config.keyring)
    pipeline = Pipeline(list(plans.values()), keyring, config, 6, tokenizers(keyring, list(plans.values())))
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
    parser.add_argument("--rounds", type=int, default=3, help="runs of each Kafka throughput row, interleaved")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the py-spy profile of the saturated sanitize worker")
    parser.add_argument("--only-text", action="store_true",
                        help="run only the in-process rows (quality rules, redaction, scan, DP stages, continual "
                             "release), "
                             "updating those keys of --out")
    parser.add_argument("--only", choices=("latency",),
                        help="latency: only the latency section (each rate x path, --latency-rounds rounds "
                             "interleaved, the slowest 1%% decomposed, the DP release), updating its keys of --out")
    parser.add_argument("--latency-rounds", type=int, default=LATENCY_ROUNDS)
    parser.add_argument("--half-rate", type=float,
                        help="with --only latency: half the saturated sanitize rate, if known (else measured once)")
    args = parser.parse_args(argv)
    if args.only == "latency":
        return only_latency(args)
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
        assert broker.process is not None
        print("  warming the broker's JIT up (transactions until their CPU cost settles) ...", flush=True)
        warm_up = warm_broker(broker.bootstrap, broker.process.pid)
        print(f"  broker CPU ms per transaction (9 partitions), per 300: {' '.join(map(str, warm_up))}", flush=True)
        broker_pid = broker.process.pid
        events = make_events(by_short_name(load_plans(REPO / "schemas")), args.events)
        by_schema = {name: [e for e in events if e[0] == name] for name in ("Payment", "ClinicalVisit")}

        def saturated(kind: str, processes: int = 1, batch: list[tuple[str, bytes, dict[str, Any]]] = events
                      ) -> Callable[[], dict[str, Any]]:
            def run() -> dict[str, Any]:
                """A fresh stage until at least half its backlog was left when the clock started: a fast
                worker (passthrough drains 40,000 events in under a second) can take most of it between
                its 'partitions assigned' line and the lag read, and a run that measured a few events
                (once none: events/s 0) says nothing."""
                for _ in range(3):
                    result = measure_kafka(KafkaStage(kind, broker.bootstrap, workdir, processes), batch,
                                           broker_pid)
                    if result["events"] >= len(batch) // 2:
                        return result
                    print(f"    measured {result['events']} of {len(batch)} events (the worker started before "
                          "the clock): again with a fresh stage", flush=True)
                raise RuntimeError(f"{kind}: three runs drained most of the backlog before the clock started")
            return run

        print(f"  throughput rows, {args.rounds} rounds interleaved (a backlog drained by a fresh worker each) ...")
        runs = measure_rounds({"sanitize": saturated("sanitize"),
                               "sanitize_2_processes": saturated("sanitize", processes=2),
                               "passthrough": saturated("passthrough"),
                               "floor_through_kafka": saturated("floor"),
                               "sanitize_payments": saturated("sanitize", batch=by_schema["Payment"]),
                               "sanitize_visits": saturated("sanitize", batch=by_schema["ClinicalVisit"])},
                              args.rounds)
        for name, name_runs in runs.items():
            rows[name] = summarize_runs(name, name_runs)
        half_rate = rows["sanitize"]["eps"] / 2
        profile = None
        if args.profile:
            print("  profiling the saturated sanitize worker (py-spy) ...", flush=True)
            profiled = measure_kafka(KafkaStage("sanitize", broker.bootstrap, workdir), events, broker_pid,
                                     profile=True)
            profile = profiled.get("profile")
            rows["sanitize"]["rss_mb"] = round(max(rows["sanitize"]["rss_mb"], profiled["rss_mb"]), 1)
        latency = run_latency(broker.bootstrap, workdir, events, half_rate, broker_pid, args.latency_rounds)
        rows["sanitize"]["rss_mb"] = round(max(rows["sanitize"]["rss_mb"], latency["sanitize_rss_mb"]), 1)
        for path in ("sanitize", "passthrough"):  # the rows' p50/p99: the highest rate, median of the rounds
            point = latency["paths"][path][-1]
            rows[path].update(p50_ms=point["p50_ms"]["median"], p99_ms=point["p99_ms"]["median"],
                              latency_rate=point["rate"])
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
        peers_vs_transforms: dict[str, Any] = {}
    else:
        stems = {"Payment": "payments", "ClinicalVisit": "clinical_visits"}
        records: dict[str, list[dict[str, Any]]] = {}
        for name, _value, record in peer_events:
            records.setdefault(stems[name], []).append(record)
        print("  naive per-record (KMS data key per record) ...", flush=True)
        with peers.local_kms() as (endpoint, key_id):
            rows["naive"] = summarize("naive", peers.naive_per_record(records, endpoint, key_id))
        print(f"  Confluent CSFLE serializer and Presidio anonymizer operators beside the transforms, "
              f"{args.rounds} rounds paired ...", flush=True)
        peer_rows, peers_vs_transforms = measure_peers_paired(peer_events, records, workdir, args.rounds)
        rows |= peer_rows
    report(rows, args.out, profile, latency, versus_floor, measure_text() | {"broker_warm_up_ms_per_txn": warm_up},
           peers_vs_transforms)
    return 0


def run_latency(bootstrap: str, workdir: Path, events: list[tuple[str, bytes, dict[str, Any]]], half_rate: float,
                broker_pid: int, rounds: int) -> dict[str, Any]:
    """The latency section: the rates (1,000 and 2,500 events/s when below half the saturated sanitize
    rate, and that half), every path at each, `rounds` rounds interleaved; then the DP release latency."""
    from benchmarks import dp_release

    rates = [r for r in (1000.0, 2500.0) if r < half_rate * 0.9] + [half_rate]
    print(f"  latency at {', '.join(f'{r:,.0f}' for r in rates)} events/s, {rounds} rounds interleaved ...",
          flush=True)
    latency = measure_latency_rounds(bootstrap, workdir, events, rates, broker_pid, rounds)
    print("  DP release latency (window close to the aggregates topic) ...", flush=True)
    latency["dp_release"] = dp_release.run(bootstrap)
    return latency


def only_latency(args: argparse.Namespace) -> int:
    """`bench.py --only latency`: the latency section alone, on a warmed embedded broker (about
    --latency-rounds x 1.5 minutes, plus a minute for the saturated rate and the DP release)."""
    from benchmarks import dp_release

    started = time.monotonic()
    results = orjson.loads(args.out.read_bytes()) if args.out.exists() else {}
    workdir = Path(tempfile.mkdtemp(prefix="gateway-bench-latency-"))
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        assert broker.process is not None
        print(f"embedded broker {broker.bootstrap}; warming its JIT up ...", flush=True)
        warm_broker(broker.bootstrap, broker.process.pid)
        events = make_events(by_short_name(load_plans(REPO / "schemas")), args.events)
        half_rate = args.half_rate
        if not half_rate:
            print("  the saturated sanitize rate (one drain) ...", flush=True)
            saturated = measure_kafka(KafkaStage("sanitize", broker.bootstrap, workdir), events,
                                      broker.process.pid)
            half_rate = saturated["events"] / saturated["seconds"] / 2
        latency = run_latency(broker.bootstrap, workdir, events, half_rate, broker.process.pid, args.latency_rounds)
    print_latency(latency)
    print()
    dp_release.print_figures(latency["dp_release"])
    results["latency"] = latency | {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nwrote the latency key of {args.out} ({time.monotonic() - started:.0f} s)")
    return 0


def measure_text() -> dict[str, Any]:
    """The in-process rows: redaction beside Presidio's analyzer and anonymizer on the labelled corpus,
    `gateway scan`'s throughput, the DP stages' per-event cost beside the sanitize stage's, and the
    continual-release accuracy against per-window summing (benchmarks/redaction.py, scan.py,
    dp_stages.py and continual.py print the details)."""
    from benchmarks import continual, dp_stages, formats, quality, scan

    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out: dict[str, Any] = {}
    print("  quality rules beside the sanitize path ...", flush=True)
    out["quality_rules"] = quality.run(events=10_000, reps=5) | {"when": when}
    print("  each schema format family beside Avro (the same policy, Confluent-framed) ...", flush=True)
    out["formats"] = formats.run(events=5000, reps=5) | {"when": when}
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
           latency: dict[str, Any], versus_floor: dict[str, Any], text: dict[str, Any],
           peers_vs_transforms: dict[str, dict[str, Any]]) -> None:
    base = rows["passthrough"]["eps"]
    print(f"\n{'path':<26}{'events/s':>10}{'runs':>16}{'us/event':>10}{'MB/s':>8}{'CPU s/1k':>10}"
          f"{'runs':>16}{'p50 ms':>8}{'p99 ms':>8}{'vs passthrough':>16}")
    for name, row in rows.items():
        print(f"{name:<26}{row['eps']:>10}{spread(row, 'eps'):>16}{row['us_per_event']:>10}{row.get('mb_s', ''):>8}"
              f"{row.get('cpu_s_per_1000', ''):>10}{spread(row, 'cpu_s_per_1000'):>16}{row.get('p50_ms', ''):>8}"
              f"{row.get('p99_ms', ''):>8}{row['eps'] / base:>15.2f}x")
    sizing = {}
    for name, schema in (("sanitize_payments", "payments"), ("sanitize_visits", "clinical visits"),
                         ("sanitize", "mixed")):
        row = rows[name]
        per_core = 1000 / row["cpu_s_per_1000"]  # the worker's CPU only: the broker's is apart
        mb_per_core = per_core * row["mb_s"] / row["eps"]
        sizing[schema] = {"eps_per_core": round(per_core), "mb_s_per_core": round(mb_per_core, 2),
                          "millicores_per_mb_s": round(1000 / mb_per_core)}
    print("\nsizing, from the worker's CPU per 1,000 events (median of the rounds; the broker's CPU apart):")
    for schema, figures in sizing.items():
        print(f"  {schema:<16}{figures['eps_per_core']:>8,} events/s per core  {figures['mb_s_per_core']:>6} MB/s "
              f"per core  {figures['millicores_per_mb_s']:>5} millicores per MB/s")
    one, two = rows["sanitize"], rows["sanitize_2_processes"]
    print(f"\n1 vs 2 processes: {one['eps']:,} vs {two['eps']:,} events/s ({two['eps'] / one['eps']:.2f}x); "
          f"cores by process over the drain (supervisor first): {one.get('cpu_cores_by_process')} vs "
          f"{two.get('cpu_cores_by_process')}")
    results: dict[str, Any] = {
        "passthrough_eps": rows["passthrough"]["eps"],
        "sanitize_eps": rows["sanitize"]["eps"],
        "transforms_eps": rows["transforms"]["eps"],
        "naive_eps": rows.get("naive", {}).get("eps"),
        "confluent_csfle_eps": rows.get("confluent_csfle", {}).get("eps"),
        "presidio_eps": rows.get("presidio", {}).get("eps"),
        # per event, each peer's CPU over the gateway's transforms + audit on the same events, rounds paired
        "peers_vs_transforms": peers_vs_transforms,
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
        # worker), passthrough and sanitize (median and min-max of the interleaved rounds), with the
        # CPU (cores) each process used meanwhile; the slowest 1% decomposed; the DP release latency
        "latency": latency,
        "sizing": sizing,
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
    for name, ratio in peers_vs_transforms.items():
        print(f"{name} per event: {ratio['median']:.1f}x the gateway's transforms + audit on the same events "
              f"(median of {len(ratio['runs'])} paired rounds, {ratio['min']:.1f}-{ratio['max']:.1f}; "
              "goal: at least 4x)")
    print_latency(latency)
    print()
    from benchmarks import dp_release

    dp_release.print_figures(latency["dp_release"])
    if profile:
        print(f"\nsanitize worker at saturation, py-spy ({profile['samples']} samples of the main thread):")
        print("  share of time in: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["stage_share"].items()))
        for frame, share in profile["top_self"]:
            print(f"  {share:>6.1%}  {frame}")
    if out.exists():  # the figures of the separate scripts (compression.py, versus_base.py) stay
        previous = orjson.loads(out.read_bytes())
        results |= {key: previous[key] for key in SEPARATE_KEYS if key in previous}
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loop":
        raise SystemExit(loop_main(sys.argv[2:]))
    raise SystemExit(main())
