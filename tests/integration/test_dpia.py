"""`gateway report --dpia` on the real broker, against a run with known inputs.

A worker sanitizes N known events of a policy that plants risks (an email kept in clear, a field
nobody annotated, no legal basis for the sanitized topic), with two dead letters (a quality rule and
broken JSON), after one consent grant to a purpose; one subject is then forgotten and a consumer group
reads the sanitized topic. The DPIA's JSON states exactly those figures, lists the planted risks and
the reader group, says the broker has no authorizer and that the audit verifies; the HTML, rendered
in headless Chromium, shows every section with the same figures, loads nothing, and neither holds a
planted value."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from gateway.embedded.broker import EmbeddedBroker
from gateway.runtime.access import read_access

from .conftest import Deployment, cli, committed_count, wait_for
from .test_report import rendered_dom

pytestmark = pytest.mark.integration

ALICE, BOB = "alice.dpia-canary-5521", "bob.dpia-canary-8830"
NOTE = "diagnosis dpia-canary-4410"
NICK = "nick-dpia-canary-1207"
N = 24  # valid events; ALICE's are the even ones
SCHEMA = "t.dpia.Visit"


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Visit", "namespace": "t.dpia",
        "privacy": {
            "source_topic": f"dpia.visits.raw.{suffix}", "sanitized_topic": f"dpia.visits.sanitized.{suffix}",
            "subject": "patient_id", "event_id": "event_id", "input": "json", "output": "json",
            "purposes": {"research": {"topic": f"dpia.visits.research.{suffix}", "basis": "consent",
                                      "fields": {"event_id": "keep",
                                                 "patient_id": {"tokenize": {"domain": "dpia-patient"}},
                                                 "amount": "keep"}}},
        },
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "patient_id", "type": "string", "privacy": {"tokenize": {"domain": "dpia-patient"}}},
            {"name": "email", "type": "string", "privacy": "keep"},  # planted: PII kept in clear
            {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True}}},
            {"name": "nickname", "type": "string"},  # planted: no annotation, dropped by default
            {"name": "amount", "type": "long", "privacy": "keep",
             "quality": {"range": {"min": 0, "max": 1000, "action": "reject"}}},
        ],
    }


def _event(i: int, amount: int = 10) -> dict[str, Any]:
    subject = ALICE if i % 2 == 0 else BOB
    return {"event_id": f"e{i}", "patient_id": subject, "email": f"user{i}.dpia-canary@example.org",
            "note": NOTE, "nickname": NICK, "amount": amount}


def test_dpia_states_the_run_and_its_planted_risks(fresh_deployment: Deployment, tmp_path: Path) -> None:
    d = fresh_deployment
    for shipped in d.schemas.glob("*.avsc"):
        shipped.unlink()
    schema = _schema(d.suffix)
    (d.schemas / "visits.avsc").write_bytes(orjson.dumps(schema))
    source, sanitized = schema["privacy"]["source_topic"], schema["privacy"]["sanitized_topic"]
    key_topic, quality_topic = f"privacy.keys.{d.suffix}", f"privacy.quality.{d.suffix}"
    consent_in, consent_topic = f"consent.raw.{d.suffix}", f"privacy.consent.{d.suffix}"
    settings = ("--bootstrap", d.bootstrap, "--schemas", str(d.schemas))
    reader_group = f"dpia-reader-{d.suffix}"
    phases: dict[str, float] = {}
    mark = time.monotonic()
    worker = d.start_worker("dpia", partitions=2, extra=(
        "--key-topic", key_topic, "--quality-topic", quality_topic, "--leak-sample-rate", "1",
        "--consent-input-topic", consent_in, "--consent-topic", consent_topic))
    try:
        granted = cli("consent", "grant", "--purpose", "research", "--domain", "dpia-patient",
                      "--consent-input-topic", consent_in, *settings, stdin=ALICE.encode() + b"\n")
        assert granted.returncode == 0, granted.stderr.decode()
        # the worker holds the grant before any event arrives: ALICE's events reach the research view
        wait_for(lambda: committed_count(d.bootstrap, consent_topic) >= 1, "the grant on the consent topic")
        events = [orjson.dumps(_event(i)) for i in range(N)]
        d.produce(source, [*events, orjson.dumps(_event(N, amount=5000)), b'{"event_id": "broken", '])
        d.wait_for_audit(N + 2 + 1)  # the events, the two dead letters and the consent change
        phases["run"], mark = time.monotonic() - mark, time.monotonic()
    finally:
        assert worker.stop() == 0
    forget = cli("forget", ALICE, "--domain", "dpia-patient", "--keyring", str(d.keyring), "--key-topic", key_topic,
                 "--audit-topic", d.audit_topic, *settings)
    assert forget.returncode == 0, forget.stderr.decode()

    consumer = Consumer({"bootstrap.servers": d.bootstrap, "group.id": reader_group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    try:  # a downstream reader of the sanitized topic: a group with committed offsets
        consumer.subscribe([sanitized])
        read: list[Any] = []
        wait_for(lambda: read.extend(m for m in consumer.consume(50, 0.5) if m.error() is None) or len(read) >= N,
                 "the reader group reading the sanitized topic")
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    phases["forget and reader"], mark = time.monotonic() - mark, time.monotonic()

    out = tmp_path / "dpia.html"
    result = cli("report", "--dpia", "--json", "--html", str(out), *settings, "--keyring", str(d.keyring),
                 "--group-id", d.group_id, "--audit-topic", d.audit_topic, "--key-topic", key_topic,
                 "--quality-topic", quality_topic, "--ledger-topic", f"privacy.ledger.{d.suffix}",
                 "--since", "1h", "--sample", "100", timeout=300)
    phases["report --dpia"], mark = time.monotonic() - mark, time.monotonic()
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    body = orjson.loads(result.stdout)
    document = out.read_text(encoding="utf-8")

    # ---- evidence: the known counts -------------------------------------------------------------
    ev = body["evidence"]
    assert ev["events"]["total"] == N + 2
    assert ev["events"]["by_outcome"] == {"sanitized": N, "rejected": 2, "withheld": 0}
    assert ev["events"]["dead_letter_reasons"] == {"json_invalid": 1, "quality:amount.range": 1}
    assert ev["forgotten"]["subjects"] == 1 and ev["forgotten"]["by_domain"] == {"dpia-patient": 1}
    assert ev["consent"]["changes"] == {"research": {"granted": 1}}
    assert ev["consent"]["views"] == {"research": {"published": N // 2, "withheld": N // 2}}
    assert ev["leaks"]["events"] == N
    assert {(f["field"], f["entity"], f["count"]) for f in ev["leaks"]["findings"]} == {("email", "EMAIL", N)}
    audit = body["audit_verification"]
    assert audit["ran"] and audit["ok"], audit
    # every audit entry: the events and dead letters, the consent change and the forget, each chain anchored
    assert (audit["events"], audit["problems_total"], audit["authenticated"]) == (N + 2 + 1 + 1, 0, True)

    # ---- inventory: per field, and who reads each output ------------------------------------------
    fields = {e["path"]: e for e in body["inventory"]}
    assert set(fields) == {"event_id", "patient_id", "email", "note", "nickname", "amount"}
    assert fields["email"]["action"] == "keep" and fields["email"]["purposes"] == []
    assert fields["nickname"] == {**fields["nickname"], "action": "drop", "annotated": False}
    assert fields["note"]["key_scope"] == "subject"
    assert fields["patient_id"]["purposes"] == [{"purpose": "research", "basis": "consent",
                                                 "action": "tokenize:dpia-patient",
                                                 "topic": f"dpia.visits.research.{d.suffix}"}]
    assert fields["amount"]["basis"] is None  # no record-level basis declared
    outputs = {o["topic"]: o for o in body["outputs"]}
    assert outputs[sanitized]["kind"] == "sanitized" and reader_group in outputs[sanitized]["consumer_groups"]
    assert outputs[f"dpia.visits.research.{d.suffix}"]["basis"] == "consent"
    assert reader_group not in outputs[f"dpia.visits.research.{d.suffix}"]["consumer_groups"]
    assert body["access"]["authorizer"] == ""  # the test broker runs without one

    # ---- measures ------------------------------------------------------------------------------------
    m = body["measures"]
    assert m["token_domains"] == {"dpia-patient": [f"{SCHEMA}: patient_id"]}
    assert m["encryption"] == [{"schema": SCHEMA, "field": "note", "scope": "subject", "roles": [],
                                "retention_days": None}]
    assert m["leak_sentinel"] == {SCHEMA: "observe"}
    assert m["quality"][0]["rules"] == [{"name": "amount.range", "kind": "range", "action": "reject"}]

    # ---- the planted risks, and only the ones the run has --------------------------------------------
    risks = {(r["kind"], r["where"]) for r in body["risks"]}
    assert ("kept_pii", "email") in risks
    assert ("leak_found", "email") in risks
    assert ("unannotated_dropped", "nickname") in risks
    assert ("no_legal_basis", sanitized) in risks
    assert ("no_authorizer", None) in risks
    kinds = {k for k, n in body["risk_counts"].items() if n}
    assert kinds == {"kept_pii", "leak_found", "unannotated_dropped", "no_legal_basis", "no_authorizer"}
    assert not any(w in {"event_id", "patient_id", "amount", "note"} for k, w in risks if k == "kept_pii")

    # ---- no planted value, subject or token, and nothing to load -------------------------------------
    tokens = [a for a in d.audit_entries() if a.get("type") == "subject_forgotten"][0]["subject_tokens"]
    for canary in (ALICE, BOB, NOTE, NICK, "dpia-canary", *tokens):
        assert canary not in result.stdout.decode(), canary
        assert canary not in document, canary
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", document, re.I)
    assert not re.search(r"(src|href)\s*=|url\(|@import", document, re.I)

    # ---- the HTML in a real browser --------------------------------------------------------------------
    mark = time.monotonic()
    dom = rendered_dom(out, tmp_path)
    phases["chromium"] = time.monotonic() - mark
    for section in ("overview", "inventory", "measures", "evidence", "audit", "risks"):
        assert f'<section id="{section}">' in dom, section
    for tile, value in (("events", N + 2), ("sanitized", N), ("rejected", 2), ("withheld", 0), ("forgotten", 1),
                        ("consent-changes", 1), ("leaks", N), ("audit", "verified"), ("risks", len(body["risks"]))):
        assert re.search(rf'data-figure="{tile}"><div class="value">{value}</div>', dom), (tile, value)
    risks_html = dom.split('<section id="risks">', 1)[1].split("</section>", 1)[0]
    for kind in ("kept_pii", "leak_found", "unannotated_dropped", "no_legal_basis", "no_authorizer"):
        assert f"<td>{kind}</td>" in risks_html, kind
    assert re.search(rf"<td>{re.escape(sanitized)}</td><td>sanitized</td>.*?<td>[^<]*{reader_group}[^<]*</td>", dom)
    assert re.search(r"<td>quality:amount\.range</td><td class=\"n\">1</td>", dom)
    assert "no authorizer: every client may read every topic" in dom
    assert re.search(r"\b1 KEK id\(s\) and 1 token key\(s\) in use in the period", dom)
    print(", ".join(f"{k} {v:.1f}s" for k, v in phases.items()))


AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def test_access_reads_the_authorizer_and_acls_of_a_secured_broker(tmp_path: Path) -> None:
    """A broker of its own (the shared one has no authorizer): StandardAuthorizer, the PLAINTEXT principal a
    super user. An ACL lets User:bi read the sanitized topic and a prefixed one lets User:audit read every
    privacy.* topic; a WRITE grant is no reader. The access read names exactly those readers per topic."""
    topic, other = "visits.sanitized", "privacy.visits.research"
    with EmbeddedBroker(data_dir=tmp_path / "kafka", heap_mb=384,
                        settings={"authorizer.class.name": AUTHORIZER, "super.users": "User:ANONYMOUS"}) as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        for future in admin.create_acls([
            AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:bi", "*", AclOperation.READ,
                       AclPermissionType.ALLOW),
            AclBinding(ResourceType.TOPIC, "privacy.", ResourcePatternType.PREFIXED, "User:audit", "*",
                       AclOperation.READ, AclPermissionType.ALLOW),
            AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:ops", "*", AclOperation.WRITE,
                       AclPermissionType.ALLOW),
        ], request_timeout=30).values():
            future.result()
        access = read_access({"bootstrap.servers": broker.bootstrap}, [topic, other])
    assert access.authorizer == AUTHORIZER and access.has_authorizer
    assert access.acls is not None and len(access.acls) == 3 and access.acl_error is None
    assert [(a.principal, a.pattern) for a in access.read_bindings(topic)] == [("User:bi", "LITERAL")]
    assert [(a.principal, a.pattern) for a in access.read_bindings(other)] == [("User:audit", "PREFIXED")]
