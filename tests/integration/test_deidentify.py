"""Every de-identification operator through the real worker and broker, and the leak sentinel.

A support-ticket schema uses mask, generalize (each form), shift_date, tokenize with normalizers and
redact; its events carry canary PII. The sanitized topic must hold none of it in clear, the values
must be what each operator promises, and a kept comment that starts carrying an email is counted,
audited and (the policy enforces it) dead-lettered.
"""

from __future__ import annotations

import datetime
import re
import time
from typing import Any

import orjson
import pytest

from gateway.embedded.broker import free_port
from tests.http_get import http_get

from .conftest import Deployment, cli

pytestmark = pytest.mark.integration

EPOCH = datetime.date(1970, 1, 1)
EVENT_TIME = datetime.datetime(2026, 6, 15, 13, 47, 12, tzinfo=datetime.UTC)
BIRTH = datetime.date(1984, 3, 9)  # aged 42 at EVENT_TIME
VISIT = datetime.date(2026, 6, 1)
CANARY_EMAIL = "Canary.Person+tickets@Example.org"
CANARY_PHONE = "+1 415 555 2671"
CANARY_CARD = "4111 1111 1111 1111"
CANARY_IBAN = "GB82 WEST 1234 5698 7654 32"
CANARY_POSTAL = "SW1A 1AA"
LEAK_EMAIL = "leaked.address@example.net"
N_TICKETS = 40
N_LEAKY = 5


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "SupportTicket", "namespace": "example.support",
        "privacy": {"source_topic": f"support.tickets.raw.{suffix}", "sanitized_topic": f"support.tickets.{suffix}",
                    "subject": "customer_email", "output": "json", "leak_sentinel": "enforce"},
        "fields": [
            {"name": "ticket_id", "type": "string", "privacy": "keep"},
            {"name": "customer_email", "type": "string",
             "privacy": {"tokenize": {"domain": "support-customer", "normalizer": "email"}}},
            {"name": "phone", "type": "string",
             "privacy": {"tokenize": {"domain": "phone", "normalizer": "phone", "region": "US"}}},
            {"name": "card", "type": "string", "privacy": {"mask": {"keep_last": 4, "preserve": " "}}},
            {"name": "birth_date", "type": {"type": "int", "logicalType": "date"},
             "privacy": {"generalize": {"age_band": {"width": 10}}}},
            {"name": "opened_at", "type": {"type": "long", "logicalType": "timestamp-millis"},
             "privacy": {"generalize": {"truncate": "hour"}}},
            {"name": "visit_date", "type": {"type": "int", "logicalType": "date"},
             "privacy": {"shift_date": {"domain": "dates", "max_days": 30}}},
            {"name": "amount", "type": "long", "privacy": {"generalize": {"bucket": {"width": 100}}}},
            {"name": "age_years", "type": "int", "privacy": {"generalize": {"edges": [18, 30, 50, 65]}}},
            {"name": "lat", "type": "double", "privacy": {"generalize": {"round": 1}}},
            {"name": "home", "privacy": {"generalize": {"geohash": 4}}, "type": {
                "type": "record", "name": "Point", "fields": [{"name": "lat", "type": "double"},
                                                              {"name": "lon", "type": "double"}]}},
            {"name": "postal_code", "type": "string", "privacy": {"generalize": {"prefix": 3}}},
            {"name": "note", "type": "string", "privacy": {"redact": {
                "tokenize": {"EMAIL": {"domain": "support-customer", "normalizer": "email"}}}}},
            {"name": "comment", "type": "string", "privacy": "keep"},
            {"name": "iban", "type": "string", "privacy": "drop"},
        ],
    }


def _ticket(i: int, leaky: bool) -> dict[str, Any]:
    email = CANARY_EMAIL if i % 2 == 0 else f"customer{i}@example.com"
    return {
        "ticket_id": f"T-{i:04d}",
        "customer_email": email.upper() if i % 4 == 0 else f"  {email}",  # spellings of one address
        "phone": CANARY_PHONE if i % 2 == 0 else "(415) 555-2671",
        "card": CANARY_CARD,
        "birth_date": (BIRTH - EPOCH).days,
        "opened_at": int(EVENT_TIME.timestamp() * 1000),
        "visit_date": (VISIT - EPOCH).days,
        "amount": 1234 + i,
        "age_years": 42,
        "lat": 51.50735,
        "home": {"lat": 51.50735, "lon": -0.12776},
        "postal_code": CANARY_POSTAL,
        "note": f"Customer {email} says card {CANARY_CARD} was charged twice; IBAN {CANARY_IBAN}",
        "comment": f"please reply to {LEAK_EMAIL}" if leaky else "resolved on first contact",
        "iban": CANARY_IBAN,
    }


def _samples(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")) if match else {}
        if match and all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_every_operator_through_the_worker_and_the_leak_sentinel(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    schema = _schema(d.suffix)
    (d.schemas / "support_tickets.avsc").write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    lint = cli("policy", "lint", str(d.schemas))
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    source, sanitized_topic = schema["privacy"]["source_topic"], schema["privacy"]["sanitized_topic"]
    leaky = set(range(0, N_TICKETS, N_TICKETS // N_LEAKY))
    tickets = [_ticket(i, i in leaky) for i in range(N_TICKETS)]
    timestamp_ms = int(EVENT_TIME.timestamp() * 1000)

    port = free_port()
    worker = d.start_worker("deidentify", extra=("--metrics-port", str(port), "--leak-sample-rate", "1"))
    try:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": d.bootstrap})
        for ticket in tickets:  # the record timestamp is the event time the age band is taken at
            producer.produce(source, orjson.dumps(ticket), timestamp=timestamp_ms)
        assert producer.flush(30) == 0
        audit = d.wait_for_audit(N_TICKETS)
        deadline = time.monotonic() + 30
        while _samples(http_get(f"http://127.0.0.1:{port}/metrics")[1], "gateway_events_total",
                       source_topic=source) < N_TICKETS:
            assert time.monotonic() < deadline, "the metrics did not count every ticket"
            time.sleep(0.2)
        scrape = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        assert worker.stop() == 0

    out = [orjson.loads(r.value) for r in d.read(sanitized_topic)]
    dead = [orjson.loads(r.value) for r in d.read(f"{source}.dlq")]
    assert len(out) == N_TICKETS - N_LEAKY and len(dead) == N_LEAKY
    assert {x["reason"] for x in dead} == {"pii_in_kept_field"}
    assert sorted(int(x["ticket_id"][2:]) for x in out) == sorted(set(range(N_TICKETS)) - leaky)

    # no canary in clear anywhere the gateway wrote
    blobs = b"".join(r.value for t in (sanitized_topic, f"{source}.dlq", d.audit_topic) for r in d.read(t))
    for canary in (CANARY_EMAIL, CANARY_EMAIL.lower(), CANARY_PHONE, "555-2671", CANARY_CARD, CANARY_IBAN,
                   CANARY_POSTAL, LEAK_EMAIL, "1984-03-09", "51.50735", "-0.12776"):
        assert canary.encode() not in blobs, canary
    assert LEAK_EMAIL not in worker.log() and CANARY_EMAIL not in worker.log()

    # each operator's promise
    by_id = {x["ticket_id"]: x for x in out}
    first = by_id["T-0002"]
    assert first["card"] == "**** **** **** 1111"
    assert first["birth_date"] == "40-49"
    assert first["opened_at"] == int(datetime.datetime(2026, 6, 15, 13, tzinfo=datetime.UTC).timestamp() * 1000)
    assert first["amount"] == "1200-1299"
    assert first["age_years"] == "30-49"
    assert first["lat"] == 51.5
    assert first["home"] == "gcpv"
    assert first["postal_code"] == "SW1"
    assert "iban" not in first
    assert first["note"] == (f"Customer <EMAIL:{first['customer_email']}> says card <CARD> was charged twice; "
                             "IBAN <IBAN>")
    # one customer, one token, however spelled; one phone number in two formats, one token
    same_customer = [x for x in out if int(x["ticket_id"][2:]) % 2 == 0]
    assert len({x["customer_email"] for x in same_customer}) == 1
    assert len({x["phone"] for x in out}) == 1
    # the shift is stable per subject and within the declared range
    visit = (VISIT - EPOCH).days
    for x in out:
        assert abs(x["visit_date"] - visit) <= 30
    assert len({x["visit_date"] for x in same_customer}) == 1

    # the audit trail: entity counts for redaction, leak findings by field and entity, no values
    ticket_audit = [b for b in audit if b["event"]["topic"] == source]
    assert all(b["redacted"] == {"note": {"CARD": 1, "EMAIL": 1, "IBAN": 1}}
               for b in ticket_audit if b["outcome"] == "sanitized")
    leaks = [b for b in ticket_audit if "leak_suspected" in b]
    assert len(leaks) == N_LEAKY and all(b["outcome"] == "rejected:pii_in_kept_field" for b in leaks)
    assert all(b["leak_suspected"] == [{"field": "comment", "entity": "EMAIL"}] for b in leaks)
    assert _samples(scrape, "gateway_leak_suspected_total", topic=source, field="comment",
                    entity="EMAIL") == N_LEAKY
    assert LEAK_EMAIL not in scrape and CANARY_EMAIL not in scrape
