"""SIGTERM at any moment of a worker's start-up is a clean stop: exit code 0, never death by signal 15.

An orchestrator stops pods while they start (a rollout, a scale-in); a process killed by the signal
reads as a crash. The moments are found by what the process has visibly done (a shared library mapped,
a log line written), never by sleeping: importing the Kafka client, connecting to a broker that does
not answer, and joining the group of a live broker before its partitions are assigned. Both entry
points are covered: `python -m gateway` and the installed `gateway` command.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.embedded.broker import free_port

from .conftest import ENV, REPO, cli

ENTRY_POINTS = {"python -m gateway": [sys.executable, "-m", "gateway"]}
_SCRIPT = shutil.which("gateway", path=str(Path(sys.executable).parent))
if _SCRIPT is not None:
    ENTRY_POINTS["gateway command"] = [_SCRIPT]


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the worker exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def keyring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shutdown") / "keyring"
    assert cli("keys", "init", "--keyring", str(path)).returncode == 0
    return path


def _start(entry: list[str], bootstrap: str, keyring: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*entry, "run", "--bootstrap", bootstrap, "--schemas", str(REPO / "schemas"),
                             "--keyring", str(keyring), "--group-id", f"shutdown-{log.stem}",
                             "--audit-topic", f"shutdown-audit-{log.stem}", "--partitions", "1", *extra],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env=ENV, cwd=REPO)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_sigterm_while_importing_the_kafka_client_exits_0(entry: str, keyring: Path, tmp_path: Path) -> None:
    proc = _start(ENTRY_POINTS[entry], f"127.0.0.1:{free_port()}", keyring, tmp_path / "importing.log")
    _wait_for(lambda: "confluent_kafka" in _maps(proc.pid), proc, 30, "confluent_kafka to be loaded")
    assert _stop(proc) == 0, (tmp_path / "importing.log").read_text()[-2000:]


@pytest.mark.parametrize("processes", ["1", "2"], ids=["one-process", "supervisor"])
def test_sigterm_while_connecting_to_a_silent_broker_exits_0(processes: str, keyring: Path, tmp_path: Path) -> None:
    """Nothing listens on the bootstrap port: start-up waits on the broker for as long as it takes."""
    log = tmp_path / f"connecting-{processes}.log"
    proc = _start(ENTRY_POINTS["python -m gateway"], f"127.0.0.1:{free_port()}", keyring, log,
                  "--processes", processes)
    _wait_for(lambda: log.stat().st_size > 0, proc, 30, "the first log line")
    assert _stop(proc) == 0, log.read_text()[-2000:]


def test_sigterm_while_joining_the_group_exits_0(bootstrap: str, keyring: Path, tmp_path: Path) -> None:
    """A live broker: stopped after its topics exist and it subscribed, before or as its partitions come."""
    log = tmp_path / "joining.log"
    proc = _start(ENTRY_POINTS["python -m gateway"], bootstrap, keyring, log)
    _wait_for(lambda: '"msg":"worker started"' in log.read_text(), proc, 60, "the worker to start")
    assert _stop(proc) == 0, log.read_text()[-2000:]
    assert '"msg":"worker stopped"' in log.read_text()
