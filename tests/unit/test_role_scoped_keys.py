"""Roles composed with per-subject keys and retention (format v6): the field's key lives in the key topic,
wrapped under each listed role's KEK and under no other, so `gateway forget` and retention erase it,
and only the roles' holders open it. The key-topic records are passed by hand here (tests/unit/key_topic.py);
the broker, `gateway forget` and `gateway retention enforce` are in tests/integration/test_role_scoped_keys.py."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.codec.raw import load_schema_file
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.core.sanitizer import RecordSanitizer
from gateway.errors import MalformedStateRecord
from gateway.keys.envelope import DekCache, FieldDecryptor, Format, parse_ciphertext, role_keyed_header
from gateway.keys.keyring import Keyring
from gateway.keys.period_keys import DAY_MS, day_label, due_keys, parse_period_key
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from tests.unit.key_topic import KeyTopic

TOKENIZER = DomainTokenizer("patient", "1", b"\x03" * 32)
T0 = int(datetime.datetime(2026, 3, 4, 12, 0, tzinfo=datetime.UTC).timestamp() * 1000)
DIAGNOSIS, LAB, NOTE, CODE = "J45 asthma", "HbA1c 6.1", "shared note", "C-1"


def _schema() -> dict[str, Any]:
    return {
        "type": "record", "name": "Visit", "namespace": "t.rolekeys",
        "privacy": {"source_topic": "visits.raw", "sanitized_topic": "visits.sanitized", "subject": "patient",
                    "event_id": "visit_id"},
        "fields": [
            {"name": "visit_id", "type": "string", "privacy": "keep"},
            {"name": "patient", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
            {"name": "diagnosis", "type": "string",
             "privacy": {"encrypt": {"roles": ["clinician"], "per_subject": True}}},
            {"name": "lab", "type": "string",
             "privacy": {"encrypt": {"roles": ["clinician", "lab"], "retention_days": 7}}},
            {"name": "note", "type": "string",
             "privacy": {"encrypt": {"roles": ["clinician"], "per_subject": True, "retention_days": 30}}},
            {"name": "code", "type": "string", "privacy": "encrypt"},
        ],
    }


@pytest.fixture
def plan(write_schema: Callable[..., Path]) -> Plan:
    return compile_plan(load_schema_file(write_schema(_schema(), "visit.avsc")))


class _Worker:
    def __init__(self, plan: Plan, keyring: Keyring, topic: KeyTopic) -> None:
        self.keys = SubjectKeys(keyring, publisher=topic.publish)
        for key, value in topic.records:  # a worker follows the key topic
            self.keys.apply(key, value)
        self.sanitizer = RecordSanitizer(plan, {"patient": TOKENIZER}, DekCache(keyring, 3600, 1000),
                                         max_field_bytes=10_000, subject_keys=self.keys)

    def sanitize(self, visit: str, patient: str = "patient-1", ts: int = T0) -> dict[str, Any]:
        raw = {"visit_id": visit, "patient": patient, "diagnosis": DIAGNOSIS, "lab": LAB, "note": NOTE, "code": CODE}
        record = self.sanitizer.sanitize(raw, ts).record
        self.keys.publish_pending()
        return record


def _forget(topic: KeyTopic, keyring: Keyring, patient: str) -> None:
    """The tombstones `gateway forget` writes (gateway.runtime.keytopic.forget_subject): every key of the
    subject, its per-subject period keys included, as the key topic holds them."""
    reader, token = topic.reader(keyring), TOKENIZER.token(patient)
    names = [*reader.keys_of("patient", token), *reader.periods.keys_of("patient", token)]
    assert any("roles:" in name for name in names)
    topic.records += [(name.encode(), None) for name in names]


def _outcomes(record: dict[str, Any], plan: Plan, decryptor: FieldDecryptor) -> tuple[dict[str, Any], dict[str, str]]:
    opened, report = decrypt_record(record, plan, decryptor)
    return opened, {path: outcome.split(":", 1)[0] for path, outcome in report.fields.items()}


def _as_role(keyring: Keyring, role: str, topic: KeyTopic, tmp_path: Path) -> FieldDecryptor:
    """A consumer of `role`: its exported keyring (that role's key and nothing else) and the key topic."""
    keyring.export_role(role, tmp_path / f"{role}.json")
    export = Keyring.open(tmp_path / f"{role}.json", create=False)
    return FieldDecryptor(export, subject_keys=topic.reader(export), role=role)


def test_roles_now_compose_with_per_subject_and_retention(plan: Plan) -> None:
    actions = plan.field_actions
    assert actions["diagnosis"] == "encrypt:roles=clinician,per_subject"
    assert actions["lab"] == "encrypt:roles=clinician,lab,retention_days=7"
    assert actions["note"] == "encrypt:roles=clinician,per_subject,retention_days=30"
    assert plan.per_subject  # the worker follows the key topic
    docs = {f["name"]: f.get("doc", "") for f in plan.sanitized_schema["fields"]}
    assert "format v6" in docs["diagnosis"] and "clinician" in docs["diagnosis"]


def test_the_key_is_in_the_key_topic_wrapped_per_role_and_never_under_the_kek(plan: Plan, keyring: Keyring) -> None:
    keyring.ensure_roles({"clinician", "lab", "audit"})
    topic = KeyTopic()
    record = _Worker(plan, keyring, topic).sanitize("v-1")
    diagnosis, lab = parse_ciphertext(record["diagnosis"]), parse_ciphertext(record["lab"])
    assert diagnosis.version == lab.version == Format.ROLE_KEYED
    assert diagnosis.roles == ("clinician",) and lab.roles == ("clinician", "lab")
    assert (lab.retention_days, lab.day, lab.kek_id) == (7, T0 // DAY_MS, "")
    assert (diagnosis.retention_days, diagnosis.kek_id) == (0, "patient")
    token = TOKENIZER.token("patient-1")
    names = {key.decode(): orjson.loads(value) for key, value in topic.records if value is not None}
    diagnosis_name = f"patient/{token}/roles:clinician/{diagnosis.dek_id.hex()}"
    lab_name = f"period:7/{day_label(T0 // DAY_MS)}/roles:clinician,lab/{lab.dek_id.hex()}"
    assert diagnosis_name in names and lab_name in names
    for name, parsed in ((diagnosis_name, diagnosis), (lab_name, lab)):
        value = names[name]
        assert value["format"] == 2 and "kek_id" not in value and "wrapped" not in value
        assert tuple(w["role"] for w in value["roles"]) == parsed.roles
        assert keyring.active_key_id() not in json.dumps(value)
    assert parse_period_key(lab_name) is not None and parse_period_key(lab_name).roles == ("clinician", "lab")
    assert diagnosis.key_id == f"roles:clinician/subject:patient/{diagnosis.dek_id.hex()}"  # never the token
    assert token not in diagnosis.key_id and token not in parse_ciphertext(record["note"]).key_id


def test_the_role_holder_opens_before_forget_and_gets_key_erased_after(plan: Plan, keyring: Keyring,
                                                                        tmp_path: Path) -> None:
    keyring.ensure_roles({"clinician", "lab", "audit"})
    topic = KeyTopic()
    worker = _Worker(plan, keyring, topic)
    alice, bob = worker.sanitize("v-1"), worker.sanitize("v-2", patient="patient-2")
    opened, outcomes = _outcomes(alice, plan, _as_role(keyring, "clinician", topic, tmp_path))
    assert outcomes == dict.fromkeys(("diagnosis", "lab", "note"), "decrypted") | {"code": "key_not_held"}
    assert (opened["diagnosis"], opened["lab"], opened["note"]) == (DIAGNOSIS, LAB, NOTE)

    _forget(topic, keyring, "patient-1")
    clinician = _as_role(keyring, "clinician", topic, tmp_path)
    _, outcomes = _outcomes(alice, plan, clinician)
    assert outcomes["diagnosis"] == outcomes["note"] == "key_erased"
    assert outcomes["lab"] == "decrypted"  # the day's shared key (not per subject): retention erases it
    _, outcomes = _outcomes(bob, plan, clinician)  # another subject is untouched
    assert outcomes["diagnosis"] == outcomes["note"] == outcomes["lab"] == "decrypted"


def test_a_decryptor_keeping_a_cached_key_sees_the_tombstone(plan: Plan, keyring: Keyring, tmp_path: Path) -> None:
    keyring.ensure_roles({"clinician", "lab"})
    topic = KeyTopic()
    record = _Worker(plan, keyring, topic).sanitize("v-1")
    clinician = _as_role(keyring, "clinician", topic, tmp_path)
    assert _outcomes(record, plan, clinician)[1]["diagnosis"] == "decrypted"  # the DEK is cached now
    reader = clinician._subject_keys
    before = len(topic.records)
    _forget(topic, keyring, "patient-1")
    for key, value in topic.records[before:]:  # the consumer follows the key topic
        reader.apply(key, value)  # type: ignore[union-attr]
    assert _outcomes(record, plan, clinician)[1]["diagnosis"] == "key_erased"


def test_the_role_holder_opens_until_retention_erases_the_day(plan: Plan, keyring: Keyring, tmp_path: Path) -> None:
    keyring.ensure_roles({"clinician", "lab"})
    topic = KeyTopic()
    record = _Worker(plan, keyring, topic).sanitize("v-1")
    lab_reader = _as_role(keyring, "lab", topic, tmp_path)
    assert _outcomes(record, plan, lab_reader)[1]["lab"] == "decrypted"
    live = [k.decode() for k, v in topic.records if v is not None]
    assert due_keys(live, erase_at_ms(7)) and not due_keys(live, erase_at_ms(7) - 1)
    due = {p.name for p in due_keys(live, erase_at_ms(7))}
    assert any(name.startswith("period:7/") and "roles:clinician,lab/" in name for name in due)
    assert not any(name.startswith("period:30/") for name in due)  # the note's retention is 30 days
    topic.records += [(name.encode(), None) for name in sorted(due)]  # gateway retention enforce's tombstones
    _, outcomes = _outcomes(record, plan, _as_role(keyring, "lab", topic, tmp_path))
    assert outcomes["lab"] == "key_erased"
    _, outcomes = _outcomes(record, plan, _as_role(keyring, "clinician", topic, tmp_path))
    assert outcomes["lab"] == "key_erased" and outcomes["note"] == outcomes["diagnosis"] == "decrypted"


def erase_at_ms(days: int) -> int:
    return (T0 // DAY_MS + 1 + days) * DAY_MS


def test_another_role_and_the_kek_holder_cannot_open(plan: Plan, keyring: Keyring, tmp_path: Path) -> None:
    keyring.ensure_roles({"clinician", "lab", "audit"})
    topic = KeyTopic()
    record = _Worker(plan, keyring, topic).sanitize("v-1")
    _, outcomes = _outcomes(record, plan, _as_role(keyring, "audit", topic, tmp_path))
    assert outcomes["diagnosis"] == outcomes["lab"] == outcomes["note"] == "not_permitted"
    _, outcomes = _outcomes(record, plan, _as_role(keyring, "lab", topic, tmp_path))
    assert outcomes["diagnosis"] == outcomes["note"] == "not_permitted" and outcomes["lab"] == "decrypted"
    # the KEK's holder with the key topic: every other field opens, the role-scoped ones do not
    kek_holder = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    _, outcomes = _outcomes(record, plan, kek_holder)
    assert outcomes["code"] == "decrypted"
    assert outcomes["diagnosis"] == outcomes["lab"] == outcomes["note"] == "not_permitted"
    # a role's decryptor cannot pass off another role's name: the header's role list is authenticated
    parsed = parse_ciphertext(record["diagnosis"])
    relabelled = (record["diagnosis"][:2] + role_keyed_header(("audit",), 0, 0, "patient", parsed.dek_id)
                  + parsed.nonce + parsed.body)
    _, outcomes = _outcomes(dict(record, diagnosis=relabelled), plan, _as_role(keyring, "audit", topic, tmp_path))
    assert outcomes["diagnosis"] == "key_erased"  # names a key the topic does not hold: no wrap opens it


def test_a_restarted_worker_makes_its_own_key_and_forget_erases_both(plan: Plan, keyring: Keyring,
                                                                     tmp_path: Path) -> None:
    """Use limits hold across processes (gateway.keys.key_store): a worker never encrypts under a key it
    loaded, role-scoped ones included, so a restart makes a second key of the subject; forget erases both."""
    keyring.ensure_roles({"clinician", "lab"})
    topic = KeyTopic()
    first = _Worker(plan, keyring, topic).sanitize("v-1")
    again = _Worker(plan, keyring, topic).sanitize("v-2")
    assert parse_ciphertext(first["diagnosis"]).dek_id != parse_ciphertext(again["diagnosis"]).dek_id
    clinician = _as_role(keyring, "clinician", topic, tmp_path)
    assert _outcomes(first, plan, clinician)[1]["diagnosis"] == _outcomes(again, plan, clinician)[1]["diagnosis"] \
        == "decrypted"
    _forget(topic, keyring, "patient-1")
    clinician = _as_role(keyring, "clinician", topic, tmp_path)
    assert _outcomes(first, plan, clinician)[1]["diagnosis"] == _outcomes(again, plan, clinician)[1]["diagnosis"] \
        == "key_erased"

def test_the_audit_names_each_role_scoped_key_without_the_token(plan: Plan, keyring: Keyring) -> None:
    keyring.ensure_roles({"clinician", "lab"})
    worker = _Worker(plan, keyring, KeyTopic())
    result = worker.sanitizer.sanitize({"visit_id": "v-1", "patient": "patient-1", "diagnosis": DIAGNOSIS, "lab": LAB,
                                        "note": NOTE, "code": CODE}, T0)
    ids = {parse_ciphertext(result.record[f]).key_id for f in ("diagnosis", "lab", "note")}
    assert result.other_key_ids == ids
    assert {i.split("/", 1)[0] for i in ids} == {"roles:clinician", "roles:clinician,lab"}
    assert not any(TOKENIZER.token("patient-1") in i for i in ids)


@pytest.mark.parametrize("value", [
    {"format": 2, "roles": [], "created": 1},
    {"format": 2, "roles": [{"role": "clinician", "kek_id": "k"}], "created": 1},
    {"format": 2, "roles": [{"role": "clinician", "kek_id": "k", "wrapped": "not base64!"}], "created": 1},
    {"format": 2, "roles": [{"role": "clinician", "kek_id": "k", "wrapped": "AAAA"}], "created": True},
])
def test_a_malformed_role_scoped_entry_is_skipped_and_leaves_no_key(keyring: Keyring, value: dict[str, Any]) -> None:
    keys = SubjectKeys(keyring)
    name = b"patient/tok_v1_x/roles:clinician/" + bytes(16).hex().encode()
    with pytest.raises(MalformedStateRecord):
        keys.apply(name, orjson.dumps(value))
    assert keys.keys_of("patient", "tok_v1_x") == []
