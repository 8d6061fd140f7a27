"""Policy compilation: the sanitized schema, lint problems and the compiled plan."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan, policy_hash
from gateway.core.policy.lint import lint_directory, lint_file, load_plans
from gateway.core.policy.plan import Problem
from gateway.errors import PolicyError
from gateway.keys.envelope import FieldDecryptor
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig


def _fields(record_schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in record_schema["fields"]}


def _base(**privacy: Any) -> dict[str, Any]:
    """A small valid annotated schema; tests add or change fields."""
    settings = {"source_topic": "things.raw", "subject": "uid"}
    settings.update(privacy)
    return {
        "type": "record", "name": "Thing", "namespace": "ex.things", "privacy": settings,
        "fields": [
            {"name": "uid", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
            {"name": "n", "type": "long", "privacy": "keep"},
        ],
    }


def _with_field(field: dict[str, Any], **privacy: Any) -> dict[str, Any]:
    schema = _base(**privacy)
    schema["fields"].append(field)
    return schema


def _only(problems: list[Problem], severity: str) -> list[Problem]:
    return [p for p in problems if p.severity == severity]


# ---- the example schemas ------------------------------------------------------------------
@pytest.mark.parametrize("plan_fixture", ["payments_plan", "clinical_plan"])
def test_sanitized_schema_is_valid_avro(plan_fixture: str, request: pytest.FixtureRequest) -> None:
    plan = request.getfixturevalue(plan_fixture)
    parsed = fastavro.parse_schema(copy.deepcopy(plan.sanitized_schema))
    assert parsed["name"] == plan.sanitized_schema["name"]
    assert ".sanitized." in plan.sanitized_schema["name"]
    # and it survives a JSON round trip (what `policy show` prints is what consumers register)
    fastavro.parse_schema(json.loads(json.dumps(plan.sanitized_schema)))


def test_payments_sanitized_schema_shape(payments_plan) -> None:
    top = _fields(payments_plan.sanitized_schema)
    assert payments_plan.sanitized_schema["name"] == "example.payments.sanitized.Payment"
    for dropped in ("ip_address", "user_agent"):
        assert dropped not in top
    assert top["user_id"]["type"] == "string"
    assert top["email"]["type"] == "string"
    assert top["customer_name"]["type"] == "bytes"
    assert top["card_number"]["type"] == "bytes"
    assert top["card_expiry"]["type"] == ["null", "bytes"]
    assert top["card_expiry"]["default"] is None
    assert top["amount_minor"]["type"] == "long"
    billing = top["billing_address"]["type"]
    assert billing["name"] == "example.payments.sanitized.Address"
    assert set(_fields(billing)) == {"street", "city", "country"}  # postal_code dropped
    assert _fields(billing)["street"]["type"] == "bytes"
    assert top["merchant"]["type"]["name"] == "example.payments.sanitized.Merchant"
    assert payments_plan.field_actions["billing_address.postal_code"] == "drop"
    assert payments_plan.field_actions["user_agent"] == "drop"
    assert payments_plan.token_domains == frozenset({"customer"})
    assert payments_plan.dlq_topic == "payments.raw.dlq"


def test_clinical_sanitized_schema_shape(clinical_plan) -> None:
    top = _fields(clinical_plan.sanitized_schema)
    for dropped in ("patient_name", "phone", "insurer_member_id"):
        assert dropped not in top
    assert top["patient_id"]["type"] == "string"
    assert top["email"]["type"] == ["null", "string"]
    assert top["date_of_birth"]["type"] == "bytes"
    assert top["diagnosis_codes"]["type"] == "bytes"
    assert top["location"]["type"] == ["null", "bytes"]
    procedure = top["procedures"]["type"]["items"]
    assert procedure["name"] == "example.clinical.sanitized.Procedure"
    assert _fields(procedure)["notes"]["type"] == ["null", "bytes"]
    assert _fields(procedure)["code"]["type"] == "string"
    clinic = top["clinic"]["type"]
    assert clinic["name"] == "example.clinical.sanitized.Clinic"
    assert "postal_code" not in _fields(clinic)
    assert clinical_plan.token_domains == frozenset({"patient", "contact"})
    assert clinical_plan.event_id_field == "visit_id"
    assert clinical_plan.subject_tokenized is True


def test_example_directory_loads_with_only_the_user_agent_warning(schemas_dir: Path) -> None:
    problems = lint_directory(schemas_dir)
    assert not _only(problems, "error")
    warnings = _only(problems, "warning")
    assert [(Path(w.schema).name, w.where) for w in warnings] == [("payments.avsc", "user_agent")]
    plans = load_plans(schemas_dir)
    assert sorted(p.source_topic for p in plans) == ["clinical.visits.raw", "payments.raw"]


def test_sanitized_record_round_trips_through_sanitized_schema(payments_plan) -> None:
    record = {
        "event_id": "e1", "occurred_at": 1_790_000_000_000, "user_id": "tok", "email": "tok",
        "customer_name": b"\x01", "card_number": b"\x02", "card_expiry": None, "amount_minor": 5,
        "currency": "EUR", "country": "DE",
        "billing_address": {"street": b"\x03", "city": "Berlin", "country": "DE"},
        "merchant": {"merchant_id": "m", "category": "books"},
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, payments_plan.sanitized_parsed, record)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, payments_plan.sanitized_parsed, None)
    assert back["billing_address"] == record["billing_address"]
    assert back["customer_name"] == b"\x01"


# ---- lint problems -------------------------------------------------------------------------
def test_valid_base_schema_has_no_problems(write_schema) -> None:
    assert lint_file(write_schema(_base())) == []


def test_unannotated_field_is_a_warning_and_dropped(write_schema) -> None:
    path = write_schema(_with_field({"name": "hidden", "type": "string"}))
    problems = lint_file(path)
    assert [(p.severity, p.where) for p in problems] == [("warning", "hidden")]
    assert "no privacy annotation" in problems[0].message
    plan = compile_plan(load_schema_file(path))
    assert "hidden" not in _fields(plan.sanitized_schema)
    assert plan.field_actions["hidden"] == "drop"
    assert [w.where for w in plan.warnings] == ["hidden"]


@pytest.mark.parametrize("annotation", ["hash", {"scramble": {}}, ["keep"]])
def test_unknown_action_is_an_error(write_schema, annotation: Any) -> None:
    problems = lint_file(write_schema(_with_field({"name": "x", "type": "string", "privacy": annotation})))
    errors = _only(problems, "error")
    assert len(errors) == 1
    assert errors[0].where == "x"
    if not isinstance(annotation, list):
        assert "unknown action" in errors[0].message


@pytest.mark.parametrize("annotation", ["tokenize", {"tokenize": {}}, {"tokenize": {"domain": "Bad Domain"}},
                                        {"tokenize": {"domain": 7}}])
def test_tokenize_needs_a_valid_domain(write_schema, annotation: Any) -> None:
    problems = lint_file(write_schema(_with_field({"name": "mail", "type": "string", "privacy": annotation})))
    errors = _only(problems, "error")
    assert [(e.where, "tokenize needs a domain" in e.message) for e in errors] == [("mail", True)]


@pytest.mark.parametrize("ftype", ["long", ["null", "int"], "bytes", {"type": "array", "items": "string"}])
def test_tokenize_on_a_non_string_is_an_error(write_schema, ftype: Any) -> None:
    field = {"name": "num", "type": ftype, "privacy": {"tokenize": {"domain": "customer"}}}
    errors = _only(lint_file(write_schema(_with_field(field))), "error")
    assert len(errors) == 1
    assert errors[0].where == "num"
    assert "tokenize applies to strings" in errors[0].message


def test_tokenize_on_a_nullable_string_is_fine(write_schema) -> None:
    field = {"name": "mail", "type": ["null", "string"], "default": None,
             "privacy": {"tokenize": {"domain": "contact"}}}
    path = write_schema(_with_field(field))
    assert lint_file(path) == []
    plan = compile_plan(load_schema_file(path))
    assert _fields(plan.sanitized_schema)["mail"]["type"] == ["null", "string"]
    assert plan.token_domains == frozenset({"customer", "contact"})


def test_subject_field_missing(write_schema) -> None:
    errors = _only(lint_file(write_schema(_base(subject="nope"))), "error")
    assert len(errors) == 1
    assert "'nope' does not exist" in errors[0].message


def test_subject_field_dropped(write_schema) -> None:
    schema = _with_field({"name": "owner", "type": "string", "privacy": "drop"}, subject="owner")
    errors = _only(lint_file(write_schema(schema)), "error")
    assert [e.where for e in errors] == ["owner"]
    assert "dropped" in errors[0].message


def test_subject_field_unannotated_counts_as_dropped(write_schema) -> None:
    schema = _with_field({"name": "owner", "type": "string"}, subject="owner")
    problems = lint_file(write_schema(schema))
    assert [(p.severity, p.where) for p in problems] == [("warning", "owner"), ("error", "owner")]


def test_subject_field_encrypted(write_schema) -> None:
    schema = _with_field({"name": "owner", "type": "string", "privacy": "encrypt"}, subject="owner")
    errors = _only(lint_file(write_schema(schema)), "error")
    assert [e.where for e in errors] == ["owner"]
    assert "kept or tokenized (its action is 'encrypt')" in errors[0].message


def test_subject_field_record_is_an_error(write_schema) -> None:
    field = {"name": "owner", "privacy": "keep", "type": {
        "type": "record", "name": "Owner", "fields": [{"name": "id", "type": "string", "privacy": "keep"}]}}
    errors = _only(lint_file(write_schema(_with_field(field, subject="owner"))), "error")
    assert [e.where for e in errors] == ["owner"]
    assert "not a record" in errors[0].message


def test_unknown_record_level_setting(write_schema) -> None:
    errors = _only(lint_file(write_schema(_base(retention="7d"))), "error")
    assert [e.where for e in errors] == ["(record)"]
    assert "unknown privacy setting 'retention'" in errors[0].message


def test_schema_id_without_sanitized_schema_id(write_schema) -> None:
    errors = _only(lint_file(write_schema(_base(schema_id=5))), "error")
    assert len(errors) == 1
    assert "sanitized_schema_id" in errors[0].message
    # with JSON or bare Avro output, no sanitized id is needed
    assert lint_file(write_schema(_base(schema_id=5, output="avro"))) == []
    assert lint_file(write_schema(_base(schema_id=5, sanitized_schema_id=6))) == []


def test_confluent_input_needs_schema_id(write_schema) -> None:
    errors = _only(lint_file(write_schema(_base(input="confluent"))), "error")
    assert len(errors) == 1
    assert "needs schema_id" in errors[0].message


@pytest.mark.parametrize("settings", [{"input": "xml"}, {"output": "protobuf"}, {"schema_id": -1},
                                      {"schema_id": True, "sanitized_schema_id": 2},
                                      {"source_topic": "bad topic"}, {"sanitized_topic": "things.raw"}])
def test_invalid_record_settings(write_schema, settings: dict[str, Any]) -> None:
    errors = _only(lint_file(write_schema(_base(**settings))), "error")
    assert errors
    assert all(e.where == "(record)" for e in errors)


def test_per_subject_encrypt_needs_a_tokenized_subject(write_schema) -> None:
    field = {"name": "x", "type": "string", "privacy": {"encrypt": {"per_subject": True}}}
    assert not _only(lint_file(write_schema(_with_field(field))), "error")  # uid is tokenized
    schema = _with_field(field)
    schema["fields"][0]["privacy"] = "keep"
    errors = _only(lint_file(write_schema(schema)), "error")
    assert [e.where for e in errors] == ["x"]
    assert "per_subject encryption needs a tokenized subject" in errors[0].message


def test_unknown_encrypt_option(write_schema) -> None:
    field = {"name": "x", "type": "string", "privacy": {"encrypt": {"algorithm": "des"}}}
    errors = _only(lint_file(write_schema(_with_field(field))), "error")
    assert [e.where for e in errors] == ["x"]
    assert "unknown encrypt option(s) ['algorithm']" in errors[0].message


def test_no_record_level_privacy_block(write_schema) -> None:
    schema = _base()
    del schema["privacy"]
    errors = _only(lint_file(write_schema(schema)), "error")
    assert [e.where for e in errors] == ["(record)"]
    assert "no record-level" in errors[0].message


def test_union_of_several_records_cannot_be_kept(write_schema) -> None:
    field = {"name": "either", "privacy": "keep", "type": [
        {"type": "record", "name": "A", "fields": [{"name": "a", "type": "string", "privacy": "keep"}]},
        {"type": "record", "name": "B", "fields": [{"name": "b", "type": "string", "privacy": "keep"}]}]}
    errors = _only(lint_file(write_schema(_with_field(field))), "error")
    assert [e.where for e in errors] == ["either"]


def test_file_that_is_not_a_schema(tmp_path: Path) -> None:
    path = tmp_path / "broken.avsc"
    path.write_text("{not json")
    problems = lint_file(path)
    assert [(p.severity, p.where) for p in problems] == [("error", "(file)")]


def test_duplicate_source_topic_across_files(write_schema) -> None:
    write_schema(_base(), name="a.avsc")
    other = _base()
    other["name"] = "Other"
    b = write_schema(other, name="b.avsc")
    problems = lint_directory(b.parent)
    errors = _only(problems, "error")
    assert len(errors) == 1
    assert errors[0].schema == str(b)
    assert "source_topic 'things.raw' is also claimed by" in errors[0].message
    assert "a.avsc" in errors[0].message
    with pytest.raises(PolicyError, match="also claimed"):
        load_plans(b.parent)


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    problems = lint_directory(tmp_path)
    assert [p.severity for p in problems] == ["error"]
    assert "no *.avsc" in problems[0].message


def test_compile_plan_error_names_schema_path_and_field(write_schema) -> None:
    field = {"name": "card_pin", "type": "long", "privacy": {"tokenize": {"domain": "customer"}}}
    path = write_schema(_with_field(field), name="thing.avsc")
    with pytest.raises(PolicyError) as excinfo:
        compile_plan(load_schema_file(path))
    message = str(excinfo.value)
    assert str(path) in message
    assert "card_pin" in message
    assert "tokenize applies to strings" in message


def test_compile_plan_lists_every_error(write_schema) -> None:
    schema = _base(retention="x")
    schema["fields"] += [{"name": "a", "type": "long", "privacy": "tokenize"},
                         {"name": "b", "type": "string", "privacy": "shred"}]
    with pytest.raises(PolicyError) as excinfo:
        compile_plan(load_schema_file(write_schema(schema)))
    message = str(excinfo.value)
    assert "retention" in message
    assert ": a: " in message
    assert ": b: " in message


# ---- policy hash ----------------------------------------------------------------------------
def test_policy_hash_changes_when_an_annotation_changes(write_schema) -> None:
    keep = _with_field({"name": "x", "type": "string", "privacy": "keep"})
    encrypt = _with_field({"name": "x", "type": "string", "privacy": "encrypt"})
    plan_keep = compile_plan(load_schema_file(write_schema(keep, name="keep.avsc")))
    plan_encrypt = compile_plan(load_schema_file(write_schema(encrypt, name="encrypt.avsc")))
    assert plan_keep.policy_hash != plan_encrypt.policy_hash
    assert plan_keep.policy_hash.startswith("sha256:")
    # independent of key order in the file
    reordered = dict(reversed(list(keep.items())))
    assert policy_hash(reordered) == plan_keep.policy_hash


def test_policy_hash_changes_with_the_tokenize_domain(write_schema) -> None:
    a = _with_field({"name": "x", "type": "string", "privacy": {"tokenize": {"domain": "one"}}})
    b = _with_field({"name": "x", "type": "string", "privacy": {"tokenize": {"domain": "two"}}})
    assert policy_hash(a) != policy_hash(b)


# ---- named types used more than once -------------------------------------------------------
def _order_schema() -> dict[str, Any]:
    return {
        "type": "record", "name": "Order", "namespace": "ex.orders",
        "privacy": {"source_topic": "orders.raw", "subject": "uid"},
        "fields": [
            {"name": "uid", "type": "string", "privacy": "keep"},
            {"name": "billing", "privacy": "keep", "type": {
                "type": "record", "name": "Address", "fields": [
                    {"name": "street", "type": "string", "privacy": "encrypt"},
                    {"name": "postal_code", "type": "string", "privacy": "drop"},
                    {"name": "city", "type": "string", "privacy": "keep"}]}},
            {"name": "shipping", "privacy": "keep", "type": "Address"},
            {"name": "previous", "privacy": "keep", "type": {"type": "array", "items": "Address"}},
        ],
    }


def test_named_type_used_twice_derives_valid_sanitized_schema(write_schema) -> None:
    plan = compile_plan(load_schema_file(write_schema(_order_schema())))
    parsed = fastavro.parse_schema(copy.deepcopy(plan.sanitized_schema))
    record = {"uid": "u1", "billing": {"street": b"\x01", "city": "A"},
              "shipping": {"street": b"\x02", "city": "B"}, "previous": [{"street": b"\x03", "city": "C"}]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    buf.seek(0)
    assert fastavro.schemaless_reader(buf, parsed, None) == record
    top = _fields(plan.sanitized_schema)
    assert top["billing"]["type"]["name"] == "ex.orders.sanitized.Address"
    assert top["shipping"]["type"] == "ex.orders.sanitized.Address"
    assert top["previous"]["type"]["items"] == "ex.orders.sanitized.Address"


def test_named_type_used_twice_binds_each_use_to_its_own_path(write_schema) -> None:
    plan = compile_plan(load_schema_file(write_schema(_order_schema())))
    assert plan.field_actions.get("shipping.street") == "encrypt"
    assert plan.field_actions.get("shipping.postal_code") == "drop"


def test_ciphertext_moved_between_uses_of_a_named_type_fails(write_schema, tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(write_schema(_order_schema())))
    ring = Keyring.open(tmp_path / "k.json")
    pipeline = Pipeline([plan], ring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 3,
                        tokenizers(ring, [plan]))
    sanitized = pipeline.stages["orders.raw"].sanitizer.sanitize({
        "uid": "u1", "billing": {"street": "1 Bill St", "postal_code": "1", "city": "A"},
        "shipping": {"street": "2 Ship St", "postal_code": "2", "city": "B"}, "previous": []}).record
    moved = dict(sanitized, billing=dict(sanitized["billing"], street=sanitized["shipping"]["street"]))
    _, report = decrypt_record(moved, plan, FieldDecryptor(ring))
    assert not report.ok


def test_recursive_named_type_is_refused_with_a_clear_error(write_schema) -> None:
    schema = {
        "type": "record", "name": "Node", "namespace": "ex.tree", "privacy": {"source_topic": "tree.raw"},
        "fields": [
            {"name": "label", "type": "string", "privacy": "keep"},
            {"name": "hidden", "type": "string", "privacy": "drop"},
            {"name": "children", "privacy": "keep", "type": {"type": "array", "items": "Node"}},
        ],
    }
    with pytest.raises(PolicyError) as excinfo:
        compile_plan(load_schema_file(write_schema(schema)))
    assert "children" in str(excinfo.value) and "recursive record type 'ex.tree.Node'" in str(excinfo.value)

