"""The adversary reads the sanitized topic's Kafka record timestamps (the real worker and broker).

A visit schema shifts `visit_time` by a secret per-subject offset and truncates `opened_at` to the
hour, and declares nothing about the record timestamp. Raw events carry canary timestamps (odd
minutes, seconds and milliseconds). On the sanitized topic the adversary computes
`shifted visit_time - record timestamp` per record and looks for the canary times: the difference
must be the same for every subject (it tells no offset), every timestamp must sit on an hour (the
truncation is not bypassed), and no canary time may appear among them.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from .conftest import Deployment, cli

pytestmark = pytest.mark.integration

DAY = 86_400_000
HOUR = 3_600_000
MAX_DAYS = 20
N_SUBJECTS = 16
N_EVENTS = 48


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Visit", "namespace": "example.ts",
        "privacy": {"source_topic": f"visits.raw.{suffix}", "sanitized_topic": f"visits.sanitized.{suffix}",
                    "subject": "patient_id", "output": "json"},
        "fields": [
            {"name": "visit_id", "type": "string", "privacy": "keep"},
            {"name": "patient_id", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
            {"name": "visit_time", "type": {"type": "long", "logicalType": "timestamp-millis"},
             "privacy": {"shift_date": {"domain": "visit-dates", "max_days": MAX_DAYS}}},
            {"name": "opened_at", "type": {"type": "long", "logicalType": "timestamp-millis"},
             "privacy": {"generalize": {"truncate": "hour"}}},
        ],
    }


def _read_timestamps(bootstrap: str, topic: str, n: int, timeout_s: float = 60.0) -> list[tuple[int, bytes]]:
    """(Kafka timestamp, value) of the first `n` committed records of every partition of `topic`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ts-reader-{topic}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            assert time.monotonic() < deadline, f"{len(out)} of {n} records on {topic}"
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    out.append((msg.timestamp()[1], msg.value()))
        return out
    finally:
        consumer.close()


def test_the_sanitized_timestamps_give_away_no_offset_and_no_exact_time(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    schema = _schema(d.suffix)
    (d.schemas / "visits.avsc").write_bytes(orjson.dumps(schema))
    lint = cli("policy", "lint", str(d.schemas / "visits.avsc"))
    assert lint.returncode == 0 and b"(record).timestamp" not in lint.stdout, lint.stdout + lint.stderr
    source, sanitized = schema["privacy"]["source_topic"], schema["privacy"]["sanitized_topic"]
    now = int(time.time() * 1000)
    base = now - 2 * DAY - now % HOUR + 47 * 60_000 + 13_000 + 457  # canary: minute 47, second 13, ms 457
    canaries = {base + i * 1_001 for i in range(N_EVENTS)}
    raw_times = {}
    worker = d.start_worker("timestamps")
    try:
        producer = Producer({"bootstrap.servers": d.bootstrap})
        for i in range(N_EVENTS):
            ts = base + i * 1_001
            raw_times[f"V{i}"] = ts
            visit = {"visit_id": f"V{i}", "patient_id": f"patient-{i % N_SUBJECTS}", "visit_time": ts,
                     "opened_at": ts}
            producer.produce(source, orjson.dumps(visit), timestamp=ts)
        assert producer.flush(30) == 0
        audit = d.wait_for_audit(N_EVENTS)
    finally:
        assert worker.stop() == 0
    assert sum(1 for a in audit if a.get("outcome") == "sanitized") == N_EVENTS

    published = _read_timestamps(d.bootstrap, sanitized, N_EVENTS)
    assert len(published) == N_EVENTS
    offsets, estimates = set(), set()
    for timestamp, value in published:
        record = orjson.loads(value)
        raw = raw_times[record["visit_id"]]
        assert timestamp not in canaries and timestamp % HOUR == 0  # the hour truncation holds
        assert 0 < timestamp <= raw  # never ahead of the event (the broker would refuse it)
        offsets.add((record["visit_time"] - raw) // DAY)  # the secret (the test knows the raw time)
        estimates.add((record["visit_time"] - timestamp) // DAY)  # the adversary's estimate of it
    assert len(offsets) > 3  # subjects' offsets differ...
    assert estimates == {MAX_DAYS}  # ...the adversary's estimate is one public constant for every subject


def test_five_events_of_one_person_do_not_pass_k_5(fresh_deployment: Deployment) -> None:
    """k counts people: one person's five events in a class are withheld under k = 5 enforce, five
    people's five events in another class are published (the real worker, one held window)."""
    d = fresh_deployment
    for existing in d.schemas.glob("*.avsc"):
        existing.unlink()
    source, sanitized = f"risk.raw.{d.suffix}", f"risk.sanitized.{d.suffix}"
    schema = {
        "type": "record", "name": "Ride", "namespace": "example.k",
        "privacy": {"source_topic": source, "sanitized_topic": sanitized, "subject": "rider_id", "output": "json",
                    "quality": {"window_s": 300, "risk": {"quasi_identifiers": ["city"], "k": 5, "mode": "enforce",
                                                          "max_held_events": 10}}},
        "fields": [{"name": "ride_id", "type": "string", "privacy": "keep"},
                   {"name": "rider_id", "type": "string", "privacy": {"tokenize": {"domain": "rider"}}},
                   {"name": "city", "type": "string", "privacy": "keep"}],
    }
    (d.schemas / "rides.avsc").write_bytes(orjson.dumps(schema))
    rides = ([{"ride_id": f"alone-{i}", "rider_id": "rider-alice", "city": "Lyon"} for i in range(5)]
             + [{"ride_id": f"crowd-{i}", "rider_id": f"rider-{i}", "city": "Nice"} for i in range(5)])
    worker = d.start_worker("k-people", partitions=1)
    try:
        d.produce(source, [orjson.dumps(r) for r in rides], partition=0)
        audit = d.wait_for_audit(len(rides))
    finally:
        assert worker.stop() == 0
    outcomes = {a["event"]["offset"]: a["outcome"] for a in audit if a["event"]["topic"] == source}
    assert outcomes == {**dict.fromkeys(range(5), "withheld:k_anonymity"), **dict.fromkeys(range(5, 10), "sanitized")}
    published = sorted(orjson.loads(r.value)["ride_id"] for r in d.read(sanitized))
    assert published == [f"crowd-{i}" for i in range(5)]
