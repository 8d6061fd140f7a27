"""The output record's timestamp is data the policy governs (gateway/core/policy/timestamp.py), and the
re-identification risk measure counts people (gateway/core/quality/risk.py): the adversary's side.

The adversary reads sanitized records: their values and their Kafka timestamps. With the raw
timestamp beside a shifted date, `shifted date - record timestamp` is the subject's secret offset;
beside a time truncated to the hour, the exact timestamp is what the truncation hid.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import OutRecord, Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_file
from gateway.core.policy.timestamp import TimestampMode
from gateway.core.quality.risk import RiskWindow
from gateway.errors import PolicyError
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

DAY = 86_400_000
HOUR = 3_600_000
SOURCE = "visits.raw"
SANITIZED = "visits.sanitized"
# canary event times: odd milliseconds, seconds and minutes, so any exact copy is recognisable
CANARY_TS = 1_780_000_000_000 + 47 * 60_000 + 13_000 + 457
SUBJECTS = [f"patient-{i}" for i in range(12)]


def _schema(timestamp: Any = None, *, shift: bool = True, truncate: bool = True, **privacy: Any) -> dict[str, Any]:
    fields: list[dict[str, Any]] = [
        {"name": "visit_id", "type": "string", "privacy": "keep"},
        {"name": "patient_id", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
        {"name": "city", "type": "string", "privacy": "keep"},
    ]
    fields.append({"name": "visit_time", "type": {"type": "long", "logicalType": "timestamp-millis"},
                   "privacy": {"shift_date": {"domain": "dates", "max_days": 30}} if shift else "drop"})
    fields.append({"name": "opened_at", "type": {"type": "long", "logicalType": "timestamp-millis"},
                   "privacy": {"generalize": {"truncate": "hour"}} if truncate else "drop"})
    settings: dict[str, Any] = {"source_topic": SOURCE, "sanitized_topic": SANITIZED, "subject": "patient_id",
                                "output": "json", **privacy}
    if timestamp is not None:
        settings["timestamp"] = timestamp
    return {"type": "record", "name": "Visit", "namespace": "t", "privacy": settings, "fields": fields}


def _pipeline(write_schema: Any, tmp_path: Path, schema: dict[str, Any]) -> Pipeline:
    plan = compile_plan(load_schema_file(write_schema(schema)))
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t")
    ring = Keyring.open(tmp_path / "k.json")
    return Pipeline([plan], ring, config, 1, tokenizers(ring, [plan]))


def _events(n_per_subject: int = 1, **extra: Any) -> list[RawEvent]:
    """Each event's fields hold its own Kafka timestamp (the visit is the event)."""
    events = []
    for i, subject in enumerate(SUBJECTS * n_per_subject):
        ts = CANARY_TS + i * 1_001
        value = {"visit_id": f"V{i}", "patient_id": subject, "city": "Lyon", "visit_time": ts, "opened_at": ts,
                 **extra}
        events.append(RawEvent(SOURCE, 0, i, ts, None, orjson.dumps(value), None))
    return events


def _published(result: Any, topic: str = SANITIZED) -> list[tuple[OutRecord, dict[str, Any]]]:
    return [(r, orjson.loads(r.value)) for r in result.records if r.topic == topic]


def test_the_default_beside_a_shifted_date_gives_the_adversary_no_offset(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema(truncate=False))
    assert pipeline.stages[SOURCE].plan.timestamp.mode is TimestampMode.SHIFT
    events = _events()
    out = _published(pipeline.process(events))
    assert len(out) == len(SUBJECTS)
    raw = {e.offset: e.timestamp_ms for e in events}
    offsets = set()
    differences = set()
    for (record, value), event in zip(out, events, strict=True):
        offsets.add(value["visit_time"] - raw[event.offset])  # what the policy hides (the test knows it)
        differences.add(value["visit_time"] - record.timestamp_ms)  # what the adversary computes
        assert 0 < record.timestamp_ms <= raw[event.offset]  # never in the future: brokers refuse that
    assert len(offsets) > 3  # the subjects' secret offsets differ...
    assert differences == {30 * DAY}  # ...but the adversary's difference is one public constant for all


def test_consumers_and_auditors_are_told_the_treatment(write_schema: Any, tmp_path: Path) -> None:
    result = _pipeline(write_schema, tmp_path, _schema()).process(_events()[:1])
    ((record, _),) = _published(result)
    assert dict(record.headers or [])["gateway-timestamp"] == b"shift_date:dates+truncate:hour"
    (entry,) = record_entries(r.value for r in result.records if r.topic == "privacy.audit")
    assert entry["actions"]["(record timestamp)"] == "shift_date:dates+truncate:hour"
    kept = _pipeline(write_schema, tmp_path, _schema(shift=False, truncate=False)).process(_events()[:1])
    ((record, _),) = _published(kept)
    assert "gateway-timestamp" not in dict(record.headers or [])  # the raw event's, as before


def test_the_default_beside_a_truncated_time_does_not_bypass_the_truncation(write_schema: Any,
                                                                            tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema(shift=False))
    assert pipeline.stages[SOURCE].plan.timestamp.label == "truncate:hour"
    out = _published(pipeline.process(_events()))
    assert out and all(r.timestamp_ms % HOUR == 0 and r.timestamp_ms == v["opened_at"] for r, v in out)


def test_shifted_and_truncated_the_timestamp_is_both(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    assert pipeline.stages[SOURCE].plan.timestamp.label == "shift_date:dates+truncate:hour"
    out = _published(pipeline.process(_events()))
    assert all(r.timestamp_ms % HOUR == 0 for r, _ in out)
    assert all(v["visit_time"] - r.timestamp_ms - 30 * DAY in range(0, HOUR) for r, v in out)


def test_a_policy_without_shift_or_truncation_keeps_the_timestamp(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema(shift=False, truncate=False))
    events = _events()
    out = _published(pipeline.process(events))
    assert [r.timestamp_ms for r, _ in out] == [e.timestamp_ms for e in events]


def _processed(pipeline: Pipeline, events: list[RawEvent], **kwargs: Any) -> tuple[Any, int, int]:
    """(the batch's result, and the wall clock just before and after it ran)."""
    before = int(time.time() * 1000)
    result = pipeline.process(events, **kwargs)
    return result, before, int(time.time() * 1000)


@pytest.mark.parametrize(("declared", "expected"), [
    ({"truncate": "day"}, lambda ts: ts - ts % DAY),
    ("keep", lambda ts: ts),
])
def test_a_declared_treatment_is_applied(write_schema: Any, tmp_path: Path, declared: Any, expected: Any) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema(declared))
    events = _events()
    out = _published(pipeline.process(events))
    assert [r.timestamp_ms for r, _ in out] == [expected(e.timestamp_ms) for e in events]


def test_processing_time_is_the_batch_s_one_time(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema("processing"))
    result, before, after = _processed(pipeline, _events())
    (stamp,) = {r.timestamp_ms for r, _ in _published(result)}  # one value: the batch's, never an event's
    assert before <= stamp <= after


def test_an_event_without_a_timestamp_gets_processing_time(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    event = _events()[0]._replace(timestamp_ms=-1)
    result, before, after = _processed(pipeline, [event])
    ((record, _),) = _published(result)
    assert before <= record.timestamp_ms <= after


def test_keeping_it_beside_a_shifted_date_is_a_lint_warning_that_says_what_to_write(write_schema: Any) -> None:
    problems = lint_file(write_schema(_schema("keep")))
    (warning,) = [p for p in problems if p.where == "(record).timestamp"]
    assert warning.severity == "warning"
    assert "visit_time" in warning.message and "offset" in warning.message
    assert '"shift_date": {"domain": "dates"' in warning.message and '"truncate": "hour"' in warning.message
    truncated = [p for p in lint_file(write_schema(_schema("keep", shift=False))) if p.where == "(record).timestamp"]
    assert len(truncated) == 1 and "opened_at" in truncated[0].message and "truncate" in truncated[0].message
    assert not [p for p in lint_file(write_schema(_schema())) if p.where == "(record).timestamp"]
    # processing time trails the event's by the lag only: beside a shifted date it tells the offset too
    (warning,) = [p for p in lint_file(write_schema(_schema("processing"))) if p.where == "(record).timestamp"]
    assert "processing time" in warning.message and "visit_time" in warning.message


@pytest.mark.parametrize(("declared", "says"), [
    ("exact", "must be one of"),
    ({"truncate": "week"}, "minute, hour, day, month, year"),
    ({"shift_date": {"domain": "dates"}}, "max_days"),
    ({"shift_date": {"domain": "patient", "max_days": 30}}, "domain 'patient' is used for"),
    ({"truncate": "hour", "round": 2}, "must be one of"),
])
def test_a_bad_treatment_fails_start_up_naming_schema_and_problem(write_schema: Any, declared: Any,
                                                                  says: str) -> None:
    path = write_schema(_schema(declared))
    errors = [p for p in lint_file(path) if p.severity == "error"]
    assert any(says in p.message for p in errors), errors
    with pytest.raises(PolicyError, match=str(path)):
        compile_plan(load_schema_file(path))


def test_shift_needs_a_subject(write_schema: Any) -> None:
    schema = _schema({"shift_date": {"domain": "dates", "max_days": 5}}, shift=False, truncate=False)
    del schema["privacy"]["subject"]
    errors = [p for p in lint_file(write_schema(schema)) if p.severity == "error"]
    assert any(p.where == "(record).timestamp" and "subject" in p.message for p in errors), errors


def test_a_dp_aggregate_cannot_window_by_a_shifted_timestamp(write_schema: Any) -> None:
    aggregate = {"name": "visits_by_city", "metric": "count", "group_by": ["city"], "window_s": 60, "epsilon": 1.0,
                 "delta": 1e-6, "max_groups_per_subject": 1, "max_records_per_group": 1}
    schema = _schema(truncate=False, aggregates=[aggregate], budget={"epsilon": 100.0, "delta": 1e-3})
    errors = [p for p in lint_file(write_schema(schema)) if p.severity == "error"]
    assert any("visits_by_city" in p.message and "time_field" in p.message for p in errors), errors
    schema["privacy"]["timestamp"] = {"truncate": "day"}
    errors = [p for p in lint_file(write_schema(schema)) if p.severity == "error"]
    assert not any("visits_by_city" in p.message for p in errors), errors


def test_purpose_views_follow_the_treatment(write_schema: Any, tmp_path: Path) -> None:
    purposes = {"research": {"topic": "visits.research", "basis": "public_task",
                             "fields": {"patient_id": {"tokenize": {"domain": "patient"}},
                                        "visit_time": {"shift_date": {"domain": "dates", "max_days": 30}}}}}
    pipeline = _pipeline(write_schema, tmp_path, _schema(shift=False, truncate=False, purposes=purposes))
    assert pipeline.stages[SOURCE].plan.timestamp.mode is TimestampMode.KEEP  # nothing shifted there
    events = _events()
    result = pipeline.process(events)
    views = _published(result, "visits.research")
    assert len(views) == len(SUBJECTS)
    assert {v["visit_time"] - r.timestamp_ms for r, v in views} == {30 * DAY}
    declared = _pipeline(write_schema, tmp_path, _schema("processing", purposes=purposes))
    result, before, after = _processed(declared, events)
    (stamp,) = {r.timestamp_ms for r, _ in _published(result, "visits.research")}
    assert before <= stamp <= after


# ---- the risk measure: the published timestamp, and people rather than records ------------------
def _risk_schema(timestamp: Any, mode: str = "report", k: int = 3) -> dict[str, Any]:
    schema = _schema(timestamp, shift=False, truncate=False)
    schema["privacy"]["quality"] = {"window_s": 60, "risk": {"quasi_identifiers": ["city"], "k": k, "mode": mode}}
    return schema


def _risk_record(result: Any) -> dict[str, Any]:
    (record,) = [orjson.loads(r.value) for r in result.records if r.topic == "privacy.quality"]
    return record["risk"]  # type: ignore[no-any-return]


def _now_events(n_per_subject: int = 1) -> list[RawEvent]:
    now = int(time.time() * 1000)
    hour = now - now % HOUR
    return [e._replace(timestamp_ms=hour + i) for i, e in enumerate(_events(n_per_subject))]


@pytest.mark.parametrize(("timestamp", "k"), [("keep", 1), ({"truncate": "hour"}, len(SUBJECTS)),
                                              ("processing", len(SUBJECTS)), (None, len(SUBJECTS))])
def test_a_published_event_time_is_a_quasi_identifier_at_its_granularity(write_schema: Any, tmp_path: Path,
                                                                         timestamp: Any, k: int) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _risk_schema(timestamp))
    events = _now_events()
    result, before, after = _processed(pipeline, events, withhold_since_ms=int(time.time() * 1000) - 1)
    risk = _risk_record(result)
    assert risk["k"] == k  # one city; the exact time singles every record out, the hour or the batch not
    if timestamp is None:  # a risk measure and nothing to follow: processing time, not the event's
        (stamp,) = {r.timestamp_ms for r, _ in _published(result)}
        assert before <= stamp <= after


def test_keeping_it_under_a_risk_measure_is_a_lint_warning(write_schema: Any) -> None:
    (warning,) = [p for p in lint_file(write_schema(_risk_schema("keep"))) if p.where == "(record).timestamp"]
    assert warning.severity == "warning" and "quasi-identifier" in warning.message
    assert not [p for p in lint_file(write_schema(_risk_schema(None))) if p.where == "(record).timestamp"]


def test_five_events_of_one_person_are_not_a_class_of_five() -> None:
    window = RiskWindow(["city"], k_target=5)
    for _ in range(5):
        window.add({"city": "Lyon"}, "tok_v1_alice")
    assert window.figures().k == 1 and window.figures().below_k_records == 5
    assert window.small_classes() == {0}
    for i in range(4):
        window.add({"city": "Lyon"}, f"tok_v1_other{i}")
    assert window.figures().k == 5 and window.small_classes() == set()
    no_subject = RiskWindow(["city"], k_target=2)
    no_subject.add({"city": "Lyon"})
    no_subject.add({"city": "Lyon"})
    assert no_subject.figures().k == 2  # without a subject, each record is someone


def test_enforce_withholds_five_events_of_one_person(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _risk_schema(None, mode="enforce", k=5))  # timestamp kept
    events = [e for e in _now_events() if e.value and b'"patient-0"' in e.value]
    events = [events[0]._replace(offset=i) for i in range(5)]  # one person, one class (one city, one time)
    result = pipeline.process(events, withhold_since_ms=int(time.time() * 1000) - 1)
    assert not _published(result)
    outcomes = [e["outcome"] for r in result.records if r.topic == "privacy.audit" for e in record_entries([r.value])]
    assert outcomes == ["withheld:k_anonymity"] * 5
    risk = _risk_record(result)
    assert risk["k"] == 1 and risk["records"] == 5 and risk["k_counts"] == "subjects"
