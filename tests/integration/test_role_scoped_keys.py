"""Roles composed with erasure and retention (format v6), and ciphertexts bound to their record (format v5),
end to end on the real broker: a worker, `gateway decrypt --role R --bootstrap` with an exported role
keyring, `gateway forget`, `gateway retention enforce`, and a ciphertext moved between two records of
one subject."""

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

from gateway.core.decrypt import decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.keys.envelope import Binding, FieldDecryptor, Format, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.period_keys import DAY_MS
from gateway.runtime.reader import read_topic

from .conftest import ENV, REPO, WorkerProcess, audit_entries, cli, wait_for

pytestmark = pytest.mark.integration
DIAGNOSES = {"alice-today": "J45 canary-asthma", "alice-old": "E11 canary-diabetes", "bob-today": "I10 canary-bp"}


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Visit", "namespace": "t.rolekeys",
        "privacy": {"source_topic": f"visits.raw.{suffix}", "sanitized_topic": f"visits.sanitized.{suffix}",
                    "subject": "patient", "input": "json", "output": "json",
                    "purposes": {"care": {"topic": f"visits.care.{suffix}", "basis": "contract", "fields": {
                        "patient": {"tokenize": {"domain": "patient"}}, "code": "encrypt"}}}},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "patient", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
            {"name": "diagnosis", "type": "string",
             "privacy": {"encrypt": {"roles": ["clinician"], "per_subject": True}}},
            {"name": "lab", "type": "string",
             "privacy": {"encrypt": {"roles": ["clinician", "lab"], "retention_days": 1}}},
            {"name": "code", "type": "string", "privacy": "encrypt"},
        ],
    }


def _fields(result: subprocess.CompletedProcess[bytes]) -> dict[tuple[int, str], str]:
    """(record number, field) -> reason code, from gateway decrypt's stderr."""
    out: dict[tuple[int, str], str] = {}
    for line in result.stderr.decode().splitlines():
        if line.startswith("record "):
            head, _, reason = line.partition("': ")
            number, _, field = head.partition(": field '")
            out[(int(number.split()[1]), field)] = reason.split(":", 1)[0]
    return out


def test_role_scoped_fields_open_for_their_role_until_forget_and_retention_erase_them(bootstrap: str,
                                                                                      tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "visit.avsc").write_bytes(orjson.dumps(_schema(suffix)))
    plan = load_plans(schemas)[0]
    keyring_path, key_topic = tmp_path / "keyring.json", f"privacy.keys.{suffix}"
    audit_topic, group = f"privacy.audit.{suffix}", f"gateway-{suffix}"
    kafka = {"bootstrap.servers": bootstrap}
    topics = ("--bootstrap", bootstrap, "--key-topic", key_topic)
    assert cli("keys", "init", "--keyring", str(keyring_path), "--schemas", str(schemas)).returncode == 0

    log_path = tmp_path / "worker.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    worker = WorkerProcess(subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", bootstrap, "--schemas", str(schemas),
         "--keyring", str(keyring_path), "--audit-topic", audit_topic, "--group-id", group, "--instance-id", "w1",
         "--partitions", "1", "--session-timeout-ms", "6000", "--key-topic", key_topic, "--retention-check-s", "0"],
        stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO), log_path, handle)
    try:
        worker.wait_for_log('"msg":"partitions assigned"')
        now = int(time.time() * 1000) - 1000
        producer = Producer(kafka)
        for name, diagnosis in DIAGNOSES.items():
            patient, age = name.split("-")[0], 3 if name.endswith("old") else 0
            producer.produce(plan.source_topic, orjson.dumps({"event_id": name, "patient": patient,
                                                              "diagnosis": diagnosis, "lab": f"lab of {name}",
                                                              "code": "C"}), timestamp=now - age * DAY_MS)
        assert producer.flush(30) == 0
        wait_for(lambda: sum(e.get("type") == "event" for e in audit_entries(bootstrap, audit_topic)) >= 3,
                 "three audit events", 60)
        stored = read_topic(kafka, plan.sanitized_topic)
        records = {r["event_id"]: r for r in (orjson.loads(s.value or b"") for s in stored)}
        parsed = {name: parse_ciphertext(base64.b64decode(r["diagnosis"])) for name, r in records.items()}
        assert all(p.version == Format.ROLE_KEYED and p.binding == Binding.EVENT_ID for p in parsed.values())

        # the key topic holds the role-scoped keys wrapped for their roles only, never under the KEK
        keyring = Keyring.open(keyring_path, create=False)
        role_values = [orjson.loads(r.value) for r in read_topic(kafka, key_topic)
                       if r.value is not None and r.key is not None and b"roles:" in r.key]
        assert role_values and all(v["format"] == 2 and "wrapped" not in v for v in role_values)
        assert all(keyring.active_key_id() not in orjson.dumps(v).decode() for v in role_values)

        order = list(DIAGNOSES)
        lines = b"".join(orjson.dumps(records[name]) + b"\n" for name in order)
        for role in ("clinician", "lab"):
            assert cli("keys", "export", "--keyring", str(keyring_path), "--role", role,
                       "--out", str(tmp_path / f"{role}.json")).returncode == 0

        def decrypt(role: str | None, data: bytes = lines) -> subprocess.CompletedProcess[bytes]:
            ring = str(keyring_path) if role is None else str(tmp_path / f"{role}.json")
            return cli("decrypt", "--schemas", str(schemas), "--keyring", ring, "--topic", plan.sanitized_topic,
                       *topics, *(("--role", role) if role else ()), stdin=data)

        clinician = decrypt("clinician")
        opened = [orjson.loads(line) for line in clinician.stdout.splitlines()]
        assert [o["diagnosis"] for o in opened] == list(DIAGNOSES.values())
        assert [o["lab"] for o in opened] == [f"lab of {name}" for name in order]
        assert set(_fields(clinician).values()) == {"key_not_held"}  # "code" only: not the role's key
        lab = _fields(decrypt("lab"))
        assert {lab[(n, "diagnosis")] for n in (1, 2, 3)} == {"not_permitted"} and (1, "lab") not in lab
        kek_holder = _fields(decrypt(None))  # the KEK's holder, with the key topic
        assert {kek_holder[(n, f)] for n in (1, 2, 3) for f in ("diagnosis", "lab")} == {"not_permitted"}

        # item 8 on the wire: alice's two records, one subject; a ciphertext moved between them does not open
        swapped = dict(records["alice-today"], diagnosis=records["alice-old"]["diagnosis"],
                       code=records["alice-old"]["code"])
        moved = _fields(decrypt("clinician", orjson.dumps(swapped) + b"\n"))
        assert moved[(1, "diagnosis")] == "tampered"
        moved = _fields(decrypt(None, orjson.dumps(swapped) + b"\n"))
        assert moved[(1, "code")] == "tampered"
        # the purpose view has no event id: its ciphertexts are bound to the `gateway-source` header
        view = plan.purposes[0].plan
        assert view.event_id_field is None
        views = [(orjson.loads(v.value or b""), v.headers["gateway-source"])
                 for v in read_topic(kafka, plan.purposes[0].topic)]
        assert len(views) == 3
        shared = FieldDecryptor(keyring)
        for record, source in views:
            opened_view, report = decrypt_record(record, view, shared, source)
            assert report.ok and opened_view["code"] == "C", report.fields
        (first, source), (second, _) = views[:2]
        _, report = decrypt_record(dict(first, code=second["code"]), view, shared, source)
        assert report.fields["code"].startswith("tampered")

        # gateway forget alice: her role-scoped diagnosis keys go; bob's stay
        forgot = cli("forget", "alice", "--domain", "patient", "--bootstrap", bootstrap, "--keyring",
                     str(keyring_path), "--key-topic", key_topic, "--audit-topic", audit_topic)
        assert forgot.returncode == 0, forgot.stderr.decode()
        worker.wait_for_log('"msg":"subject key erased"', timeout_s=10)
        after = _fields(decrypt("clinician"))
        assert after[(1, "diagnosis")] == after[(2, "diagnosis")] == "key_erased"
        assert (3, "diagnosis") not in after and (1, "lab") not in after  # bob, and the day's shared lab key

        # gateway retention enforce: the old day's lab key (retention 1 day) goes, today's stays
        enforced = cli("retention", "enforce", *topics, "--audit-topic", audit_topic, "--group-id", group,
                       "--keyring", str(keyring_path))
        assert enforced.returncode == 0, enforced.stderr.decode()
        assert "erased 1 period key(s) of 1 period(s)" in enforced.stdout.decode()
        for role in ("clinician", "lab"):
            erased = _fields(decrypt(role))
            assert erased[(2, "lab")] == "key_erased" and (1, "lab") not in erased and (3, "lab") not in erased
    finally:
        assert worker.stop() == 0
    assert "canary" not in log_path.read_text()
