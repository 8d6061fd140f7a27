"""Ciphertexts bound to their record (format v5): the adversary swaps ciphertexts between two records of
the same subject and between elements of one array or map, and the consumer must refuse them
("tampered"); ciphertexts written before v5 (formats v1-v4, no record binding) still open."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.codec.writer import plaintext_encoder
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline, RawEvent, source_ref
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.core.sanitizer import RecordSanitizer
from gateway.integrations.common import SanitizedReader
from gateway.keys.envelope import (
    Binding,
    DekCache,
    FieldDecryptor,
    Format,
    context_bytes,
    encrypt_field,
    key_format,
    parse_ciphertext,
)
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.settings import GatewayConfig
from tests.unit.key_topic import KeyTopic

TOKENIZER = DomainTokenizer("patient", "1", b"\x02" * 32)


def _schema(event_id: bool = True) -> dict[str, Any]:
    privacy: dict[str, Any] = {"source_topic": "visits.raw", "sanitized_topic": "visits.sanitized",
                               "subject": "patient"}
    if event_id:
        privacy["event_id"] = "visit_id"
    return {
        "type": "record", "name": "Visit", "namespace": "t.binding", "privacy": privacy,
        "fields": [
            {"name": "visit_id", "type": "string", "privacy": "keep"},
            {"name": "patient", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
            {"name": "diagnosis", "type": "string", "privacy": "encrypt"},
            {"name": "private_note", "type": "string", "privacy": {"encrypt": {"per_subject": True}}},
            {"name": "procedures", "privacy": "keep", "type": {"type": "array", "items": {
                "type": "record", "name": "Procedure", "fields": [
                    {"name": "code", "type": "string", "privacy": "keep"},
                    {"name": "notes", "type": "string", "privacy": "encrypt"}]}}},
            {"name": "readings", "privacy": "keep", "type": {"type": "map", "values": {
                "type": "record", "name": "Reading", "fields": [
                    {"name": "value", "type": "string", "privacy": "encrypt"}]}}},
        ],
    }


def _raw(visit: str, diagnosis: str) -> dict[str, Any]:
    return {"visit_id": visit, "patient": "patient-7", "diagnosis": diagnosis, "private_note": f"note {visit}",
            "procedures": [{"code": "A", "notes": f"first {visit}"}, {"code": "B", "notes": f"second {visit}"}],
            "readings": {"am": {"value": f"low {visit}"}, "pm": {"value": f"high {visit}"}}}


@pytest.fixture
def plan(write_schema: Callable[..., Path]) -> Plan:
    return compile_plan(load_schema_file(write_schema(_schema(), "visit.avsc")))


def _parts(keyring: Keyring) -> tuple[DekCache, SubjectKeys, KeyTopic]:
    topic = KeyTopic()
    return DekCache(keyring, 3600, 1000), SubjectKeys(keyring, publisher=topic.publish), topic


def _sanitizer(plan: Plan, deks: DekCache, keys: SubjectKeys) -> RecordSanitizer:
    return RecordSanitizer(plan, {"patient": TOKENIZER}, deks, max_field_bytes=10_000, subject_keys=keys)


def _outcomes(record: dict[str, Any], plan: Plan, decryptor: FieldDecryptor,
              source: str | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    opened, report = decrypt_record(record, plan, decryptor, source)
    return opened, {path: outcome.split(":", 1)[0] for path, outcome in report.fields.items()}


def test_the_format_decision_is_one_function_of_the_key_scope() -> None:
    assert key_format(False, (), None) is Format.SHARED
    assert key_format(True, (), None) is Format.SUBJECT
    assert key_format(False, ("a",), None) is Format.ROLES
    assert key_format(True, (), 30) is key_format(False, (), 30) is Format.PERIOD
    assert key_format(True, ("a",), None) is key_format(False, ("a",), 30) is Format.ROLE_KEYED


def test_a_ciphertext_swapped_between_two_records_of_the_same_subject_is_tampered(plan: Plan,
                                                                                   keyring: Keyring) -> None:
    deks, keys, topic = _parts(keyring)
    sanitizer = _sanitizer(plan, deks, keys)
    a = sanitizer.sanitize(_raw("v-1", "flu")).record
    b = sanitizer.sanitize(_raw("v-2", "fracture")).record
    keys.publish_pending()
    assert a["patient"] == b["patient"]  # one subject: the subject binding alone lets them swap
    assert parse_ciphertext(a["diagnosis"]).binding is Binding.EVENT_ID
    decryptor = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    opened, outcomes = _outcomes(b, plan, decryptor)
    assert set(outcomes.values()) == {"decrypted"} and opened["diagnosis"] == "fracture"

    swapped = dict(b, diagnosis=a["diagnosis"], private_note=a["private_note"])
    opened, outcomes = _outcomes(swapped, plan, decryptor)
    assert outcomes["diagnosis"] == outcomes["private_note"] == "tampered"
    assert opened["diagnosis"] == a["diagnosis"]  # the ciphertext stays, never the other record's value
    # the same with the event id changed to the other record's: then the record *is* that event's
    relabelled = dict(swapped, visit_id=a["visit_id"])
    _, outcomes = _outcomes(relabelled, plan, decryptor)
    assert outcomes["diagnosis"] == outcomes["private_note"] == "decrypted"


def test_ciphertexts_swapped_between_array_or_map_elements_are_tampered(plan: Plan, keyring: Keyring) -> None:
    deks, keys, topic = _parts(keyring)
    record = _sanitizer(plan, deks, keys).sanitize(_raw("v-1", "flu")).record
    keys.publish_pending()
    decryptor = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    opened, outcomes = _outcomes(record, plan, decryptor)
    assert [p["notes"] for p in opened["procedures"]] == ["first v-1", "second v-1"]
    assert opened["readings"]["pm"]["value"] == "high v-1" and set(outcomes.values()) == {"decrypted"}

    first, second = record["procedures"]
    swapped = dict(record, procedures=[dict(first, notes=second["notes"]), dict(second, notes=first["notes"])])
    _, outcomes = _outcomes(swapped, plan, decryptor)
    assert outcomes["procedures[].notes"] == "tampered"
    reordered = dict(record, procedures=[second, first])  # the whole elements moved: their positions changed
    _, outcomes = _outcomes(reordered, plan, decryptor)
    assert outcomes["procedures[].notes"] == "tampered"
    readings = record["readings"]
    _, outcomes = _outcomes(dict(record, readings={"am": readings["pm"], "pm": readings["am"]}), plan, decryptor)
    assert outcomes["readings{}.value"] == "tampered"


def test_a_view_without_an_event_id_binds_the_source_coordinates(write_schema: Callable[..., Path],
                                                                 keyring: Keyring) -> None:
    plan = compile_plan(load_schema_file(write_schema(_schema(event_id=False), "visit.avsc")))
    assert plan.event_id_field is None
    deks, keys, topic = _parts(keyring)
    sanitizer = _sanitizer(plan, deks, keys)
    a = sanitizer.sanitize(_raw("v-1", "flu"), source="visits.raw/0/10").record
    b = sanitizer.sanitize(_raw("v-2", "fracture"), source="visits.raw/0/11").record
    keys.publish_pending()
    assert parse_ciphertext(a["diagnosis"]).binding is Binding.SOURCE
    decryptor = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    opened, outcomes = _outcomes(b, plan, decryptor, source=b"visits.raw/0/11")
    assert set(outcomes.values()) == {"decrypted"} and opened["diagnosis"] == "fracture"
    _, outcomes = _outcomes(dict(b, diagnosis=a["diagnosis"]), plan, decryptor, source="visits.raw/0/11")
    assert outcomes["diagnosis"] == "tampered"
    _, report = decrypt_record(b, plan, decryptor)  # the header not passed: it cannot be checked, and says so
    assert report.fields["diagnosis"].startswith("tampered") and "gateway-source" in report.fields["diagnosis"]


def test_a_purpose_view_binds_the_same_event_in_its_own_topic(keyring: Keyring, config: GatewayConfig,
                                                              write_schema: Callable[..., Path]) -> None:
    """The view's record carries the same `gateway-source` as the sanitized one: with the event id left out
    of the view, the view's ciphertexts are bound to those coordinates, and opened with them."""
    schema = _schema()
    schema["privacy"]["purposes"] = {"care": {"topic": "visits.care", "basis": "contract",
                                              "fields": {"patient": {"tokenize": {"domain": "patient"}},
                                                         "diagnosis": "encrypt"}}}
    plan = compile_plan(load_schema_file(write_schema(schema, "visit.avsc")))
    [purpose] = plan.purposes
    assert purpose.plan.event_id_field is None
    topic = KeyTopic()
    pipeline = Pipeline([plan], keyring, config, audit_partitions=1, tokenizers=tokenizers(keyring, [plan]),
                        subject_keys=SubjectKeys(keyring, publisher=topic.publish))
    stage = pipeline.stages["visits.raw"]
    events = [RawEvent("visits.raw", 0, offset, 1_700_000_000_000, None, orjson.dumps(_raw(f"v-{offset}", d)), None)
              for offset, d in ((5, "flu"), (6, "fracture"))]
    result = pipeline.process(events)
    views = [r for r in result.records if r.topic == "visits.care"]
    assert len(views) == 2 and stage.views
    decryptor = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    records = [(orjson.loads(r.value), dict(r.headers)["gateway-source"]) for r in views]
    assert [src for _, src in records] == [source_ref("visits.raw", 0, 5), source_ref("visits.raw", 0, 6)]
    for (record, src), diagnosis in zip(records, ("flu", "fracture"), strict=True):
        opened, outcomes = _outcomes(record, purpose.plan, decryptor, src)
        assert outcomes == {"diagnosis": "decrypted"} and opened["diagnosis"] == diagnosis
    (first, src_first), (second, _) = records
    _, outcomes = _outcomes(dict(first, diagnosis=second["diagnosis"]), purpose.plan, decryptor,
                            src_first)
    assert outcomes == {"diagnosis": "tampered"}


def test_ciphertexts_of_formats_v1_to_v4_without_a_record_binding_still_open(plan: Plan, keyring: Keyring) -> None:
    """What the gateway wrote before v5: no prefix, associated data without event and position."""
    deks, keys, topic = _parts(keyring)
    subject = TOKENIZER.token("patient-7")
    record = _sanitizer(plan, deks, keys).sanitize(_raw("v-1", "flu")).record

    def legacy(path: str, value: str, key: Any) -> bytes:
        context = context_bytes(plan.sanitized_topic, path, subject)
        return encrypt_field(key, plaintext_encoder("string")(value), context)

    old = dict(record, diagnosis=legacy("diagnosis", "flu", deks.current()),
               private_note=legacy("private_note", "old note", keys.current("patient", subject)),
               procedures=[{"code": "A", "notes": legacy("procedures[].notes", "old first", deks.current())}],
               readings={"am": {"value": legacy("readings{}.value", "old low", deks.current())}})
    keys.publish_pending()
    assert parse_ciphertext(old["diagnosis"]).binding is None and old["diagnosis"][0] == Format.SHARED
    assert old["private_note"][0] == Format.SUBJECT
    opened, report = decrypt_record(old, plan, FieldDecryptor(keyring, subject_keys=topic.reader(keyring)))
    assert report.ok, report.fields
    assert (opened["diagnosis"], opened["private_note"]) == ("flu", "old note")
    assert opened["procedures"][0]["notes"] == "old first" and opened["readings"]["am"]["value"] == "old low"


def test_a_bound_prefix_cannot_be_stripped_or_switched(plan: Plan, keyring: Keyring) -> None:
    deks, keys, topic = _parts(keyring)
    record = _sanitizer(plan, deks, keys).sanitize(_raw("v-1", "flu")).record
    keys.publish_pending()
    decryptor = FieldDecryptor(keyring, subject_keys=topic.reader(keyring))
    data = record["diagnosis"]
    for forged in (data[2:], bytes([Format.RECORD_BOUND, Binding.SOURCE]) + data[2:]):
        _, outcomes = _outcomes(dict(record, diagnosis=forged), plan, decryptor, source="visits.raw/0/1")
        assert outcomes["diagnosis"] == "tampered"
    for malformed in (bytes([Format.RECORD_BOUND]), bytes([Format.RECORD_BOUND, 9]) + data[2:],
                      bytes([Format.RECORD_BOUND, Binding.EVENT_ID]) + data):
        _, outcomes = _outcomes(dict(record, diagnosis=malformed), plan, decryptor)
        assert outcomes["diagnosis"] == "malformed"


def test_the_stream_processor_reader_passes_the_source_header(write_schema: Callable[..., Path], keyring: Keyring,
                                                               config: GatewayConfig) -> None:
    """gateway.integrations.common: a record of a view without an event id opens with its headers, and a
    ciphertext moved from another record, or the header of another record, does not."""
    schema = _schema(event_id=False)
    schema["privacy"].update(input="json", output="json")
    path = write_schema(schema, "visit.avsc")
    plan = compile_plan(load_schema_file(path))
    topic = KeyTopic()
    pipeline = Pipeline([plan], keyring, config, audit_partitions=1, tokenizers=tokenizers(keyring, [plan]),
                        subject_keys=SubjectKeys(keyring, publisher=topic.publish))
    events = [RawEvent("visits.raw", 0, offset, 1_700_000_000_000, None, orjson.dumps(_raw(f"v-{offset}", "flu")),
                       None) for offset in (1, 2)]
    outputs = [r for r in pipeline.process(events).records if r.topic == "visits.sanitized"]
    reader = SanitizedReader(path.parent, keyring.path)
    first, second = outputs
    decoded = reader.decode(first.topic, first.value, first.headers)
    assert decoded.reason("diagnosis") == "decrypted" and decoded.value["diagnosis"] == "flu"
    assert reader.decode(first.topic, first.value, second.headers).reason("diagnosis") == "tampered"
    moved = orjson.dumps(dict(orjson.loads(first.value), diagnosis=orjson.loads(second.value)["diagnosis"]))
    assert reader.decode(first.topic, moved, first.headers).reason("diagnosis") == "tampered"
