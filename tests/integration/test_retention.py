"""Retention by key expiry end to end on the real broker: a field kept for one day, events stamped
in three different days, `gateway retention show` and `enforce`, what authorized consumers can still
open, and the erased keys physically gone from the key topic after the log cleaner ran."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from gateway.core.audit import AuditKeys, verify_chains
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.keys.envelope import FieldDecryptor, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.period_keys import DAY_MS, day_label
from gateway.keys.subject_keys import SubjectKeys
from gateway.runtime.keytopic import RETENTION_CHAIN, enforce_retention, load_period_keys, load_subject_keys
from gateway.runtime.reader import read_topic
from gateway.settings import GatewayConfig

from .conftest import ENV, REPO, WorkerProcess, audit_entries, cli, wait_for
from .test_shredding import _tune_cleaner, _wait_compacted_away

pytestmark = pytest.mark.integration
CARDS = {"today": "4111-canary-0001", "two_days_ago": "4111-canary-0002", "four_days_ago": "4111-canary-0004"}
AGES = {"today": 0, "two_days_ago": 2, "four_days_ago": 4}


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Payment", "namespace": "t.retention",
        "privacy": {"source_topic": f"pay.raw.{suffix}", "sanitized_topic": f"pay.sanitized.{suffix}",
                    "subject": "user_id", "input": "json", "output": "json"},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "user_id", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
            {"name": "card", "type": "string", "privacy": {"encrypt": {"retention_days": 1}}},
            {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True, "retention_days": 1}}},
            {"name": "code", "type": "string", "privacy": "encrypt"},
        ],
    }


def test_retention_erases_old_periods_everywhere_and_keeps_today_readable(bootstrap: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "pay.avsc").write_bytes(orjson.dumps(_schema(suffix)))
    plan = load_plans(schemas)[0]
    keyring, key_topic = tmp_path / "keyring.json", f"privacy.keys.{suffix}"
    audit_topic, group = f"privacy.audit.{suffix}", f"gateway-{suffix}"
    kafka = {"bootstrap.servers": bootstrap}
    topics = ("--bootstrap", bootstrap, "--key-topic", key_topic)

    log_path = tmp_path / "worker.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    worker = WorkerProcess(subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", bootstrap, "--schemas", str(schemas),
         "--keyring", str(keyring), "--audit-topic", audit_topic, "--group-id", group, "--instance-id", "w1",
         "--partitions", "1", "--session-timeout-ms", "6000", "--key-topic", key_topic,
         "--retention-check-s", "0"],  # the CLI enforces here; the worker's schedule is a unit test's
        stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO), log_path, handle)
    try:
        worker.wait_for_log('"msg":"partitions assigned"')
        now = int(time.time() * 1000) - 1000
        producer = Producer(kafka)
        for name, age in AGES.items():  # explicit Kafka timestamps: three different UTC days
            producer.produce(plan.source_topic, orjson.dumps({"event_id": name, "user_id": "alice", "card": CARDS[name],
                                                              "note": f"note of {name}", "code": "C"}),
                             timestamp=now - age * DAY_MS)
        assert producer.flush(30) == 0
        wait_for(lambda: sum(e.get("type") == "event" for e in audit_entries(bootstrap, audit_topic)) >= 3,
                 "three audit events", 60)
        records = {r["event_id"]: r for r in (orjson.loads(r.value or b"") for r in
                                                read_topic(kafka, plan.sanitized_topic))}
        assert set(records) == set(AGES)
        card_ids = {name: parse_ciphertext(base64.b64decode(r["card"])).key_id for name, r in records.items()}
        days = {name: day_label((now - age * DAY_MS) // DAY_MS) for name, age in AGES.items()}
        assert all(card_ids[name].startswith(f"period:1/{days[name]}/") for name in AGES)

        # show: every period with its key ids and when it goes; the two old days are due
        shown = cli("retention", "show", *topics, "--json")
        assert shown.returncode == 0, shown.stderr.decode()
        rows = [orjson.loads(line) for line in shown.stdout.splitlines()]
        assert sorted((r["period"], r["scope"], r["due"]) for r in rows) == sorted(
            (days[name], scope, name != "today") for name in AGES for scope in ("shared", "subject:customer"))
        assert {r["key_ids"][0] for r in rows if r["scope"] == "shared"} == set(card_ids.values())
        text = cli("retention", "show", *topics).stdout.decode()
        assert text.count("(due: gateway retention enforce)") == 4 and card_ids["today"] in text
        dry = cli("retention", "enforce", *topics, "--audit-topic", audit_topic, "--group-id", group, "--dry-run",
                  "--keyring", str(keyring))
        assert dry.returncode == 0 and "would erase 4 period key(s) of 4 period(s)" in dry.stdout.decode()

        _tune_cleaner(bootstrap, key_topic)
        before = {r.key: r.value for r in read_topic(kafka, key_topic)}
        oldest_name = next(k for k in before if k is not None and card_ids["four_days_ago"].rsplit("/", 1)[1].encode()
                           in k)
        oldest_blob = base64.b64decode(orjson.loads(before[oldest_name] or b"")["wrapped"])
        enforced = cli("retention", "enforce", *topics, "--audit-topic", audit_topic, "--group-id", group,
                       "--keyring", str(keyring))
        assert enforced.returncode == 0, enforced.stderr.decode()
        assert "erased 4 period key(s) of 4 period(s)" in enforced.stdout.decode()
        worker.wait_for_log('"msg":"period key erased"', timeout_s=10)  # the running worker evicts them
    finally:
        assert worker.stop() == 0

    # one audit event for the run, on its own chain, naming periods and key ids (no token, no value)
    audit = audit_entries(bootstrap, audit_topic)
    [event] = [e for e in audit if e.get("chain") == RETENTION_CHAIN]
    assert event["type"] == "retention_enforced" and event["keys_erased"] == 4
    assert sorted((p["period"], p["scope"]) for p in event["periods"]) == sorted(
        (days[name], scope) for name in ("two_days_ago", "four_days_ago") for scope in ("shared", "subject:customer"))
    erased_ids = {k for p in event["periods"] for k in p["key_ids"]}
    assert {card_ids["two_days_ago"], card_ids["four_days_ago"]} <= erased_ids and card_ids["today"] not in erased_ids
    assert "tok_v1_" not in orjson.dumps(event).decode()
    audit_keys = AuditKeys(*Keyring.open(keyring, create=False).audit_keys(create=False))
    audit_records = read_topic(kafka, audit_topic)
    chains = verify_chains(((r.partition, r.offset, r.value or b"") for r in audit_records), audit_keys)
    assert chains.breaks == [] and chains.events == 4 and chains.authenticated  # the retention record's MAC too
    config = GatewayConfig.load({"bootstrap": bootstrap, "key_topic": key_topic, "audit_topic": audit_topic,
                                 "group_id": group})
    assert enforce_retention(config, load_period_keys(kafka, key_topic)) == []  # a second run: nothing, no event

    # the authorized consumer with the key topic: today's card opens, the old days are key_erased
    lines = b"".join(orjson.dumps(records[name]) + b"\n" for name in AGES)
    opened = cli("decrypt", "--schemas", str(schemas), "--keyring", str(keyring), *topics, stdin=lines)
    assert opened.returncode == 1
    out = [orjson.loads(line) for line in opened.stdout.splitlines()]
    assert (out[0]["card"], out[0]["note"]) == (CARDS["today"], "note of today")
    errors = opened.stderr.decode()
    assert errors.count("key_erased") == 4 and "retention" in errors  # card and note of the two old days
    assert "record 1:" not in errors and all(out[i]["code"] == "C" for i in range(3))

    # physically gone after compaction: the oldest card key's wrapped value leaves the key topic,
    # today's keys stay
    remaining = _wait_compacted_away(bootstrap, key_topic, oldest_name, oldest_blob, timeout_s=90)
    today_dek = card_ids["today"].rsplit("/", 1)[1].encode()
    assert any(r.key is not None and today_dek in r.key and r.value is not None for r in remaining)
    everything = b"".join((r.key or b"") + (r.value or b"") for r in remaining + read_topic(kafka, audit_topic))
    everything += log_path.read_bytes()
    assert not any(card.encode() in everything for card in CARDS.values())

    # per subject and period: gateway forget erases the subject's remaining period key (today's note)
    forgot = cli("forget", "--domain", "customer", "--bootstrap", bootstrap, "--keyring", str(keyring),
                 "--schemas", str(schemas), "--key-topic", key_topic, "--audit-topic", audit_topic,
                 stdin=b"alice\n")
    assert forgot.returncode == 0, forgot.stderr.decode()
    assert "1 key(s) erased" in forgot.stdout.decode()
    [forget_event] = [e for e in audit_entries(bootstrap, audit_topic) if e.get("type") == "subject_forgotten"]
    assert forget_event["key_ids"] == [parse_ciphertext(base64.b64decode(records["today"]["note"])).key_id]
    ring = Keyring.open(keyring, create=False)
    decryptor = FieldDecryptor(ring, subject_keys=load_subject_keys(kafka, key_topic, SubjectKeys(ring)))
    opened_today, report = decrypt_record(records["today"], plan, decryptor)
    assert opened_today["card"] == CARDS["today"] and report.fields["note"].startswith("key_erased")
