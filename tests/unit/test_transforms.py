"""RecordSanitizer: minimize, tokenize, encrypt; and the round trip through decrypt_record."""

from __future__ import annotations

import datetime
import io
import os
import re
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.codec.raw import EventDecoder, load_schema_file, strip_logical_types
from gateway.core.codec.writer import avro_bytes, fast_record_encoder, json_bytes, plaintext_encoder
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.core.sanitizer import RecordSanitizer
from gateway.embedded.samples import CANARIES, SampleEvents
from gateway.errors import DecryptError, RejectedEvent
from gateway.keys import envelope
from gateway.keys.envelope import (
    Binding,
    DekCache,
    FieldDecryptor,
    RecordRef,
    context_bytes,
    parse_ciphertext,
    record_prefix,
)
from gateway.keys.keyring import Keyring
from gateway.keys.tokens import DomainTokenizer
from gateway.settings import GatewayConfig

TOKEN_RE = re.compile(r"^tok_v1_[A-Za-z0-9_-]{43}$")


def _sanitizer(pipeline: Pipeline, topic: str) -> RecordSanitizer:
    return pipeline.stages[topic].sanitizer


def _avro_decoded(plan: Plan, record: dict[str, Any]) -> dict[str, Any]:
    """The record as the pipeline sees it after decoding bare Avro (logical types applied)."""
    decoder = EventDecoder(plan.schema, "avro", None, 10_000_000)
    return decoder.decode(avro_bytes(plan.schema.parsed, record))[0]


def _sanitized_avro_round_trip(plan: Plan, record: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, plan.sanitized_parsed, record)
    buf.seek(0)
    return fastavro.schemaless_reader(buf, plan.sanitized_parsed, None)


# ---- minimization ------------------------------------------------------------------------------
def test_payment_keeps_only_planned_fields(pipeline: Pipeline, payments_plan: Plan) -> None:
    raw = SampleEvents(seed=1).payment(canary=True)
    out = _sanitizer(pipeline, "payments.raw").sanitize(raw).record
    assert "ip_address" not in out
    assert "user_agent" not in out
    assert "postal_code" not in out["billing_address"]
    assert out["amount_minor"] == raw["amount_minor"]
    assert out["merchant"] == raw["merchant"]
    assert out["billing_address"]["city"] == raw["billing_address"]["city"]
    assert isinstance(out["customer_name"], bytes)
    assert isinstance(out["billing_address"]["street"], bytes)
    assert set(out) == {f["name"] for f in payments_plan.sanitized_schema["fields"]}
    assert CANARIES["name"].encode() not in out["customer_name"]
    assert CANARIES["card"].encode() not in out["card_number"]
    # the result is valid against the sanitized schema
    assert _sanitized_avro_round_trip(payments_plan, out)["event_id"] == raw["event_id"]


def test_clinical_keeps_only_planned_fields(pipeline: Pipeline, clinical_plan: Plan) -> None:
    raw = SampleEvents(seed=2).clinical_visit(canary=True)
    out = _sanitizer(pipeline, "clinical.visits.raw").sanitize(raw).record
    for dropped in ("patient_name", "phone", "insurer_member_id"):
        assert dropped not in out
    assert "postal_code" not in out["clinic"]
    assert out["severity"] == raw["severity"]
    _sanitized_avro_round_trip(clinical_plan, out)


def test_sanitize_does_not_mutate_the_input(pipeline: Pipeline) -> None:
    raw = SampleEvents(seed=3).payment()
    before = orjson.dumps(raw)
    _sanitizer(pipeline, "payments.raw").sanitize(raw)
    assert orjson.dumps(raw) == before


# ---- tokens ------------------------------------------------------------------------------------
def test_tokens_are_deterministic_for_value_and_domain(pipeline: Pipeline) -> None:
    sanitizer = _sanitizer(pipeline, "payments.raw")
    a = SampleEvents(seed=4).payment()
    b = dict(SampleEvents(seed=5).payment(), user_id=a["user_id"], email=a["email"])
    out_a, out_b = sanitizer.sanitize(a), sanitizer.sanitize(b)
    assert out_a.record["user_id"] == out_b.record["user_id"]
    assert out_a.record["email"] == out_b.record["email"]
    assert out_a.record["user_id"] != out_a.record["email"]
    for token in (out_a.record["user_id"], out_a.record["email"]):
        assert TOKEN_RE.match(token), token
    other = dict(a, user_id=a["user_id"] + "x")
    assert sanitizer.sanitize(other).record["user_id"] != out_a.record["user_id"]


def test_subject_is_the_tokenized_subject(pipeline: Pipeline) -> None:
    raw = SampleEvents(seed=6).payment()
    result = _sanitizer(pipeline, "payments.raw").sanitize(raw)
    assert result.subject == result.record["user_id"]
    assert result.subject != raw["user_id"]


def test_same_email_gets_unlinkable_tokens_across_domains(pipeline: Pipeline) -> None:
    email = CANARIES["email"]
    payment = dict(SampleEvents(seed=7).payment(), email=email)
    visit = dict(SampleEvents(seed=7).clinical_visit(), email=email)
    token_customer = _sanitizer(pipeline, "payments.raw").sanitize(payment).record["email"]
    token_contact = _sanitizer(pipeline, "clinical.visits.raw").sanitize(visit).record["email"]
    assert TOKEN_RE.match(token_customer)
    assert TOKEN_RE.match(token_contact)
    assert token_customer != token_contact


def test_tokens_are_stable_across_pipelines_on_the_same_keyring(
        payments_plan: Plan, clinical_plan: Plan, keyring: Keyring, tmp_path: Path) -> None:
    raw = SampleEvents(seed=8).payment()
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="a")
    first = Pipeline([payments_plan], keyring, config, 3, tokenizers(keyring, [payments_plan]))
    reopened = Keyring.open(tmp_path / "k.json")
    second = Pipeline([payments_plan, clinical_plan], reopened, config, 3,
                      tokenizers(reopened, [payments_plan, clinical_plan]))
    assert (first.stages["payments.raw"].sanitizer.sanitize(raw).record["email"]
            == second.stages["payments.raw"].sanitizer.sanitize(raw).record["email"])


def test_null_optional_tokenized_field_stays_null(pipeline: Pipeline) -> None:
    visit = dict(SampleEvents(seed=9).clinical_visit(), email=None)
    assert _sanitizer(pipeline, "clinical.visits.raw").sanitize(visit).record["email"] is None


def test_token_key_ids_name_the_domains(pipeline: Pipeline) -> None:
    assert _sanitizer(pipeline, "payments.raw").token_key_ids == ("token:customer/v1",)
    assert _sanitizer(pipeline, "clinical.visits.raw").token_key_ids == ("token:contact/v1", "token:patient/v1")


# ---- encryption --------------------------------------------------------------------------------
def test_null_optional_encrypted_fields_stay_null(pipeline: Pipeline) -> None:
    payment = dict(SampleEvents(seed=10).payment(), card_expiry=None)
    out = _sanitizer(pipeline, "payments.raw").sanitize(payment).record
    assert out["card_expiry"] is None
    visit = dict(SampleEvents(seed=10).clinical_visit(), location=None,
                 procedures=[{"code": "99213", "notes": None}])
    out = _sanitizer(pipeline, "clinical.visits.raw").sanitize(visit).record
    assert out["location"] is None
    assert out["procedures"] == [{"code": "99213", "notes": None}]


def test_dek_key_id_reported_when_encrypting(pipeline: Pipeline, keyring: Keyring) -> None:
    result = _sanitizer(pipeline, "payments.raw").sanitize(SampleEvents(seed=12).payment())
    assert result.dek_key_id is not None
    assert result.dek_key_id.startswith(keyring.active_key_id() + "/")


def test_same_value_encrypts_differently_each_time(pipeline: Pipeline) -> None:
    raw = SampleEvents(seed=13).payment()
    sanitizer = _sanitizer(pipeline, "payments.raw")
    assert sanitizer.sanitize(raw).record["card_number"] != sanitizer.sanitize(raw).record["card_number"]


def test_nested_encrypted_field_in_array_of_records(pipeline: Pipeline, clinical_plan: Plan,
                                                    keyring: Keyring) -> None:
    visit = dict(SampleEvents(seed=14).clinical_visit(),
                 procedures=[{"code": "99213", "notes": "note one"}, {"code": "80053", "notes": None},
                             {"code": "93000", "notes": "note three"}])
    out = _sanitizer(pipeline, "clinical.visits.raw").sanitize(visit).record
    notes = [p["notes"] for p in out["procedures"]]
    assert isinstance(notes[0], bytes) and isinstance(notes[2], bytes)
    assert notes[1] is None
    assert b"note one" not in notes[0]
    assert [p["code"] for p in out["procedures"]] == ["99213", "80053", "93000"]
    opened, report = decrypt_record(out, clinical_plan, FieldDecryptor(keyring))
    assert report.ok
    assert report.fields["procedures[].notes"] == "decrypted"
    assert [p["notes"] for p in opened["procedures"]] == ["note one", None, "note three"]


# ---- size limits -------------------------------------------------------------------------------
@pytest.fixture
def small_pipeline(payments_plan: Plan, clinical_plan: Plan, keyring: Keyring, tmp_path: Path) -> Pipeline:
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t", max_field_bytes=100)
    return Pipeline([payments_plan, clinical_plan], keyring, config, 3,
                    tokenizers(keyring, [payments_plan, clinical_plan]))


@pytest.mark.parametrize("field,value", [("customer_name", "x" * 200),  # encrypt
                                         ("email", "y" * 200),  # tokenize
                                         ("country", "z" * 200)])  # keep
def test_field_too_large(small_pipeline: Pipeline, field: str, value: str) -> None:
    raw = dict(SampleEvents(seed=15).payment(), **{field: value})
    with pytest.raises(RejectedEvent) as excinfo:
        _sanitizer(small_pipeline, "payments.raw").sanitize(raw)
    assert excinfo.value.reason == "field_too_large"
    assert f"'{field}'" in excinfo.value.message
    assert value not in str(excinfo.value)


def test_field_at_the_limit_is_accepted(small_pipeline: Pipeline) -> None:
    raw = dict(SampleEvents(seed=15).payment(), country="z" * 100, email="e" * 100)
    out = _sanitizer(small_pipeline, "payments.raw").sanitize(raw).record
    assert out["country"] == "z" * 100


def test_nested_field_too_large_names_the_path(small_pipeline: Pipeline) -> None:
    raw = SampleEvents(seed=16).payment()
    raw["billing_address"] = dict(raw["billing_address"], street="s" * 300)
    with pytest.raises(RejectedEvent) as excinfo:
        _sanitizer(small_pipeline, "payments.raw").sanitize(raw)
    assert "'billing_address.street'" in excinfo.value.message


def test_field_limit_counts_utf8_bytes_for_kept_strings(small_pipeline: Pipeline) -> None:
    raw = dict(SampleEvents(seed=17).payment(), country="é" * 60)  # 60 characters, 120 bytes
    with pytest.raises(RejectedEvent):
        _sanitizer(small_pipeline, "payments.raw").sanitize(raw)


# ---- round trips through decrypt_record --------------------------------------------------------
PAYMENT_ENCRYPTED = ("customer_name", "card_number", "card_expiry", "billing_address.street")
CLINICAL_ENCRYPTED = ("date_of_birth", "diagnosis_codes", "procedures[].notes", "location")


def _get(record: dict[str, Any], path: str) -> Any:
    if path == "procedures[].notes":
        return [p["notes"] for p in record["procedures"]]
    value: Any = record
    for part in path.split("."):
        value = value[part]
    return value


@pytest.mark.parametrize("seed", range(5))
def test_payment_round_trip_restores_encrypted_fields(pipeline: Pipeline, payments_plan: Plan,
                                                       keyring: Keyring, seed: int) -> None:
    raw = SampleEvents(seed=seed).payment(canary=seed == 0)
    if seed == 1:
        raw["card_expiry"] = "12/29"
    decoded = _avro_decoded(payments_plan, raw)
    result = _sanitizer(pipeline, "payments.raw").sanitize(decoded)
    opened, report = decrypt_record(result.record, payments_plan, FieldDecryptor(keyring))
    assert report.ok, report.fields
    for path in PAYMENT_ENCRYPTED:
        assert _get(opened, path) == _get(raw, path), path
    expected_reported = {p for p in PAYMENT_ENCRYPTED if _get(raw, p) is not None}
    assert set(report.fields) == expected_reported


@pytest.mark.parametrize("seed", range(6))
def test_clinical_round_trip_restores_encrypted_fields(pipeline: Pipeline, clinical_plan: Plan,
                                                        keyring: Keyring, seed: int) -> None:
    raw = SampleEvents(seed=seed).clinical_visit(canary=seed == 0)
    raw["procedures"] = [{"code": "99213", "notes": f"note {seed}"}, {"code": "71046", "notes": None}]
    if seed % 2:
        raw["location"] = {"lat": 52.5, "lon": 13.4}
    decoded = _avro_decoded(clinical_plan, raw)
    result = _sanitizer(pipeline, "clinical.visits.raw").sanitize(decoded)
    opened, report = decrypt_record(result.record, clinical_plan, FieldDecryptor(keyring))
    assert report.ok, report.fields
    assert opened["date_of_birth"] == raw["date_of_birth"]  # days since epoch, as the Avro int
    assert opened["diagnosis_codes"] == raw["diagnosis_codes"]
    assert _get(opened, "procedures[].notes") == [f"note {seed}", None]
    assert opened["location"] == raw["location"]


def test_clinical_round_trip_from_raw_json_values(pipeline: Pipeline, clinical_plan: Plan,
                                                   keyring: Keyring) -> None:
    raw = dict(SampleEvents(seed=21).clinical_visit(), location={"lat": 40.1, "lon": -3.5})
    assert isinstance(raw["date_of_birth"], int)
    result = _sanitizer(pipeline, "clinical.visits.raw").sanitize(raw)
    opened, report = decrypt_record(result.record, clinical_plan, FieldDecryptor(keyring))
    assert report.ok
    assert opened["date_of_birth"] == raw["date_of_birth"]  # days since epoch, as the Avro int
    assert opened["location"] == {"lat": 40.1, "lon": -3.5}
    assert opened["diagnosis_codes"] == raw["diagnosis_codes"]


@pytest.mark.parametrize("via", ["avro", "json"])
def test_round_trip_through_sanitized_wire_encodings(pipeline: Pipeline, payments_plan: Plan,
                                                     keyring: Keyring, via: str) -> None:
    raw = dict(SampleEvents(seed=22).payment(canary=True), card_expiry="01/28")
    record = _sanitizer(pipeline, "payments.raw").sanitize(raw).record
    if via == "avro":
        on_wire = _sanitized_avro_round_trip(payments_plan, record)
    else:
        on_wire = orjson.loads(json_bytes(record))
        assert isinstance(on_wire["card_number"], str)  # base64 text
    opened, report = decrypt_record(on_wire, payments_plan, FieldDecryptor(keyring))
    assert report.ok
    assert opened["card_number"] == CANARIES["card"]
    assert opened["customer_name"] == CANARIES["name"]
    assert opened["card_expiry"] == "01/28"
    assert opened["billing_address"]["street"] == raw["billing_address"]["street"]


def test_decrypt_with_changed_subject_fails(pipeline: Pipeline, payments_plan: Plan, keyring: Keyring) -> None:
    a = SampleEvents(seed=23).payment()
    b = SampleEvents(seed=24).payment()
    assert a["user_id"] != b["user_id"]
    sanitizer = _sanitizer(pipeline, "payments.raw")
    out_a, out_b = sanitizer.sanitize(a).record, sanitizer.sanitize(b).record
    moved = dict(out_b, card_number=out_a["card_number"])
    opened, report = decrypt_record(moved, payments_plan, FieldDecryptor(keyring))
    assert not report.ok
    assert report.fields["card_number"].startswith("tampered")
    assert opened["card_number"] == out_a["card_number"]  # left as ciphertext
    assert report.fields["customer_name"] == "decrypted"


def test_decrypt_reports_malformed_field(pipeline: Pipeline, payments_plan: Plan, keyring: Keyring) -> None:
    record = _sanitizer(pipeline, "payments.raw").sanitize(SampleEvents(seed=25).payment()).record
    for bad in ("not base64!", b"\x01\x02"):
        _, report = decrypt_record(dict(record, card_number=bad), payments_plan, FieldDecryptor(keyring))
        assert report.fields["card_number"].startswith("malformed")


def test_sanitizer_constructed_directly(payments_plan: Plan, keyring: Keyring) -> None:
    tokenizer = DomainTokenizer("customer", "3", b"\x01" * 32)
    deks = DekCache(keyring, 60, 10)
    sanitizer = RecordSanitizer(payments_plan, {"customer": tokenizer}, deks, max_field_bytes=1000)
    raw = SampleEvents(seed=26).payment()
    result = sanitizer.sanitize(raw)
    assert result.record["email"] == tokenizer.token(raw["email"])
    assert result.record["email"].startswith("tok_v3_")
    assert result.subject == tokenizer.token(raw["user_id"])
    assert sanitizer.token_key_ids == ("token:customer/v3",)
    assert deks.kms_calls == 1


@pytest.mark.parametrize(("tampered", "intact"), [(1, 0), (0, 1)], ids=["last", "earlier"])
def test_decrypt_report_flags_a_tampered_array_element(pipeline: Pipeline, clinical_plan: Plan, keyring: Keyring,
                                                       tampered: int, intact: int) -> None:
    """Either element of an array tampered: reported, left as ciphertext, the other still opened."""
    notes = ["first", "second"]
    visit = dict(SampleEvents(seed=27).clinical_visit(),
                 procedures=[{"code": "1", "notes": notes[0]}, {"code": "2", "notes": notes[1]}])
    record = _sanitizer(pipeline, "clinical.visits.raw").sanitize(visit).record
    altered = bytearray(record["procedures"][tampered]["notes"])
    altered[-1] ^= 1
    record["procedures"][tampered]["notes"] = bytes(altered)
    opened, report = decrypt_record(record, clinical_plan, FieldDecryptor(keyring))
    assert not report.ok
    assert report.fields["procedures[].notes"].startswith("tampered")
    assert isinstance(opened["procedures"][tampered]["notes"], bytes)  # left as ciphertext
    assert opened["procedures"][intact]["notes"] == notes[intact]


def _union_plan(write_schema: Any, inner_action: str) -> Plan:
    schema = {"type": "record", "name": "Ev", "namespace": "ex.union", "privacy": {"source_topic": "ev.raw"},
              "fields": [
                  {"name": "id", "type": "string", "privacy": "keep"},
                  {"name": "contact", "privacy": "keep", "type": ["null", "string", {
                      "type": "record", "name": "Contact", "fields": [
                          {"name": "email", "type": "string", "privacy": inner_action},
                          {"name": "kind", "type": "string", "privacy": "keep"}]}]}]}
    return compile_plan(load_schema_file(write_schema(schema, name=f"union_{inner_action}.avsc")))


def test_kept_union_with_a_record_branch_sanitizes_records(write_schema: Any, keyring: Keyring,
                                                           tmp_path: Path) -> None:
    plan = _union_plan(write_schema, "drop")
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    out = pipeline.stages["ev.raw"].sanitizer.sanitize({"id": "1", "contact": {"email": "a@b", "kind": "x"}})
    assert out.record["contact"] == {"kind": "x"}


def test_kept_union_with_a_record_branch_keeps_a_string_value(write_schema: Any, keyring: Keyring,
                                                              tmp_path: Path) -> None:
    plan = _union_plan(write_schema, "drop")
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    out = pipeline.stages["ev.raw"].sanitizer.sanitize({"id": "1", "contact": "call the front desk"})
    assert out.record["contact"] == "call the front desk"


def test_encrypt_inside_a_union_record_branch_compiles(write_schema: Any) -> None:
    plan = _union_plan(write_schema, "encrypt")
    assert plan.field_actions["contact.email"] == "encrypt"


# ---- the compiled per-event path -----------------------------------------------------------------
def test_ciphertexts_are_v1_bound_by_v5_to_topic_path_subject_and_event(pipeline: Pipeline, payments_plan: Plan,
                                                                         keyring: Keyring) -> None:
    sanitizer = _sanitizer(pipeline, "payments.raw")
    raw = dict(SampleEvents(seed=30).payment(), card_expiry="02/29")
    result = sanitizer.sanitize(raw)
    key = pipeline.dek_cache.current()
    decryptor = FieldDecryptor(keyring)
    ref = RecordRef(event_id=raw["event_id"])
    for path in PAYMENT_ENCRYPTED:
        ciphertext = _get(result.record, path)
        parsed = parse_ciphertext(ciphertext)
        assert parsed.version == 1 and parsed.binding == Binding.EVENT_ID  # a v1 key, record-bound (v5)
        assert parsed.header == record_prefix(Binding.EVENT_ID) + key.header  # what encrypt_field writes
        assert len(ciphertext) == 2 + len(key.header) + 12 + len(plaintext_encoder("string")(_get(raw, path))) + 16
        context = context_bytes(payments_plan.sanitized_topic, path, result.subject)
        assert decryptor.decrypt(ciphertext, context, result.subject, ref) == \
            plaintext_encoder("string")(_get(raw, path))
        with pytest.raises(DecryptError):
            decryptor.decrypt(ciphertext, context_bytes(payments_plan.sanitized_topic, path, "someone else"), "", ref)
        with pytest.raises(DecryptError):  # another event's record
            decryptor.decrypt(ciphertext, context, result.subject, RecordRef(event_id="another-event"))
    assert result.dek_key_id == key.key_id


def test_one_dek_lookup_and_one_subject_token_per_event(pipeline: Pipeline, monkeypatch) -> None:
    sanitizer = _sanitizer(pipeline, "payments.raw")
    lookups, tokens = [], []
    current, token = pipeline.dek_cache.current, sanitizer._tokenizers["customer"].token
    monkeypatch.setattr(pipeline.dek_cache, "current", lambda: lookups.append(1) or current())
    rebuilt = RecordSanitizer(sanitizer.plan, {"customer": _CountingTokenizer(token, tokens)}, pipeline.dek_cache,
                              max_field_bytes=1000)
    raw = dict(SampleEvents(seed=31).payment(), card_expiry="03/28")  # four encrypted fields
    result = rebuilt.sanitize(raw)
    assert len(lookups) == 1
    assert tokens == [raw["user_id"], raw["email"]]  # the subject (user_id) is tokenized once
    assert result.record["user_id"] == result.subject == token(raw["user_id"])


class _CountingTokenizer:
    def __init__(self, token: Any, calls: list[str]) -> None:
        self._token, self._calls, self.key_id = token, calls, "token:customer/v1"

    def token(self, value: str) -> str:
        self._calls.append(value)
        return self._token(value)  # type: ignore[no-any-return]


def test_an_event_never_uses_a_dek_beyond_max_uses(payments_plan: Plan, keyring: Keyring) -> None:
    deks = DekCache(keyring, 3600, 3)
    sanitizer = RecordSanitizer(payments_plan, {"customer": DomainTokenizer("customer", "1", b"\x02" * 32)}, deks,
                                max_field_bytes=1000)
    records = [sanitizer.sanitize(dict(SampleEvents(seed=32 + i).payment(), card_expiry="04/28")).record
               for i in range(3)]  # 3 events x 4 encrypted fields: 12 uses, 4 DEKs of 3
    dek_ids = [parse_ciphertext(_get(r, p)).dek_id for r in records for p in PAYMENT_ENCRYPTED]
    assert [dek_ids.count(d) for d in dict.fromkeys(dek_ids)] == [3, 3, 3, 3]
    assert deks.kms_calls == 4
    decryptor = FieldDecryptor(keyring)
    for record in records:
        assert decrypt_record(record, payments_plan, decryptor)[1].ok


def test_nonces_are_unique_across_events(pipeline: Pipeline) -> None:
    sanitizer = _sanitizer(pipeline, "payments.raw")
    raw = SampleEvents(seed=33).payment()
    nonces = [parse_ciphertext(sanitizer.sanitize(raw).record["card_number"]).nonce for _ in range(1000)]
    assert len(set(nonces)) == 1000 and all(len(n) == 12 for n in nonces)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_repeat_the_parents_nonces() -> None:
    envelope.NONCES.forget()
    envelope.NONCES.next()  # the parent holds drawn, unused nonces
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, envelope.NONCES.next())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 12)
    os.close(read)
    os.close(write)
    assert len(child) == 12 and child != envelope.NONCES.next()


def test_sanitized_fields_follow_the_sanitized_schema_order(pipeline: Pipeline, payments_plan: Plan,
                                                            clinical_plan: Plan) -> None:
    for plan, raw in ((payments_plan, SampleEvents(seed=34).payment()),
                      (clinical_plan, SampleEvents(seed=34).clinical_visit())):
        out = _sanitizer(pipeline, plan.source_topic).sanitize(raw).record
        assert list(out) == [f["name"] for f in plan.sanitized_schema["fields"]]
    assert list(out["clinic"]) == ["clinic_id", "region"]


def test_kept_fields_know_their_avro_type(payments_plan: Plan, clinical_plan: Plan) -> None:
    kinds = {f.name: f.operator.kind for f in payments_plan.record.fields if f.action == "keep"}
    assert kinds == {"event_id": "string", "occurred_at": "long", "amount_minor": "long", "currency": "enum",
                     "country": "string", "billing_address": "record", "merchant": "record"}
    kinds = {f.name: f.operator.kind for f in clinical_plan.record.fields if f.action == "keep"}
    assert kinds["procedures"] == "array" and kinds["severity"] == "enum" and kinds["clinic"] == "record"


def test_kept_union_value_is_size_checked_by_value(write_schema: Any, keyring: Keyring, tmp_path: Path) -> None:
    plan = _union_plan(write_schema, "keep")
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t", max_field_bytes=20)
    sanitizer = Pipeline([plan], keyring, config, 1, tokenizers(keyring, [plan])).stages["ev.raw"].sanitizer
    assert sanitizer.sanitize({"id": "1", "contact": "short"}).record["contact"] == "short"
    for contact in ("x" * 21, {"email": "e" * 21, "kind": "k"}):
        with pytest.raises(RejectedEvent) as excinfo:
            sanitizer.sanitize({"id": "1", "contact": contact})
        assert excinfo.value.reason == "field_too_large"


def test_kept_record_with_every_field_dropped_is_an_empty_record(write_schema: Any, keyring: Keyring,
                                                                tmp_path: Path) -> None:
    schema = {"type": "record", "name": "Ev", "namespace": "ex.empty", "privacy": {"source_topic": "ev.raw"},
              "fields": [{"name": "id", "type": "long", "privacy": "keep"},
                         {"name": "inner", "privacy": "keep", "type": {"type": "record", "name": "Inner", "fields": [
                             {"name": "secret", "type": "string", "privacy": "drop"}]}}]}
    plan = compile_plan(load_schema_file(write_schema(schema, name="empty.avsc")))
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    out = pipeline.stages["ev.raw"].sanitizer.sanitize({"id": 7, "inner": {"secret": "s"}}).record
    assert out == {"id": 7, "inner": {}}
    _sanitized_avro_round_trip(plan, out)


@pytest.mark.parametrize("parsed,values", [
    ("string", ["", "a", "é" * 40, "x" * 63, "x" * 64, "x" * 1023, "x" * 1024, "x" * 5000]),
    ("bytes", [b"", b"\x00" * 64, b"z" * 2000]),
    ("int", [0, 1, -1, 63, 64, -64, -65, 1023, 1024, 2**31 - 1, -2**31]),
    ("long", [2**63 - 1, -2**63, 500, -500]),
    ("double", [0.0, -1.5, 1e308, 7]),
    ("float", [0.0, 3.25, -2]),
    ("boolean", [True, False]),
    ({"type": "int", "logicalType": "date"}, [0, 20_000, -1]),
    (["null", "string"], [None, "", "é" * 700]),
    (["string", "null"], [None, "x"]),
    (["null", {"type": "record", "name": "GeoPoint", "fields": [{"name": "lat", "type": "double"},
                                                              {"name": "lon", "type": "double"}]}],
     [None, {"lat": 52.5, "lon": 13.4}, {"lat": 1, "lon": -2.0}]),
    ({"type": "array", "items": "string"}, [[], ["A01"], ["x" * 2000] * 3, ["a"] * 1500]),
    ({"type": "array", "items": ["null", "long"]}, [[None, 5, -(2**40)]]),
    ({"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"},
                                                {"name": "b", "type": ["null", "int"], "default": None}]},
     [{"a": "x", "b": 1}, {"a": "y"}]),  # a missing key with a default: fastavro's writer decides
    ({"type": "map", "values": "string"}, [{"k": "v"}, {}]),  # no shortcut: fastavro's writer
])
def test_plaintext_encoders_match_fastavro(parsed: Any, values: list[Any]) -> None:
    encode = plaintext_encoder(fastavro.parse_schema(strip_logical_types(parsed)))
    schema = fastavro.parse_schema(parsed)
    for value in values:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, value)
        assert encode(value) == buffer.getvalue(), value


def _fastavro_bytes(parsed: Any, record: Any) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    return buffer.getvalue()


def test_the_sanitized_record_encoder_is_fastavros_bytes_for_every_shipped_schema(tmp_path: Path) -> None:
    """The shortcut covers the shipped schemas (else their speed-up is void) and writes exactly what
    fastavro's writer does, for sanitized records of generated events of every encoding."""
    from gateway.core.policy.lint import load_plans
    from gateway.embedded.demo import encode_raw, sample_sources

    plans = load_plans(Path(__file__).resolve().parents[2] / "schemas")
    ring = Keyring.open(tmp_path / "k.json")
    pipeline = Pipeline(plans, ring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(ring, plans))
    sources = sample_sources(plans, SampleEvents(seed=11))
    for plan in plans:
        stage, source = pipeline.stages[plan.source_topic], sources[plan.source_topic]
        writer = fast_record_encoder(plan.sanitized_parsed)
        assert writer is not None, plan.name
        for i in range(150):
            value = encode_raw(plan, source.make(canary=i % 7 == 0), source.encodings[i % len(source.encodings)])
            record, encoding, _ = stage.decoder.decode_event(value)
            sanitized = stage.sanitizer.sanitize(record).record
            expected = _fastavro_bytes(plan.sanitized_parsed, sanitized)
            assert writer(sanitized) == expected, (plan.name, i)  # taken by the shortcut, not deferred
            out, _ = stage.encode(sanitized, "avro")
            assert out == expected, (plan.name, i)


_COVERED = {"type": "record", "name": "Covered", "fields": [
    {"name": "s", "type": "string"}, {"name": "b", "type": "bytes"}, {"name": "i", "type": "int"},
    {"name": "l", "type": {"type": "long", "logicalType": "timestamp-millis"}}, {"name": "d", "type": "double"},
    {"name": "f", "type": "float"}, {"name": "t", "type": "boolean"},
    {"name": "e", "type": {"type": "enum", "name": "Level", "symbols": ["LOW", "HIGH"]}},
    {"name": "again", "type": "Level"},  # a named type used a second time
    {"name": "o", "type": ["null", {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "long"}]}]},
    {"name": "a", "type": {"type": "array", "items": "Inner"}},
    {"name": "ob", "type": ["null", "bytes"]}, {"name": "bo", "type": ["bytes", "null"]},
    {"name": "os", "type": ["null", "string"]}]}
_VALID = {"s": "é", "b": b"\x00\x01", "i": -3, "l": 1_790_000_000_000, "d": 2.5, "f": 1.5, "t": True, "e": "HIGH",
          "again": "LOW", "o": {"x": 9}, "a": [{"x": 1}, {"x": -(2**40)}], "ob": b"\x07" * 2000, "bo": None,
          "os": "x"}


@pytest.mark.parametrize("change", [
    {},
    {"o": None, "a": [], "t": False, "d": 3},
    {"ob": None, "bo": b"", "os": None, "s": "z" * 1500, "i": 2**31 - 1},
    {"ob": "text"},  # not bytes: fastavro's writer raises
    {"l": 5.0},  # a float in a long: fastavro's writer decides
    {"l": datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)},  # a logical type's Python value
    {"o": {}},  # a nested record's field missing: fastavro's writer decides (it raises or uses a default)
    {"e": "MEDIUM"},  # not a symbol: fastavro's writer raises
])
def test_the_record_encoder_matches_fastavro_or_defers_to_it(change: dict[str, Any]) -> None:
    """Where the shortcut takes a value it writes fastavro's bytes; where it does not (a logical type's
    Python value, a missing key, an unknown symbol) it raises, and the caller's fastavro writer decides."""
    parsed = fastavro.parse_schema(_COVERED)
    encode = fast_record_encoder(parsed)
    assert encode is not None
    record = _VALID | change
    try:
        expected: bytes | None = _fastavro_bytes(parsed, record)
    except Exception:  # noqa: BLE001 - fastavro refuses it too
        expected = None
    try:
        got: bytes | None = encode(record)
    except Exception:  # noqa: BLE001 - deferred to fastavro
        got = None
    assert got == expected or got is None
    if not change:
        assert got is not None  # the plain valid record does take the shortcut


def test_types_the_record_encoder_does_not_cover_leave_fastavro_in_charge() -> None:
    for field_type in ({"type": "map", "values": "string"}, {"type": "fixed", "name": "F", "size": 4},
                       ["null", "string", "long"]):
        schema = {"type": "record", "name": "R", "fields": [{"name": "v", "type": field_type}]}
        assert fast_record_encoder(fastavro.parse_schema(schema)) is None, field_type
