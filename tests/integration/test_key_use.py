"""Key use limits and late events on the real broker, with real worker processes.

- Use limits across the group: a worker restarted, and a second worker of the group, both load the
  key topic holding a subject's and a day's keys; each must encrypt only under keys it made itself,
  so no key ever encrypts more than `dek_max_uses` values in total.
- Late events: after `gateway retention enforce` erased a day, events of that day (for a known and a
  new subject) are sanitized under new keys for every combination of key scopes, never dead-lettered.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from gateway.core.decrypt import decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.keys.envelope import FieldDecryptor, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.period_keys import DAY_MS
from gateway.keys.subject_keys import SubjectKeys
from gateway.runtime.keytopic import load_subject_keys
from gateway.runtime.reader import read_topic

from .conftest import _STARTED, ENV, REPO, WorkerProcess, audit_entries, cli, wait_for

pytestmark = pytest.mark.integration
MAX_USES = 3


def _write_schema(schemas: Path, name: str, suffix: str, fields: dict[str, Any]) -> None:
    schema = {
        "type": "record", "name": name, "namespace": "t.keyuse",
        "privacy": {"source_topic": f"{name.lower()}.raw.{suffix}", "sanitized_topic": f"{name.lower()}.out.{suffix}",
                    "subject": "user_id", "input": "json", "output": "json"},
        "fields": [{"name": "event_id", "type": "string", "privacy": "keep"},
                   {"name": "user_id", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}}]
        + [{"name": f, "type": "string", "privacy": p} for f, p in fields.items()],
    }
    (schemas / f"{name}.avsc").write_bytes(orjson.dumps(schema))


def _worker(root: Path, bootstrap: str, instance: str, suffix: str, partitions: int,
            extra: tuple[str, ...] = ()) -> WorkerProcess:
    log_path = root / f"worker-{instance}-{time.monotonic_ns()}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", bootstrap, "--schemas", str(root / "schemas"),
         "--keyring", str(root / "keyring.json"), "--audit-topic", f"privacy.audit.{suffix}",
         "--group-id", f"gateway-{suffix}", "--instance-id", instance, "--partitions", str(partitions),
         "--session-timeout-ms", "6000", "--key-topic", f"privacy.keys.{suffix}", "--retention-check-s", "0",
         *extra], stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
    _STARTED.append(proc)
    return WorkerProcess(proc, log_path, handle)


def _events(bootstrap: str, suffix: str) -> list[dict[str, Any]]:
    return [e for e in audit_entries(bootstrap, f"privacy.audit.{suffix}") if e.get("type") == "event"]


def _produce(bootstrap: str, plan: Plan, events: list[tuple[int, dict[str, Any]]], timestamp_ms: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for partition, value in events:
        producer.produce(plan.source_topic, orjson.dumps(value), partition=partition, timestamp=timestamp_ms)
    assert producer.flush(30) == 0


def _decryptor(root: Path, bootstrap: str, suffix: str) -> FieldDecryptor:
    ring = Keyring.open(root / "keyring.json", create=False)
    keys = load_subject_keys({"bootstrap.servers": bootstrap}, f"privacy.keys.{suffix}", SubjectKeys(ring))
    return FieldDecryptor(ring, subject_keys=keys)


def test_a_restarted_worker_and_a_second_one_never_take_up_a_key_beyond_max_uses(bootstrap: str,
                                                                                  tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    (tmp_path / "schemas").mkdir()
    _write_schema(tmp_path / "schemas", "Visit", suffix, {
        "note": {"encrypt": {"per_subject": True}},  # the subject's key (format v2)
        "card": {"encrypt": {"retention_days": 30}},  # the day's shared key (format v4)
        "memo": {"encrypt": {"per_subject": True, "retention_days": 30}},  # the subject's day key (v4)
    })
    plan = load_plans(tmp_path / "schemas")[0]
    limit = ("--dek-max-uses", str(MAX_USES))
    now = int(time.time() * 1000) - 1000
    sent = 0

    def send(partitions: list[int], per_partition: int) -> None:
        nonlocal sent
        batch = [(p, {"event_id": f"e{sent + i * len(partitions) + j}", "user_id": "alice", "note": "n",
                      "card": "c", "memo": "m"})
                 for i in range(per_partition) for j, p in enumerate(partitions)]
        _produce(bootstrap, plan, batch, now)
        sent += len(batch)
        wait_for(lambda: len(_events(bootstrap, suffix)) >= sent, f"{sent} audited events", 90)

    first = _worker(tmp_path, bootstrap, "w1", suffix, 2, limit)
    try:
        first.wait_for_log('"msg":"partitions assigned"')
        send([0], 2)  # the keys now in the key topic, each used twice
    finally:
        assert first.stop() == 0
    restarted = _worker(tmp_path, bootstrap, "w1", suffix, 2, limit)  # loads the stored keys ...
    second = _worker(tmp_path, bootstrap, "w2", suffix, 2, limit)  # ... and so does a second worker
    try:
        wait_for(lambda: len(restarted.owned(plan.source_topic)) == len(second.owned(plan.source_topic)) == 1,
                 "one partition each", 90)
        send([0, 1], MAX_USES)  # each worker encrypts MAX_USES more values of alice under each scope
    finally:
        assert restarted.stop() == 0 and second.stop() == 0

    records = [orjson.loads(r.value or b"") for r in read_topic({"bootstrap.servers": bootstrap},
                                                                plan.sanitized_topic)]
    assert len(records) == sent == 2 + 2 * MAX_USES
    assert not [e for e in _events(bootstrap, suffix) if e["outcome"] != "sanitized"]
    for field in ("note", "card", "memo"):
        uses = Counter(parse_ciphertext(base64.b64decode(r[field])).dek_id for r in records)
        assert max(uses.values()) <= MAX_USES, (field, sorted(uses.values()))
        assert len(uses) >= 3  # the first run's key, then one at least per worker: a set per scope
    decryptor = _decryptor(tmp_path, bootstrap, suffix)  # every key of the set opens its ciphertexts
    for record in records:
        opened, report = decrypt_record(record, plan, decryptor)
        assert report.ok, report.fields
        assert (opened["note"], opened["card"], opened["memo"]) == ("n", "c", "m")
    # gateway forget erases the subject's whole set, whichever process made each key
    subject_keys = {parse_ciphertext(base64.b64decode(r[f])).dek_id for r in records for f in ("note", "memo")}
    forgot = cli("forget", "--domain", "customer", "--bootstrap", bootstrap,
                 "--keyring", str(tmp_path / "keyring.json"), "--schemas", str(tmp_path / "schemas"),
                 "--key-topic", f"privacy.keys.{suffix}", "--audit-topic", f"privacy.audit.{suffix}",
                 stdin=b"alice\n")
    assert forgot.returncode == 0, forgot.stderr.decode()
    assert f"{len(subject_keys)} key(s) erased" in forgot.stdout.decode()
    decryptor = _decryptor(tmp_path, bootstrap, suffix)
    for record in records:
        opened, report = decrypt_record(record, plan, decryptor)
        assert report.fields["note"].startswith("key_erased") and report.fields["memo"].startswith("key_erased")
        assert opened["card"] == "c"  # the day's shared key is not the subject's


# every combination of key scopes on an erased day; each its own retention, so its keys are its own
SCOPES: dict[str, dict[str, dict[str, Any]]] = {
    "SharedDay": {"card": {"encrypt": {"retention_days": 3}}},
    "SubjectDay": {"memo": {"encrypt": {"per_subject": True, "retention_days": 4}}},
    "BothDay": {"card": {"encrypt": {"retention_days": 5}},
                "memo": {"encrypt": {"per_subject": True, "retention_days": 5}}},
    "BothDaySubject": {"card": {"encrypt": {"retention_days": 6}},
                       "memo": {"encrypt": {"per_subject": True, "retention_days": 6}},
                       "note": {"encrypt": {"per_subject": True}}},
    "SharedDaySubject": {"card": {"encrypt": {"retention_days": 7}}, "note": {"encrypt": {"per_subject": True}}},
    "SubjectDaySubject": {"memo": {"encrypt": {"per_subject": True, "retention_days": 8}},
                          "note": {"encrypt": {"per_subject": True}}},
}


def test_late_events_of_an_erased_day_are_sanitized_under_new_keys_for_every_scope(bootstrap: str,
                                                                                   tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    for name, fields in SCOPES.items():
        _write_schema(schemas, name, suffix, fields)
    plans = {p.name.rsplit(".", 1)[-1]: p for p in load_plans(schemas)}
    old = int(time.time() * 1000) - 20 * DAY_MS  # past every retention above
    topics = ("--bootstrap", bootstrap, "--key-topic", f"privacy.keys.{suffix}")

    def value(name: str, event_id: str, user: str) -> dict[str, Any]:
        return {"event_id": event_id, "user_id": user, **{f: f"{f}-{event_id}" for f in SCOPES[name]}}

    worker = _worker(tmp_path, bootstrap, "w1", suffix, 1)
    try:
        worker.wait_for_log('"msg":"partitions assigned"', timeout_s=90)
        for name, plan in plans.items():
            _produce(bootstrap, plan, [(0, value(name, "before", "alice"))], old)
        wait_for(lambda: len(_events(bootstrap, suffix)) >= len(plans), "the first events audited", 90)
        enforced = cli("retention", "enforce", *topics, "--audit-topic", f"privacy.audit.{suffix}",
                       "--group-id", f"gateway-{suffix}", "--keyring", str(tmp_path / "keyring.json"))
        assert enforced.returncode == 0, enforced.stderr.decode()
        erased = sum(("card" in f) + ("memo" in f) for f in SCOPES.values())
        assert f"erased {erased} period key(s)" in enforced.stdout.decode()
        wait_for(lambda: worker.log().count('"msg":"period key erased"') >= erased, "the worker evicted them", 30)
        # late events of the erased day: alice (whose keys were erased) and zed (never seen)
        for name, plan in plans.items():
            _produce(bootstrap, plan, [(0, value(name, "late-known", "alice")), (0, value(name, "late-new", "zed"))],
                     old + 60_000)
        wait_for(lambda: len(_events(bootstrap, suffix)) >= 3 * len(plans), "the late events audited", 90)
    finally:
        assert worker.stop() == 0

    outcomes = Counter(e["outcome"] for e in _events(bootstrap, suffix))
    assert outcomes == {"sanitized": 3 * len(plans)}, outcomes  # no internal_error dead letter
    decryptor = _decryptor(tmp_path, bootstrap, suffix)
    for name, plan in plans.items():
        records = {r["event_id"]: r for r in (orjson.loads(s.value or b"") for s in
                                            read_topic({"bootstrap.servers": bootstrap}, plan.sanitized_topic))}
        assert set(records) == {"before", "late-known", "late-new"}, name
        _, before = decrypt_record(records["before"], plan, decryptor)
        for field in SCOPES[name]:  # the erased day stays erased; the subject's own key does not expire
            assert before.fields[field] == "decrypted" if field == "note" else \
                before.fields[field].startswith("key_erased"), (name, field, before.fields[field])
        for late in ("late-known", "late-new"):
            opened, report = decrypt_record(records[late], plan, decryptor)
            assert report.ok, (name, late, report.fields)
            assert all(opened[f] == f"{f}-{late}" for f in SCOPES[name])
    # the late events' new day keys are due, so the next run erases them in turn
    dry = cli("retention", "enforce", *topics, "--audit-topic", f"privacy.audit.{suffix}",
              "--group-id", f"gateway-{suffix}", "--dry-run")
    assert dry.returncode == 0 and "would erase" in dry.stdout.decode(), dry.stdout.decode()


def test_quarantine_rotation_on_a_running_worker_and_old_dead_letters_still_unseal(bootstrap: str,
                                                                                   tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    (tmp_path / "schemas").mkdir()
    _write_schema(tmp_path / "schemas", "Order", suffix, {"note": {"encrypt": {"per_subject": True}}})
    plan = load_plans(tmp_path / "schemas")[0]
    keyring = str(tmp_path / "keyring.json")
    canaries = [b'{"event_id": "e1", "user_id": "canary-7f3a-before", ',
                b'{"event_id": "e2", "user_id": "canary-7f3a-after", ']
    kafka = {"bootstrap.servers": bootstrap}

    worker = _worker(tmp_path, bootstrap, "w1", suffix, 1)
    try:
        worker.wait_for_log('"msg":"partitions assigned"', timeout_s=90)
        producer = Producer(kafka)
        producer.produce(plan.source_topic, canaries[0])  # invalid JSON: no subject to read, quarantine key
        assert producer.flush(30) == 0
        wait_for(lambda: len(_events(bootstrap, suffix)) >= 1, "the first dead letter audited", 90)
        old_id = Keyring.open(tmp_path / "keyring.json", create=False).quarantine_key()[0]
        rotated = cli("keys", "rotate-quarantine", "--keyring", keyring)
        assert rotated.returncode == 0, rotated.stderr.decode()
        new_id = Keyring.open(tmp_path / "keyring.json", create=False).quarantine_key()[0]
        assert new_id != old_id and f"{old_id} -> {new_id}" in rotated.stdout.decode()
        producer.produce(plan.source_topic, canaries[1])  # the running worker seals it under the new key
        assert producer.flush(30) == 0
        wait_for(lambda: len(_events(bootstrap, suffix)) >= 2, "the second dead letter audited", 90)
    finally:
        assert worker.stop() == 0

    letters = sorted((orjson.loads(r.value or b"") for r in read_topic(kafka, plan.dlq_topic)),
                     key=lambda d: d["source"]["offset"])
    assert [(d["reason"], d["sealed"]["format"], d["sealed"]["key_id"]) for d in letters] == [
        ("json_invalid", 3, old_id), ("json_invalid", 3, new_id)]
    assert [e["key_ids"] for e in _events(bootstrap, suffix)] == [[old_id], [new_id]]  # the audit names each key
    unsealed = cli("dlq", "unseal", "--keyring", keyring, stdin=b"".join(orjson.dumps(d) + b"\n" for d in letters))
    assert unsealed.returncode == 0, unsealed.stderr.decode()
    opened = [base64.b64decode(orjson.loads(line)["value"]) for line in unsealed.stdout.splitlines()]
    assert opened == canaries
    everything = b"".join(r.value or b"" for r in read_topic(kafka, plan.dlq_topic) + read_topic(
        kafka, f"privacy.audit.{suffix}")) + worker.log_path.read_bytes()
    assert b"canary-7f3a" not in everything
