"""Bounded soak: a fixed event count at a steady rate through one worker; every event is processed,
and resident memory is flat after warm-up (and far under the 300 MB goal)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment, group_progress

pytestmark = pytest.mark.integration

EVENTS = 72_000  # 18 s at the rate: a warm-up quarter of 18,000 events, then 36,000 compared with it
CHUNK = 3_000
RATE_PER_S = 4_000


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.alone  # a fixed publishing rate, resident memory compared across the run
def test_memory_is_flat_after_warm_up(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    worker = d.start_worker("soak")
    samples = SampleEvents(seed=42)
    chunk = [encode_raw(d.payments, samples.payment(), "confluent") for _ in range(CHUNK)]
    rss: list[tuple[int, float]] = []
    started = time.monotonic()
    try:
        for sent in range(0, EVENTS, CHUNK):
            d.produce(d.payments.source_topic, chunk)  # same payloads: memory growth can't hide in data
            rss.append((sent, _rss_mb(worker.proc.pid)))
            pause = (sent + CHUNK) / RATE_PER_S - (time.monotonic() - started)
            if pause > 0:
                time.sleep(pause)
        deadline = time.monotonic() + 120
        while group_progress(d.bootstrap, d.group_id, d.payments.source_topic) != (EVENTS, EVENTS):
            assert time.monotonic() < deadline, group_progress(d.bootstrap, d.group_id, d.payments.source_topic)
            time.sleep(0.5)
        rss.append((EVENTS, _rss_mb(worker.proc.pid)))
        assert worker.alive()
    finally:
        worker.stop()
    warm = [mb for sent, mb in rss if EVENTS // 4 <= sent < EVENTS // 2]
    late = [mb for sent, mb in rss if sent >= EVENTS // 2]
    print(f"\nsoak: {EVENTS} events in {time.monotonic() - started:.0f}s; RSS MB after warm-up "
          f"{min(warm):.0f}-{max(warm):.0f}, second half {min(late):.0f}-{max(late):.0f}")
    assert max(late) <= max(warm) * 1.10 + 5, rss
    # every event processed exactly once: one audit event per input offset, each of them
    audited = d.audit_entries()
    assert len(audited) == EVENTS
    assert len({(e["event"]["partition"], e["event"]["offset"]) for e in audited}) == EVENTS
    assert max(mb for _, mb in rss) < 300
