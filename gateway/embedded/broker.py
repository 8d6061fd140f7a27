"""The embedded broker for demos and tests: a single-node Apache Kafka in KRaft mode on 127.0.0.1.

Broker and controller run in one JVM (`kafka.Kafka`), from the jars Maven fetched into the cache
(gateway.embedded.jars). Storage is formatted on first start, in a temporary directory that goes
with the broker, or in `data_dir`, which survives restarts. The settings below are chosen for one
node and listed in docs/contributing.md ("The embedded broker"); `settings` overrides or adds any of them.

The broker's log goes when the broker stops cleanly (unless `keep_log`) and stays when it failed
(did not start, exited on its own, or had to be killed): `failure` says what happened and
`log_path` where the log is, moved out of a temporary data directory before that goes.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from gateway.embedded.jars import KAFKA_VERSION, kafka_libs, require_tool
from gateway.errors import GatewayError
from gateway.ops.ports import free_port
from gateway.runtime import clients

log = logging.getLogger(__name__)
_CLEAN_EXIT = (0, 143, -15)  # SIGTERM: the JVM runs its shutdown hooks (Kafka's, Quarkus') and exits with 128 + 15

# One node: internal topics with replication factor 1 and few partitions (created fast), no delay
# before a new group's first rebalance, timed-out transactions aborted within a second of expiry,
# the log cleaner looking for work every second (an erased key leaves the log soon after), records
# up to 4 MiB, and no deletion by age: records keep their events' timestamps, and events stamped
# months ago (a test's fixed event time, a replayed backlog) would otherwise vanish at the next
# retention check (every 5 minutes), between a write and the read that checks it.
ONE_NODE_SETTINGS: dict[str, str] = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "6",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "6",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
    "log.cleaner.backoff.ms": "1000",
    "num.partitions": "6",  # auto-created topics get as many partitions as those the gateway creates
    # room for raw events above the gateway's 1 MiB max_record_bytes, which tests and the demo send
    # to prove they are dead-lettered (Kafka's default refuses records over 1 MiB at the broker)
    "message.max.bytes": "4194304",
    "auto.create.topics.enable": "true",
    "log.retention.ms": "-1",  # topics that set retention.ms (the duplicate-filter log) keep their own
}
JVM_OPTIONS = ("-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError",
               "-Djava.awt.headless=true")
_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
"""


@dataclass(frozen=True)
class Listener:
    """An extra listener (TLS, SASL) beside the PLAINTEXT one; `settings` are its broker settings
    without the ``listener.name.<name>.`` prefix, e.g. ``ssl.client.auth``."""

    name: str
    port: int
    protocol: str
    settings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScramUser:
    """A SCRAM credential written into the storage at format time (KRaft has no ZooKeeper to hold it)."""

    mechanism: str
    name: str
    password: str = field(repr=False)


def java_major_version(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        raise GatewayError(f"cannot tell the Java version from '{java} -version': {out.strip()[:200]}")
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise GatewayError(f"the broker exited with code {process.returncode} before accepting connections")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise GatewayError(f"the broker did not accept connections on 127.0.0.1:{port} within {timeout_s:.0f}s")


def stop_jvm(process: subprocess.Popen[bytes], what: str) -> str | None:
    """SIGTERM an embedded server's JVM, SIGKILL after 30 s; why it failed, or None if it stopped cleanly."""
    if process.poll() is not None:  # it was not asked to go
        return f"{what} had exited on its own with code {process.returncode}"
    process.terminate()
    try:
        code = process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
        return f"{what} did not stop within 30 s of SIGTERM and was killed"
    return None if code in _CLEAN_EXIT else f"{what} exited with code {code} when stopped"


def cluster_uuid() -> str:
    """A random cluster id as Kafka writes them (base64url of 16 bytes). Like Kafka's Uuid.randomUuid,
    never one starting with '-': kafka-storage's argument parser would take it for an option (one id
    in 64 did, and the broker failed to start)."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


class EmbeddedBroker:
    """Start Apache Kafka on 127.0.0.1:PORT (PLAINTEXT) plus any extra listeners, wait until it
    answers a metadata request, stop it on exit (SIGTERM: a clean shutdown)."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None, log_path: Path | None = None,
                 listeners: Sequence[Listener] = (), settings: Mapping[str, str] | None = None,
                 scram_users: Sequence[ScramUser] = (), heap_mb: int = 512, keep_log: bool = False) -> None:
        self.port = port or free_port()
        self.controller_port = free_port()
        self.listeners = tuple(listeners)
        self.settings = {**ONE_NODE_SETTINGS, **(settings or {})}
        self.scram_users = tuple(scram_users)
        self.heap_mb = heap_mb
        self._temporary = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="gateway-kafka-"))
        self.log_path = log_path or self.data_dir / "broker.log"
        self.keep_log = keep_log
        self.process: subprocess.Popen[bytes] | None = None
        self.failure: str | None = None  # why the broker failed (its log is kept), None while all is well

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def version(self) -> str:
        return KAFKA_VERSION

    def server_properties(self) -> dict[str, str]:
        names = ["PLAINTEXT", "CONTROLLER", *(listener.name for listener in self.listeners)]
        ports = [self.port, self.controller_port, *(listener.port for listener in self.listeners)]
        protocols = ["PLAINTEXT", "PLAINTEXT", *(listener.protocol for listener in self.listeners)]
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)),
            "advertised.listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in zip(names, ports, strict=True)
                                             if n != "CONTROLLER"),
            "listener.security.protocol.map": ",".join(f"{n}:{p}" for n, p in zip(names, protocols, strict=True)),
            "log.dirs": str(self.data_dir / "log"),
            **self.settings,
        }
        for listener in self.listeners:
            for key, value in listener.settings.items():
                props[f"listener.name.{listener.name.lower()}.{key}"] = value
        return props

    def start(self, timeout_s: float = 90.0) -> EmbeddedBroker:
        java = require_tool("java", "run the broker")
        if java_major_version(java) < 17:
            raise GatewayError(f"Apache Kafka {KAFKA_VERSION} needs Java 17 or newer; '{java}' is older")
        classpath = f"{kafka_libs()}/*"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties().items()))
        log4j = self.data_dir / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log_path=self.log_path))
        self._format(java, classpath, config)
        command = [java, f"-Xms{self.heap_mb // 2}m", f"-Xmx{self.heap_mb}m", *JVM_OPTIONS,
                   f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath, "kafka.Kafka", str(config)]
        with open(self.data_dir / "broker.out", "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, timeout_s, self.process)
            self._wait_for_metadata(timeout_s)
        except GatewayError as exc:
            self.stop(failure=str(exc))
            raise GatewayError(f"{exc}; the broker log is kept at {self.log_path}") from None
        return self

    def _format(self, java: str, classpath: str, config: Path) -> None:
        """Format the storage once (`--ignore-formatted`: a given data_dir keeps its data)."""
        cluster_id = cluster_uuid()
        command = [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "--ignore-formatted",
                   "-t", cluster_id, "-c", str(config)]
        for user in self.scram_users:
            command += ["--add-scram", f"{user.mechanism}=[name={user.name},password={user.password}]"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            # the command line holds SCRAM passwords: report the tool's output, never the command
            raise GatewayError(f"formatting the broker storage in {self.data_dir} failed: "
                               f"{(result.stdout + result.stderr).strip()[-500:]}")

    def _wait_for_metadata(self, timeout_s: float) -> None:
        admin = clients.admin({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise GatewayError(f"the broker exited with code {self.process.returncode} while starting")
            with contextlib.suppress(Exception):
                if admin.list_topics(timeout=2).brokers:
                    return
            time.sleep(0.1)
        raise GatewayError(f"the broker on {self.bootstrap} did not answer metadata within {timeout_s:.0f}s")

    def stop(self, failure: str | None = None) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 30 s) and clean up after it: a temporary data
        directory goes, and so does the log when the broker stopped cleanly (unless `keep_log`). A
        broker that failed keeps its log (moved out of a temporary data directory) and says where."""
        process, self.process = self.process, None
        if process is None and failure is None:  # never started, or stopped already (a kept log stays)
            if self._temporary:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            return
        if process is not None:
            stopped = stop_jvm(process, "the broker")  # always stopped, even with a failure in hand
            failure = failure or stopped
        if failure is not None:
            self.failure = failure
            self._keep_log_of_failure()
        elif not self.keep_log:
            self.log_path.unlink(missing_ok=True)
        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def _keep_log_of_failure(self) -> None:
        """Keep the log where it survives the temporary data directory, with the tail of the JVM's own
        output (a crash before logging started is only there), then say where it is."""
        if self._temporary:
            parts = []
            with contextlib.suppress(OSError):
                parts.append(self.log_path.read_bytes())
            with contextlib.suppress(OSError):
                out = (self.data_dir / "broker.out").read_bytes()
                if out:
                    parts.append(b"\n--- JVM output (broker.out) ---\n" + out[-65_536:])
            kept = self.log_path
            if kept.is_relative_to(self.data_dir):
                kept = Path(tempfile.gettempdir()) / f"gateway-broker-{self.port}.log"
            with contextlib.suppress(OSError):
                kept.write_bytes(b"".join(parts))
                self.log_path = kept
        log.warning("the embedded broker failed; its log is kept",
                    extra={"failure": self.failure, "log": str(self.log_path)})

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
