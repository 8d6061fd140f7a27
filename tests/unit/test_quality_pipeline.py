"""Quality rules, duplicates, freshness and the risk measure through the pipeline (no Kafka).

The planted stream's expected outcome per event is written down by the test as it plants it; the
pipeline's audit events, headers, dead letters and quality records must match it exactly.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import QUALITY_HEADER, Pipeline, RawEvent, dedup_topic
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_file
from gateway.errors import PolicyError
from gateway.keys.keyring import Keyring
from gateway.runtime.jobs.sanitize import committed_quality
from gateway.settings import GatewayConfig

SOURCE = "rides.raw"
CANARY_EMAIL = "canary.rider@example.org"


def _schema(risk_mode: str = "report", k: int = 3) -> dict[str, Any]:
    return {
        "type": "record", "name": "Ride", "namespace": "t",
        "privacy": {"source_topic": SOURCE, "sanitized_topic": "rides.sanitized", "subject": "rider_id",
                    "event_id": "ride_id", "output": "json", "quality": {
                        "window_s": 60,
                        "checks": [{"name": "dropoff_after_request", "rule": ["dropoff_at", ">=", "requested_at"],
                                    "action": "reject"}],
                        "duplicates": {"action": "reject", "horizon_s": 3600},
                        "freshness": {"max_lag_s": 300, "action": "flag"},
                        "risk": {"quasi_identifiers": ["city", "age_band"], "k": k, "mode": risk_mode}}},
        "fields": [
            {"name": "ride_id", "type": "string", "privacy": "keep"},
            {"name": "rider_id", "type": "string", "privacy": {"tokenize": {"domain": "rider"}}},
            {"name": "fare", "type": "long", "privacy": "keep",
             "quality": {"range": {"min": 0, "max": 1_000_000, "action": "reject"},
                         "outlier": {"threshold": 3.5, "min_samples": 20, "window": 64, "action": "flag"}}},
            {"name": "currency", "type": "string", "privacy": "keep",
             "quality": {"allowed": {"values": ["EUR", "USD"], "action": "flag"}}},
            {"name": "email", "type": ["null", "string"], "default": None,
             "privacy": {"tokenize": {"domain": "contact"}},
             "quality": {"required": {"action": "measure", "completeness": 0.9},
                         "format": {"detector": "EMAIL", "action": "flag"}}},
            {"name": "requested_at", "type": "long", "privacy": "keep"},
            {"name": "dropoff_at", "type": "long", "privacy": "keep"},
            {"name": "city", "type": "string", "privacy": "keep"},
            {"name": "age_band", "type": "string", "privacy": "keep"},
        ],
    }


def _pipeline(write_schema: Any, tmp_path: Path, schema: dict[str, Any]) -> Pipeline:
    plan = compile_plan(load_schema_file(write_schema(schema)))
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t")
    ring = Keyring.open(tmp_path / "k.json")
    return Pipeline([plan], ring, config, 1, tokenizers(ring, [plan]))


def _ride(i: int, **overrides: Any) -> dict[str, Any]:
    rng = random.Random(i)
    ride = {"ride_id": f"R{i:05d}", "rider_id": f"rider-{i % 7}", "fare": 1500 + rng.randint(-300, 300),
            "currency": "EUR", "email": f"rider{i}@example.com", "requested_at": 1_000 + i, "dropoff_at": 2_000 + i,
            "city": "Lyon", "age_band": "30-39"}
    ride.update(overrides)
    return ride


def _events(rides: list[dict[str, Any]], now_ms: int, stale: set[int] = frozenset(), partition: int = 0,
            first_offset: int = 0) -> list[RawEvent]:
    return [RawEvent(SOURCE, partition, first_offset + i, now_ms - (3_600_000 if i in stale else 1_000), None,
                     orjson.dumps(r), None) for i, r in enumerate(rides)]


def _audits(result: Any) -> list[dict[str, Any]]:
    return record_entries(r.value for r in result.records if r.topic == "privacy.audit")


def _planted() -> tuple[list[dict[str, Any]], dict[int, str], dict[int, list[str]], set[int]]:
    """40 clean rides then the planted cases: (rides, expected outcome by index when not 'sanitized',
    expected failed rules by index, the stale indexes)."""
    rides = [_ride(i) for i in range(40)]
    outcome: dict[int, str] = {}
    failed: dict[int, list[str]] = {}

    def plant(ride: dict[str, Any], rules: list[str], result: str = "sanitized") -> int:
        rides.append(ride)
        index = len(rides) - 1
        failed[index] = rules
        if result != "sanitized":
            outcome[index] = result
        return index

    # a negative fare is out of range, and far from the fares seen: an outlier as well
    plant(_ride(100, fare=-5), ["fare.range", "fare.outlier"], "rejected:quality:fare.range")
    plant(_ride(101, currency="GBP"), ["currency.allowed"])
    plant(_ride(102, email=None), ["email.required"])
    plant(_ride(103, email="not an address"), ["email.format"])
    plant(_ride(104, dropoff_at=10), ["dropoff_after_request"], "rejected:quality:dropoff_after_request")
    plant(_ride(5), ["duplicate"], "rejected:quality:duplicate")  # the id of clean ride 5
    stale = {plant(_ride(106), ["freshness"])}
    plant(_ride(107, fare=900_000), ["fare.outlier"])
    # two rules at once: flagged for one, rejected by the other (the reject decides)
    plant(_ride(108, currency="GBP", fare=-1), ["fare.range", "fare.outlier", "currency.allowed"],
          "rejected:quality:fare.range")
    return rides, outcome, failed, stale


def test_planted_cases_get_their_rules_actions_and_clean_events_none(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    rides, outcome, failed, stale = _planted()
    now_ms = int(time.time() * 1000)
    result = pipeline.process(_events(rides, now_ms, stale))

    audits = {a["event"]["offset"]: a for a in _audits(result)}
    assert len(audits) == len(rides)
    for i in range(len(rides)):
        assert audits[i]["outcome"] == outcome.get(i, "sanitized"), i
        assert sorted(audits[i].get("quality", [])) == sorted(failed.get(i, [])), i
    flagged = {int(dict(r.headers)["gateway-source"].decode().rsplit("/", 1)[1]): dict(r.headers).get(QUALITY_HEADER)
               for r in result.records if r.topic == "rides.sanitized"}
    expected_flags = {i: ",".join(n for n in failed.get(i, []) if n != "email.required") or None
                      for i in range(len(rides)) if i not in outcome}
    assert flagged == {i: (f.encode() if f else None) for i, f in expected_flags.items()}
    dead = [orjson.loads(r.value) for r in result.records if r.topic == f"{SOURCE}.dlq"]
    assert sorted(d["reason"] for d in dead) == sorted(o.split(":", 1)[1] for o in outcome.values())
    # counts for the metrics: one per failed rule and event, by rule and action
    quality_counts = {rule: n for (_, rule, _), n in result.counts.quality.items()}
    expected_counts: dict[str, int] = {}
    for rules in failed.values():
        for name in rules:
            expected_counts[name] = expected_counts.get(name, 0) + 1
    assert quality_counts == expected_counts


def test_the_window_record_counts_the_truth_and_survives_the_commit_metadata(write_schema: Any,
                                                                            tmp_path: Path) -> None:
    schema = _schema()
    pipeline = _pipeline(write_schema, tmp_path, schema)
    rides, outcome, failed, stale = _planted()
    now_ms = int(time.time() * 1000)
    pipeline.process(_events(rides, now_ms, stale))
    metadata = pipeline.commit_metadata(SOURCE, 0)
    assert metadata is not None and len(metadata.encode()) < 4096

    # a new owner of the partition resumes from what was committed with the offset
    other = _pipeline(write_schema, tmp_path, schema)
    other.resume_quality(SOURCE, 0, committed_quality(metadata))
    for candidate in (pipeline, other):
        (record,) = candidate.roll_windows([(SOURCE, 0)], now_ms + 61_000)
        window = orjson.loads(record.value)
        assert record.topic == "privacy.quality" and record.key == f"{SOURCE}/0".encode()
        assert window["events"] == len(rides)
        assert window["sanitized"] == len(rides) - len(outcome)
        by_rule = {r["name"]: r["failed"] for r in window["rules"]}
        for name in by_rule:
            assert by_rule[name] == sum(name in rules for rules in failed.values()), name
        assert window["completeness"]["email"]["present"] == len(rides) - 1
        assert window["completeness"]["email"]["met"] is True
        assert window["lag_ms"]["max"] >= 3_600_000
        assert CANARY_EMAIL.encode() not in record.value and b"Lyon" not in record.value
    assert pipeline.roll_windows([(SOURCE, 0)], now_ms + 61_000) == []  # rolled once: the new window is empty


def test_duplicates_are_found_through_the_log_and_an_aborted_batch_leaves_none(write_schema: Any,
                                                                            tmp_path: Path) -> None:
    schema = _schema()
    first = _pipeline(write_schema, tmp_path, schema)
    now_ms = int(time.time() * 1000)
    result = first.process(_events([_ride(i) for i in range(10)], now_ms))
    log = [(r.key, r.value) for r in result.records if r.topic == dedup_topic(first.config)]
    assert len(log) == 1 and b"R0000" not in log[0][1]  # fingerprints, never the ids

    # another worker (or this one after a restart) that read the log rejects the same ids elsewhere
    second = _pipeline(write_schema, tmp_path, schema)
    second.apply_dedup_log(log)
    again = second.process(_events([_ride(3), _ride(20)], now_ms, partition=1))
    assert [a["outcome"] for a in _audits(again)] == ["rejected:quality:duplicate", "sanitized"]

    # the batch aborted: its partitions close, their unconfirmed ids are forgotten
    first.forget_quality([(SOURCE, 0)])
    retry = first.process(_events([_ride(3)], now_ms))
    assert [a["outcome"] for a in _audits(retry)] == ["sanitized"]


def test_an_id_is_a_duplicate_only_of_an_event_published_before_it_in_the_slice(write_schema: Any,
                                                                                tmp_path: Path) -> None:
    """The rules run over a slice before its first event is published; the verdict on a repeated id still
    follows what was published before it: not an event the rules rejected, nor one dead-lettered later, nor
    one of an undecodable event; and the second of two published ones is a duplicate, in any partition."""
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    now_ms = int(time.time() * 1000)
    events = _events([_ride(7, fare=-5), _ride(7), _ride(7), _ride(8)], now_ms)
    events.insert(1, RawEvent(SOURCE, 0, 99, now_ms - 1_000, None, b"{not json", None))
    events.append(RawEvent(SOURCE, 1, 0, now_ms - 1_000, None, orjson.dumps(_ride(8)), None))
    result = pipeline.process(events)
    assert [a["outcome"] for a in _audits(result)] == [
        "rejected:quality:fare.range", "rejected:json_invalid", "sanitized", "rejected:quality:duplicate",
        "sanitized", "rejected:quality:duplicate"]
    assert {rule: n for (_, rule, _), n in result.counts.quality.items()}["duplicate"] == 2
    window = pipeline.stages[SOURCE].quality.partitions[0].window  # type: ignore[union-attr]
    duplicate = pipeline.stages[SOURCE].quality.rule_names.index("duplicate")  # type: ignore[union-attr]
    assert window.failed[duplicate] == 1 and window.events == 4 and window.sanitized == 2


def test_enforce_withholds_exactly_the_small_classes(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema("enforce", k=3))
    plan_counts = {("Lyon", "30-39"): 5, ("Lyon", "40-49"): 2, ("Nice", "30-39"): 3, ("Nice", "60-69"): 1}
    rides: list[dict[str, Any]] = []
    for (city, band), n in plan_counts.items():
        for _ in range(n):
            rides.append(_ride(len(rides), city=city, age_band=band))
    now_ms = int(time.time() * 1000)
    result = pipeline.process(_events(rides, now_ms), withhold_since_ms=now_ms - 60_000)

    small = {i for i, r in enumerate(rides) if plan_counts[(r["city"], r["age_band"])] < 3}
    audits = {a["event"]["offset"]: a for a in _audits(result)}
    assert {i for i, a in audits.items() if a["outcome"] == "withheld:k_anonymity"} == small
    assert all(audits[i]["outcome"] == "sanitized" for i in set(range(len(rides))) - small)
    published = [orjson.loads(r.value) for r in result.records if r.topic == "rides.sanitized"]
    assert sorted(p["ride_id"] for p in published) == sorted(rides[i]["ride_id"] for i in range(len(rides))
                                                             if i not in small)
    (record,) = [orjson.loads(r.value) for r in result.records if r.topic == "privacy.quality"]
    assert record["risk"]["k"] == 1 and record["risk"]["below_k_records"] == len(small)
    assert record["withheld"] == len(small) and record["sanitized"] == len(rides) - len(small)


@pytest.mark.parametrize(("field_quality", "where", "says"), [
    ({"range": [0, 10]}, "currency.range", "string"),
    ({"format": {"detector": "SHOE_SIZE"}}, "currency.format", "SHOE_SIZE"),
    ({"format": {"regex": "(["}}, "currency.format", "regex"),
    ({"allowed": {"values": ["EUR"], "action": "explode"}}, "currency.allowed", "explode"),
])
def test_bad_rules_fail_naming_schema_field_and_rule(write_schema: Any, field_quality: dict[str, Any], where: str,
                                                     says: str) -> None:
    schema = _schema()
    schema["fields"][3]["quality"] = field_quality
    path = write_schema(schema)
    problems = [p for p in lint_file(path) if p.severity == "error"]
    assert problems and any(p.where == where and says in p.message for p in problems), problems
    with pytest.raises(PolicyError, match=where.replace(".", r"\.")):
        compile_plan(load_schema_file(path))


def test_risk_fields_must_reach_consumers_in_a_deterministic_form(write_schema: Any) -> None:
    schema = _schema()
    schema["privacy"]["quality"]["risk"]["quasi_identifiers"] = ["city", "email_plain"]
    schema["fields"].append({"name": "email_plain", "type": "string", "privacy": "encrypt"})
    problems = [p for p in lint_file(write_schema(schema)) if p.severity == "error"]
    assert any(p.where == "risk" and "encrypted" in p.message for p in problems), problems


def test_quality_declared_where_it_would_never_run_is_an_error(write_schema: Any) -> None:
    schema = _schema()
    schema["quality"] = schema["privacy"].pop("quality")  # beside "privacy" instead of inside it
    schema["fields"].append({"name": "stop", "privacy": "keep", "type": {"type": "record", "name": "Stop", "fields": [
        {"name": "zone", "type": "string", "privacy": "keep", "quality": {"max_length": 3}}]}})
    problems = [p for p in lint_file(write_schema(schema)) if p.severity == "error"]
    assert any(p.where == "(record)" and "belongs in the privacy settings" in p.message for p in problems)
    assert any(p.where == "stop.zone" and "top-level fields only" in p.message for p in problems)
