"""The gateway end to end on the real broker: one worker process, both example schemas, valid and
broken events in every encoding, then every promise checked on what landed in the topics."""

from __future__ import annotations

import base64
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.codec.writer import avro_bytes
from gateway.core.deadletter import QuarantineSealer
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import CANARIES, SampleEvents, broken_payment_events
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.runtime.keytopic import load_subject_keys

from .conftest import Deployment, WorkerProcess, cli

pytestmark = pytest.mark.integration
SHARED_EMAIL = "shared.person@example.net"
N_PAYMENTS = 60
N_VISITS = 40


@dataclass
class Run:
    deployment: Deployment
    worker: WorkerProcess
    payments: list[dict[str, Any]]
    visits: list[dict[str, Any]]
    broken: list[tuple[str, bytes]]
    audit: list[dict[str, Any]]  # the audit entries (one per event; a record holds a batch's of one partition)

    def sanitized(self, plan_name: str) -> list[dict[str, Any]]:
        plan = self.deployment.plans[plan_name]
        decoder = SanitizedDecoder(list(self.deployment.plans.values()))
        return [decoder.decode(r)[1] for r in self.deployment.read(plan.sanitized_topic)]


@pytest.fixture(scope="module")
def run(deployment: Deployment) -> Run:
    worker = deployment.start_worker("worker-a")
    samples = SampleEvents(seed=11)
    payments = [samples.payment(canary=(i == 0)) for i in range(N_PAYMENTS)]
    visits = [samples.clinical_visit(canary=(i == 0)) for i in range(N_VISITS)]
    payments[1]["email"] = SHARED_EMAIL
    visits[1]["email"] = SHARED_EMAIL
    payments[2]["user_id"] = payments[3]["user_id"]
    pay, visit = deployment.payments, deployment.clinical
    broken = broken_payment_events(samples.payment(canary=True), 1, lambda r: avro_bytes(pay.schema.parsed, r))
    # partition 0 of payments: the broken corpus first, then valid events that must still flow
    deployment.produce(pay.source_topic, [value for _, value in broken], partition=0)
    encodings = ["confluent", "avro", "json"]
    deployment.produce(pay.source_topic, [encode_raw(pay, r, encodings[i % 3]) for i, r in enumerate(payments)],
                       partition=0)
    deployment.produce(visit.source_topic, [encode_raw(visit, r, ["avro", "json"][i % 2])
                                            for i, r in enumerate(visits)])
    audit = deployment.wait_for_audit(len(broken) + N_PAYMENTS + N_VISITS)
    return Run(deployment, worker, payments, visits, broken, audit)


def test_every_event_ends_in_exactly_one_place_and_is_audited(run: Run) -> None:
    d = run.deployment
    sanitized = len(d.read(d.payments.sanitized_topic)) + len(d.read(d.clinical.sanitized_topic))
    dead = len(d.read(d.payments.dlq_topic)) + len(d.read(d.clinical.dlq_topic))
    assert sanitized == N_PAYMENTS + N_VISITS
    assert dead == len(run.broken)
    events = run.audit
    refs = Counter((e["event"]["topic"], e["event"]["partition"], e["event"]["offset"]) for e in events)
    assert len(refs) == len(run.broken) + N_PAYMENTS + N_VISITS and set(refs.values()) == {1}
    outcomes = Counter(e["outcome"].split(":")[0] for e in events)
    assert outcomes == {"sanitized": N_PAYMENTS + N_VISITS, "rejected": len(run.broken)}
    assert run.worker.alive()


def test_sanitized_records_follow_the_policy(run: Run) -> None:
    payments = {r["event_id"]: r for r in run.sanitized("Payment")}
    visits = {r["visit_id"]: r for r in run.sanitized("ClinicalVisit")}
    assert set(payments) == {p["event_id"] for p in run.payments}
    assert set(visits) == {v["visit_id"] for v in run.visits}
    for raw in run.payments:
        out = payments[raw["event_id"]]
        assert "ip_address" not in out and "user_agent" not in out and "postal_code" not in out["billing_address"]
        assert out["amount_minor"] == raw["amount_minor"] and out["merchant"] == raw["merchant"]
        assert out["user_id"].startswith("tok_v1_") and out["user_id"] != raw["user_id"]
        assert isinstance(out["card_number"], bytes | str) and raw["card_number"].encode() not in _bytes(out)
    for raw in run.visits:
        out = visits[raw["visit_id"]]
        assert "patient_name" not in out and "phone" not in out and "insurer_member_id" not in out
        assert [p["code"] for p in out["procedures"]] == [p["code"] for p in raw["procedures"]]
        assert (out["location"] is None) == (raw["location"] is None)


def test_tokens_are_deterministic_and_domain_separated(run: Run) -> None:
    payments = {r["event_id"]: r for r in run.sanitized("Payment")}
    visits = {r["visit_id"]: r for r in run.sanitized("ClinicalVisit")}
    p2, p3 = payments[run.payments[2]["event_id"]], payments[run.payments[3]["event_id"]]
    assert p2["user_id"] == p3["user_id"]  # same user, same token
    assert p2["email"] != p3["email"] or run.payments[2]["email"] == run.payments[3]["email"]
    shared_payment = payments[run.payments[1]["event_id"]]["email"]
    shared_visit = visits[run.visits[1]["visit_id"]]["email"]
    assert shared_payment != shared_visit  # domains customer vs contact: unlinkable
    distinct_users = {p["user_id"] for p in run.payments}
    assert len({payments[p["event_id"]]["user_id"] for p in run.payments}) == len(distinct_users)


def _sanitized_json_lines(run: Run, topic: str) -> bytes:
    result = cli("dump", "--bootstrap", run.deployment.bootstrap, "--topic", topic,
                 "--schemas", str(run.deployment.schemas))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_decrypt_cli_restores_encrypted_fields(run: Run) -> None:
    d = run.deployment
    for plan, originals, id_field in ((d.payments, run.payments, "event_id"), (d.clinical, run.visits, "visit_id")):
        lines = _sanitized_json_lines(run, plan.sanitized_topic)
        result = cli("decrypt", "--keyring", str(d.keyring), "--schemas", str(d.schemas),
                     "--topic", plan.sanitized_topic, stdin=lines)
        assert result.returncode == 0, result.stderr.decode()
        opened = {r[id_field]: r for r in map(orjson.loads, result.stdout.splitlines())}
        for raw in originals:
            out = opened[raw[id_field]]
            if plan is d.payments:
                assert out["card_number"] == raw["card_number"]
                assert out["customer_name"] == raw["customer_name"]
                assert out["card_expiry"] == raw["card_expiry"]
                assert out["billing_address"]["street"] == raw["billing_address"]["street"]
            else:
                assert out["diagnosis_codes"] == raw["diagnosis_codes"]
                assert out["location"] == raw["location"]
                assert [p["notes"] for p in out["procedures"]] == [p["notes"] for p in raw["procedures"]]
                assert out["date_of_birth"] is not None


def test_decrypt_without_the_key_fails_clearly(run: Run, tmp_path: Any) -> None:
    d = run.deployment
    lines = _sanitized_json_lines(run, d.payments.sanitized_topic)
    missing = cli("decrypt", "--keyring", str(tmp_path / "absent.json"), "--schemas", str(d.schemas),
                  "--topic", d.payments.sanitized_topic, stdin=lines)
    assert missing.returncode == 2 and b"does not exist" in missing.stderr
    Keyring.open(tmp_path / "other.json")  # a valid keyring that does not hold the gateway's KEK
    wrong = cli("decrypt", "--keyring", str(tmp_path / "other.json"), "--schemas", str(d.schemas),
                "--topic", d.payments.sanitized_topic, stdin=lines)
    assert wrong.returncode == 1 and b"key_not_held" in wrong.stderr
    assert CANARIES["card"].encode() not in wrong.stdout + wrong.stderr


def test_tampered_or_moved_ciphertexts_fail_to_decrypt(run: Run) -> None:
    d = run.deployment
    records = [orjson.loads(line) for line in _sanitized_json_lines(run, d.payments.sanitized_topic).splitlines()]
    a, b = records[0], next(r for r in records[1:] if r["user_id"] != records[0]["user_id"])
    flipped = bytearray(base64.b64decode(a["card_number"]))
    flipped[-5] ^= 0x01
    cases = {
        "flipped byte": dict(a, card_number=base64.b64encode(bytes(flipped)).decode()),
        "moved to another field": dict(a, card_number=a["customer_name"]),
        "moved to another record": dict(b, card_number=a["card_number"]),
    }
    for label, record in cases.items():
        result = cli("decrypt", "--keyring", str(d.keyring), "--schemas", str(d.schemas),
                     "--topic", d.payments.sanitized_topic, stdin=orjson.dumps(record) + b"\n")
        assert result.returncode == 1, label
        assert b"field 'card_number': tampered" in result.stderr, (label, result.stderr)


def test_bad_input_is_dead_lettered_with_its_reason_and_later_events_flow(run: Run) -> None:
    d = run.deployment
    letters = [orjson.loads(r.value or b"") for r in d.read(d.payments.dlq_topic)]
    by_offset = {(dl["source"]["partition"], dl["source"]["offset"]): dl for dl in letters}
    for offset, (reason, _value) in enumerate(run.broken):
        letter = by_offset[(0, offset)]
        assert letter["reason"] == reason, (offset, letter["reason"], letter["message"])
        assert letter["message"] and letter["source"]["topic"] == d.payments.source_topic
    # the valid events published after the corpus on the same partition were all sanitized
    sanitized_ids = {r["event_id"] for r in run.sanitized("Payment")}
    assert {p["event_id"] for p in run.payments} <= sanitized_ids


def test_dead_letters_are_sealed_and_an_operator_can_unseal_them(run: Run) -> None:
    d = run.deployment
    keyring = Keyring.open(d.keyring, create=False)
    # dead letters whose subject could be read are sealed under its key (format 2): the key topic opens them
    subject_keys = load_subject_keys({"bootstrap.servers": d.bootstrap}, "privacy.keys", SubjectKeys(keyring))
    sealer = QuarantineSealer(*keyring.quarantine_key(), subject_keys)
    originals = {offset: value for offset, (_reason, value) in enumerate(run.broken)}
    letters = [orjson.loads(r.value or b"") for r in d.read(d.payments.dlq_topic)]
    unsealed = 0
    for letter in letters:
        if letter["sealed"] is None:
            assert letter["reason"] == "record_too_large"  # too big to seal: stays at its coordinates
            continue
        assert sealer.unseal(letter)["value"] == originals[letter["source"]["offset"]]
        unsealed += 1
    assert unsealed == len(run.broken) - 1
    formats = Counter(letter["sealed"]["format"] for letter in letters if letter["sealed"] is not None)
    assert formats == {3: len(run.broken) - 4, 2: 3}  # wrong_type, missing_field, field_too_large: JSON with a subject


def _bytes(value: Any) -> bytes:
    return orjson.dumps(value, default=lambda v: base64.b64encode(v).decode() if isinstance(v, bytes) else str(v))


def test_no_canary_in_any_topic_or_the_worker_log(run: Run) -> None:
    d = run.deployment
    topics = [d.audit_topic, d.payments.sanitized_topic, d.payments.dlq_topic, d.clinical.sanitized_topic,
              d.clinical.dlq_topic]
    blobs = [run.worker.log().encode()]
    for topic in topics:
        for record in d.read(topic):
            blobs.append((record.value or b"") + (record.key or b"") + b"".join(record.headers.values()))
    haystack = b"\n".join(blobs)
    assert len(haystack) > 10_000
    for name, canary in CANARIES.items():
        for form in (canary.encode(), base64.b64encode(canary.encode())):
            assert form not in haystack, f"canary {name} leaked"


def test_audit_events_say_what_was_done_without_values(run: Run) -> None:
    events = run.audit
    sanitized = [e for e in events if e["outcome"] == "sanitized" and e["schema"].endswith("Payment")]
    assert sanitized and all(e["actions"]["card_number"] == "encrypt" and e["actions"]["ip_address"] == "drop"
                             for e in sanitized)
    assert all(any(k.startswith("kek-") and "/" in k for k in e["key_ids"]) for e in sanitized)
    assert {e["policy"] for e in sanitized} == {run.deployment.payments.policy_hash}
    assert {e["event"]["event_id"] for e in sanitized} == {p["event_id"] for p in run.payments}


def _verifier(d: Deployment) -> tuple[str, ...]:
    """The audit keys and the group whose committed heads anchor the chains."""
    return ("--keyring", str(d.keyring), "--group-id", d.group_id)


def test_audit_verify_passes_and_reports_an_altered_record(run: Run) -> None:
    d = run.deployment
    ok = cli("audit", "verify", "--bootstrap", d.bootstrap, "--topic", d.audit_topic, *_verifier(d))
    assert ok.returncode == 0 and b"audit chain OK" in ok.stdout, ok.stdout
    records = d.read(d.audit_topic)
    assert f"audit chain OK: {len(run.audit)} events in {len(records)} records, ".encode() in ok.stdout, ok.stdout
    # copy the chain to a new topic with one event's outcome rewritten, as an intruder would
    copy = d.audit_topic + ".tampered"
    victim = len(records) // 2
    by_partition: dict[int, list[bytes]] = {}
    for i, record in enumerate(records):
        value = record.value or b""
        if i == victim:
            body = orjson.loads(value)
            # a batch record (the sanitize worker's): one of its entries; any other record: itself
            entry = body["events"][len(body["events"]) // 2] if body.get("type") == "events" else body
            entry["outcome"] = "sanitized" if entry["outcome"] != "sanitized" else "rejected:forged"
            value = orjson.dumps(body)
        by_partition.setdefault(record.partition, []).append(value)
    for partition, values in by_partition.items():
        d.produce(copy, values, partition=partition)
    broken = cli("audit", "verify", "--bootstrap", d.bootstrap, "--topic", copy, *_verifier(d))
    assert broken.returncode == 1
    chain = orjson.loads(records[victim].value or b"")["chain"]
    assert f"BREAK: chain {chain}".encode() in broken.stdout and b"altered" in broken.stdout


def test_restarted_worker_resumes_every_chain(run: Run) -> None:
    d = run.deployment
    assert run.worker.stop() == 0  # SIGTERM: finish the batch, commit, exit 0
    samples = SampleEvents(seed=99)
    more = [samples.payment() for _ in range(20)]
    d.produce(d.payments.source_topic, [encode_raw(d.payments, r, "confluent") for r in more])
    worker = d.start_worker("worker-b")
    try:
        d.wait_for_audit(len(run.audit) + len(more))
        result = cli("audit", "verify", "--bootstrap", d.bootstrap, "--topic", d.audit_topic, *_verifier(d))
        assert result.returncode == 0, result.stdout
        assert b"restarted" not in result.stdout  # heads were recovered, not restarted from genesis
        assert len(d.read(d.payments.sanitized_topic)) == N_PAYMENTS + len(more)
    finally:
        assert worker.stop() == 0


def test_confluent_framing_carries_the_sanitized_schema_id(run: Run) -> None:
    d = run.deployment
    framed = [r for r in d.read(d.payments.sanitized_topic) if r.headers.get("gateway-encoding") == b"confluent"]
    assert framed and all(struct.unpack(">bI", (r.value or b"")[:5]) == (0, 101) for r in framed)
