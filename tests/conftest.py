"""The suite's plumbing, shared by the process that runs pytest and its pytest-xdist workers.

- One embedded Apache Kafka broker for the whole run, started here in the controller (the process
  `pytest` runs in) before the workers are spawned: they inherit GATEWAY_TEST_BOOTSTRAP and
  tests/integration/conftest.py's `bootstrap` fixture uses it. One JVM instead of one per worker; the
  tests keep apart by their per-module topics and group ids. Not started when GATEWAY_TEST_BOOTSTRAP
  already names a broker, nor when no integration test is selected.
- Each test module is one xdist work unit (or a group of modules sharing a server: SHARED_SERVER):
  its tests run in file order on one worker, as without xdist, and module fixtures are built once.
- Tests marked `alone` (timing-sensitive: pauses measured against the session timeout, a fixed
  publishing rate, kill -9 recovery bounds) run with no other test running: every test holds a shared
  lock while it runs (setup and teardown included), an `alone` test an exclusive one, taken through a
  turnstile so that waiting for it stops new tests from starting (it is not starved).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from gateway.embedded.broker import free_port

TESTS = Path(__file__).resolve().parent
INTEGRATION = TESTS / "integration"
BOOTSTRAP_ENV = "GATEWAY_TEST_BOOTSTRAP"
LOCK_DIR_ENV = "GATEWAY_TEST_LOCK_DIR"  # the run's turnstile and room lock files (one directory per run)
# the work units that took longest (module file names or SHARED_SERVER groups), longest first; the
# others follow in collection order (integration before unit), then ALONE_LAST: the units with `alone`
# tests, which run best when the other workers are running out of work (fewer tests to wait for)
LONGEST = ("own-broker", "test_dp_scaleout.py", "kms", "test_cli.py", "registry", "test_dp_aggregate.py",
           "test_end_to_end.py", "test_shredding.py", "test_dp_lateness.py", "test_dp_drawn_once.py",
           "test_dp_schedule.py", "test_key_use.py", "test_dp_boundary.py", "test_audit_verify.py")
ALONE_LAST = ("test_rolling_policy.py", "test_soak.py", "test_delivery.py")
# modules that share a server started once per worker process (a session fixture, or a JVM that is
# costly to run twice at once) form one work unit, so one worker runs them all
SHARED_SERVER = {
    **dict.fromkeys(("test_registry.py", "test_consumer_evolution.py", "test_schema_evolution.py",
                     "test_registry_server.py"), "registry"),  # the session's Apicurio Registry
    **dict.fromkeys(("test_kms.py", "test_role_decryption.py"), "kms"),  # moto and OpenBao (conftest_kms)
    **dict.fromkeys(("test_tls.py", "test_embedded_broker_logs.py", "test_output_compression.py"),
                    "own-broker"),  # each starts a broker of its own: one extra JVM at a time
}


class _Run:
    """What the controller started, to stop in pytest_sessionfinish / pytest_unconfigure."""

    broker: subprocess.Popen[bytes] | None = None
    broker_log: Path | None = None
    lock_dir: Path | None = None


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")  # set by pytest-xdist in the processes it spawns


def _selects_integration(config: pytest.Config) -> bool:
    """Whether the run's paths include tests/integration (or a directory above it): a run of unit
    tests only does not pay for a broker."""
    if config.option.collectonly:
        return False
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::", 1)[0]).resolve()
        if path == INTEGRATION or INTEGRATION in path.parents or path in INTEGRATION.parents:
            return True
    return False


def _start_broker(directory: Path) -> tuple[subprocess.Popen[bytes], Path, str]:
    port = free_port()
    log = directory / "broker.log"
    with open(log, "wb") as out:  # a file, not a pipe: nobody reads the broker's output after its first line
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "broker", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ready = f"broker listening on 127.0.0.1:{port}"  # the one line `gateway broker` prints when ready
    while ready not in log.read_text(errors="replace"):  # no deadline: a first run fetches Kafka's jars
        if proc.poll() is not None:
            raise RuntimeError(f"`gateway broker` exited ({proc.returncode}):\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc, log, f"127.0.0.1:{port}"


def pytest_configure(config: pytest.Config) -> None:
    if _is_worker(config):
        return
    if not os.environ.get(LOCK_DIR_ENV):
        _Run.lock_dir = Path(tempfile.mkdtemp(prefix="gateway-tests-"))
        os.environ[LOCK_DIR_ENV] = str(_Run.lock_dir)  # inherited by the xdist workers spawned after this hook
    if not os.environ.get(BOOTSTRAP_ENV) and _selects_integration(config):
        directory = Path(tempfile.mkdtemp(prefix="gateway-test-broker-"))
        _Run.broker, _Run.broker_log, os.environ[BOOTSTRAP_ENV] = _start_broker(directory)


def _stop_broker() -> int | None:
    """SIGTERM the run's broker; its exit code (None when this run started none)."""
    proc, _Run.broker = _Run.broker, None
    if proc is None:
        return None
    os.environ.pop(BOOTSTRAP_ENV, None)
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        return -int(signal.SIGKILL)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After every worker finished (their fixtures stopped the gateway processes they started): the
    broker must stop cleanly on SIGTERM, as the integration fixture always checked."""
    code = _stop_broker()
    if code not in (None, 0):
        sys.stderr.write(f"\nthe embedded broker exited {code} on SIGTERM (log kept: {_Run.broker_log})\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif code == 0 and _Run.broker_log is not None:
        shutil.rmtree(_Run.broker_log.parent, ignore_errors=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop_broker()  # a run that ended before pytest_sessionfinish
    if _Run.lock_dir is not None:
        shutil.rmtree(_Run.lock_dir, ignore_errors=True)
        os.environ.pop(LOCK_DIR_ENV, None)
        _Run.lock_dir = None


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test: its module, or the group of modules that share a server."""
    module = nodeid.split("::", 1)[0]
    return SHARED_SERVER.get(module.rsplit("/", 1)[-1], module)


class ModuleScheduling(LoadScopeScheduling):
    """pytest-xdist's loadscope with work_unit as the scope. (Not `--dist loadgroup` with
    `xdist_group` marks: pytest-xdist 3.8 marks the group in `item._nodeid`, which pytest 9.2 no
    longer reads, so the marks are silently ignored.)"""

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> ModuleScheduling:
    return ModuleScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest work units first, the units with `alone` tests last: the workers take units in
    collection order (--no-loadscope-reorder), so a long unit started last would end the run alone.
    The orders are measured, not guarantees: a unit missing from them only costs balance."""
    rank = {name: i - len(LONGEST) for i, name in enumerate(LONGEST)}
    rank |= {name: 1 + i for i, name in enumerate(ALONE_LAST)}
    items.sort(key=lambda item: rank.get(work_unit(item.nodeid).rsplit("/", 1)[-1], 0))  # stable: file order kept


@contextmanager
def _turn(alone: bool) -> Iterator[None]:
    """A shared hold on the run's room for an ordinary test, an exclusive one for an `alone` test.
    The turnstile gives the exclusive hold precedence: new tests queue behind a waiting `alone` test."""
    directory = os.environ.get(LOCK_DIR_ENV)
    if not directory:
        yield
        return
    with open(Path(directory) / "turnstile", "a") as turnstile, open(Path(directory) / "room", "a") as room:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    with _turn(item.get_closest_marker("alone") is not None):
        return (yield)
