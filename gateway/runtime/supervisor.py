"""`gateway run --processes N`: N sanitize workers in one consumer group, under one supervisor.

One Python process uses one core (the GIL); the worker's per-event work is Python around C calls,
so the way to every core is more processes. The supervisor starts N children running the same
command, each a full worker (its own consumer, transactional producer and instance id: the default
HOST-<slot> gives each a slot of its own), restarts a child that dies with an exponential backoff,
forwards SIGTERM and SIGINT, and exits once every child has stopped.

With a metrics port, each child serves its own on 127.0.0.1 (a free port the supervisor picks) and
the supervisor's /metrics is their union, every sample labelled with the child's `process` index;
/healthz and /readyz answer for all of them (a child restarting is not ready).
"""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from types import FrameType

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import metrics
from gateway.ops.ports import free_port
from gateway.retry import exponential
from gateway.stop_signal import sigterm_blocked

log = logging.getLogger("gateway.supervisor")
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STEADY_AFTER_S = 60.0  # a child that ran this long starts its next backoff from the first step again
STOP_GRACE_S = 60.0  # then SIGKILL: a child finishing its batch and committing should take far less


OWN_OPTIONS = ("--processes", "--metrics-port", "--metrics-host", "--instance-id")  # the supervisor sets these


def child_arguments(argv: Sequence[str]) -> list[str]:
    """`gateway run`'s arguments (after "run") without the options the supervisor sets per child."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in OWN_OPTIONS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def backoff_s(failures: int) -> float:
    """Seconds before restarting a child that failed `failures` times in a row (1, 2, 4 ... 30)."""
    return exponential(BACKOFF_FIRST_S, BACKOFF_MAX_S)(failures)


@dataclass
class Child:
    index: int
    command: list[str]
    metrics_port: int | None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0  # consecutive exits before STEADY_AFTER_S
    restarts: int = 0
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(self, child_args: Sequence[str], processes: int, metrics_port: int = 0,
                 metrics_host: str = "127.0.0.1", instance_id: str = "") -> None:
        """`child_args`: `child_arguments` of the command line. Each child runs one process
        (`--processes 1`, whatever the environment says), with `<instance_id>-<i>` when an instance
        id is set (else its own HOST-<slot>) and, with a metrics port, a port of its own."""
        if processes < 2:
            raise ValueError("a supervisor is for two or more processes")
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.children = []
        for i in range(processes):
            port = free_port() if metrics_port else None
            extra = ["--processes", "1", "--metrics-port", str(port or 0), "--metrics-host", "127.0.0.1"]
            if instance_id:
                extra += ["--instance-id", f"{instance_id}-{i}"]
            self.children.append(Child(i, [sys.executable, "-m", "gateway", "run", *child_args, *extra], port))
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # ---- life cycle ------------------------------------------------------------------------------
    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        if not self._stopping.is_set():
            log.info("stopping: forwarding the signal to every process", extra={"signal": signum})
        self._stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if self.metrics_port:
            self._server = serve(self, self.metrics_port, self.metrics_host)
        for child in self.children:
            self._start(child)
        log.info("supervisor started", extra={"processes": len(self.children),
                                              "pids": [c.proc.pid for c in self.children if c.proc]})
        try:
            while not self._stopping.wait(0.2):
                self._tend()
        finally:
            code = self._stop_all()
            if self._server is not None:
                self._server.shutdown()
        return code

    def _start(self, child: Child) -> None:
        # started with SIGTERM blocked: a stop forwarded while the child's interpreter is still starting waits
        # until its handler is installed, so it exits 0 rather than dying by the signal (gateway/stop_signal.py)
        with sigterm_blocked():
            child.proc = subprocess.Popen(child.command)  # noqa: S603 - our own interpreter and module
        child.started = time.monotonic()
        child.restart_at = None

    def _tend(self) -> None:
        """Restart children that exited, each after its backoff."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None and child.restart_at is None:
                code = child.proc.returncode
                child.exit_codes.append(code)
                ran = now - child.started
                child.failures = 1 if ran >= STEADY_AFTER_S else child.failures + 1
                delay = backoff_s(child.failures)
                child.restart_at = now + delay
                log.warning("worker process exited: restarting it after a backoff",
                            extra={"worker_process": child.index, "exit_code": code, "ran_s": round(ran, 1),
                                   "backoff_s": delay})
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
                log.info("worker process restarted", extra={"worker_process": child.index, "restarts": child.restarts,
                                                            "pid": child.proc.pid if child.proc else None})

    def _stop_all(self) -> int:
        """SIGTERM to every running child, SIGKILL to any still running after STOP_GRACE_S."""
        running = [c for c in self.children if c.running]
        for child in running:
            assert child.proc is not None
            child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        codes = []
        for child in running:
            assert child.proc is not None
            try:
                codes.append(child.proc.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("worker process did not stop: killing it", extra={"worker_process": child.index})
                child.proc.kill()
                codes.append(child.proc.wait())
        log.info("supervisor stopped", extra={"exit_codes": codes})
        return next((c for c in codes if c != 0), 0)

    # ---- health and metrics of all children ------------------------------------------------------
    def _get(self, child: Child, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{child.metrics_port}{path}", timeout=2) as r:  # noqa: S310
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 503, "not answering"

    def health(self, path: str) -> tuple[int, str]:
        """/healthz or /readyz of every child: 200 if all say so, else 503 naming the others."""
        failing = []
        for child in self.children:
            if not child.running:
                failing.append(f"process {child.index}: restarting")
                continue
            code, body = self._get(child, path)
            if code != 200:
                failing.append(f"process {child.index}: {body.strip()}")
        if path == "/healthz":  # liveness: a child that is restarting is the supervisor doing its job
            failing = [f for f in failing if not f.endswith("restarting")]
        ok_text = "ok\n" if path == "/healthz" else "ready\n"
        return (503, "; ".join(failing) + "\n") if failing else (200, ok_text)

    def metrics(self) -> str:
        """The children's metrics, each sample labelled with its `process`, and the supervisor's own."""
        families: dict[str, tuple[str, str, list[str]]] = {}
        for child in self.children:
            code, text = self._get(child, "/metrics") if child.running else (503, "")
            if code != 200:
                continue
            for family in text_string_to_metric_families(text):
                # the text format names a counter by its sample (`..._total`); `_created` samples are optional
                name = family.name + "_total" if family.type == "counter" else family.name
                entry = families.setdefault(name, (family.documentation, family.type, []))
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    labels = dict(sample.labels, process=str(child.index))
                    rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                    entry[2].append(f"{sample.name}{{{rendered}}} {_number(sample.value)}")
        lines = []
        for name, (doc, kind, samples) in families.items():
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} {kind}", *samples]
        lines += ["# HELP gateway_supervisor_restarts_total Worker processes restarted by the supervisor",
                  "# TYPE gateway_supervisor_restarts_total counter",
                  *(f'gateway_supervisor_restarts_total{{process="{c.index}"}} {c.restarts}' for c in self.children),
                  "# HELP gateway_supervisor_processes_running Worker processes running",
                  "# TYPE gateway_supervisor_processes_running gauge",
                  f"gateway_supervisor_processes_running {sum(c.running for c in self.children)}"]
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def serve(supervisor: Supervisor, port: int, host: str) -> ThreadingHTTPServer:
    def answer(path: str) -> metrics.Answer:
        if path == "/metrics":
            return 200, supervisor.metrics().encode(), CONTENT_TYPE_LATEST
        if path in ("/healthz", "/readyz"):
            code, body = supervisor.health(path)
            prefix = "" if code == 200 else ("stalled: " if path == "/healthz" else "not ready: ")
            return code, (prefix + body).encode(), metrics.TEXT
        return 404, b"not found\n", metrics.TEXT

    return metrics.serve_http(port, host, answer)
