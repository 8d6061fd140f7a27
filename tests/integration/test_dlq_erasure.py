"""Dead letters and `gateway forget` on the real broker: a rejected event whose subject can be read is
sealed under that subject's key in the key topic, so forgetting the subject erases its dead letters
too; other subjects' dead letters and those of undecodable events (the quarantine key) still open."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from gateway.core.policy.lint import load_plans
from gateway.embedded.samples import CANARIES
from gateway.runtime.reader import read_topic

from .conftest import ENV, REPO, WorkerProcess, audit_entries, audited_count, cli, wait_for

pytestmark = pytest.mark.integration
ALICE, BOB = "alice.dlq-canary-6620@example.org", "bob.dlq-canary-7731@example.org"
DOMAIN = "dlq-customer"


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Order", "namespace": "t.dlq",
        "privacy": {"source_topic": f"orders.raw.{suffix}", "sanitized_topic": f"orders.sanitized.{suffix}",
                    "subject": "email", "input": "json", "output": "json", "leak_sentinel": "enforce"},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "email", "type": "string", "privacy": {"tokenize": {"domain": DOMAIN, "normalizer": "email"}}},
            {"name": "comment", "type": "string", "privacy": "keep"},
            {"name": "amount", "type": "long", "privacy": "keep",
             "quality": {"range": {"min": 0, "max": 100000, "action": "reject"}}},
        ],
    }


def _order(event_id: str, email: str, comment: str = "fine", amount: int = 5) -> bytes:
    return orjson.dumps({"event_id": event_id, "email": email, "comment": comment, "amount": amount})


# offset -> (value, expected reason or None, whose dead letter: a subject, or "quarantine")
EVENTS: list[tuple[bytes, str | None, str | None]] = [
    (_order("e0", ALICE), None, None),
    (_order("e1", ALICE, comment=f"card {CANARIES['card']} on file"), "pii_in_kept_field", ALICE),
    (_order("e2", BOB, comment=f"write to {CANARIES['email']}"), "pii_in_kept_field", BOB),
    (_order("e3", f" {ALICE.upper()}", amount=-1), "quality:amount.range", ALICE),  # another spelling: one token
    (b'{"event_id": "e4", "email": "' + ALICE.encode() + b'", "comment": "' + CANARIES["name"].encode(),
     "json_invalid", "quarantine"),  # never parsed: its subject is not read
]


def test_forget_erases_the_subjects_dead_letters_and_only_those(bootstrap: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "orders.avsc").write_bytes(orjson.dumps(_schema(suffix)))
    plan = load_plans(schemas)[0]
    keyring, key_topic, audit_topic = tmp_path / "keyring.json", f"privacy.keys.{suffix}", f"privacy.audit.{suffix}"
    kafka = {"bootstrap.servers": bootstrap}
    log_path = tmp_path / "worker.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", bootstrap, "--schemas", str(schemas),
         "--keyring", str(keyring), "--audit-topic", audit_topic, "--group-id", f"gateway-{suffix}",
         "--instance-id", "w1", "--partitions", "1", "--session-timeout-ms", "6000", "--key-topic", key_topic,
         "--leak-sample-rate", "1.0", "--dlq-retention-days", "7"],
        stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
    worker = WorkerProcess(proc, log_path, handle)
    try:
        worker.wait_for_log('"msg":"partitions assigned"')
        producer = Producer(kafka)
        for value, _, _ in EVENTS:
            producer.produce(plan.source_topic, value, partition=0)
        assert producer.flush(30) == 0
        wait_for(lambda: audited_count(bootstrap, audit_topic) >= len(EVENTS), "every event audited")
    finally:
        assert worker.stop() == 0

    letters = {orjson.loads(r.value or b"")["source"]["offset"]: orjson.loads(r.value or b"")
               for r in read_topic(kafka, plan.dlq_topic)}
    expected = {i: (reason, whose) for i, (_, reason, whose) in enumerate(EVENTS) if reason is not None}
    assert {i: letters[i]["reason"] for i in letters} == {i: reason for i, (reason, _) in expected.items()}
    assert {i: letters[i]["sealed"]["format"] for i in letters} == {1: 2, 2: 2, 3: 2, 4: 3}
    alice_token = letters[1]["sealed"]["key"]["subject"]
    assert letters[3]["sealed"]["key"] == letters[1]["sealed"]["key"]  # one subject, one key
    assert letters[2]["sealed"]["key"]["subject"] != alice_token
    audit = audit_entries(bootstrap, audit_topic)
    key_ids = {e["event"]["offset"]: e["key_ids"] for e in audit if e.get("type") == "event"}
    assert key_ids[1] == [f"token:{DOMAIN}/v1", letters[1]["sealed"]["key_id"]]
    assert key_ids[4] == [letters[4]["sealed"]["key_id"]] and key_ids[4][0].startswith("quarantine-")

    # the DLQ topic the gateway created keeps dead letters for dlq_retention_days only
    admin = AdminClient(kafka)  # held until its futures resolve
    described = admin.describe_configs([ConfigResource(ResourceType.TOPIC, plan.dlq_topic)])
    assert next(iter(described.values())).result(30)["retention.ms"].value == str(7 * 86_400_000)

    # the operator's tools: dump the dead-letter topic, unseal with the keyring and the key topic
    dumped = cli("dump", "--bootstrap", bootstrap, "--topic", plan.dlq_topic)
    assert dumped.returncode == 0, dumped.stderr.decode()[-2000:]

    def unseal() -> subprocess.CompletedProcess[bytes]:
        return cli("dlq", "unseal", "--keyring", str(keyring), "--bootstrap", bootstrap, "--key-topic", key_topic,
                   stdin=dumped.stdout)

    before = unseal()
    assert before.returncode == 0, before.stderr.decode()[-2000:]
    opened = {o["source"]["offset"]: base64.b64decode(o["value"]) for o in map(orjson.loads,
                                                                             before.stdout.splitlines())}
    assert opened == {i: EVENTS[i][0] for i in expected}

    forget = cli("forget", ALICE, "--domain", DOMAIN, "--bootstrap", bootstrap, "--keyring", str(keyring),
                 "--schemas", str(schemas), "--key-topic", key_topic, "--audit-topic", audit_topic)
    assert forget.returncode == 0, forget.stderr.decode()[-2000:]

    def erased() -> subprocess.CompletedProcess[bytes] | None:  # the forget's commit markers may lag its exit
        result = unseal()
        return result if result.stderr.decode().count("key_erased") >= 2 else None

    after = wait_for(erased, "Alice's dead letters reported key_erased", timeout_s=30)
    assert after.returncode == 1
    err = after.stderr.decode()
    assert err.count("key_erased") == 2 and "Traceback" not in err
    for i in (1, 3):
        assert f"dead letter {plan.source_topic}/0/{i}: key_erased" in err
    still = {o["source"]["offset"]: base64.b64decode(o["value"]) for o in map(orjson.loads, after.stdout.splitlines())}
    assert still == {2: EVENTS[2][0], 4: EVENTS[4][0]}  # Bob's (his key) and the undecodable one (quarantine)

    forgotten = [e for e in audit_entries(bootstrap, audit_topic) if e.get("type") == "subject_forgotten"]
    assert len(forgotten) == 1
    assert forgotten[0]["key_ids"] == [letters[1]["sealed"]["key_id"]]

    # neither the dead letters, the audit, the key topic nor the worker's log holds a subject or canary
    stored = b"".join((r.key or b"") + (r.value or b"") for topic in (plan.dlq_topic, audit_topic, key_topic)
                      for r in read_topic(kafka, topic))
    stored += log_path.read_bytes() + dumped.stdout + after.stderr + forget.stdout + forget.stderr
    for secret in (ALICE, ALICE.upper(), BOB, CANARIES["card"], CANARIES["email"], CANARIES["name"]):
        assert secret.encode() not in stored, secret
