"""Consent and purposes without a broker: the table's semantics, raw consent events, the purposes'
views and what the pipeline publishes, withholds and audits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.consent.table import ConsentChange, ConsentEventError, ConsentTable, parse_raw_consent
from gateway.core.audit import record_entries
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.pipeline.outcome import PurposeDecision
from gateway.core.policy.compiler import compile_plan
from gateway.embedded.samples import SampleEvents
from gateway.errors import MalformedStateRecord, PolicyError
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
T0 = 1_790_000_000_000


def _change(table: ConsentTable, token: str, purpose: str, at: int, granted: bool) -> bytes:
    change = ConsentChange("customer", token, purpose, at, granted, "test")
    table.apply(change.key(), change.value())
    return change.key()


def test_consent_is_decided_by_the_latest_change_at_the_events_time() -> None:
    table = ConsentTable()
    assert not table.in_force("customer", "tok_a", "fraud", T0)  # never seen: no consent
    _change(table, "tok_a", "fraud", T0, True)
    revoked = _change(table, "tok_a", "fraud", T0 + 100, False)
    _change(table, "tok_a", "fraud", T0 + 300, True)
    assert not table.in_force("customer", "tok_a", "fraud", T0 - 1)
    assert table.in_force("customer", "tok_a", "fraud", T0)  # in force from its own time
    assert table.in_force("customer", "tok_a", "fraud", T0 + 99)
    assert not table.in_force("customer", "tok_a", "fraud", T0 + 100)  # a revocation stops later events
    assert not table.in_force("customer", "tok_a", "fraud", T0 + 299)
    assert table.in_force("customer", "tok_a", "fraud", T0 + 10_000)
    assert not table.in_force("customer", "tok_a", "analytics", T0 + 10_000)  # per purpose
    assert not table.in_force("customer", "tok_b", "fraud", T0 + 10_000)  # per subject
    table.apply(revoked, None)  # a tombstone removes that change
    assert table.in_force("customer", "tok_a", "fraud", T0 + 150)
    assert table.history("customer", "tok_a") == {"fraud": [(T0, True), (T0 + 300, True)]}
    assert sorted(table.keys_of("customer", "tok_a")) == sorted(
        [ConsentChange("customer", "tok_a", "fraud", at, True, "").key() for at in (T0, T0 + 300)])
    with pytest.raises(MalformedStateRecord):  # its reader skips and counts it (changelog.apply_records)
        table.apply(b"not-a-consent-key", b"{}")
    with pytest.raises(MalformedStateRecord):
        table.apply(ConsentChange("customer", "tok_c", "fraud", T0, True, "").key(), b"not json")
    assert not table.known("customer", "tok_c") or not table.in_force("customer", "tok_c", "fraud", T0)


def test_no_event_stamp_reaches_back_behind_a_revocation_the_table_holds() -> None:
    table = ConsentTable()
    _change(table, "tok_a", "fraud", T0, True)
    assert table.allows("customer", "tok_a", "fraud", T0 + 50)
    _change(table, "tok_a", "fraud", T0 + 100, False)
    # stamped while consent was in force, judged after the revocation is known: withheld
    assert table.in_force("customer", "tok_a", "fraud", T0 + 50)
    assert not table.allows("customer", "tok_a", "fraud", T0 + 50)
    assert not table.allows("customer", "tok_a", "fraud", T0 + 200)
    _change(table, "tok_a", "fraud", T0 + 300, True)  # granted again: events from then on
    assert not table.allows("customer", "tok_a", "fraud", T0 + 50)
    assert not table.allows("customer", "tok_a", "fraud", T0 + 299)
    assert table.allows("customer", "tok_a", "fraud", T0 + 300)
    _change(table, "tok_a", "fraud", T0 + 10_000, False)  # a revocation dated later than now binds at once
    assert not table.allows("customer", "tok_a", "fraud", T0 + 400)
    assert not table.allows("customer", "tok_b", "fraud", T0 + 400)  # never seen


@pytest.mark.parametrize("value", [b"[1, 2]", b'"x"', b"42", b"null", b"\xff\xfe", b'{"granted": "yes"}'])
def test_a_malformed_record_over_a_grant_leaves_no_consent_as_compaction_will(value: bytes) -> None:
    """The topic keeps only the latest record per key: a grant overwritten by a record nobody can read
    is no grant, for a running worker as for a fresh one reading the compacted topic."""
    table = ConsentTable()
    key = _change(table, "tok_a", "fraud", T0, True)
    with pytest.raises(MalformedStateRecord) as raised:
        table.apply(key, value)
    assert value.decode("utf-8", "replace") not in str(raised.value)
    assert not table.in_force("customer", "tok_a", "fraud", T0 + 1)
    assert not table.known("customer", "tok_a")


def test_the_same_change_twice_counts_once_and_keys_never_hold_the_identifier() -> None:
    table = ConsentTable()
    _change(table, "tok_a", "fraud", T0, True)
    _change(table, "tok_a", "fraud", T0, False)  # the same key again: the later record wins
    assert not table.in_force("customer", "tok_a", "fraud", T0 + 1)
    assert table.history("customer", "tok_a") == {"fraud": [(T0, False)]}


def test_raw_consent_events_are_validated_with_reason_codes_and_no_values() -> None:
    purposes = {"customer": {"fraud"}}
    ok = parse_raw_consent(orjson.dumps({"subject": "ada@example.com", "purpose": "fraud", "granted": True}),
                           T0, purposes, "customer")
    assert (ok.domain, ok.purpose, ok.granted, ok.at_ms) == ("customer", "fraud", True, T0)
    assert "ada@example.com" not in repr(ok)
    cases = {
        b"{": "json_invalid",
        orjson.dumps(["ada@example.com"]): "json_invalid",
        orjson.dumps({"purpose": "fraud", "granted": True}): "missing_field",
        orjson.dumps({"subject": "ada@example.com", "purpose": "fraud", "granted": "yes"}): "wrong_type",
        orjson.dumps({"subject": "ada@example.com", "purpose": "ads", "granted": True}): "unknown_purpose",
        orjson.dumps({"subject": "ada@example.com", "purpose": "fraud", "granted": True, "domain": "x"}):
            "unknown_domain",
        orjson.dumps({"subject": "ada@example.com", "purpose": "fraud", "granted": True, "at": -5}): "wrong_type",
    }
    for value, reason in cases.items():
        with pytest.raises(ConsentEventError) as failed:
            parse_raw_consent(value, T0, purposes, "customer")
        assert failed.value.reason == reason and "ada@example.com" not in str(failed.value)


def _purposes_policy(tmp_path: Path, **extra: Any) -> Path:
    schema = json.loads((SCHEMAS / "payments.avsc").read_text())
    schema["privacy"]["purposes"] = {
        "fraud": {"topic": "payments.fraud", "basis": "consent",
                  "fields": {"user_id": {"tokenize": {"domain": "customer"}}, "card_number": "encrypt",
                             "amount_minor": "keep", "event_id": "keep"}},
        "analytics": {"topic": "payments.analytics", "basis": "legitimate_interests",
                      "fields": {"user_id": {"tokenize": {"domain": "customer"}}, "country": "keep"}},
        **extra,
    }
    path = tmp_path / "payments.avsc"
    path.write_text(json.dumps(schema))
    return path


def test_each_purpose_compiles_to_its_own_view(tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(_purposes_policy(tmp_path)))
    views = {p.name: p for p in plan.purposes}
    assert plan.consent_purposes == ("fraud",)
    fraud = views["fraud"].plan
    assert [f["name"] for f in fraud.sanitized_schema["fields"]] == ["event_id", "user_id", "card_number",
                                                                      "amount_minor"]
    assert fraud.sanitized_schema["name"] == "example.payments.fraud.Payment"  # its own name
    assert fraud.sanitized_topic == "payments.fraud" and fraud.field_actions["email"] == "drop"
    assert [f["name"] for f in views["analytics"].plan.sanitized_schema["fields"]] == ["user_id", "country"]


@pytest.mark.parametrize(("extra", "message"), [
    ({"ads": {"topic": "payments.ads", "basis": "because", "fields": {"user_id": "drop"}}}, "basis must be one of"),
    ({"ads": {"topic": "payments.ads", "basis": "consent", "fields": {"country": "keep"}}},
     "must hold the subject field 'user_id'"),
    ({"ads": {"topic": "payments.sanitized", "basis": "contract", "fields": {"user_id": "keep"}}},
     "is not a valid topic name of its own"),
    ({"ads": {"topic": "payments.ads", "basis": "contract", "fields": {"nope": "keep"}}}, "no top-level field nope"),
    ({"ads": {"topic": "payments.ads", "basis": "contract", "fields": {"user_id": "shout"}}},
     "purpose 'ads': unknown action"),
])
def test_bad_purposes_fail_the_policy_naming_the_purpose(tmp_path: Path, extra: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as failed:
        compile_plan(load_schema_file(_purposes_policy(tmp_path, **extra)))
    assert message in str(failed.value)


def test_the_pipeline_publishes_each_view_its_basis_allows_and_audits_the_rest(tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(_purposes_policy(tmp_path)))
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test",
                           consent_input_topic="consent.raw")
    ring = Keyring.open(tmp_path / "k.json")
    pipeline = Pipeline([plan], ring, config, audit_partitions=1, tokenizers=tokenizers(ring, [plan]))
    samples = SampleEvents(seed=3)
    granted, revoked, unknown = (samples.payment() for _ in range(3))
    token = pipeline.stages[plan.source_topic].sanitizer.subject_token
    pipeline.consent = ConsentTable()
    _change(pipeline.consent, token(granted["user_id"]), "fraud", T0, True)
    _change(pipeline.consent, token(revoked["user_id"]), "fraud", T0, True)
    _change(pipeline.consent, token(revoked["user_id"]), "fraud", T0 + 50, False)
    events = [RawEvent(plan.source_topic, 0, i, ts, None, orjson.dumps(p), None)
              for i, (p, ts) in enumerate([(granted, T0 + 100), (revoked, T0 + 10), (revoked, T0 + 100),
                                           (unknown, T0 + 100)])]
    result = pipeline.process(events)
    by_topic: dict[str, list[Any]] = {}
    for r in result.records:
        by_topic.setdefault(r.topic, []).append(r)
    assert len(by_topic[plan.sanitized_topic]) == 4 and len(by_topic["payments.analytics"]) == 4
    fraud = [orjson.loads(r.value) for r in by_topic["payments.fraud"]]
    # the revoked subject's event stamped before the revocation is withheld too: it is judged after it
    assert [f["event_id"] for f in fraud] == [granted["event_id"]]
    assert all(set(f) == {"event_id", "user_id", "card_number", "amount_minor"} for f in fraud)
    assert all(f["card_number"] != granted["card_number"] for f in fraud)  # the view encrypts it
    audits = record_entries(r.value for r in by_topic[config.audit_topic])
    assert [a["outcome"] for a in audits] == ["sanitized"] * 4  # one audit event per input event
    assert [a["purposes"]["fraud"] for a in audits] == ["published:consent", "withheld:no_consent:fraud",
                                                        "withheld:no_consent:fraud", "withheld:no_consent:fraud"]
    assert {a["purposes"]["analytics"] for a in audits} == {"published:legitimate_interests"}
    assert result.counts.purposes[(plan.source_topic, "fraud", PurposeDecision.WITHHELD)] == 3
    keys = {r.key for r in by_topic["payments.fraud"]} | {r.key for r in by_topic["payments.analytics"]}
    assert keys <= {r.key for r in by_topic[plan.sanitized_topic]}  # keyed by the subject token, as the default

    # a raw consent event becomes a change under the token; a bad one is dead-lettered, both audited
    consent = [RawEvent("consent.raw", 0, 0, T0, None, orjson.dumps({"subject": unknown["user_id"],
                                                                     "purpose": "fraud", "granted": True}), None),
               RawEvent("consent.raw", 0, 1, T0, None, orjson.dumps({"subject": unknown["user_id"],
                                                                     "purpose": "ads", "granted": True}), None)]
    result = pipeline.process(consent)
    stored = [r for r in result.records if r.topic == config.consent_topic]
    assert len(stored) == 1 and stored[0].key.startswith(f"customer/{token(unknown['user_id'])}/fraud/".encode())
    dead = [orjson.loads(r.value) for r in result.records if r.topic == "consent.raw.dlq"]
    assert [d["reason"] for d in dead] == ["unknown_purpose"]
    audits = record_entries(r.value for r in result.records if r.topic == config.audit_topic)
    assert [a["outcome"] for a in audits] == ["consent:granted", "rejected:unknown_purpose"]
    for r in result.records:
        if r.topic != "consent.raw.dlq":  # the dead letter seals the original; nothing else holds it
            assert unknown["user_id"].encode() not in r.value and unknown["user_id"].encode() not in (r.key or b"")


def test_purposes_and_an_enforced_risk_measure_are_refused_together(tmp_path: Path) -> None:
    schema = json.loads(_purposes_policy(tmp_path).read_text())
    schema["privacy"]["quality"] = {"risk": {"quasi_identifiers": ["country", "currency"], "k": 5, "mode": "enforce"}}
    path = tmp_path / "payments.avsc"
    path.write_text(json.dumps(schema))
    with pytest.raises(PolicyError) as failed:
        compile_plan(load_schema_file(path))
    assert "purposes cannot be combined with an enforced re-identification risk" in str(failed.value)
    schema["privacy"]["quality"]["risk"]["mode"] = "report"  # measured only: allowed
    path.write_text(json.dumps(schema))
    assert compile_plan(load_schema_file(path)).purposes


def test_a_revocation_binds_the_events_after_it_in_the_same_batch(tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(_purposes_policy(tmp_path)))
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test", consent_input_topic="consent.raw")
    ring = Keyring.open(tmp_path / "k.json")
    pipeline = Pipeline([plan], ring, config, audit_partitions=1, tokenizers=tokenizers(ring, [plan]))
    payment = SampleEvents(seed=5).payment()
    token = pipeline.stages[plan.source_topic].sanitizer.subject_token
    pipeline.consent = ConsentTable()
    _change(pipeline.consent, token(payment["user_id"]), "fraud", T0, True)
    revoke = orjson.dumps({"subject": payment["user_id"], "purpose": "fraud", "granted": False, "at": T0 + 100})
    result = pipeline.process([RawEvent("consent.raw", 0, 0, T0 + 100, None, revoke, None),
                               RawEvent(plan.source_topic, 0, 0, T0 + 50, None, orjson.dumps(payment), None)])
    assert not [r for r in result.records if r.topic == "payments.fraud"]  # stamped before, processed after
    assert [r for r in result.records if r.topic == config.consent_topic]


def test_the_gateways_own_records_on_the_consent_topic_are_not_malformed_changes() -> None:
    table = ConsentTable()
    table.apply(b"_fence/keys:forget", b'{"format": 1}')  # gateway forget's fence: skipped, not counted
    assert len(table) == 0
