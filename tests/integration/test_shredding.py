"""Crypto-shredding end to end on the real broker: per-subject keys in a compacted key topic,
`gateway forget`, eviction in a running worker, a restart, and what authorized consumers can open."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.consume import read_topic
from gateway.decrypt import decrypt_record
from gateway.keys.envelope import FieldDecryptor, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.keytopic import load_subject_keys
from gateway.keys.subject_keys import SubjectKeys
from gateway.policy import load_plans

from .conftest import ENV, REPO, WorkerProcess, cli, committed_count

pytestmark = pytest.mark.integration
ALICE, BOB = "alice.canary-7781", "bob.canary-9920"


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Note", "namespace": "t.shred",
        "privacy": {"source_topic": f"notes.raw.{suffix}", "sanitized_topic": f"notes.sanitized.{suffix}",
                    "subject": "patient_id", "input": "json", "output": "json"},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "patient_id", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
            {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True}}},
            {"name": "code", "type": "string", "privacy": "encrypt"},
        ],
    }


class Setup:
    def __init__(self, bootstrap: str, root: Path) -> None:
        self.bootstrap = bootstrap
        self.root = root
        suffix = uuid.uuid4().hex[:8]
        self.schemas = root / "schemas"
        self.schemas.mkdir()
        (self.schemas / "notes.avsc").write_bytes(orjson.dumps(_schema(suffix)))
        self.plan = load_plans(self.schemas)[0]
        self.keyring = root / "keyring.json"
        self.key_topic = f"privacy.keys.{suffix}"
        self.audit_topic = f"privacy.audit.{suffix}"
        self.group = f"gateway-{suffix}"
        self.events = 0

    def start_worker(self, name: str) -> WorkerProcess:
        log_path = self.root / f"{name}.log"
        handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--bootstrap", self.bootstrap, "--schemas", str(self.schemas),
             "--keyring", str(self.keyring), "--audit-topic", self.audit_topic, "--group-id", self.group,
             "--instance-id", name, "--partitions", "1", "--session-timeout-ms", "6000",
             "--key-topic", self.key_topic],
            stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
        worker = WorkerProcess(proc, log_path, handle)
        worker.wait_for_log('"msg":"partitions assigned"')
        return worker

    def send(self, worker: WorkerProcess, notes: list[tuple[str, str]]) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap})
        for patient, note in notes:
            self.events += 1
            producer.produce(self.plan.source_topic, orjson.dumps(
                {"event_id": f"e{self.events}", "patient_id": patient, "note": note, "code": f"C{self.events}"}))
        assert producer.flush(30) == 0
        self.wait_audit(self.events)

    def wait_audit(self, n: int, timeout_s: float = 60) -> None:
        import time

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if committed_count(self.bootstrap, self.audit_topic) >= n:
                records = read_topic({"bootstrap.servers": self.bootstrap}, self.audit_topic)
                events = [orjson.loads(r.value or b"") for r in records]
                if sum(e.get("type") == "event" for e in events) >= n:
                    return
            time.sleep(0.3)
        raise AssertionError(f"fewer than {n} audit events after {timeout_s}s")

    def sanitized(self) -> list[dict[str, Any]]:
        records = read_topic({"bootstrap.servers": self.bootstrap}, self.plan.sanitized_topic)
        return [orjson.loads(r.value or b"") for r in records]


def test_forget_shreds_one_subject_everywhere_and_only_that_subject(bootstrap: str, tmp_path: Path) -> None:
    s = Setup(bootstrap, tmp_path)
    worker = s.start_worker("w1")
    try:
        s.send(worker, [(ALICE, "alice note 1"), (BOB, "bob note 1"), (ALICE, "alice note 2"), (BOB, "bob note 2")])
        result = cli("forget", ALICE, "--domain", "patient", "--bootstrap", bootstrap, "--keyring", str(s.keyring),
                     "--key-topic", s.key_topic, "--audit-topic", s.audit_topic)
        assert result.returncode == 0, result.stderr.decode()
        assert "1 key(s) erased" in result.stdout.decode()
        worker.wait_for_log('"msg":"subject key erased"', timeout_s=10)  # evicted within seconds
        s.send(worker, [(ALICE, "alice note 3 after forget")])
    finally:
        assert worker.stop() == 0
    worker2 = s.start_worker("w2")  # restart: it loads the key topic, tombstones included
    try:
        s.send(worker2, [(ALICE, "alice note 4 after restart"), (BOB, "bob note 3")])
    finally:
        assert worker2.stop() == 0

    records = s.sanitized()
    assert len(records) == 7
    kafka = {"bootstrap.servers": bootstrap}
    keyring = Keyring.open(s.keyring, create=False)
    keys = load_subject_keys(kafka, s.key_topic, SubjectKeys(keyring))
    decryptor = FieldDecryptor(keyring, subject_keys=keys)
    by_id: dict[str, tuple[str, str, str | None]] = {}
    for record in records:  # JSON output: encrypted fields are base64 strings
        opened, report = decrypt_record(record, s.plan, decryptor)
        note = report.fields["note"]
        by_id[record["event_id"]] = (note.split(":")[0], report.fields["code"],
                                     opened["note"] if note == "decrypted" else None)
    assert by_id["e1"][0] == by_id["e3"][0] == "key_erased"  # Alice before forget
    assert by_id["e5"] == ("decrypted", "decrypted", "alice note 3 after forget")  # a fresh key
    assert by_id["e6"] == ("decrypted", "decrypted", "alice note 4 after restart")
    assert [by_id[e][2] for e in ("e2", "e4", "e7")] == ["bob note 1", "bob note 2", "bob note 3"]
    assert all(o[1] == "decrypted" for o in by_id.values())  # the shared-DEK field is not affected
    notes = {r["event_id"]: base64.b64decode(r["note"]) for r in records}
    alice_deks = [parse_ciphertext(notes[e]).dek_id for e in ("e1", "e3", "e5", "e6")]
    assert alice_deks[0] == alice_deks[1] != alice_deks[2] == alice_deks[3]  # erased key; one new key, reused

    # the CLI path reports the erased fields and fails
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
    result = cli("decrypt", "--schemas", str(s.schemas), "--keyring", str(s.keyring), "--bootstrap", bootstrap,
                 "--key-topic", s.key_topic, stdin=lines)
    assert result.returncode == 1
    assert result.stderr.decode().count("key_erased") == 2

    # neither the key topic nor the audit topic nor a log holds the subject in clear
    key_records = read_topic(kafka, s.key_topic)
    assert any(r.value is None for r in key_records)
    audit = [orjson.loads(r.value or b"") for r in read_topic(kafka, s.audit_topic)]
    forgotten = [e for e in audit if e.get("type") == "subject_forgotten"]
    assert len(forgotten) == 1 and forgotten[0]["keys_erased"] == 1
    assert forgotten[0]["subject_tokens"][0].startswith("tok_v1_")
    everything = b"".join((r.key or b"") + (r.value or b"") for r in key_records + read_topic(kafka, s.audit_topic))
    everything += b"".join(p.read_bytes() for p in tmp_path.glob("*.log"))
    assert ALICE.encode() not in everything and BOB.encode() not in everything
    verify = cli("audit", "verify", "--bootstrap", bootstrap, "--topic", s.audit_topic)
    assert verify.returncode == 0, verify.stdout.decode()
