"""`gateway report`'s figures from hand-built topic records with a known ground truth, and the
promise that none of a record's values, subjects, tokens or keys reaches the report."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.audit import ChainReport, Finding, Kind
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.dp.ledger import Ledger
from gateway.errors import GatewayError
from gateway.report.collect import PrivacyReport, bucket_ms, collect, key_record, parse_when

HOUR = 3_600_000
DAY = 24 * HOUR
SINCE = 1_750_000_000_000 - 1_750_000_000_000 % DAY  # a midnight, UTC
UNTIL = SINCE + DAY
# canaries: values, subjects, tokens and key material that sit in the records and must not reach the report
PSEUDONYM = "tok_v1_CANARYtokenQ2FuYXJ5"
EVENT_ID = "ride-canary-5521"
WRAPPED = "V1JBUFBFRC1DQU5BUlktS0VZLU1BVEVSSUFM"
SUBJECT_DEK = "deadbeefcafe0123"
CANARIES = (PSEUDONYM, EVENT_ID, WRAPPED, SUBJECT_DEK, "alice.canary@example.org")

SCHEMA = {
    "type": "record", "name": "Ride", "namespace": "t.report",
    "privacy": {"source_topic": "rides.raw", "sanitized_topic": "rides.sanitized", "subject": "rider_id",
                "event_id": "ride_id", "input": "json", "output": "json",
                "aggregates": [{"name": "rides_by_city", "metric": "count", "group_by": ["city"], "window_s": 3600,
                                "grace_s": 10, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
                                "max_records_per_group": 1, "period_s": 86400, "period_epsilon_cap": 3.0}]},
    "fields": [
        {"name": "ride_id", "type": "string", "privacy": "keep"},
        {"name": "rider_id", "type": "string", "privacy": {"tokenize": {"domain": "rider"}}},
        {"name": "city", "type": "string", "privacy": "keep"},
        {"name": "fare", "type": "long", "privacy": "keep",
         "quality": {"range": {"min": 0, "max": 100000, "action": "reject"}}},
        {"name": "email", "type": "string", "privacy": "encrypt"},
        {"name": "note", "type": "string", "privacy": "redact"},
        {"name": "phone", "type": "string", "privacy": "drop"},
    ],
}


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    directory = tmp_path_factory.mktemp("schemas")
    (directory / "ride.avsc").write_bytes(orjson.dumps(SCHEMA))
    (plan,) = load_plans(directory)
    return plan


def event(outcome: str, t: int, partition: int = 0, topic: str = "rides.raw", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "event", "chain": f"{topic}:{partition}",
        "event": {"topic": topic, "partition": partition, "offset": t % 1000, "timestamp": t, "event_id": EVENT_ID},
        "schema": "t.report.Ride", "policy": "p" * 64, "instance": "w1", "time": t, "outcome": outcome,
        "prev_hash": "0" * 64, "hash": "1" * 64,
    }
    if outcome == "sanitized":
        body["key_ids"] = ["token:rider/v1", "kek-aaa/0011" if t < SINCE + 12 * HOUR else "kek-bbb/0022"]
    else:
        body["key_ids"] = ["quarantine-q1"]
    body.update(extra)
    return body


def audit_records() -> list[dict[str, Any]]:
    records = [event("sanitized", SINCE + i * HOUR) for i in range(7)]  # 0h..6h: kek-aaa
    records[5]["key_ids"] = ["token:rider/v2", "kek-bbb/0022", f"subject:rider/{SUBJECT_DEK}"]
    records[5]["time"] = records[5]["event"]["timestamp"] = SINCE + 13 * HOUR
    records[1]["leak_suspected"] = [{"field": "city", "entity": "EMAIL"}]
    records[2]["leak_suspected"] = [{"field": "city", "entity": "EMAIL"}, {"field": "ride_id", "entity": "PHONE"}]
    records[3]["redacted"] = {"note": {"EMAIL": 2, "PHONE": 1}}
    records[4]["quality"] = ["fare.range"]  # flagged elsewhere, published: counted as a failure, not a rejection
    records += [event("rejected:wrong_type", SINCE + 2 * HOUR + 5, partition=1),
                event("rejected:wrong_type", SINCE + 20 * HOUR, partition=1),
                event("rejected:quality:fare.range", SINCE + 20 * HOUR + 1, quality=["fare.range"]),
                event("withheld:k_anonymity", SINCE + 21 * HOUR)]
    records += [event("sanitized", SINCE - 1), event("rejected:json_invalid", UNTIL + 1)]  # outside the period
    for i, erased in enumerate((1, 1, 0)):
        records.append({"type": "subject_forgotten", "chain": "keys:forget", "outcome": "subject_forgotten",
                        "domain": "rider", "subject_tokens": [PSEUDONYM], "keys_erased": erased,
                        "key_ids": [f"subject:rider/{SUBJECT_DEK}"] * erased, "key_topic": "privacy.keys",
                        "time": SINCE + (10 + i) * HOUR})
    aggregate = "t.report.Ride/rides_by_city"
    for i, outcome in enumerate(("released", "released", "refused:period_epsilon_cap")):
        records.append({"type": "dp_release", "chain": f"dp:{aggregate}:0", "aggregate": aggregate,
                        "outcome": outcome, "groups_released": 4 if outcome == "released" else 0,
                        "time": SINCE + (3 + i) * HOUR})
    records.append({"type": "dp_late", "chain": "dp-late", "aggregate": aggregate, "outcome": "late",
                    "time": SINCE + 5 * HOUR})
    return records


def ledger_for(plan: Plan) -> Ledger:
    (spec,) = plan.aggregates
    ledger = Ledger()
    ledger.charge(spec, SINCE - 30 * HOUR, 0, groups=2, released_at=SINCE - 29 * HOUR, instance="a")  # before
    for w in range(3):  # three windows of the period: the cap (3.0 per 24 h) reached
        ledger.charge(spec, SINCE + w * HOUR, 0, groups=3, released_at=SINCE + (w + 1) * HOUR, instance="a")
    return ledger


def key_records() -> list[tuple[str, dict[str, Any] | None] | None]:
    def stored(kek: str, created: int) -> bytes:
        return orjson.dumps({"format": 1, "kek_id": kek, "wrapped": WRAPPED, "created": created})

    raw = [(f"rider/{PSEUDONYM}/aa11".encode(), stored("kek-aaa", SINCE + 1000)),
           (f"rider/{PSEUDONYM}2/bb22".encode(), stored("kek-aaa", SINCE + 2000)),
           (f"rider/{PSEUDONYM}/aa11".encode(), None),  # forgotten
           (b"rider/tok_v1_old/cc33", stored("kek-aaa", SINCE - 10 * DAY)),  # older than the period, still live
           (f"rider/{PSEUDONYM}2/bb22".encode(), stored("kek-bbb", SINCE + 2000)),  # rewrapped under a new KEK
           (b"_audit-head/privacy.audit/keys:forget", orjson.dumps({"format": 1, "hash": "a" * 64})),
           (None, b"junk")]
    return [key_record(k, v) for k, v in raw]


def quality_records() -> list[dict[str, Any]]:
    def window(start: int, partition: int, events: int, failed: int, present: int) -> dict[str, Any]:
        return {"type": "quality_window", "source": "rides.raw", "partition": partition, "schema": "t.report.Ride",
                "policy": "p" * 64, "window": {"start": start, "end": start + 60_000}, "closed_at": start + 61_000,
                "instance": "w1", "events": events, "sanitized": events - failed, "withheld": 0,
                "rules": [{"name": "fare.range", "kind": "range", "action": "reject", "failed": failed,
                           "rate": failed / events}],
                "completeness": {"email": {"present": present, "rate": present / events, "target": 0.9,
                                           "met": present / events >= 0.9}},
                "lag_ms": {"mean": 10 * (partition + 1), "max": 40 * (partition + 1)},
                "risk": {"k": 3 + partition, "k_target": 5, "records": events, "classes": 2,
                         "below_k_records": 2 * (1 - partition), "complete": True}}

    return [window(SINCE + HOUR, 0, 6, 1, 6), window(SINCE + HOUR, 1, 4, 0, 2),
            window(SINCE - HOUR, 0, 100, 50, 100)]  # before the period


def build(plan: Plan, chains: ChainReport | None = None) -> PrivacyReport:
    return collect(since_ms=SINCE, until_ms=UNTIL, audit=audit_records(), ledger=ledger_for(plan),
                   keys=key_records(), quality=quality_records(), plans=[plan], chains=chains,
                   topics={"audit": "privacy.audit", "ledger": "privacy.ledger", "keys": "privacy.keys",
                           "quality": "privacy.quality"}, generated_ms=UNTIL)


def test_events_by_outcome_reason_and_source(plan: Plan) -> None:
    e = build(plan).to_json()["events"]
    assert e["total"] == 11
    assert e["by_outcome"] == {"sanitized": 7, "rejected": 3, "withheld": 1}
    assert e["dead_letter_reasons"] == {"wrong_type": 2, "quality:fare.range": 1}
    assert e["withheld_reasons"] == {"k_anonymity": 1}
    src = e["by_source"]["rides.raw"]
    assert src["schema"] == "t.report.Ride" and src["total"] == 11 and src["partitions"] == [0, 1]
    assert src["by_outcome"] == {"sanitized": 7, "rejected": 3, "withheld": 1}


def test_time_series_buckets_the_period(plan: Plan) -> None:
    s = build(plan).to_json()["events"]["series"]
    assert s["bucket_ms"] == 30 * 60_000 and len(s["starts"]) == 48 and s["starts"][0] == SINCE
    assert sum(s["by_outcome"]["sanitized"]) == 7 and s["by_outcome"]["sanitized"][0] == 1
    assert s["by_outcome"]["sanitized"][26] == 1  # the event at 13 h
    assert s["by_outcome"]["rejected"][4] == 1 and s["by_outcome"]["rejected"][40] == 2
    assert s["by_reason"] == {"quality:fare.range": [0] * 40 + [1] + [0] * 7,
                              "wrong_type": [0] * 4 + [1] + [0] * 35 + [1] + [0] * 7}


def test_fields_by_action_per_schema(plan: Plan) -> None:
    (p,) = build(plan).to_json()["policies"]
    assert p["schema"] == "t.report.Ride" and p["source_topic"] == "rides.raw"
    assert p["by_action"] == {"drop": ["phone"], "encrypt": ["email"], "keep": ["ride_id", "city", "fare"],
                              "redact": ["note"], "tokenize": ["rider_id"]}
    assert p["counts"] == {"drop": 1, "encrypt": 1, "keep": 3, "redact": 1, "tokenize": 1}
    assert p["fields"]["rider_id"] == "tokenize:rider"
    assert p["aggregates"] == ["t.report.Ride/rides_by_city"] and p["quality_rules"] == ["fare.range"]


def test_keys_created_erased_rotated_and_subjects_forgotten(plan: Plan) -> None:
    r = build(plan).to_json()
    assert r["forgotten"] == {"subjects": 3, "by_domain": {"rider": 3}, "keys_erased": 2, "without_keys": 1}
    sk = r["keys"]["subject_keys"]
    assert sk == {"created": 2, "created_by_domain": {"rider": 2}, "erased": 2, "rewrapped_in_topic": 1,
                  "tombstones_in_topic": 1, "live": 2, "live_by_domain": {"rider": 2},
                  "live_by_kek": {"kek-aaa": 1, "kek-bbb": 1}}
    keks = r["keys"]["kek_ids"]
    assert list(keks) == ["kek-aaa", "kek-bbb"]  # in the order they came into use
    assert keks["kek-aaa"] == {"events": 6, "first_seen": SINCE, "last_seen": SINCE + 6 * HOUR, "deks": 1}
    assert keks["kek-bbb"]["events"] == 1
    assert r["keys"]["token_keys"]["token:rider/v1"]["events"] == 6
    assert r["keys"]["quarantine_keys"]["quarantine-q1"]["events"] == 4
    assert r["keys"]["subject_deks"] == {"rider": {"events": 1, "first_seen": SINCE + 13 * HOUR,
                                                   "last_seen": SINCE + 13 * HOUR, "deks": 1}}
    assert r["keys"]["rotations"] == {"kek": 1, "token_keys": 1, "subject_keys_rewrapped": 1}


def test_dp_budget_spent_against_its_cap(plan: Plan) -> None:
    dp = build(plan).to_json()["dp"]
    (a,) = dp["aggregates"]
    assert a["aggregate"] == "t.report.Ride/rides_by_city" and a["source_topic"] == "rides.raw"
    assert a["epsilon_report_period"] == 3.0 and a["windows_report_period"] == 3
    assert a["releases_report_period"] == 3 and a["groups_report_period"] == 9
    assert a["epsilon_total"] == 4.0 and a["windows_total"] == 4
    assert a["epsilon_cap"] == 3.0 and a["epsilon_peak_period"] == 3.0 and a["cap_used"] == 1.0
    assert a["epsilon_latest_period"] == 3.0 and a["epsilon_remaining"] == 0.0 and a["period_s"] == 86400
    assert a["audit"] == {"late": 1, "refused:period_epsilon_cap": 1, "released": 2}
    assert dp["releases"] == {"released": 2, "refused": 1, "by_outcome": {"refused:period_epsilon_cap": 1,
                                                                         "released": 2},
                              "groups_released": 8, "late_events": 1}
    (b,) = dp["budgets"]
    assert b["sources"] == ["rides.raw"] and b["epsilon_report_period"] == 3.0 and b["epsilon_peak_period"] == 3.0
    # no budget block: the default budget, 10 a subject a day
    assert b["epsilon_cap"] == 10.0 and b["cap_used"] == pytest.approx(0.3)


def test_peak_counts_a_rolling_period_reaching_back_before_the_report(plan: Plan) -> None:
    (spec,) = plan.aggregates
    ledger = Ledger()
    ledger.charge(spec, SINCE - 2 * HOUR, 0, 1, SINCE - HOUR, "a")  # in the same 24 h as the next one
    ledger.charge(spec, SINCE + HOUR, 0, 1, SINCE + 2 * HOUR, "a")
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=[], ledger=ledger, keys=[], quality=[], plans=[plan])
    (a,) = report.to_json()["dp"]["aggregates"]
    assert a["epsilon_report_period"] == 1.0 and a["epsilon_peak_period"] == 2.0


def test_quality_windows_and_rule_failures(plan: Plan) -> None:
    q = build(plan).to_json()["quality"]
    assert q["failures_from_audit"] == {"rides.raw": {"fare.range": 2}}
    assert q["windows"] == 1
    src = q["sources"]["rides.raw"]
    assert src["windows"] == 1 and src["events"] == 10 and src["sanitized"] == 9
    assert src["rules"] == {"fare.range": {"kind": "range", "action": "reject", "failed": 1, "rate": 0.1}}
    assert src["completeness"]["email"] == {"present": 8, "rate": 0.8, "target": 0.9, "met": False,
                                            "windows_below_target": 1}
    assert src["lag_ms"] == {"mean": 14, "max": 80}
    assert src["risk"]["k_min"] == 3 and src["risk"]["below_k_records"] == 2 and src["risk"]["below_k_share"] == 0.2


def test_leak_sentinel_findings_and_redactions(plan: Plan) -> None:
    r = build(plan).to_json()
    assert r["leaks"]["events"] == 2
    assert r["leaks"]["findings"] == [{"source": "rides.raw", "field": "city", "entity": "EMAIL", "count": 2},
                                      {"source": "rides.raw", "field": "ride_id", "entity": "PHONE", "count": 1}]
    assert r["leaks"]["by_entity"] == {"EMAIL": 2, "PHONE": 1}
    assert r["redactions"] == {"events": 1, "by_entity": {"EMAIL": 2, "PHONE": 1},
                               "by_source": {"rides.raw": {"note": {"EMAIL": 2, "PHONE": 1}}}}


def test_audit_types_and_chain_status(plan: Plan) -> None:
    chains = ChainReport(chains=3, events=25, findings=[
        Finding(Kind.RESTART, "chain keys:forget: restarted"),
        Finding(Kind.ALTERED, "chain rides.raw:1: audit partition 2 offset 7: content does not match its hash")])
    a = build(plan, chains).to_json()["audit"]
    assert a["records"] == 18  # 11 events, 3 forgets, 3 releases, 1 late event; the 2 outside the period not
    assert a["by_type"] == {"dp_late": 1, "dp_release": 3, "event": 11, "subject_forgotten": 3}
    assert a["chains"] == {"verified": False, "scope": "whole audit topic", "chains": 3, "events": 25, "restarts": 1,
                           "breaks": chains.breaks, "breaks_total": 1}
    assert build(plan).to_json()["audit"]["chains"] is None


def test_no_value_subject_token_or_key_reaches_the_report(plan: Plan) -> None:
    report = build(plan)
    text = report.dumps().decode()
    for canary in CANARIES:
        assert canary not in text, canary
    assert "\n".join(report.summary_lines()).count(PSEUDONYM) == 0


def test_json_is_serializable_and_has_no_infinity(plan: Plan) -> None:
    report = build(plan)
    body = orjson.loads(report.dumps())
    assert list(body) == ["format", "generated_at", "generated_at_iso", "period", "topics", "events", "policies",
                          "keys", "forgotten", "dp", "quality", "leaks", "redactions", "audit", "consent",
                          "retention", "notes"]
    assert body["period"]["since"] == SINCE and body["period"]["until_iso"].endswith("Z")


def test_consent_purposes_and_retention_are_counted_never_named() -> None:
    pseudonym = "tok_v1_a-token-of-one-subject"
    audit = [
        event("sanitized", SINCE + 1, purposes={"fraud": "published:consent", "analytics": "published:contract"}),
        event("sanitized", SINCE + 2, purposes={"fraud": "withheld:no_consent:fraud",
                                                "analytics": "published:contract"}),
        {"type": "consent", "outcome": "consent:granted", "time": SINCE + 3,
         "consent": {"domain": "customer", "subject": pseudonym, "purpose": "fraud", "at": SINCE}},
        {"type": "consent", "outcome": "consent:revoked", "time": SINCE + 4,
         "consent": {"domain": "customer", "subject": pseudonym, "purpose": "fraud", "at": SINCE + 4}},
        {"type": "consent", "outcome": "rejected:unknown_purpose", "time": SINCE + 5},
        {"type": "retention_enforced", "time": SINCE + 6, "keys_erased": 3, "periods": [
            {"retention_days": 30, "period": "2026-01-01", "keys_erased": 2},
            {"retention_days": 30, "period": "2026-01-02", "keys_erased": 1}]},
        {"type": "consent", "outcome": "consent:granted", "time": UNTIL + 1,  # outside the period
         "consent": {"domain": "customer", "subject": pseudonym, "purpose": "fraud", "at": UNTIL}},
    ]
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=audit, ledger=Ledger(), keys=[], quality=[], plans=[])
    body = report.to_json()
    assert body["consent"] == {"changes": {"fraud": {"granted": 1, "revoked": 1}},
                               "rejected": {"unknown_purpose": 1},
                               "views": {"analytics": {"published": 2, "withheld": 0},
                                         "fraud": {"published": 1, "withheld": 1}}}
    assert body["retention"] == {"runs": 1, "keys_erased": 3, "keys_erased_by_retention_days": {"30": 3},
                                 "periods_erased": 2}
    assert pseudonym.encode() not in report.dumps()


def test_an_empty_period_is_reported_as_zeros(plan: Plan) -> None:
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=[], ledger=Ledger(), keys=[], quality=[], plans=[])
    body = report.to_json()
    assert body["events"]["total"] == 0 and body["events"]["by_outcome"] == {"sanitized": 0, "rejected": 0,
                                                                             "withheld": 0}
    assert body["dp"] == {"aggregates": [], "budgets": [], "releases": {
        "released": 0, "refused": 0, "by_outcome": {}, "groups_released": 0, "late_events": 0}}
    assert len(report.summary_lines()) >= 4


def test_summary_lines_say_the_totals(plan: Plan) -> None:
    text = "\n".join(build(plan, ChainReport(chains=2, events=20)).summary_lines())
    assert "11: 7 sanitized, 3 rejected, 1 withheld" in text
    assert "wrong_type 2" in text and "3 subject(s) forgotten" in text and "verified" in text


def test_since_and_until_parse_iso_and_durations() -> None:
    now = SINCE + DAY
    assert parse_when("7d", now, "--since") == now - 7 * DAY
    assert parse_when("24h", now, "--since") == now - DAY
    assert parse_when("30m", now, "--since") == now - 30 * 60_000
    assert parse_when("now", now, "--until") == now
    assert parse_when("2025-01-31T12:00:00Z", now, "--since") == 1_738_324_800_000
    assert parse_when("2025-01-31T12:00:00", now, "--since") == 1_738_324_800_000  # no zone: UTC
    assert parse_when("2025-01-31T13:00:00+01:00", now, "--since") == 1_738_324_800_000
    with pytest.raises(GatewayError, match="--since 'yesterday' is neither an ISO-8601 time"):
        parse_when("yesterday", now, "--since")
    with pytest.raises(GatewayError, match="the period is empty"):
        collect(since_ms=now, until_ms=now, audit=[], ledger=Ledger(), keys=[], quality=[], plans=[])


def test_buckets_are_round_and_about_sixty() -> None:
    assert bucket_ms(0, HOUR) == 60_000
    assert bucket_ms(0, DAY) == 30 * 60_000
    assert bucket_ms(0, 7 * DAY) == 3 * HOUR
    assert bucket_ms(0, 10_000) == 1000
    assert bucket_ms(0, 365 * DAY) == 7 * DAY


def test_the_report_package_is_pure() -> None:
    """No Kafka client and nothing of the runtime in gateway/report (the command reads the topics)."""
    root = Path(__file__).resolve().parents[2] / "gateway" / "report"
    for path in sorted(root.glob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
        bad = {n for n in names if n.startswith(("confluent_kafka", "gateway.runtime"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_command_s_bad_periods_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["report", "--since", "yesterday", "--bootstrap", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("gateway report: --since 'yesterday' is neither an ISO-8601 time (e.g. 2025-01-31T12:00:00Z) "
                       "nor a duration before now (e.g. 30m, 24h, 7d)")
    assert main(["report", "--since", "1h", "--until", "2h", "--bootstrap", "127.0.0.1:1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "gateway report: --since (1h) must be before --until (2h)"
