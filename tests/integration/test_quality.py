"""Data quality and re-identification risk through real workers and the real broker.

A ride stream with planted nulls, out-of-range values, broken formats, duplicates (same ride id in
another partition, after a restart and after a partition moved to a new worker), stale events and
an outlier: every planted case gets its rule's action, no clean event does, and the quality topic's
counts (summed over windows and partitions, and through `gateway quality show`) equal the truth
the test wrote down. A second stream with a known distribution of quasi-identifiers is enforced:
exactly the records of classes below k are withheld.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from gateway.core.pipeline import QUALITY_HEADER

from .conftest import Deployment, WorkerProcess, cli

pytestmark = pytest.mark.integration

CANARY_EMAIL = "canary.rider@example.org"


def _ride_schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Ride", "namespace": "example.rides",
        "privacy": {"source_topic": f"rides.raw.{suffix}", "sanitized_topic": f"rides.sanitized.{suffix}",
                    "subject": "rider_id", "event_id": "ride_id", "output": "json", "quality": {
                        "window_s": 2,
                        "checks": [{"name": "dropoff_after_request", "rule": ["dropoff_at", ">=", "requested_at"],
                                    "action": "reject"}],
                        "duplicates": {"action": "reject", "horizon_s": 3600},
                        "freshness": {"max_lag_s": 600, "action": "flag"},
                        "risk": {"quasi_identifiers": ["city"], "k": 2}}},
        "fields": [
            {"name": "ride_id", "type": "string", "privacy": "keep"},
            {"name": "rider_id", "type": "string", "privacy": {"tokenize": {"domain": "rider"}}},
            {"name": "fare", "type": "long", "privacy": "keep",
             "quality": {"range": {"min": 0, "max": 1_000_000, "action": "reject"},
                         "outlier": {"threshold": 3.5, "min_samples": 20, "window": 64}}},
            {"name": "currency", "type": "string", "privacy": "keep", "quality": {"allowed": ["EUR", "USD"]}},
            {"name": "email", "type": ["null", "string"], "default": None,
             "privacy": {"tokenize": {"domain": "contact"}},
             "quality": {"required": {"action": "measure"}, "format": {"detector": "EMAIL"}}},
            {"name": "requested_at", "type": "long", "privacy": "keep"},
            {"name": "dropoff_at", "type": "long", "privacy": "keep"},
            {"name": "city", "type": "string", "privacy": "keep"},
        ],
    }


class Stream:
    """What the test publishes, with the outcome and failed rules it expects of each event."""

    def __init__(self, d: Deployment, source: str) -> None:
        self.d = d
        self.source = source
        self.expected: dict[str, tuple[str, list[str]]] = {}  # ride id (+ copy tag) -> (outcome, failed rules)
        self.sent = 0
        self.producer = Producer({"bootstrap.servers": d.bootstrap, "linger.ms": 5})

    def ride(self, i: int, partition: int, failed: Sequence[str] = (), outcome: str = "sanitized",
             stale: bool = False, copy: str = "", **overrides: Any) -> None:
        rng = random.Random(i)
        ride = {"ride_id": f"R{i:05d}", "rider_id": f"rider-{i % 5}", "fare": 1500 + rng.randint(-300, 300),
                "currency": "EUR", "email": CANARY_EMAIL if i == 0 else f"rider{i}@example.com",
                "requested_at": 1_000 + i, "dropoff_at": 2_000 + i, "city": ("Lyon", "Nice")[i % 2]}
        ride.update(overrides)
        now_ms = int(time.time() * 1000)
        self.producer.produce(self.source, orjson.dumps(ride), partition=partition,
                              timestamp=now_ms - 3_600_000 if stale else now_ms,
                              headers=[("test-copy", copy.encode())])
        self.expected[ride["ride_id"] + copy] = (outcome, sorted(failed))
        self.sent += 1


def _wait_audited(d: Deployment, stream: Stream) -> list[dict[str, Any]]:
    assert stream.producer.flush(30) == 0
    return d.wait_for_audit(stream.sent)


def test_planted_cases_restart_and_partition_move(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    for existing in d.schemas.glob("*.avsc"):  # only the ride stream: its two partitions must move
        existing.unlink()
    schema = _ride_schema(d.suffix)
    (d.schemas / "rides.avsc").write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    source, sanitized = schema["privacy"]["source_topic"], schema["privacy"]["sanitized_topic"]
    quality_topic = f"privacy.quality.{d.suffix}"
    extra = ("--quality-topic", quality_topic)
    lint = cli("policy", "lint", str(d.schemas))
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    stream = Stream(d, source)

    workers: list[WorkerProcess] = [d.start_worker("q-a", partitions=2, extra=extra)]
    try:
        # phase 1: clean rides on both partitions, the planted cases on partition 0 after its warm-up
        for i in range(30):
            stream.ride(i, 0)
        for i in range(40, 50):
            stream.ride(i, 1)
        stream.ride(30, 0, ["fare.outlier"], fare=900_000)
        stream.ride(31, 0, ["fare.outlier", "fare.range"], "rejected:quality:fare.range", fare=-5)
        stream.ride(32, 0, ["freshness"], stale=True)
        stream.ride(33, 0, ["email.required"], email=None)
        stream.ride(34, 0, ["email.format"], email="call me maybe")
        stream.ride(35, 0, ["currency.allowed"], currency="GBP")
        stream.ride(36, 0, ["dropoff_after_request"], "rejected:quality:dropoff_after_request", dropoff_at=5)
        _wait_audited(d, stream)
        stream.ride(5, 1, ["duplicate"], "rejected:quality:duplicate", copy="+p1")  # same id, other partition
        _wait_audited(d, stream)

        # phase 2: a restart; the filter comes back from the log, not empty
        assert workers.pop().stop() == 0
        workers.append(d.start_worker("q-b", partitions=2, extra=extra))
        stream.ride(45, 0, ["duplicate"], "rejected:quality:duplicate", copy="+restart")
        stream.ride(10, 1, ["duplicate"], "rejected:quality:duplicate", copy="+restart")
        stream.ride(60, 0)
        stream.ride(61, 1)
        _wait_audited(d, stream)

        # phase 3: a second worker joins and takes one partition over
        workers.append(d.start_worker("q-c", partitions=2, extra=extra))
        deadline = time.monotonic() + 60
        while source not in workers[-1].log().split('"msg":"partitions assigned"', 1)[-1]:
            assert time.monotonic() < deadline, "no ride partition moved to the new worker"
            time.sleep(0.2)
        for partition in (0, 1):
            stream.ride(60, partition, ["duplicate"], "rejected:quality:duplicate", copy=f"+moved{partition}")
            stream.ride(61, partition, ["duplicate"], "rejected:quality:duplicate", copy=f"+moved{partition}")
        stream.ride(70, 0)
        stream.ride(71, 1)
        audit = _wait_audited(d, stream)

        # every window closes (idle partitions too): the counts sum up to the truth
        decoded = stream.sent
        deadline = time.monotonic() + 60
        while True:
            windows = [orjson.loads(r.value) for r in d.read(quality_topic)]
            if sum(w["events"] for w in windows) >= decoded:
                break
            assert time.monotonic() < deadline, f"{sum(w['events'] for w in windows)} of {decoded} events in windows"
            time.sleep(0.3)
        show = cli("quality", "show", "--bootstrap", d.bootstrap, "--quality-topic", quality_topic,
                   "--source", source, "--windows", "1000", "--json")
        assert show.returncode == 0, show.stderr.decode()
    finally:
        for worker in workers:
            assert worker.stop() == 0

    # each event's outcome and failed rules, from its audit event
    raw_ids = {}
    for record in d.read(source):
        body = orjson.loads(record.value)
        raw_ids[(record.partition, record.offset)] = body["ride_id"] + dict(record.headers)["test-copy"].decode()
    seen = {}
    for body in audit:
        event = body["event"]
        if event["topic"] != source:
            continue
        seen[raw_ids[(event["partition"], event["offset"])]] = (body["outcome"], sorted(body.get("quality", [])))
    assert seen == stream.expected

    # flagged records carry their flag rules; rejected ones are dead-lettered with the rule as reason
    flags = {}
    for record in d.read(sanitized):
        body = orjson.loads(record.value)
        flags[body["ride_id"]] = dict(record.headers).get(QUALITY_HEADER)
    assert flags["R00030"] == b"fare.outlier" and flags["R00034"] == b"email.format"
    assert flags["R00032"] == b"freshness" and flags["R00035"] == b"currency.allowed"
    assert flags["R00033"] is None and flags["R00001"] is None  # measure only / clean
    reasons = Counter(orjson.loads(r.value)["reason"] for r in d.read(f"{source}.dlq"))
    assert reasons == Counter(o.split(":", 1)[1] for o, _ in stream.expected.values() if o.startswith("rejected"))

    # the quality topic: per rule, the failures summed over windows and partitions are the truth
    truth = Counter(rule for _, rules in stream.expected.values() for rule in rules)
    totals: Counter[str] = Counter()
    for w in windows:
        for rule in w["rules"]:
            totals[rule["name"]] += rule["failed"]
    assert +totals == truth
    assert sum(w["events"] for w in windows) == decoded
    assert sum(w["sanitized"] for w in windows) == sum(o == "sanitized" for o, _ in stream.expected.values())
    assert sum(w["events"] - w["completeness"]["email"]["present"] for w in windows) == 1
    assert all("risk" in w for w in windows)
    shown = [orjson.loads(line) for line in show.stdout.splitlines()]
    assert sum(row["events"] for row in shown) == decoded
    assert Counter({name: sum(row["rules"].get(name, {}).get("failed", 0) for row in shown)
                    for name in truth}) == truth
    for topic in (quality_topic, f"{d.group_id}.quality-dedup"):  # counts and fingerprints only
        blob = b"".join((r.key or b"") + (r.value or b"") for r in d.read(topic))
        assert CANARY_EMAIL.encode() not in blob and b"R00005" not in blob and b"Lyon" not in blob, topic
    assert CANARY_EMAIL.encode() not in b"".join(r.value for r in d.read(d.audit_topic))


def test_enforce_withholds_exactly_the_records_of_small_classes(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    for existing in d.schemas.glob("*.avsc"):
        existing.unlink()
    distribution = {("north", "30-39"): 6, ("north", "40-49"): 2, ("south", "30-39"): 4, ("south", "70-79"): 1,
                    ("east", "50-59"): 3}
    total = sum(distribution.values())
    source, sanitized = f"visits.raw.{d.suffix}", f"visits.sanitized.{d.suffix}"
    schema = {
        "type": "record", "name": "Visit", "namespace": "example.risk",
        # the window is released when it holds every event: the test knows the whole window
        "privacy": {"source_topic": source, "sanitized_topic": sanitized, "event_id": "visit_id", "output": "json",
                    "quality": {"window_s": 300, "risk": {"quasi_identifiers": ["region", "age_band"], "k": 3,
                                                          "mode": "enforce", "max_held_events": total}}},
        "fields": [{"name": "visit_id", "type": "string", "privacy": "keep"},
                   {"name": "region", "type": "string", "privacy": "keep"},
                   {"name": "age_band", "type": "string", "privacy": "keep"},
                   {"name": "diagnosis", "type": "string", "privacy": "encrypt"}],
    }
    (d.schemas / "visits.avsc").write_bytes(orjson.dumps(schema))
    quality_topic = f"privacy.quality.{d.suffix}"
    visits = [{"visit_id": f"V{n}-{region}-{band}", "region": region, "age_band": band, "diagnosis": "J45"}
              for (region, band), count in distribution.items() for n in range(count)]
    random.Random(3).shuffle(visits)
    worker = d.start_worker("risk", partitions=1, extra=("--quality-topic", quality_topic))
    try:
        d.produce(source, [orjson.dumps(v) for v in visits], partition=0)
        audit = d.wait_for_audit(total)
        deadline = time.monotonic() + 30
        while not (windows := [orjson.loads(r.value) for r in d.read(quality_topic)]):
            assert time.monotonic() < deadline, "no quality record for the released window"
            time.sleep(0.2)
    finally:
        assert worker.stop() == 0

    small = {f"V{n}-{region}-{band}" for (region, band), count in distribution.items() if count < 3
             for n in range(count)}
    published = {orjson.loads(r.value)["visit_id"] for r in d.read(sanitized)}
    assert published == {v["visit_id"] for v in visits} - small
    outcomes = Counter(a["outcome"] for a in audit if a["event"]["topic"] == source)
    assert outcomes == {"sanitized": total - len(small), "withheld:k_anonymity": len(small)}
    (window,) = windows
    risk = window["risk"]
    assert (risk["records"], risk["classes"], risk["k"]) == (total, len(distribution), min(distribution.values()))
    assert risk["below_k_records"] == len(small)
    assert risk["below_k_share"] == round(len(small) / total, 6)
    assert window["withheld"] == len(small) and window["sanitized"] == total - len(small)
    # a held window (its offset committed at the first held event, before any audit record) verifies:
    # every offset audited once, withheld ones included, the chain at its committed head
    verify = cli("audit", "verify", "--bootstrap", d.bootstrap, "--topic", d.audit_topic, "--keyring", str(d.keyring),
                 "--group-id", d.group_id)
    assert verify.returncode == 0 and b"BREAK" not in verify.stdout, verify.stdout + verify.stderr
