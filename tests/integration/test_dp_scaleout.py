"""Scale-out: the same sanitized input through one aggregate worker and through two workers in one
group gives the same true (pre-noise) results per window and group, and those equal what the bounds
allow. The workers are `python -m tests.dp_worker`: the aggregate worker with the noise-free test
double (tests/dp_doubles.py) injected; the gateway package itself has no way to switch noise off."""

from __future__ import annotations

import random
import time
import uuid
import zlib
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from gateway.dp.bounding import ACCEPTED, ContributionBounder

from .conftest import Deployment, WorkerProcess
from .test_dp_aggregate import (
    NOISE_FREE_WORKER,
    audit_bodies,
    enable_aggregates,
    stages_drained,
    start_aggregator,
    wait_for,
)

pytestmark = pytest.mark.integration
WINDOW_S = 10
MOVE_WINDOW_S = 30
AGGREGATES = [
    {"name": "spend", "metric": "sum", "field": "amount_minor", "group_by": ["country"], "time_field": "occurred_at",
     "window_s": WINDOW_S, "grace_s": 5, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 2,
     "max_records_per_group": 2, "clamp": [0, 5000]},
    {"name": "visits", "metric": "count", "group_by": ["currency"], "time_field": "occurred_at",
     "window_s": WINDOW_S, "grace_s": 5, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
     "max_records_per_group": 3},
]


def _events(base: int) -> list[tuple[bytes, dict[str, Any]]]:
    rng = random.Random(17)
    out = []
    for i in range(500):
        subject = f"tok_v1_subject{rng.randint(0, 80)}"
        out.append((subject.encode(), {"country": rng.choice(["DE", "FR", "NL", "PL"]),
                                       "currency": rng.choice(["EUR", "USD", "GBP"]),
                                       "amount_minor": rng.randint(-100, 9000), "occurred_at": base + i * 40}))
    return out


def _spread_base(d: Deployment, partitions: int = 3) -> int:
    """A window start shortly ahead (windows close on the wall clock) whose stage-2 keys land on every
    contributions partition
    (librdkafka's default partitioner: CRC32 of the key), so that every worker has groups to release.
    Without this choice the time-derived keys can, in a few runs in a hundred, miss a partition."""
    window_ms = WINDOW_S * 1000
    base = (int(time.time() * 1000) + 15_000) // window_ms * window_ms + window_ms
    values = {"spend": ["DE", "FR", "NL", "PL"], "visits": ["EUR", "USD", "GBP"]}
    for step in range(100):
        start = base + step * window_ms
        keys = [f"{spec.id}|{w}|{orjson.dumps([v]).decode()}" for spec in d.payments.aggregates
                for w in (start, start + window_ms) for v in values[spec.name]]
        if {zlib.crc32(k.encode()) % partitions for k in keys} == set(range(partitions)):
            return start
    raise AssertionError("no window start spreads the groups over every partition")


def _expected(d: Deployment, events: list[tuple[bytes, dict[str, Any]]]) -> dict[tuple[str, int, str], tuple]:
    """What the bounds let through, computed with the pure stage-1 logic (a subject's events in order)."""
    specs = d.payments.aggregates
    bounder = ContributionBounder(specs)
    out: dict[tuple[str, int, str], list[int]] = {}
    for key, record in events:
        for spec, outcome, c in bounder.offer(key.decode(), record, 0):
            if outcome == ACCEPTED and c is not None:
                acc = out.setdefault((spec.id, c.window_start, c.group), [0, 0])  # release records name spec.id
                acc[0] += 1
                acc[1] += c.value
    return {k: (v[0], v[1] if k[0].endswith("/spend") else None) for k, v in out.items()}


def _released(d: Deployment) -> dict[tuple[str, int, str], tuple]:
    out = {}
    for r in d.read(d.payments.aggregates[0].output_topic):
        body = orjson.loads(r.value or b"")
        # the double's releases say what they are, and are charged like any other
        assert body["mechanism"] == "none:test-double" and body["epsilon"] == 1.0 and body["delta"] == 1e-6
        key = (body["aggregate"], body["window"]["start"], orjson.dumps(list(body["group"].values())).decode())
        assert key not in out, f"released twice: {key}"
        out[key] = (body["noisy_count"], body["noisy_sum"])
    return out


def _owned(worker: WorkerProcess, stage: str) -> set[str]:
    """The partitions a worker's stage owns, as its last "partitions owned" log line says."""
    owned: set[str] = set()
    for line in worker.log().splitlines():
        if '"msg":"partitions owned"' in line:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:  # a line still being written
                continue
            if entry.get("stage") == stage:
                owned = set(entry["partitions"])
    return owned


def _split(d: Deployment, workers: list[WorkerProcess]) -> bool:
    """The rebalance is over: in each stage every worker owns partitions, and each partition of the
    stage's input has exactly one owner."""
    consumer = Consumer({"bootstrap.servers": d.bootstrap, "group.id": "test-watermarks"})
    try:
        for stage, topic in (("bound", d.payments.sanitized_topic), ("release", f"{d.group_id}.dp-contributions")):
            partitions = {f"{topic}:{p}" for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions}
            owned = [_owned(w, stage) for w in workers]
            if not all(owned) or sum(map(len, owned)) != len(partitions) or set().union(*owned) != partitions:
                return False
        return True
    finally:
        consumer.close()


def test_one_worker_and_two_workers_give_the_same_pre_noise_sums(
        bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    one = Deployment(bootstrap, tmp_path_factory.mktemp("one"), uuid.uuid4().hex[:8])
    two = Deployment(bootstrap, tmp_path_factory.mktemp("two"), uuid.uuid4().hex[:8])
    workers: list[WorkerProcess] = []
    try:
        for d in (one, two):
            enable_aggregates(d, AGGREGATES)
        # idle close after 3 s: the input below takes well under a second to bound and repartition
        workers.append(start_aggregator(one, "solo", f"privacy.ledger.{one.suffix}", idle_s=3,
                                        command=NOISE_FREE_WORKER))
        first = start_aggregator(two, "a", f"privacy.ledger.{two.suffix}", idle_s=3, command=NOISE_FREE_WORKER)
        workers.append(first)
        second = start_aggregator(two, "b", f"privacy.ledger.{two.suffix}", idle_s=3, command=NOISE_FREE_WORKER)
        workers.append(second)
        # the first worker gives up half its partitions in the rebalance: wait for its new assignment
        wait_for(lambda: first.log().count('"stage":"release"') >= 2 and first.log().count('"stage":"bound"') >= 2,
                 30, "the rebalance")
        # ... and for the second worker's: every partition of each stage owned by exactly one of them
        wait_for(lambda: _split(two, [first, second]), 30, "both workers owning partitions of both stages")
        assert "noise-free test double" in first.log()
        base = _spread_base(two)
        events = _events(base)
        for d in (one, two):
            producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
            headers = [("gateway-schema", d.payments.sanitized_schema["name"].encode()),
                       ("gateway-encoding", b"json")]
            for key, record in events:
                producer.produce(d.payments.sanitized_topic, orjson.dumps(record), key, headers=headers)
            assert producer.flush(30) == 0
        expected = _expected(one, events)
        assert len({k[1] for k in expected}) == 2  # two windows
        for d in (one, two):
            wait_for(lambda d=d: len(_released(d)) >= len(expected), 60, "all groups released")
            # and nothing more can come: both stages committed their whole input
            wait_for(lambda d=d: stages_drained(d), 60, "both DP stages to commit their whole input")
        assert _released(one) == expected
        assert _released(two) == expected
        # two workers really shared the work: both released windows
        instances = {b["instance"] for b in audit_bodies(two, "dp_release")}
        assert instances == {"a", "b"}
    finally:
        for w in workers:
            w.stop()


def test_a_partition_moving_mid_window_does_not_grant_a_subject_its_bound_twice(
        bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Worker a bounds the first half of a window and is killed (-9); worker b takes over the same
    partitions mid-window and sees the second half. Each subject may add 2 records to the window's
    group in total, not 2 per owner: b must restore a's bounding state from the changelog."""
    d = Deployment(bootstrap, tmp_path_factory.mktemp("moved"), uuid.uuid4().hex[:8])
    enable_aggregates(d, [{"name": "visits", "metric": "count", "group_by": ["currency"],
                           "time_field": "occurred_at", "window_s": MOVE_WINDOW_S, "grace_s": 1, "epsilon": 1.0,
                           "delta": 1e-6, "max_groups_per_subject": 1, "max_records_per_group": 2}])
    ledger = f"privacy.ledger.{d.suffix}"
    # a window that starts now and stays open (on the wall clock) while the partitions move
    base = int(time.time() * 1000) // (MOVE_WINDOW_S * 1000) * (MOVE_WINDOW_S * 1000) + MOVE_WINDOW_S * 1000
    subjects = [f"tok_v1_moved{i}".encode() for i in range(12)]
    headers = [("gateway-schema", d.payments.sanitized_schema["name"].encode()), ("gateway-encoding", b"json")]

    def produce_half(half: int) -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        for i in range(3):  # three records per subject and half: one more than the bound already
            for s in subjects:
                record = {"currency": "EUR", "country": "DE", "amount_minor": 1,
                          "occurred_at": base + half * 10_000 + i * 1_000}
                producer.produce(d.payments.sanitized_topic, orjson.dumps(record), s, headers=headers)
        assert producer.flush(30) == 0

    contributions = f"{d.group_id}.dp-contributions"
    workers: list[WorkerProcess] = []
    try:
        a = start_aggregator(d, "a", ledger, idle_s=3, command=NOISE_FREE_WORKER)
        workers.append(a)
        produce_half(0)
        wait_for(lambda: len(d.read(contributions)) >= 2 * len(subjects), 60, "worker a to bound the first half")
        a.proc.kill()
        a.proc.wait(10)
        # worker b, alone in the group, takes over every partition mid-window
        b = start_aggregator(d, "b", ledger, idle_s=3, command=NOISE_FREE_WORKER)
        workers.append(b)
        produce_half(1)
        wait_for(lambda: _released(d), 150, "the window's release (it closes on the clock)")
        wait_for(lambda: stages_drained(d), 60, "both DP stages to commit their whole input")
        released = _released(d)
        assert list(released.values()) == [(2 * len(subjects), None)], released  # not 4 per subject
        assert len(d.read(contributions)) == 2 * len(subjects)
        # b rebuilt a's state from the changelog before reading (its log says only that, never how
        # many entries: that is an exact count of subjects, kept inside the DP boundary)
        restores = [orjson.loads(line) for line in b.log().splitlines() if '"bounding state restored"' in line]
        assert restores and sum(r["partitions"] for r in restores) >= 1
        assert not any("entries" in r for r in restores)
        state = d.read(f"{d.group_id}.dp-bound-state")
        assert {orjson.loads(r.key or b"[]")[5] for r in state if orjson.loads(r.key or b"[]")[2] == "s"} == \
               {s.decode() for s in subjects}
    finally:
        for w in workers:
            w.stop()
