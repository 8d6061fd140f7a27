"""Erasure receipts on the real broker: `gateway forget --receipt`, then `gateway erasure verify` before
compaction (pending), after it (verified), for another identifier (fails), for an edited receipt
(fails), and once someone wrote the erased key's old value back (fails)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from gateway.keys.keyring import Keyring
from gateway.runtime.reader import read_topic

from .conftest import cli
from .test_shredding import ALICE, BOB, Setup, _key_names, _tokens, _tune_cleaner, _wait_compacted_away

pytestmark = pytest.mark.integration


def _verify(s: Setup, receipt: Path, *extra: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return cli("erasure", "verify", str(receipt), "--bootstrap", s.bootstrap, "--keyring", str(s.keyring),
               "--schemas", str(s.schemas), *extra, stdin=stdin)


def test_receipt_verifies_only_after_compaction_and_fails_once_the_key_is_brought_back(
        bootstrap: str, tmp_path: Path) -> None:
    s = Setup(bootstrap, tmp_path)
    kafka = {"bootstrap.servers": bootstrap}
    worker = s.start_worker("w1")
    try:
        s.send(worker, [(ALICE, "alice secret 1"), (BOB, "bob note 1"), (ALICE, "alice secret 2")])
        # a dead letter of Alice's (no note): its original sealed under her key (format 2)
        producer = Producer(kafka)
        producer.produce(s.plan.source_topic, orjson.dumps({"event_id": "bad", "patient_id": ALICE}))
        assert producer.flush(30) == 0
        s.events += 1
        s.wait_audit(s.events)
    finally:
        assert worker.stop() == 0
    keyring = Keyring.open(s.keyring, create=False)
    [alice_key] = _key_names(s, keyring, ALICE)
    old_value = next(r.value for r in read_topic(kafka, s.key_topic) if r.key == alice_key.encode())
    assert old_value is not None
    tokens = _tokens(keyring, ALICE)

    receipt = tmp_path / "receipt.json"
    forget = cli("forget", "--domain", "patient", "--bootstrap", bootstrap, "--keyring", str(s.keyring),
                 "--key-topic", s.key_topic, "--audit-topic", s.audit_topic, "--schemas", str(s.schemas),
                 "--receipt", str(receipt), stdin=ALICE.encode() + b"\n")
    assert forget.returncode == 0, forget.stderr.decode()
    human = forget.stdout.decode()
    data = receipt.read_bytes()
    for text in (human.encode(), data):  # neither form names the identifier or a token
        assert ALICE.encode() not in text and not any(t.encode() in text for t in tokens)
        assert b"tok_v" not in text
    body = orjson.loads(data)
    dek = alice_key.rsplit("/", 1)[1]
    assert [k["key_id"] for k in body["keys"]] == [f"subject:patient/{dek}"]
    assert body["keys"][0]["scopes"] == ["dead-letter", "field"]
    assert body["keys"][0]["topics"] == sorted([s.plan.dlq_topic, s.plan.sanitized_topic])
    assert body["audit"]["topic"] == s.audit_topic and len(body["audit"]["hash"]) == 64
    assert "Erasure receipt" in human and f"field: subject:patient/{dek}" in human
    assert f"dead-letter: subject:patient/{dek}" in human

    # under the key topic's own settings (segment.ms 10 min) the tombstone sits in the active segment, which
    # the cleaner never cleans: pending, not passed
    pending = _verify(s, receipt)
    out = pending.stdout.decode()
    assert pending.returncode == 3, out + pending.stderr.decode()
    assert "[pending compaction] compacted" in out and "the log cleaner remove them from" in out
    assert "[passed] audit record" in out and "[passed] no live copy" in out and "[passed] refused" in out

    _tune_cleaner(bootstrap, s.key_topic)  # tight settings, and fillers roll the segment: compaction now
    _wait_compacted_away(bootstrap, s.key_topic, alice_key.encode(), old_value)
    verified = _verify(s, receipt, "--identifier", stdin=ALICE.encode() + b"\n")
    out = verified.stdout.decode()
    assert verified.returncode == 0, out + verified.stderr.decode()
    assert "[passed] compacted" in out and "[passed] subject" in out and "erasure verified" in out
    assert "3 of the subject's ciphertext(s) found by token" in out and "answer key_erased" in out  # 2 + the seal
    assert ALICE not in out

    # someone else's identifier: the receipt is not theirs
    other = _verify(s, receipt, "--identifier", stdin=BOB.encode() + b"\n")
    assert other.returncode == 1 and "[FAILED] subject" in other.stdout.decode()

    # an edited receipt (one key fewer) does not verify
    edited = tmp_path / "edited.json"
    edited.write_bytes(orjson.dumps(body | {"consent_records_erased": 5}))
    result = _verify(s, edited)
    assert result.returncode == 1 and "[FAILED] receipt" in result.stdout.decode()

    # the wrapped key written back under its name: a live copy, and its ciphertexts no longer answer key_erased
    restorer = Producer(kafka)
    restorer.produce(s.key_topic, old_value, alice_key.encode(), partition=0)
    assert restorer.flush(10) == 0
    restored = _verify(s, receipt)
    out = restored.stdout.decode()
    assert restored.returncode == 1, out
    assert "[FAILED] no live copy" in out and "written again after the erasure" in out
    assert "[FAILED] ciphertexts" in out and "erasure verification FAILED" in out
