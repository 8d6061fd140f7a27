"""Consent and purposes on the real broker.

A policy with two purposes: `fraud` (basis consent: its view holds the encrypted card) and
`analytics` (basis legitimate_interests: tokens and country). Consent arrives from the CLI (the
identifier on stdin) and as raw consent events, which the worker tokenizes into the compacted
consent topic and audits. An event reaches the fraud topic only if its subject's consent is in
force at the event's time and no revocation the worker knows of is later than it: a revocation stops
every event processed after the worker learned of it, whatever its stamp, and a subject never seen
is withheld. Every withheld view is audited; no identifier leaves the raw topics.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from gateway.core.codec.sanitized import StoredRecord
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment, cli, wait_for

pytestmark = pytest.mark.integration
HOUR = 3_600_000


def _policy(d: Deployment) -> tuple[dict[str, Any], str, str]:
    (d.schemas / "clinical_visits.avsc").unlink()
    schema = orjson.loads((d.schemas / "payments.avsc").read_bytes())
    fraud, analytics = f"payments.fraud.{d.suffix}", f"payments.analytics.{d.suffix}"
    schema["privacy"]["purposes"] = {
        "fraud": {"topic": fraud, "basis": "consent",
                  "fields": {"event_id": "keep", "user_id": {"tokenize": {"domain": "customer"}},
                             "card_number": "encrypt", "amount_minor": "keep"}},
        "analytics": {"topic": analytics, "basis": "legitimate_interests",
                      "fields": {"event_id": "keep", "user_id": {"tokenize": {"domain": "customer"}},
                                 "country": "keep"}},
    }
    (d.schemas / "payments.avsc").write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    return schema, fraud, analytics


def _committed(d: Deployment, topic: str, n: int) -> list[StoredRecord]:
    records = wait_for(lambda: (r := d.read(topic)) and len(r) >= n and r, f"{n} records on {topic}")
    return records


def test_consent_gates_the_purpose_topic_by_the_events_time(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    schema, fraud, analytics = _policy(d)
    source = schema["privacy"]["source_topic"]
    consent_in, consent_topic = f"consent.raw.{d.suffix}", f"privacy.consent.{d.suffix}"
    settings = ("--bootstrap", d.bootstrap, "--schemas", str(d.schemas))
    worker = d.start_worker("consent", extra=("--consent-input-topic", consent_in, "--consent-topic", consent_topic))
    t0 = int(time.time() * 1000) - 3 * HOUR
    ids = {name: f"subject-{name}-{d.suffix}@example.com" for name in ("a", "b", "c", "probe")}
    producer = Producer({"bootstrap.servers": d.bootstrap, "enable.idempotence": True})

    def consent_event(name: str, granted: bool, at: int) -> None:
        producer.produce(consent_in, orjson.dumps({"subject": ids[name], "purpose": "fraud", "granted": granted,
                                                   "at": at}))
        assert producer.flush(30) == 0

    try:
        granted = cli("consent", "grant", "--purpose", "fraud", "--domain", "customer", "--at", str(t0),
                      "--consent-input-topic", consent_in, *settings, stdin=ids["a"].encode() + b"\n")
        assert granted.returncode == 0, granted.stderr.decode()
        assert ids["a"] not in granted.stdout.decode() + granted.stderr.decode()
        consent_event("b", True, t0)
        consent_event("b", False, t0 + HOUR)  # b revokes an hour later
        _committed(d, consent_topic, 3)
        consent_event("probe", True, t0)  # the last change on the (one-partition) consent topic
        _committed(d, consent_topic, 4)

        samples = SampleEvents(seed=17)
        payments: list[tuple[str, dict[str, Any], int]] = []

        def pay(name: str, at: int) -> None:
            record = samples.payment()
            record["user_id"] = ids[name]
            payments.append((name, record, at))
            producer.produce(source, orjson.dumps(record), timestamp=at)
            assert producer.flush(30) == 0

        # once the probe's view is out, the worker's table holds every change before the probe's grant
        pay("probe", t0 + 1)
        wait_for(lambda: len(d.read(fraud)) == 1, "the probe's event on the fraud topic")
        for name, at in (("a", t0 + HOUR // 2), ("a", t0 + 2 * HOUR), ("b", t0 + HOUR // 2), ("b", t0 + 2 * HOUR),
                         ("c", t0 + HOUR // 2)):
            pay(name, at)
        audit = d.wait_for_audit(4 + len(payments))
    finally:
        assert worker.stop() == 0

    events = [a for a in audit if a.get("type") == "event"]
    consents = [a for a in audit if a.get("type") == "consent"]
    # one audit chain per consent-topic partition: counted, not ordered across them
    assert Counter(c["outcome"] for c in consents) == {"consent:granted": 3, "consent:revoked": 1}
    by_id = {a["event"]["event_id"]: a for a in events}
    # b's first event is stamped before b's revocation but processed after the worker learned of it
    expected = {"probe": [True], "a": [True, True], "b": [False, False], "c": [False]}
    seen: dict[str, list[bool]] = {}
    for name, record, _at in payments:
        decision = by_id[record["event_id"]]["purposes"]
        seen.setdefault(name, []).append(decision["fraud"] == "published:consent")
        if decision["fraud"] != "published:consent":
            assert decision["fraud"] == "withheld:no_consent:fraud"
        assert decision["analytics"] == "published:legitimate_interests"
        assert by_id[record["event_id"]]["outcome"] == "sanitized"
    assert seen == expected
    published = {orjson.loads(r.value)["event_id"] for r in d.read(fraud)}
    assert published == {r["event_id"] for n, r, _ in payments if by_id[r["event_id"]]["purposes"]["fraud"]
                         == "published:consent"}
    views = [orjson.loads(r.value) for r in d.read(fraud)]
    assert all(set(v) == {"event_id", "user_id", "card_number", "amount_minor"} for v in views)
    assert len(d.read(analytics)) == len(payments) == len(d.read(schema["privacy"]["sanitized_topic"]))
    for topic in (fraud, analytics, consent_topic, d.audit_topic, schema["privacy"]["sanitized_topic"]):
        for r in d.read(topic):
            data = (r.key or b"") + (r.value or b"")
            assert not any(identifier.encode() in data for identifier in ids.values()), topic
    assert not any(identifier in worker.log() for identifier in ids.values())

    shown = cli("consent", "show", "--domain", "customer", "--consent-topic", consent_topic, "--keyring",
                str(d.keyring), *settings, stdin=ids["b"].encode())
    assert shown.returncode == 0, shown.stderr.decode()
    history = orjson.loads(shown.stdout)
    assert [c["granted"] for c in history["purposes"]["fraud"]] == [True, False]
    assert history["subject"].startswith("tok_") and ids["b"] not in shown.stdout.decode()
