"""The raw record's key and headers under the policy, on the real worker and broker (issue #33).

Producers put a canary in the record key, an e-mail address in `x-user-email` (tokenized), a tenant id in
`x-tenant` (kept), a trace id in `x-trace` (encrypted), secrets in headers the policy does not name, and
forge the gateway's own headers (`gateway-policy`, `gateway-key`, `gateway-source`). The adversary reads
every topic the gateway writes (sanitized, purpose, dead letters, audit) and the worker's log: no canary
may appear; the named headers come out with their action, and an entitled reader opens the encrypted ones.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from gateway.core.audit import record_entries
from gateway.integrations.common import SanitizedReader

from .conftest import Deployment, cli

pytestmark = pytest.mark.integration

N_USERS = 4
EMAIL = "Carol.Canary@Example.org"
KEY_CANARY = "raw-key-canary-5e1f"
UNNAMED = "unnamed-header-canary-a4b2"
TRACE = "trace-canary-0d9c"
FORGED = "forged-gateway-canary-77e0"
CANARIES = (EMAIL, EMAIL.lower(), KEY_CANARY, UNNAMED, TRACE, FORGED)


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Signup", "namespace": "example.kh",
        "privacy": {
            "source_topic": f"signups.raw.{suffix}", "sanitized_topic": f"signups.sanitized.{suffix}",
            "subject": "user_id", "output": "json",
            "key": "encrypt",
            "headers": {"x-user-email": {"tokenize": {"domain": "kh-email", "normalizer": "email"}},
                        "x-tenant": "keep", "x-trace": "encrypt"},
            "purposes": {"marketing": {"topic": f"signups.marketing.{suffix}", "basis": "legitimate_interests",
                                       "fields": {"user_id": {"tokenize": {"domain": "kh-user"}}, "plan": "keep"}}},
        },
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "user_id", "type": "string", "privacy": {"tokenize": {"domain": "kh-user"}}},
            {"name": "plan", "type": "string", "privacy": "keep"},
        ],
    }


def _read(bootstrap: str, topic: str, n: int, timeout_s: float = 60.0) -> list[Any]:
    """The first `n` committed messages of `topic` (every partition), headers as the broker holds them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"kh-reader-{topic}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < n:
            assert time.monotonic() < deadline, f"{len(out)} of {n} records on {topic}"
            out += [m for m in consumer.consume(100, 0.5) if m.error() is None]
        return out
    finally:
        consumer.close()


def _bytes_of(messages: list[Any]) -> str:
    parts = []
    for m in messages:
        parts += [m.value() or b"", m.key() or b""]
        parts += [name.encode() + b"=" + (value or b"") for name, value in m.headers() or ()]
    return b"|".join(parts).decode("utf-8", "replace")


def test_named_key_and_headers_come_out_with_their_action_and_no_canary_anywhere(
        fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    for existing in d.schemas.glob("*.avsc"):  # this module's schema only: one source for the worker
        existing.unlink()
    schema = _schema(d.suffix)
    (d.schemas / "signups.avsc").write_bytes(orjson.dumps(schema))
    lint = cli("policy", "lint", str(d.schemas / "signups.avsc"))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    privacy = schema["privacy"]
    source, sanitized = privacy["source_topic"], privacy["sanitized_topic"]
    view, dlq = privacy["purposes"]["marketing"]["topic"], f"{source}.dlq"
    spellings = [EMAIL, f"  {EMAIL.upper()} "]  # one address, two spellings: one token
    events = []
    for i in range(2 * N_USERS):
        headers = [("x-user-email", spellings[i % 2].encode()), ("x-tenant", b"acme"),
                   ("x-trace", f"{TRACE}-{i}".encode()), ("x-unnamed", UNNAMED.encode()),
                   ("gateway-policy", FORGED.encode()), ("gateway-key", FORGED.encode()),
                   ("gateway-source", FORGED.encode())]
        value = {"event_id": f"E{i}", "user_id": f"user-{i % N_USERS}", "plan": "pro"}
        events.append((f"{KEY_CANARY}-{i}".encode(), orjson.dumps(value), headers))
    # the dead letter: its e-mail header is not UTF-8, which tokenize cannot read
    bad_headers = [("x-user-email", b"\xff" + EMAIL.encode()), ("x-unnamed", UNNAMED.encode())]
    events.append((KEY_CANARY.encode(), orjson.dumps({"event_id": "BAD", "user_id": "user-0", "plan": "pro"}),
                   bad_headers))
    worker = d.start_worker("key-headers")
    try:
        producer = Producer({"bootstrap.servers": d.bootstrap})
        for key, value, headers in events:
            producer.produce(source, value, key=key, headers=headers)
        assert producer.flush(30) == 0
        audit = d.wait_for_audit(len(events))
    finally:
        assert worker.stop() == 0
    outcomes = sorted(a["outcome"] for a in audit)
    assert outcomes == ["rejected:invalid_utf8"] + ["sanitized"] * (len(events) - 1)

    published = _read(d.bootstrap, sanitized, len(events) - 1)
    purpose = _read(d.bootstrap, view, len(events) - 1)
    letters = _read(d.bootstrap, dlq, 1)
    for messages in (published, purpose, letters):
        text = _bytes_of(messages)
        assert not [c for c in CANARIES if c in text]
    audit_text = orjson.dumps(record_entries(r.value for r in d.read(d.audit_topic))).decode()
    assert not [c for c in CANARIES if c in audit_text]
    log = (d.root / "worker-key-headers.log").read_text(errors="replace")
    assert not [c for c in CANARIES if c in log]

    # the named headers, after their actions; nothing else of the producer's
    reader = SanitizedReader(d.schemas, d.keyring)
    tokens, keys_by_user = set(), {}
    for m in published:
        headers = m.headers() or []
        names = [name for name, _ in headers]
        assert sorted(n for n in names if n.startswith("gateway-")) == sorted(
            ["gateway-schema", "gateway-encoding", "gateway-policy", "gateway-source", "gateway-key"])
        assert "x-unnamed" not in names and dict(headers)["x-tenant"] == b"acme"
        assert dict(headers)["gateway-policy"].decode().startswith("sha256:")
        tokens.add(dict(headers)["x-user-email"])
        decoded = reader.decode(sanitized, m.value(), headers)
        assert decoded.opened, decoded.fields
        i = int(decoded.value["event_id"][1:])
        assert decoded.header("x-trace") == f"{TRACE}-{i}".encode()
        assert decoded.header("gateway-key") == f"{KEY_CANARY}-{i}".encode()
        # the record key stays the subject's token: the topic is partitioned by subject
        assert m.key() == decoded.value["user_id"].encode()
        keys_by_user.setdefault(f"user-{i % N_USERS}", set()).add((m.key(), m.partition()))
    assert len(tokens) == 1  # equal inputs (after the normalizer) give equal tokens
    assert all(len(v) == 1 for v in keys_by_user.values()) and len(keys_by_user) == N_USERS
    for m in purpose:  # a purpose view carries no header of the policy's and no key result
        assert not [n for n, _ in m.headers() or () if n.startswith("x-") or n == "gateway-key"]
    entry = next(a for a in audit if a["outcome"] == "sanitized")
    assert entry["actions"]["(header)x-user-email"] == "tokenize:kh-email:email"
    assert entry["actions"]["(header)x-trace"] == "encrypt" and entry["actions"]["(record key)"] == "encrypt"
    letter = orjson.loads(letters[0].value())
    assert letter["reason"] == "invalid_utf8" and letter["sealed"] is not None
