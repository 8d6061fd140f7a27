"""Integration fixtures: one embedded broker per session (started through `gateway broker`),
gateway workers as real subprocesses, unique topics per test module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from gateway.core.audit import record_entries
from gateway.core.codec.sanitized import StoredRecord
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.embedded.broker import free_port
from gateway.runtime.reader import AuditedCounter, read_topic

REPO = Path(__file__).resolve().parents[2]
_STARTED: list[subprocess.Popen[bytes]] = []  # every worker process the fixtures started
# one process per `gateway run` (not one per core): the tests count workers, pids and instance ids
ENV = dict(os.environ, PYTHONUNBUFFERED="1", GATEWAY_PROCESSES="1")


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """The session's broker: the embedded one, started here, or (GATEWAY_TEST_BOOTSTRAP=host:port) one
    already running on this machine, so several test runs in parallel share one JVM."""
    shared = os.environ.get("GATEWAY_TEST_BOOTSTRAP")
    if shared:
        yield shared
        for worker in _STARTED:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "broker", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()  # the one line `gateway broker` prints when ready
    assert f"broker listening on 127.0.0.1:{port}" in line, line
    yield f"127.0.0.1:{port}"
    for worker in _STARTED:  # a test that failed before stopping its worker leaves it running
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


@pytest.fixture(scope="session")
def registry_url() -> Iterator[str]:
    """One Apicurio Registry (in-memory, Confluent API) for the session's schema-evolution tests; tests
    keep apart by their unique topic names (subjects are `<topic>-value`). Skipped without a JDK."""
    import shutil

    from gateway.embedded.registry import EmbeddedRegistry

    missing = [tool for tool in ("java", "mvn", "javac") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the Schema Registry needs {', '.join(missing)}")
    with EmbeddedRegistry() as registry:
        yield registry.url


def cli(*args: str, stdin: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True,
                          timeout=timeout, env=ENV, cwd=REPO)


@dataclass
class Deployment:
    """A schema directory with topics unique to one test module, plus its keyring and audit topic."""

    bootstrap: str
    root: Path
    suffix: str
    schemas: Path = field(init=False)
    keyring: Path = field(init=False)
    audit_topic: str = field(init=False)
    group_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.schemas = self.root / "schemas"
        self.schemas.mkdir()
        self.keyring = self.root / "keyring.json"
        self.audit_topic = f"privacy.audit.{self.suffix}"
        self.group_id = f"gateway-{self.suffix}"
        for source in sorted((REPO / "schemas").glob("*.avsc")):
            schema = orjson.loads(source.read_bytes())
            privacy = schema["privacy"]
            privacy["source_topic"] += f".{self.suffix}"
            privacy["sanitized_topic"] += f".{self.suffix}"
            (self.schemas / source.name).write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
        self.plans = {p.name.rsplit(".", 1)[-1]: p for p in load_plans(self.schemas)}

    @property
    def payments(self) -> Plan:
        return self.plans["Payment"]

    @property
    def clinical(self) -> Plan:
        return self.plans["ClinicalVisit"]

    def start_worker(self, instance: str, log_path: Path | None = None, partitions: int = 3,
                     wait: bool = True, extra: tuple[str, ...] = ()) -> WorkerProcess:
        log_path = log_path or self.root / f"worker-{instance}.log"
        handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
        log_start = handle.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--bootstrap", self.bootstrap, "--schemas", str(self.schemas),
             "--keyring", str(self.keyring), "--audit-topic", self.audit_topic, "--group-id", self.group_id,
             "--instance-id", instance, "--partitions", str(partitions), "--session-timeout-ms", "6000", *extra],
            stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
        _STARTED.append(proc)
        worker = WorkerProcess(proc, log_path, handle, log_start)
        if wait:
            worker.wait_for_log('"msg":"partitions assigned"')
        return worker

    def produce(self, topic: str, values: list[bytes], partition: int = -1) -> None:
        """Publish in order (to one partition when given, so order across them is kept)."""
        producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "message.max.bytes": 4_000_000,
                             "enable.idempotence": True})
        failed: list[str] = []
        for value in values:
            producer.produce(topic, value, partition=partition,
                             on_delivery=lambda err, _msg: failed.append(err.name()) if err else None)
        assert producer.flush(30) == 0
        assert not failed, f"{len(failed)} of {len(values)} not delivered: {sorted(set(failed))}"

    def read(self, topic: str) -> list[StoredRecord]:
        return read_topic({"bootstrap.servers": self.bootstrap}, topic)

    def audit_entries(self) -> list[dict[str, Any]]:
        """Every audit entry of the committed audit records, in record order (a sanitize worker's record
        holds a batch's entries of one source partition; gateway.core.audit.entries)."""
        return record_entries(r.value for r in self.read(self.audit_topic))

    def wait_for_audit(self, expected: int, timeout_s: float = 90.0) -> list[dict[str, Any]]:
        """Wait until the committed audit records hold at least `expected` entries (events audited);
        returns every entry then committed, read with read_topic, in record order."""
        deadline = time.monotonic() + timeout_s
        counter = AuditedCounter({"bootstrap.servers": self.bootstrap}, self.audit_topic)
        entries: list[dict[str, Any]] = []
        try:
            while time.monotonic() < deadline:
                if counter.poll(0.3) >= expected:
                    entries = self.audit_entries()
                    if len(entries) >= expected:
                        return entries
        finally:
            counter.close()
        raise AssertionError(f"{max(len(entries), counter.count)} of {expected} audit events after {timeout_s}s")


def audit_entries(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every audit entry of the committed records of audit topic `topic`, in record order ([] while
    the topic does not exist)."""
    if committed_count(bootstrap, topic) == 0:  # no topic yet (read_topic would raise), or nothing in it
        return []
    return record_entries(r.value for r in read_topic({"bootstrap.servers": bootstrap}, topic))


def audited_count(bootstrap: str, topic: str) -> int:
    """The events audited in the committed records of audit topic `topic`: its entries, not its records
    (a sanitize worker writes one record per source partition per batch), for progress waits."""
    return len(audit_entries(bootstrap, topic))


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    """Poll `condition` until it is truthy (its value is returned); fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout_s}s")


def committed_count(bootstrap: str, topic: str) -> int:
    """A cheap estimate of the records in `topic`, for progress waits only: the partition ends from
    ListOffsets count transaction markers too (callers that need the records read them with read_topic).
    Not a count of events on an audit topic, whose records hold many each: see audited_count."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-watermarks"})
    try:
        topics = consumer.list_topics(topic, timeout=10).topics
        if topic not in topics or topics[topic].error is not None:
            return 0
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in topics[topic].partitions)
    except KafkaException:  # a topic just created: its leader is not known everywhere yet
        return 0
    finally:
        consumer.close()


def group_progress(bootstrap: str, group_id: str, topic: str) -> tuple[int, int]:
    """(sum of the group's committed offsets, sum of the partition ends) over `topic`: equal once the
    group has processed every record of a topic written without transactions (offsets are dense)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=10))
        ends = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps)
        return committed, ends
    finally:
        consumer.close()


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    handle: Any
    log_start: int = 0  # the log file's size when this process started

    def log(self) -> str:
        """This process's log: what was written to its file after it started (a worker restarted under the
        same instance id appends to the same file, and must not be judged by its predecessor's lines)."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            time.sleep(0.1)
        raise AssertionError(f"'{needle}' not in worker log after {timeout_s}s:\n{self.log()[-3000:]}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def owned(self, topic: str) -> set[str]:
        """The partitions of `topic` the worker owns now, from its assignment log lines (cooperative:
        each line adds or removes only the partitions that moved)."""
        owned: set[str] = set()
        for line in self.log().splitlines():
            if '"msg":"partitions assigned"' in line:
                owned |= {p for p in orjson.loads(line)["partitions"] if p.startswith(topic + ":")}
            elif '"msg":"partitions revoked"' in line or '"msg":"partitions lost"' in line:
                owned -= set(orjson.loads(line)["partitions"])
        return owned

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        finally:
            self.handle.close()
        return code


@pytest.fixture
def fresh_deployment(bootstrap: str, tmp_path: Path) -> Deployment:
    """A deployment of its own for tests that need untouched topics."""
    return Deployment(bootstrap, tmp_path, uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def deployment(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    return Deployment(bootstrap, tmp_path_factory.mktemp("deployment"), uuid.uuid4().hex[:8])
