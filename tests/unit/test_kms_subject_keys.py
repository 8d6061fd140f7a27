"""Per-subject keys and crypto-shredding as pure logic: the key-topic records are passed by hand here
(the real broker is in tests/integration/test_shredding.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.keys.envelope import FORMAT_SUBJECT, FieldDecryptor, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.settings import GatewayConfig
from tests.unit.key_topic import KeyTopic

SCHEMA = {
    "type": "record", "name": "Note", "namespace": "t.notes",
    "privacy": {"source_topic": "notes.raw", "sanitized_topic": "notes.sanitized", "subject": "patient_id"},
    "fields": [
        {"name": "patient_id", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
        {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True}}},
        {"name": "code", "type": "string", "privacy": "encrypt"},
    ],
}


@pytest.fixture
def plan(write_schema: Callable[..., Path]) -> Plan:
    return compile_plan(load_schema_file(write_schema(SCHEMA, "notes.avsc")))


def _sanitize(pipeline: Pipeline, patient: str, note: str) -> dict[str, Any]:
    stage = pipeline.stages["notes.raw"]
    result = stage.sanitizer.sanitize({"patient_id": patient, "note": note, "code": "C-1"})
    pipeline.subject_keys.publish_pending()  # as Pipeline.process does at the end of a batch
    return result.record


@pytest.fixture
def setup(plan: Plan, keyring: Keyring, tmp_path: Path) -> tuple[Pipeline, KeyTopic]:
    topic = KeyTopic()
    keys = SubjectKeys(keyring, publisher=topic.publish)
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t")
    return Pipeline([plan], keyring, config, 1, tokenizers(keyring, [plan]), subject_keys=keys), topic


def test_policy_compiles_per_subject_encryption(plan: Plan) -> None:
    assert plan.per_subject and plan.subject_domain == "patient"
    assert plan.field_actions["note"] == "encrypt:per_subject" and plan.field_actions["code"] == "encrypt"
    docs = {f["name"]: f["doc"] for f in plan.sanitized_schema["fields"] if f["name"] in ("note", "code")}
    assert "format v2" in docs["note"] and "subject's own key" in docs["note"]  # its bytes are format v2
    assert "format v1" in docs["code"]


def test_each_subject_has_its_own_key_stored_under_its_token(setup: tuple[Pipeline, KeyTopic], plan: Plan,
                                                             keyring: Keyring) -> None:
    pipeline, topic = setup
    a1, b1, a2 = (_sanitize(pipeline, p, n) for p, n in (("alice-17", "n1"), ("bob-42", "n2"), ("alice-17", "n3")))
    parsed = [parse_ciphertext(r["note"]) for r in (a1, b1, a2)]
    assert all(p.version == FORMAT_SUBJECT and p.kek_id == "patient" for p in parsed)
    assert parsed[0].dek_id == parsed[2].dek_id != parsed[1].dek_id
    assert parse_ciphertext(a1["code"]).version == 1  # the plain encrypt field keeps the shared DEK
    assert len(topic.records) == 2
    for key, value in topic.records:
        assert b"alice" not in key + (value or b"") and b"bob" not in key + (value or b"")
        assert key.startswith(b"patient/tok_v1_")
        assert orjson.loads(value or b"{}")["kek_id"] == keyring.active_key_id()
    reader = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    for record, note in ((a1, "n1"), (b1, "n2"), (a2, "n3")):
        opened, report = decrypt_record(record, plan, reader)
        assert report.ok and opened["note"] == note and opened["code"] == "C-1"


def test_forgetting_a_subject_erases_only_its_fields_and_new_events_get_a_fresh_key(
        setup: tuple[Pipeline, KeyTopic], plan: Plan, keyring: Keyring) -> None:
    pipeline, topic = setup
    alice_old, bob = _sanitize(pipeline, "alice-17", "old"), _sanitize(pipeline, "bob-42", "b")
    alice_keys = [k for k, _ in topic.records if k.startswith(f"patient/{alice_old['patient_id']}/".encode())]
    assert len(alice_keys) == 1
    topic.publish([(k, None) for k in alice_keys])  # what `gateway forget` writes
    for key, value in topic.records[-len(alice_keys):]:
        pipeline.subject_keys.apply(key, value)  # what the worker's key-topic thread does
    alice_new = _sanitize(pipeline, "alice-17", "new")
    assert parse_ciphertext(alice_new["note"]).dek_id != parse_ciphertext(alice_old["note"]).dek_id
    reader = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    _, report = decrypt_record(alice_old, plan, reader)
    assert report.fields["note"].startswith("key_erased:") and report.fields["code"] == "decrypted"
    for record, note in ((bob, "b"), (alice_new, "new")):
        opened, report = decrypt_record(record, plan, reader)
        assert report.ok and opened["note"] == note


def test_a_per_subject_field_cannot_be_opened_without_the_key_topic(setup: tuple[Pipeline, KeyTopic], plan: Plan,
                                                                   keyring: Keyring) -> None:
    record = _sanitize(setup[0], "alice-17", "x")
    _, report = decrypt_record(record, plan, FieldDecryptor(keyring))
    assert report.fields["note"].startswith("key_not_held:") and "key topic" in report.fields["note"]


def test_rewrap_moves_subject_keys_to_the_new_kek_so_the_old_one_can_be_retired(
        setup: tuple[Pipeline, KeyTopic], plan: Plan, keyring: Keyring) -> None:
    pipeline, topic = setup
    records = [_sanitize(pipeline, f"p-{i}", f"note {i}") for i in range(3)]
    old_kek = keyring.active_key_id()
    new_kek = keyring.rotate_kek()
    keys = topic.reader(keyring)
    rewrapped = keys.rewrap()
    assert len(rewrapped) == 3 and all(orjson.loads(v or b"{}")["kek_id"] == new_kek for _, v in rewrapped)
    assert keys.rewrap() == []  # nothing left under an older KEK
    topic.publish(rewrapped)
    keyring.retire_kek(old_kek)
    reader = FieldDecryptor(Keyring.open(keyring.path, create=False),
                            subject_keys=topic.reader(Keyring.open(keyring.path, create=False)))
    for i, record in enumerate(records):
        opened, report = decrypt_record(record, plan, reader)
        assert opened["note"] == f"note {i}"
        # the v1 field carried its DEK wrapped under the retired KEK: it is gone with it (docs/operations/keys.md)
        assert report.fields["note"] == "decrypted" and report.fields["code"].startswith("key_not_held:")


def test_an_event_without_subject_is_rejected_with_missing_subject(setup: tuple[Pipeline, KeyTopic]) -> None:
    from gateway.errors import RejectedEvent

    sanitizer = setup[0].stages["notes.raw"].sanitizer
    with pytest.raises(RejectedEvent) as excinfo:
        sanitizer.sanitize({"patient_id": None, "note": "n", "code": "c"})
    assert excinfo.value.reason == "missing_subject" and "note" in excinfo.value.message


def test_a_refused_name_stays_erased_whatever_arrives_under_it_and_in_any_order(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path / "k.json")
    topic = KeyTopic()
    writer = SubjectKeys(keyring, publisher=topic.publish)
    key = writer.current("patient", "tok_a")
    writer.periods.current(30, 20_000, "patient", "tok_a")
    other = writer.current("patient", "tok_b")
    writer.publish_pending()
    names = [k for k, _ in topic.records]
    subject_name = f"patient/tok_a/{key.dek_id.hex()}".encode()
    period_name = next(n for n in names if n.startswith(b"period:"))

    refused_first = SubjectKeys(keyring)  # the erased-names record read before the key topic (a restore)
    for name in (subject_name, period_name):
        refused_first.refuse(name)
    for k, v in topic.records:
        refused_first.apply(k, v)
    refused_later = topic.reader(keyring)  # a follower: the record arrives after the values
    for name in (subject_name, period_name):
        refused_later.refuse(name)
    for k, v in topic.records:  # a writer re-stores the very same values afterwards
        refused_later.apply(k, v)
    for keys in (refused_first, refused_later):
        assert keys.keys_of("patient", "tok_a") == [] and keys.periods.keys_of("patient", "tok_a") == []
        assert keys.keys_of("patient", "tok_b") == [f"patient/tok_b/{other.dek_id.hex()}"]
