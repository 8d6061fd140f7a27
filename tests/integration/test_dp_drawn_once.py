"""A DP release is drawn once (issue #31, item 1), on the real broker. The release commit is made to
fail (tests/dp_fault_worker.py): its records reach the log in a transaction that aborts, or the
worker is killed before committing. A `read_uncommitted` reader (no ACL can forbid that isolation
level) then sees the aborted release and the one that follows: the two must be the same bytes, for
the per-window aggregates and for the running totals of a continual release, or the window would
have spent its epsilon twice."""

from __future__ import annotations

import datetime
import time
from collections import defaultdict
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment
from .test_dp_aggregate import enable_aggregates, start_aggregator, wait_for

pytestmark = pytest.mark.integration
WINDOW_S = 4
PER_COUNTRY = {"DE": 40, "FR": 30}


def _declare(d: Deployment, base_s: int, continual: bool) -> None:
    aggregates: list[dict[str, Any]] = [
        {"name": "visits", "metric": "count", "group_by": ["country"], "time_field": "occurred_at",
         "window_s": WINDOW_S, "grace_s": WINDOW_S, "epsilon": 1.0, "delta": 1e-6,
         "max_groups_per_subject": 1, "max_records_per_group": 1}]
    if continual:
        start = datetime.datetime.fromtimestamp(base_s, datetime.UTC).isoformat()
        aggregates.append({"name": "running", "metric": "count", "group_by": ["country"],
                           "time_field": "occurred_at", "window_s": WINDOW_S, "grace_s": WINDOW_S,
                           "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
                           "max_records_per_group": 1,
                           "continual": {"horizon_windows": 2, "start": start, "groups": [["DE"], ["FR"]]}})
    enable_aggregates(d, aggregates)


def _events(d: Deployment, base_ms: int) -> list[bytes]:
    samples = SampleEvents(seed=31)
    out = []
    for country, n in PER_COUNTRY.items():
        for i in range(n):
            e = samples.payment()
            e.update(user_id=f"s-{country}-{i}", country=country, occurred_at=base_ms + 100 + i)
            out.append(encode_raw(d.payments, e, "avro"))
    return out


def read_uncommitted(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """Every record of `topic` as a read_uncommitted reader sees it: aborted transactions included."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"uncommitted-{time.monotonic_ns()}",
                         "isolation.level": "read_uncommitted", "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        out, eof = [], set()
        deadline = time.monotonic() + 30
        while len(eof) < len(partitions) and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None:
                continue
            if m.error():
                eof.add(m.partition())
                continue
            out.append((m.key() or b"", m.value() or b""))
        return out
    finally:
        consumer.close()


def _versions(d: Deployment, topic: str) -> dict[bytes, set[bytes]]:
    seen: dict[bytes, set[bytes]] = defaultdict(set)
    copies: dict[bytes, int] = defaultdict(int)
    for key, value in read_uncommitted(d.bootstrap, topic):
        seen[key].add(value)
        copies[key] += 1
    assert any(n >= 2 for n in copies.values()), "no aborted release in the log: the fault did not fire"
    return seen


def _start_and_base(continual: bool, d: Deployment) -> tuple[int, int]:
    # a window far enough ahead for the workers to start: its events are on time
    base_s = (int(time.time()) + 12) // WINDOW_S * WINDOW_S + WINDOW_S
    _declare(d, base_s, continual)
    return base_s, base_s * 1000


def test_an_aborted_release_commit_is_released_again_with_the_same_bytes(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    _, base = _start_and_base(True, d)
    sanitizer = d.start_worker("drawn-sanitize")
    aggregator = start_aggregator(d, "drawn", f"privacy.ledger.{d.suffix}",
                                  command=("tests.dp_fault_worker", "abort"))
    topic = d.payments.aggregates[0].output_topic
    try:
        d.produce(d.payments.source_topic, _events(d, base))

        def released() -> bool:
            records = [orjson.loads(r.value or b"") for r in d.read(topic)]
            per_window = {(r["aggregate"], r["window"]["start"]) for r in records}
            schema = d.payments.aggregates[0].schema
            return {(f"{schema}/visits", base), (f"{schema}/running", base)} <= per_window

        wait_for(released, 90, "the releases of the window and of its running totals")
    finally:
        assert aggregator.stop() == 0
        assert sanitizer.stop() == 0
    assert '"msg":"fault injected at the release commit"' in aggregator.log()
    versions = _versions(d, topic)
    differing = {k: v for k, v in versions.items() if len(v) > 1}
    assert not differing, f"{len(differing)} release(s) published with two different draws: {sorted(differing)}"
    committed = [orjson.loads(r.value or b"") for r in d.read(topic)]
    visits = f"{d.payments.aggregates[0].schema}/visits"
    assert any(r["aggregate"] == visits and r["window"]["start"] == base for r in committed)


def test_a_worker_killed_before_its_release_commit_is_replaced_with_the_same_bytes(
        fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    _, base = _start_and_base(False, d)
    sanitizer = d.start_worker("killed-sanitize")
    ledger = f"privacy.ledger.{d.suffix}"
    killed = start_aggregator(d, "killed", ledger, command=("tests.dp_fault_worker", "kill"))
    topic = d.payments.aggregates[0].output_topic
    try:
        d.produce(d.payments.source_topic, _events(d, base))
        assert killed.proc.wait(90) == -9
        assert '"msg":"fault injected at the release commit"' in killed.log()
        killed.handle.close()
        # the same instance id: its transactional id fences the open transaction
        again = start_aggregator(d, "killed", ledger)
        try:
            wait_for(lambda: any(orjson.loads(r.value or b"")["window"]["start"] == base for r in d.read(topic)),
                     90, "the window's release by the next worker")
        finally:
            assert again.stop() == 0
    finally:
        assert sanitizer.stop() == 0
        if killed.alive():
            killed.proc.kill()
    versions = _versions(d, topic)
    differing = {k: v for k, v in versions.items() if len(v) > 1}
    assert not differing, f"{len(differing)} release(s) published with two different draws: {sorted(differing)}"

