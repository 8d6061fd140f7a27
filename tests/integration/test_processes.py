"""`gateway run --processes 2`: two workers in the group under one supervisor, on the real broker.

Every event is audited exactly once across both; the supervisor's /metrics is the union of its
children's (labelled by process) and /readyz answers for both; a child killed with SIGKILL comes
back after its backoff and the group goes on without losing or repeating an event; SIGTERM stops
them all and the supervisor exits 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from gateway.embedded.broker import free_port
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents
from tests.http_get import http_get

from .conftest import ENV, REPO, Deployment, WorkerProcess, wait_for

pytestmark = pytest.mark.integration


def _sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) if match else {}
        if match and all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _ready(port: int) -> bool:
    try:
        return http_get(f"http://127.0.0.1:{port}/readyz")[0] == 200
    except OSError:  # not listening yet
        return False


def _publish(d: Deployment, samples: SampleEvents, count: int) -> None:
    """Round-robin over the four partitions, so both processes get events."""
    for partition in range(4):
        d.produce(d.payments.source_topic, [encode_raw(d.payments, samples.payment(), "json")
                                            for _ in range(count // 4)], partition=partition)


def test_two_processes_share_the_group_survive_a_kill_and_stop_together(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    (d.schemas / "clinical_visits.avsc").unlink()  # one topic's four partitions: two for each process
    port = free_port()
    log_path = d.root / "supervisor.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--processes", "2", "--bootstrap", d.bootstrap,
         "--schemas", str(d.schemas), "--keyring", str(d.keyring), "--audit-topic", d.audit_topic,
         "--group-id", d.group_id, "--partitions", "4", "--session-timeout-ms", "6000",
         "--metrics-port", str(port)], stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
    supervisor = WorkerProcess(proc, log_path, handle)
    samples = SampleEvents(seed=11)
    try:
        wait_for(lambda: _ready(port), "both processes ready")
        pids = [int(p) for p in re.search(r'"pids":\[([\d,]+)\]', supervisor.log()).group(1).split(",")]
        assert len(pids) == 2 and proc.pid not in pids
        _publish(d, samples, 300)
        d.wait_for_audit(300)
        scrape = http_get(f"http://127.0.0.1:{port}/metrics")[1]
        by_process = {p: _sum(scrape, "gateway_events_total", source_topic=d.payments.source_topic, process=p)
                      for p in ("0", "1")}
        assert sum(by_process.values()) == 300
        assert all(n > 0 for n in by_process.values()), by_process  # both took a share of the partitions

        # SIGKILL one child: the supervisor restarts it; its partitions come back; nothing is lost
        os.kill(pids[0], 9)
        supervisor.wait_for_log('"msg":"worker process restarted"', timeout_s=30)
        pids.append(int(re.search(r'"msg":"worker process restarted".*?"pid":(\d+)', supervisor.log()).group(1)))
        _publish(d, samples, 200)
        audit = d.wait_for_audit(500, timeout_s=120)
        wait_for(lambda: _ready(port), "ready again after the restart")
        restarts = _sum(http_get(f"http://127.0.0.1:{port}/metrics")[1], "gateway_supervisor_restarts_total",
                        process="0")
        assert restarts == 1
    finally:
        code = supervisor.stop(timeout_s=90)
    assert code == 0
    for pid in pids:  # every child stopped with the supervisor (the killed one, its successor, the other)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    offsets = Counter((b["event"]["partition"], b["event"]["offset"]) for b in audit
                      if b["event"]["topic"] == d.payments.source_topic)
    assert len(offsets) == 500 and set(offsets.values()) == {1}  # each event audited exactly once
