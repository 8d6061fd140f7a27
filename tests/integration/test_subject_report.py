"""`gateway subject report` on the real broker, before and after `gateway forget`: tokens, the topics and
days of the subject's records (from the audit), its keys and scopes, consent history, DP windows, and
what forget would erase; never the identifier, never someone else's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from gateway.consent.table import ConsentChange
from gateway.keys.keyring import Keyring
from gateway.runtime import changelog

from .conftest import cli
from .test_shredding import ALICE, BOB, Setup, _key_names, _tokens

pytestmark = pytest.mark.integration
AGGREGATE = "t.shred.Note/notes_per_day"
WINDOW = 1_796_601_600_000  # 2026-12-07T00:00:00Z


def _report(s: Setup, consent_topic: str, identifier: str, *extra: str) -> tuple[int, str]:
    result = cli("subject", "report", "--domain", "patient", "--bootstrap", s.bootstrap, "--keyring", str(s.keyring),
                 "--schemas", str(s.schemas), "--key-topic", s.key_topic, "--audit-topic", s.audit_topic,
                 "--consent-topic", consent_topic, "--group-id", s.group, *extra, stdin=identifier.encode() + b"\n")
    assert result.returncode == 0, result.stderr.decode()
    return result.returncode, result.stdout.decode()


def _json(s: Setup, consent_topic: str, identifier: str) -> dict[str, Any]:
    _, out = _report(s, consent_topic, identifier, "--json")
    return orjson.loads(out)


def test_subject_report_before_and_after_forget(bootstrap: str, tmp_path: Path) -> None:
    s = Setup(bootstrap, tmp_path)
    consent_topic = f"privacy.consent.{s.key_topic.rsplit('.', 1)[1]}"
    worker = s.start_worker("w1")
    try:
        s.send(worker, [(ALICE, "alice note 1"), (BOB, "bob note 1"), (ALICE, "alice note 2")])
    finally:
        assert worker.stop() == 0
    keyring = Keyring.open(s.keyring, create=False)
    [alice_token], [bob_token] = _tokens(keyring, ALICE), _tokens(keyring, BOB)
    [alice_key] = _key_names(s, keyring, ALICE)
    kafka = {"bootstrap.servers": bootstrap}
    changelog.ensure_changelog(kafka, consent_topic, 1)
    producer = Producer({**kafka, "enable.idempotence": True})
    for token, at, granted in ((alice_token, 1_000, True), (alice_token, 2_000, False), (bob_token, 1_000, True)):
        change = ConsentChange("patient", token, "research", at, granted, "test")
        producer.produce(consent_topic, change.value(), change.key())
    # stage 1's bounding state as it writes it: [sanitized topic, partition, "s", aggregate, window, subject]
    for token in (alice_token, bob_token):
        key = orjson.dumps([s.plan.sanitized_topic, 0, "s", AGGREGATE, WINDOW, token])
        producer.produce(f"{s.group}.dp-bound-state", b'{"g1": 1}', key)
    assert producer.flush(30) == 0

    before = _json(s, consent_topic, ALICE)
    dek = alice_key.rsplit("/", 1)[1]
    assert before["tokens"] == [{"token_version": "1", "token": alice_token}]
    assert [(r["topic"], r["events"]) for r in before["records"]] == [(s.plan.sanitized_topic, 2)]
    assert before["keys"] == [{"key_id": f"subject:patient/{dek}", "scopes": ["field"],
                               "topics": [s.plan.sanitized_topic], "state": "live"}]
    assert before["consent"] == [{"purpose": "research", "in_force": False, "history": [
        {"time": "1970-01-01T00:00:01Z", "granted": True}, {"time": "1970-01-01T00:00:02Z", "granted": False}]}]
    assert before["dp_contributions"] == [{"aggregate": AGGREGATE, "window_start": "2026-12-07T00:00:00Z"}]
    assert before["forget_would_erase"] == {"keys": [{"key_id": f"subject:patient/{dek}", "scopes": ["field"],
                                                      "topics": [s.plan.sanitized_topic]}], "consent_records": 2}
    _, human = _report(s, consent_topic, ALICE)
    assert "gateway forget would erase: 1 key(s) and 2 consent record(s)" in human
    for out in (human, orjson.dumps(before).decode()):  # the person's own data only, never the identifier
        assert ALICE not in out and BOB not in out and bob_token not in out

    receipt = tmp_path / "receipt.json"
    forget = cli("forget", "--domain", "patient", "--bootstrap", bootstrap, "--keyring", str(s.keyring),
                 "--key-topic", s.key_topic, "--audit-topic", s.audit_topic, "--consent-topic", consent_topic,
                 "--schemas", str(s.schemas), "--receipt", str(receipt), stdin=ALICE.encode() + b"\n")
    assert forget.returncode == 0, forget.stderr.decode()
    # one inventory: the report's "would erase" before is the receipt's keys after
    assert orjson.loads(receipt.read_bytes())["keys"] == before["forget_would_erase"]["keys"]

    after = _json(s, consent_topic, ALICE)
    assert after["keys"] == [{"key_id": f"subject:patient/{dek}", "scopes": ["field"],
                              "topics": [s.plan.sanitized_topic], "state": "erased"}]
    assert [(e["key_ids"], e["consent_records_erased"]) for e in after["erasures"]] == [
        ([f"subject:patient/{dek}"], 2)]
    assert after["consent"] == []  # the history is tombstoned
    assert after["forget_would_erase"] == {"keys": [], "consent_records": 0}
    assert after["records"] == before["records"]  # where its records went stays known (the audit)
    _, human = _report(s, consent_topic, ALICE)
    assert "gateway forget would erase: nothing" in human and "[erased]" in human and "forgotten " in human

    bob = _json(s, consent_topic, BOB)  # nobody else is touched
    assert [k["state"] for k in bob["keys"]] == ["live"] and bob["forget_would_erase"]["consent_records"] == 1
