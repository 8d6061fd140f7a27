"""Crypto-shredding end to end on the real broker: per-subject keys in a compacted key topic,
`gateway forget`, eviction in a running worker, a restart, and what authorized consumers can open."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core.audit import GENESIS
from gateway.core.codec.sanitized import StoredRecord
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.errors import DecryptError
from gateway.keys.envelope import _DEK_CONTEXT as FIELD_DEK_CONTEXT
from gateway.keys.envelope import FieldDecryptor, RecordRef, context_bytes, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.kms import WrappedKey
from gateway.keys.subject_keys import _WRAP_CONTEXT as SUBJECT_WRAP_CONTEXT
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime.keytopic import (
    FORGET_CHAIN,
    forget_head_key,
    forget_head_value,
    forget_transactional_id,
    load_subject_keys,
    read_forget_head,
)
from gateway.runtime.reader import read_topic
from gateway.settings import GatewayConfig

from .conftest import ENV, REPO, WorkerProcess, audit_entries, cli

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
            if sum(e.get("type") == "event" for e in audit_entries(self.bootstrap, self.audit_topic)) >= n:
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
    # the erased key; a fresh one after forget; the restarted worker's own (never one loaded from the topic,
    # whose uses it cannot know: the use limit holds across restarts)
    assert alice_deks[0] == alice_deks[1] and len(set(alice_deks[1:])) == 3

    # the CLI path reports the erased fields and fails
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
    result = cli("decrypt", "--schemas", str(s.schemas), "--keyring", str(s.keyring), "--bootstrap", bootstrap,
                 "--key-topic", s.key_topic, stdin=lines)
    assert result.returncode == 1
    assert result.stderr.decode().count("key_erased") == 2

    # neither the key topic nor the audit topic nor a log holds the subject in clear
    key_records = read_topic(kafka, s.key_topic)
    assert any(r.value is None for r in key_records)
    audit = audit_entries(bootstrap, s.audit_topic)
    forgotten = [e for e in audit if e.get("type") == "subject_forgotten"]
    assert len(forgotten) == 1 and forgotten[0]["keys_erased"] == 1
    assert forgotten[0]["subject_tokens"][0].startswith("tok_v1_")
    everything = b"".join((r.key or b"") + (r.value or b"") for r in key_records + read_topic(kafka, s.audit_topic))
    everything += b"".join(p.read_bytes() for p in tmp_path.glob("*.log"))
    assert ALICE.encode() not in everything and BOB.encode() not in everything
    verify = cli("audit", "verify", "--bootstrap", bootstrap, "--topic", s.audit_topic, "--keyring", str(s.keyring),
                 "--group-id", s.group, "--key-topic", s.key_topic)
    assert verify.returncode == 0, verify.stdout.decode()


CAROL, DAVE = "carol.canary-3350", "dave.canary-4461"


def _forget(s: Setup, subject: str) -> subprocess.CompletedProcess[bytes]:
    """`gateway forget` as an operator runs it: the identifier on stdin, out of the shell history."""
    result = cli("forget", "--domain", "patient", "--bootstrap", s.bootstrap, "--keyring", str(s.keyring),
                 "--key-topic", s.key_topic, "--audit-topic", s.audit_topic, stdin=subject.encode() + b"\n")
    assert subject not in result.stdout.decode() + result.stderr.decode()
    return result


def _tokens(keyring: Keyring, subject: str) -> list[str]:
    _, token_keys = keyring.token_keys("patient")
    return [DomainTokenizer("patient", version, key).token(subject) for version, key in sorted(token_keys.items())]


def _key_names(s: Setup, keyring: Keyring, subject: str) -> list[str]:
    keys = load_subject_keys({"bootstrap.servers": s.bootstrap}, s.key_topic, SubjectKeys(keyring))
    return [n for token in _tokens(keyring, subject) for n in keys.keys_of("patient", token)]


def _forget_events(s: Setup) -> list[dict[str, Any]]:
    return [e for e in audit_entries(s.bootstrap, s.audit_topic) if e.get("chain") == FORGET_CHAIN]


def _wait_forgets(s: Setup, n: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    """The forget events once `n` are readable and the key topic's head is the last one's hash
    (a commit's markers may still be on their way when `gateway forget` returns)."""
    kafka = {"bootstrap.servers": s.bootstrap}
    deadline = time.monotonic() + timeout_s
    while True:
        events = _forget_events(s)
        head = read_forget_head(kafka, s.key_topic, s.audit_topic)
        if len(events) >= n and head == events[-1]["hash"]:
            assert len(events) == n
            return events
        assert time.monotonic() < deadline, f"{len(events)} of {n} forget events, head {head}, after {timeout_s}s"
        time.sleep(0.2)


def _wait_log_count(worker: WorkerProcess, needle: str, n: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while worker.log().count(needle) < n:
        assert worker.alive(), worker.log()[-3000:]
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {n} x '{needle}' in the worker log after {timeout_s}s")
        time.sleep(0.1)


def _note_dek(record: dict[str, Any]) -> bytes:
    return parse_ciphertext(base64.b64decode(record["note"])).dek_id


def test_forget_chain_head_lives_in_the_key_topic_and_the_chain_holds_over_forgets_and_a_crash(
        bootstrap: str, tmp_path: Path) -> None:
    s = Setup(bootstrap, tmp_path)
    kafka = {"bootstrap.servers": bootstrap}
    worker = s.start_worker("w1")
    try:
        s.send(worker, [(ALICE, "a1"), (BOB, "b1"), (CAROL, "c1"), (DAVE, "d1")])
        keyring = Keyring.open(s.keyring, create=False)
        assert read_forget_head(kafka, s.key_topic, s.audit_topic) is None  # no forget yet: GENESIS next
        for subject in (ALICE, BOB):
            result = _forget(s, subject)
            assert result.returncode == 0, result.stderr.decode()
        again = _forget(s, ALICE)  # finds nothing left to erase: says so, fails, writes nothing
        assert again.returncode == 1 and "nothing was erased" in again.stderr.decode()
        events = _wait_forgets(s, 2)  # each forget continued from the head the one before stored
        assert [e["keys_erased"] for e in events] == [1, 1]
        assert events[0]["prev_hash"] == GENESIS
        assert [e["prev_hash"] for e in events[1:]] == [e["hash"] for e in events[:-1]]
        # the running worker's follower skips the head records: it evicts exactly the two keys
        _wait_log_count(worker, '"msg":"subject key erased"', 2)

        # a forget that crashed mid-transaction under the forget's transactional.id: tombstone of
        # Carol's key, a forged head and audit event, delivered but never committed
        carol_key = _key_names(s, keyring, CAROL)
        assert len(carol_key) == 1
        config = GatewayConfig.load({"bootstrap": bootstrap, "key_topic": s.key_topic, "audit_topic": s.audit_topic})
        crashed = Producer({**kafka, "transactional.id": forget_transactional_id(config),
                            "transaction.timeout.ms": 120_000})
        crashed.init_transactions(30)
        crashed.begin_transaction()
        crashed.produce(s.key_topic, None, carol_key[0].encode())
        crashed.produce(s.key_topic, forget_head_value(s.audit_topic, "f" * 64), forget_head_key(s.audit_topic),
                        partition=0)
        crashed.produce(s.audit_topic, orjson.dumps({"chain": FORGET_CHAIN, "forged": True}), FORGET_CHAIN.encode())
        assert crashed.flush(30) == 0
        result = _forget(s, DAVE)  # fences the crashed one, whose transaction the broker aborts
        assert result.returncode == 0, result.stderr.decode()
        with pytest.raises(KafkaException) as fenced:
            crashed.commit_transaction(30)
        assert fenced.value.args[0].fatal()

        _wait_log_count(worker, '"msg":"subject key erased"', 3)  # Dave's key; Carol's stays
        s.send(worker, [(CAROL, "c2")])
    finally:
        assert worker.stop() == 0

    assert worker.log().count('"msg":"subject key erased"') == 3
    assert _key_names(s, keyring, CAROL) == carol_key and _key_names(s, keyring, DAVE) == []
    keys = load_subject_keys(kafka, s.key_topic, SubjectKeys(keyring))
    assert len(keys) == 1  # Carol's: the head record is not counted as a key
    by_id = {r["event_id"]: r for r in s.sanitized()}
    assert _note_dek(by_id["e3"]) == _note_dek(by_id["e5"])  # the aborted tombstone evicted nothing

    events = _wait_forgets(s, 3)
    assert len(events) == 3 and not any(e.get("forged") for e in events)
    assert events[2]["prev_hash"] == events[1]["hash"] and "chain_restart" not in events[2]
    heads = [r for r in read_topic(kafka, s.key_topic) if r.key == forget_head_key(s.audit_topic)]
    assert heads and all(r.partition == 0 for r in heads)
    assert all(t.startswith("tok_v1_") for e in events for t in e["subject_tokens"])
    verify = cli("audit", "verify", "--bootstrap", bootstrap, "--topic", s.audit_topic, "--keyring", str(s.keyring),
                 "--group-id", s.group, "--key-topic", s.key_topic)
    out = verify.stdout.decode()
    assert verify.returncode == 0, out
    assert "audit chain OK" in out and "note:" not in out and "BREAK" not in out


CLEANER_SETTINGS = {"segment.ms": "100", "min.cleanable.dirty.ratio": "0.01", "min.compaction.lag.ms": "0",
                    "max.compaction.lag.ms": "1000", "delete.retention.ms": "100"}


def _tune_cleaner(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
        for name, value in CLEANER_SETTINGS.items()])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)
    deadline = time.monotonic() + 30
    while True:  # applied by the broker once the controller's metadata reaches it
        described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
        entries = next(iter(described.values())).result(30)
        if all(entries[name].value == value for name, value in CLEANER_SETTINGS.items()):
            return
        assert time.monotonic() < deadline, "the key topic's cleaner settings did not apply within 30s"
        time.sleep(0.2)


def _wait_compacted_away(bootstrap: str, topic: str, name: bytes, blob: bytes,
                         timeout_s: float = 120) -> list[StoredRecord]:
    """Read `topic` from the beginning until no record holds `name`'s value or `blob` (in any form).

    The cleaner never cleans the active segment, which holds the tombstone right after the forget:
    a filler record (a bookkeeping key, which every reader skips) each round rolls the segment once
    it is older than segment.ms, and the cleaner (backoff 1 s) then compacts the closed ones."""
    kafka = {"bootstrap.servers": bootstrap}
    filler = Producer({**kafka, "enable.idempotence": True})
    forms = (blob, base64.b64encode(blob))
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_topic(kafka, topic)
        stored = b"".join((r.key or b"") + (r.value or b"") for r in records)
        if not any(r.key == name and r.value is not None for r in records) and not any(f in stored for f in forms):
            return records
        assert time.monotonic() < deadline, f"the erased key's value is still in '{topic}' after {timeout_s}s"
        filler.produce(topic, b"{}", b"_test-filler", partition=0)
        assert filler.flush(10) == 0
        time.sleep(0.2)


def test_forget_physically_removes_the_wrapped_key_so_not_even_a_kek_holder_can_reopen(
        bootstrap: str, tmp_path: Path) -> None:
    s = Setup(bootstrap, tmp_path)
    kafka = {"bootstrap.servers": bootstrap}
    worker = s.start_worker("w1")
    try:
        s.send(worker, [(ALICE, "alice secret 1"), (BOB, "bob note 1"), (ALICE, "alice secret 2"),
                        (BOB, "bob note 2")])
    finally:
        assert worker.stop() == 0
    keyring = Keyring.open(s.keyring, create=False)
    [alice_key] = _key_names(s, keyring, ALICE)
    [bob_key] = _key_names(s, keyring, BOB)
    before = {r.key: r.value for r in read_topic(kafka, s.key_topic)}
    alice_blob = base64.b64decode(orjson.loads(before[alice_key.encode()] or b"")["wrapped"])
    assert s.plan.sanitized_topic and len(before) == 2

    _tune_cleaner(bootstrap, s.key_topic)
    result = _forget(s, ALICE)
    assert result.returncode == 0, result.stderr.decode()
    remaining = _wait_compacted_away(bootstrap, s.key_topic, alice_key.encode(), alice_blob)
    assert any(r.key == bob_key.encode() and r.value is not None for r in remaining)  # only Alice's went

    # the authorized consumer's path, from the keyring and what is left in the key topic
    keys = load_subject_keys(kafka, s.key_topic, SubjectKeys(keyring))
    decryptor = FieldDecryptor(keyring, subject_keys=keys)
    alice_tokens = set(_tokens(keyring, ALICE))
    records = s.sanitized()
    alice = [r for r in records if r["patient_id"] in alice_tokens]
    bob = [r for r in records if r["patient_id"] not in alice_tokens]
    assert len(alice) == len(bob) == 2
    for record in records:
        opened, report = decrypt_record(record, s.plan, decryptor)
        assert report.fields["code"] == "decrypted"  # the shared-DEK field is not shredded
        if record in alice:
            assert report.fields["note"].startswith("key_erased")
        else:
            assert report.fields["note"] == "decrypted" and opened["note"].startswith("bob note")

    # a KEK holder trying every DEK it can obtain: each wrapped value left in the key topic, unwrapped
    # under its own name and under Alice's, plus the shared DEKs the v1 ciphertexts carry
    deks: list[bytes] = []
    for r in remaining:
        try:
            entry = orjson.loads(r.value or b"")
            wrapped = WrappedKey(str(entry["kek_id"]), base64.b64decode(entry["wrapped"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # tombstones, the forget chain's head, fillers
        for name in {r.key or b"", alice_key.encode()}:
            try:
                deks.append(keyring.unwrap(wrapped, SUBJECT_WRAP_CONTEXT + name))
            except DecryptError:
                assert name == alice_key.encode()  # Bob's wrapped key is bound to Bob's name
    for record in records:
        shared = parse_ciphertext(base64.b64decode(record["code"]))
        deks.append(keyring.unwrap(WrappedKey(shared.kek_id, shared.wrapped), FIELD_DEK_CONTEXT + shared.dek_id))
    assert len(deks) >= 2

    def attempts(record: dict[str, Any]) -> list[bytes | None]:
        ct = parse_ciphertext(base64.b64decode(record["note"]))
        aad = ct.header + context_bytes(s.plan.sanitized_topic, "note", record["patient_id"])
        if ct.binding is not None:  # format v5: bound to its record by the event id too
            aad += RecordRef(event_id=record["event_id"]).suffix(ct.binding)
        out: list[bytes | None] = []
        for dek in deks:
            try:
                out.append(AESGCM(dek).decrypt(ct.nonce, ct.body, aad))
            except InvalidTag:
                out.append(None)
        return out

    assert all(opened is None for record in alice for opened in attempts(record))
    note_schema = next(f.operator.plaintext_schema for f in s.plan.record.fields if f.name == "note")
    bob_notes = {fastavro.schemaless_reader(io.BytesIO(opened), note_schema, None)
                 for record in bob for opened in attempts(record) if opened is not None}
    assert bob_notes == {"bob note 1", "bob note 2"}  # the same attempt opens the other subject's
