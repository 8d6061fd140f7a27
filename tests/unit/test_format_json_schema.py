"""JSON Schema as a format family (gateway.core.codec.formats.json_schema): the schema becomes the one
policy model, events are Confluent-framed JSON validated against their registry id's schema, and the
sanitized schema is derived from the raw one and the plan. Every rejection names a reason and never a value."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema.validators import Draft7Validator, validator_for

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.encoding import Encoding, SchemaFormat, frame_confluent
from gateway.core.codec.formats import codec_for, format_of, iter_schema_files, load_schema_file
from gateway.core.codec.formats.json_schema import JsonSchemaDecoder, fast_check, sanitized_document
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan, compile_schema
from gateway.core.policy.plan import Plan
from gateway.core.policy.runner import raw_value
from gateway.errors import PolicyError, RejectedEvent
from gateway.keys.envelope import FieldDecryptor
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "schemas" / "json" / "signups.schema.json"
CANARY_NAME = "Zebulon Canaryfield"
CANARY_EMAIL = "zebulon.canary@example.org"
CANARY_PHONE = "+44 7700 900123"
RAW_ID, SANITIZED_ID = 41, 42
CODEC = codec_for(SchemaFormat.JSON_SCHEMA)


def _document() -> dict[str, Any]:
    return orjson.loads(EXAMPLE.read_bytes())


def _write(tmp_path: Path, document: dict[str, Any], name: str = "s.schema.json") -> Path:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(document))
    return path


def _plan(tmp_path: Path, **privacy: Any) -> Plan:
    document = _document()
    document["privacy"].update(schema_id=RAW_ID, sanitized_schema_id=SANITIZED_ID, **privacy)
    return compile_plan(load_schema_file(_write(tmp_path, document)))


def _event(**changes: Any) -> dict[str, Any]:
    event = {"signup_id": "s-1", "user_id": "u-77", "email": CANARY_EMAIL, "full_name": CANARY_NAME,
             "phone": CANARY_PHONE, "age": 31, "country": "GB", "plan": "pro",
             "address": {"street": "1 Canary Wharf", "city": "London", "postcode": "E14 5AB"},
             "referrer_url": "https://example.org/?u=zebulon", "marketing_opt_in": False}
    event.update(changes)
    return event


def _framed(event: Any, schema_id: int = RAW_ID) -> bytes:
    return frame_confluent(schema_id, orjson.dumps(event))


# ---- the schema as the policy model ----------------------------------------------------------------
def test_the_example_loads_as_the_policy_model_and_compiles_clean() -> None:
    schema = load_schema_file(EXAMPLE)
    assert schema.format is SchemaFormat.JSON_SCHEMA and orjson.loads(schema.native or "") == _document()
    fields = {f["name"]: f for f in schema.raw["fields"]}
    assert schema.fullname == "example.signups.Signup"
    assert fields["email"]["type"] == "string" and fields["email"]["privacy"]["tokenize"]["domain"] == "user-contact"
    assert fields["age"]["type"] == "long"
    assert fields["plan"]["type"] == {"type": "enum", "name": "example.signups.Signup_plan",
                                      "symbols": ["free", "pro", "team"]}  # names: an enum (samples pick them)
    assert fields["phone"]["type"] == ["null", "string"] and fields["phone"]["default"] is None  # type admits null
    address = fields["address"]["type"]  # not required: nullable, a nested record
    assert address[0] == "null" and [f["name"] for f in address[1]["fields"]] == ["street", "city", "postcode"]
    assert address[1]["fields"][0]["privacy"] == "drop"
    plan, problems = compile_schema(schema)
    assert plan is not None and [p for p in problems if p.severity == "error"] == []
    assert plan.field_actions["full_name"] == "encrypt" and plan.field_actions["referrer_url"] == "drop"


def test_schema_files_of_every_family_are_found_by_suffix(tmp_path: Path) -> None:
    _write(tmp_path, _document(), "b.schema.json")
    (tmp_path / "a.avsc").write_bytes(b"{}")
    (tmp_path / "notes.json").write_bytes(b"{}")  # plain .json is not a schema file
    assert [p.name for p in iter_schema_files(tmp_path)] == ["a.avsc", "b.schema.json"]
    assert format_of(Path("x.schema.json")) is SchemaFormat.JSON_SCHEMA
    assert format_of(Path("x.avsc")) is SchemaFormat.AVRO
    assert format_of(Path(".schema.json")) is None and format_of(Path("x.json")) is None


def test_local_references_are_inlined_with_the_property_s_own_policy(tmp_path: Path) -> None:
    document = _document()
    document["$defs"] = {"Address": copy.deepcopy(document["properties"]["address"])}
    del document["$defs"]["Address"]["privacy"]
    document["properties"]["address"] = {"$ref": "#/$defs/Address", "privacy": "keep"}
    document["required"].append("address")
    schema = load_schema_file(_write(tmp_path, document))
    (address,) = [f for f in schema.raw["fields"] if f["name"] == "address"]
    assert address["privacy"] == "keep" and address["type"]["type"] == "record"  # required: not nullable


@pytest.mark.parametrize(("change", "needle"), [
    (lambda d: d.pop("title"), "'title'"),
    (lambda d: d.update(title="not a name"), "'title'"),
    (lambda d: d["properties"].update({"bad-name": {"type": "string"}}), "bad-name"),
    (lambda d: d["properties"]["age"].update(type=["integer", "string"]), "age: a property needs one type"),
    (lambda d: d["properties"].update(ref={"$ref": "https://example.org/x.json"}), "ref: only local references"),
    (lambda d: d["properties"].update(loop={"$ref": "#/properties/loop"}), "loop: the recursive reference"),
    (lambda d: d["properties"].update(bag={"type": "object"}), "bag: an object needs"),
    (lambda d: d["properties"]["age"].update(minimum="ten"), "not a valid JSON Schema"),
])
def test_a_schema_the_model_cannot_hold_fails_at_load_naming_file_and_property(tmp_path: Path, change: Any,
                                                                              needle: str) -> None:
    document = _document()
    change(document)
    path = _write(tmp_path, document)
    with pytest.raises(PolicyError, match=str(path)) as raised:
        load_schema_file(path)
    assert needle in str(raised.value)


def test_a_json_schema_policy_needs_a_registry_id_and_its_own_encoding(tmp_path: Path) -> None:
    document = _document()
    del document["privacy"]["schema_id"], document["privacy"]["sanitized_schema_id"]
    _, problems = compile_schema(load_schema_file(_write(tmp_path, document)))
    assert any("Confluent-framed: set schema_id" in p.message for p in problems)
    document["privacy"].update(schema_id="registry", sanitized_schema_id="registry", input="confluent",
                               output="avro")
    _, problems = compile_schema(load_schema_file(_write(tmp_path, document)))
    messages = " ".join(p.message for p in problems)
    assert "input 'confluent' is not one of auto, json_schema" in messages
    assert "output 'avro' is not one of same, json_schema" in messages


# ---- decoding ----------------------------------------------------------------------------------------------
def _decoder(tmp_path: Path, writers: dict[int, Any] | None = None) -> JsonSchemaDecoder:
    plan = _plan(tmp_path)
    decoder = CODEC.decoder(plan.schema, plan.input_mode, plan.schema_id, 10_000, writers or {}, {})
    assert isinstance(decoder, JsonSchemaDecoder)
    return decoder


def test_a_valid_event_decodes_to_the_policy_model(tmp_path: Path) -> None:
    decoder = _decoder(tmp_path)
    event = _event(phone=None)
    del event["address"]  # optional: None in the model
    record, encoding, unannotated = decoder.decode_event(_framed(event))
    assert encoding == Encoding.JSON_SCHEMA and unannotated == ()
    assert record["address"] is None and record["phone"] is None and record["full_name"] == CANARY_NAME
    assert list(record) == [f["name"] for f in decoder.schema.raw["fields"]]  # declared fields, in order


@pytest.mark.parametrize(("value", "reason", "needle"), [
    (b"", "empty_value", ""),
    (b"\x00\x00\x00", "bad_framing", "5 header bytes"),
    (b"\x01" + _framed(_event())[1:], "bad_magic_byte", "magic byte is 1"),
    (_framed(_event(), 999), "unknown_schema_id", "schema id 999"),
    (frame_confluent(RAW_ID, b'{"signup_id": '), "json_invalid", "not valid JSON"),
    (frame_confluent(RAW_ID, b'["' + CANARY_NAME.encode() + b'"]'), "json_invalid", "list, not an object"),
    (frame_confluent(RAW_ID, b'{"x": "\xff\xfe"}'), "invalid_utf8", "UTF-8"),
    (_framed(_event(age=CANARY_NAME)), "json_schema_violation", "at $.age: 'type' \"integer\""),
    (_framed(_event(age=7)), "json_schema_violation", "at $.age: 'minimum' 13"),
    (_framed({k: v for k, v in _event().items() if k != "email"}), "json_schema_violation", "'required'"),
    (_framed(_event(address={"street": "x", "city": CANARY_NAME, "postcode": 12})), "json_schema_violation",
     "at $.address.postcode: 'type'"),
    (_framed(_event(country=CANARY_NAME)), "json_schema_violation", "at $.country: 'maxLength' 2"),
    (_framed(_event(plan=CANARY_NAME)), "json_schema_violation", "at $.plan: 'enum'"),
])
def test_bad_input_is_rejected_with_a_clear_reason_and_never_a_value(tmp_path: Path, value: bytes, reason: str,
                                                                     needle: str) -> None:
    with pytest.raises(RejectedEvent) as raised:
        _decoder(tmp_path).decode_event(value)
    assert raised.value.reason == reason
    assert needle in raised.value.message
    for canary in (CANARY_NAME, CANARY_EMAIL, CANARY_PHONE, "Canary Wharf", "zebulon"):
        assert canary not in raised.value.message


def test_a_violation_inside_a_map_does_not_show_the_map_s_keys(tmp_path: Path) -> None:
    """A map's keys are data (they may be e-mail addresses): the path shows '*' for them."""
    document = _document()
    document["properties"]["prefs"] = {"type": "object", "additionalProperties": {"type": "integer"},
                                       "privacy": "drop"}
    document["privacy"].update(schema_id=RAW_ID, sanitized_schema_id=SANITIZED_ID)
    plan = compile_plan(load_schema_file(_write(tmp_path, document)))
    decoder = CODEC.decoder(plan.schema, "auto", RAW_ID, 10_000, {}, {})
    with pytest.raises(RejectedEvent) as raised:
        decoder.decode_event(_framed(_event(prefs={CANARY_EMAIL: "x"})))
    assert raised.value.reason == "json_schema_violation" and "at $.prefs.*: 'type'" in raised.value.message
    assert CANARY_EMAIL not in raised.value.message


def test_other_registered_versions_are_read_their_new_fields_dropped_and_named(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    newer = orjson.loads(plan.schema.native or "")
    newer["properties"]["loyalty_id"] = {"type": "string"}  # a producer added a field the policy does not name
    del newer["properties"]["phone"]  # ... and removed an optional one
    older = orjson.loads(plan.schema.native or "")
    older["required"].remove("email")  # the policy requires it: events without it cannot be read
    retyped = orjson.loads(plan.schema.native or "")
    retyped["properties"]["age"] = {"type": "string"}
    writers = {7: CODEC.writer(plan.schema, orjson.dumps(newer).decode(), "registry id 7"),
               8: CODEC.writer(plan.schema, orjson.dumps(older).decode(), "registry id 8"),
               9: CODEC.writer(plan.schema, orjson.dumps(retyped).decode(), "registry id 9")}
    assert writers[7].problem is None and writers[7].unannotated == ("loyalty_id",)
    assert "email" in (writers[8].problem or "") and "age" in (writers[9].problem or "")
    decoder = _decoder(tmp_path, writers)
    event = _event(loyalty_id=CANARY_EMAIL)
    del event["phone"]
    record, _, unannotated = decoder.decode_event(_framed(event, 7))
    assert "loyalty_id" not in record and record["phone"] is None and unannotated == ("loyalty_id",)
    with pytest.raises(RejectedEvent) as raised:
        decoder.decode_event(_framed(_event(), 8))
    assert raised.value.reason == "incompatible_writer_schema" and "registry id 8" in raised.value.message
    assert decoder.unknown_ids([_framed(_event(), 7), _framed(_event(), 10), _framed(_event()), None, b"{}"]) == {10}
    assert CODEC.same_schema(plan.schema, orjson.dumps(orjson.loads(plan.schema.native or ""),
                                                       option=orjson.OPT_SORT_KEYS).decode())
    unannotated_copy = orjson.loads(plan.schema.native or "")  # producers may register it without the policy
    for prop in unannotated_copy["properties"].values():
        prop.pop("privacy", None)
    assert CODEC.same_schema(plan.schema, orjson.dumps(unannotated_copy).decode())
    assert not CODEC.same_schema(plan.schema, orjson.dumps(newer).decode())


# ---- the sanitized schema and records ---------------------------------------------------------------
def test_the_sanitized_schema_is_derived_from_the_raw_one_and_the_plan(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    document = sanitized_document(plan.schema, plan.sanitized_schema)
    Draft7Validator.check_schema(document)
    assert document["$schema"] == "http://json-schema.org/draft-07/schema#"  # the raw schema's draft
    assert document["title"] == "example.signups.sanitized.Signup"
    assert "additionalProperties" not in document  # the raw schema is open: so is the sanitized one
    props = document["properties"]
    assert set(props) == {"signup_id", "user_id", "email", "full_name", "phone", "age", "country", "plan",
                          "address", "marketing_opt_in"}  # referrer_url dropped
    assert props["full_name"] == {"type": "string", "contentEncoding": "base64",
                                  "description": props["full_name"]["description"]}
    assert props["phone"]["type"] == ["string", "null"] and props["phone"]["contentEncoding"] == "base64"
    assert props["email"]["type"] == "string" and props["age"]["type"] == "string"  # token, band
    assert props["plan"] == {"type": "string", "enum": ["free", "pro", "team"]}  # kept: its constraint too
    assert set(props["address"]["properties"]) == {"city", "postcode"}  # street dropped
    assert props["address"]["additionalProperties"] is False  # closed in the raw schema: closed here
    assert document["required"] == [p for p in props if p not in ("phone", "address")]  # nullable: not required
    assert CODEC.sanitized_schema(plan.schema, plan.sanitized_schema) == CODEC.sanitized_schema(
        plan.schema, plan.sanitized_schema)  # deterministic: registering it again keeps its id


def _sanitized_text(tmp_path: Path, name: str, change: Any = None, closed: bool = False) -> str:
    document = _document()
    document["privacy"].update(schema_id=RAW_ID, sanitized_schema_id=SANITIZED_ID)
    if closed:
        document["additionalProperties"] = False
    if change is not None:
        change(document)
    plan = compile_plan(load_schema_file(_write(tmp_path, document, f"{name}.schema.json")))
    return CODEC.sanitized_schema(plan.schema, plan.sanitized_schema)


@pytest.mark.parametrize(("change", "closed", "expected"), [
    (lambda d: d["properties"]["referrer_url"].update(privacy="keep"), False, {}),  # optional: nullable
    (lambda d: (d["properties"]["referrer_url"].update(privacy="keep"), d["required"].append("referrer_url")),
     False, {"backward": "$.referrer_url is required by the reader"}),  # a required one: old records lack it
    (lambda d: d["properties"]["country"].update(privacy="drop"), False,
     {"forward": "$.country is required by the reader"}),  # old consumers require it
    (lambda d: d["properties"]["phone"].update(privacy="drop"), False, {}),  # a nullable one may go
    (lambda d: d["properties"]["phone"].update(privacy="drop"), True,
     {"backward": "$.phone is in the records, and the reader does not allow it"}),  # ... unless closed
    (lambda d: d["properties"]["referrer_url"].update(privacy="keep"), True,
     {"forward": "$.referrer_url is in the records, and the reader does not allow it"}),
    (lambda d: d["properties"]["age"].update(privacy="keep"), False,
     {"backward": "$.age is string in the records, integer for the reader",
      "forward": "$.age is integer in the records, string for the reader"}),
    (lambda d: d["properties"]["country"].update(privacy="encrypt"), False, {}),  # a string either way (base64)
])
def test_a_policy_change_is_checked_against_the_registered_sanitized_versions(
        tmp_path: Path, change: Any, closed: bool, expected: dict[str, str]) -> None:
    old = _sanitized_text(tmp_path, "old", closed=closed)
    new = _sanitized_text(tmp_path, "new", change, closed=closed)
    assert new != old
    for mode in ("backward", "forward"):
        problems = CODEC.sanitized_problems(new, [("sanitized version 1 (id 5)", old)], mode)
        if mode in expected:
            assert len(problems) == 1 and expected[mode] in problems[0] and "version 1 (id 5)" in problems[0]
        else:
            assert problems == [], problems
    full = CODEC.sanitized_problems(new, [("v1", old)], "full")
    assert len(full) == len(expected)
    assert CODEC.sanitized_problems(new, [("v1", old)], "none") == []
    assert CODEC.sanitized_problems(new, [("v1", "syntax = 'proto3';")], "none") != []  # another format's subject


def test_the_pipeline_publishes_framed_json_that_validates_and_decrypts(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    keyring = Keyring.open(tmp_path / "k.json")
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test")
    pipeline = Pipeline([plan], keyring, config, audit_partitions=1, tokenizers=tokenizers(keyring, [plan]))
    source = plan.source_topic
    values = [_framed(_event(signup_id=f"s-{i}")) for i in range(3)] + [_framed(_event(age="x"))]
    events = [RawEvent(source, 0, i, 1_790_000_000_000, None, v, None) for i, v in enumerate(values)]
    result = pipeline.process(events)
    sanitized = [r for r in result.records if r.topic == plan.sanitized_topic]
    dead = [r for r in result.records if r.topic == plan.dlq_topic]
    assert len(sanitized) == 3 and len(dead) == 1
    assert orjson.loads(dead[0].value or b"")["reason"] == "json_schema_violation"
    validator = Draft7Validator(sanitized_document(plan.schema, plan.sanitized_schema))
    decoder = SanitizedDecoder([plan])
    decryptor = FieldDecryptor(keyring)
    for out in sanitized:
        value = out.value or b""
        headers = dict(out.headers or [])
        assert headers["gateway-encoding"] == b"json_schema" and value[:5] == frame_confluent(SANITIZED_ID, b"")
        for canary in (CANARY_NAME, CANARY_EMAIL, CANARY_PHONE, "Canary Wharf", "zebulon"):
            assert canary.encode() not in value
        document = orjson.loads(value[5:])
        validator.validate(document)
        _, record = decoder.decode(StoredRecord(out.topic, 0, 0, out.key, value, headers))
        assert record == document
        opened, report = decrypt_record(record, plan, decryptor, headers.get("gateway-source"))
        assert report.ok, report.fields
        assert opened["full_name"] == CANARY_NAME and opened["phone"] == CANARY_PHONE
        assert opened["age"] == "25-34" and opened["address"] == {"city": "London", "postcode": "E1*****"}


# ---- the fast check agrees with jsonschema ----------------------------------------------------------
_SCALARS = (st.none() | st.booleans() | st.integers(-200, 200) | st.floats(-200, 200, allow_nan=False)
            | st.sampled_from([True, False, 0, 1.0, 13.0, 130.0, 2.5, 10, 131]) | st.text(max_size=6)
            | st.sampled_from(["free", "pro", "GB", "G", "GBR", "ab12", "A1"]))
_JSON = _SCALARS | st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["city", "postcode", "street", "x", "n"]), inner, max_size=4), max_leaves=8)
_STRICT = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "t.Strict", "type": "object",
           "additionalProperties": False, "required": ["code", "n"],
           "properties": {"code": {"type": "string", "pattern": "^[a-z]+[0-9]*$", "minLength": 2},
                          "n": {"type": ["integer", "null"], "exclusiveMinimum": 0, "maximum": 10},
                          "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
                          "scores": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
                          "x": {"type": "number", "exclusiveMaximum": 5}}}


@pytest.mark.parametrize("document", [_document(), _STRICT], ids=["example", "strict"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(["signup_id", "age", "country", "plan", "phone", "address", "code",
                                                "n", "tags", "scores", "x", "marketing_opt_in", "extra"]),
                               _JSON, max_size=4),
       removed=st.sets(st.sampled_from(["email", "age", "code", "n", "plan"]), max_size=2))
def test_the_fast_check_says_valid_exactly_when_jsonschema_does(document: dict[str, Any], changes: dict[str, Any],
                                                                removed: set[str]) -> None:
    fast = fast_check(document)
    assert fast is not None  # both schemas use only the keywords it covers
    validator = validator_for(document)(document)
    base = _event() if document is not _STRICT else {"code": "ab1", "n": 3, "tags": ["a"], "scores": {"m": 1.5}}
    candidate = {k: v for k, v in {**base, **changes}.items() if k not in removed}
    assert fast(candidate) == validator.is_valid(candidate)


def test_keywords_without_a_fast_check_leave_it_to_jsonschema() -> None:
    for node in ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}, {"anyOf": [{"type": "string"}]},
                 {"enum": [1, True]}, {"const": "x"}, {"type": "object", "patternProperties": {"^a": {}},
                                                       "additionalProperties": False}, {"x-custom": 1}):
        assert fast_check(node) is None, node


def test_purposes_quality_rules_and_audit_work_as_for_avro(tmp_path: Path) -> None:
    """The same policy model: a purpose view, a quality rule beside a property, one audit entry per event."""
    document = _document()
    document["privacy"].update(schema_id=RAW_ID, sanitized_schema_id=SANITIZED_ID, purposes={
        "analytics": {"topic": "signups.analytics", "basis": "legitimate_interests",
                      "fields": {"user_id": {"tokenize": {"domain": "user"}}, "country": "keep", "plan": "keep"}}})
    document["properties"]["plan"]["quality"] = {"allowed": {"values": ["free", "pro"], "action": "reject"}}
    plan = compile_plan(load_schema_file(_write(tmp_path, document)))
    keyring = Keyring.open(tmp_path / "k.json")
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test")
    pipeline = Pipeline([plan], keyring, config, audit_partitions=1, tokenizers=tokenizers(keyring, [plan]))
    values = [_framed(_event(signup_id="s-1")), _framed(_event(signup_id="s-2", plan="team"))]
    result = pipeline.process([RawEvent(plan.source_topic, 0, i, 1_790_000_000_000, None, v, None)
                               for i, v in enumerate(values)])
    by_topic: dict[str, list[Any]] = {}
    for out in result.records:
        by_topic.setdefault(out.topic, []).append(out)
    (view,) = by_topic["signups.analytics"]
    assert dict(view.headers or [])["gateway-encoding"] == b"json"  # a view has no registry id: plain JSON
    published = orjson.loads(view.value or b"")
    assert set(published) == {"user_id", "country", "plan"} and published["user_id"].startswith("tok_v")
    (dead,) = by_topic[plan.dlq_topic]
    reason = orjson.loads(dead.value or b"")["reason"]
    assert reason.startswith("quality:")
    assert len(by_topic[plan.sanitized_topic]) == 1
    (audit,) = by_topic[config.audit_topic]
    entries = record_entries([audit.value])
    assert [e["outcome"] for e in entries] == ["sanitized", f"rejected:{reason}"]
    assert entries[0]["purposes"] == {"analytics": "published:legitimate_interests"}


def test_a_constraint_only_the_json_schema_holds_changes_the_policy_hash(tmp_path: Path) -> None:
    """The hash in every output's gateway-policy header and audit entry tells policies apart, a validation
    constraint included (the policy model has no maxLength)."""
    before = _plan(tmp_path)
    document = _document()
    document["privacy"].update(schema_id=RAW_ID, sanitized_schema_id=SANITIZED_ID)
    document["properties"]["signup_id"]["maxLength"] = 32
    after = compile_plan(load_schema_file(_write(tmp_path, document, "after.schema.json")))
    assert after.schema.raw == before.schema.raw and after.policy_hash != before.policy_hash


def test_policy_test_writes_json_schema_events_that_its_decoder_reads_offline(tmp_path: Path) -> None:
    """`gateway policy test` (no registry): the runner frames the event as a JSONSerializer would, and a
    policy that names no id reads any id as its own schema, as the sanitized decoder does."""
    document = _document()
    document["privacy"].update(schema_id="registry", sanitized_schema_id="registry")
    plan = compile_plan(load_schema_file(_write(tmp_path, document)))
    assert plan.schema_id is None
    value = raw_value(plan, _event())
    assert value[:5] == frame_confluent(0, b"") and orjson.loads(value[5:])["full_name"] == CANARY_NAME
    decoder = CODEC.decoder(plan.schema, plan.input_mode, plan.schema_id, 10_000, {}, {})
    record, _, _ = decoder.decode_event(value)
    assert record["full_name"] == CANARY_NAME
    with pytest.raises(RejectedEvent, match="unknown_schema_id|schema id 5"):  # with a writer known: strict
        CODEC.decoder(plan.schema, "auto", None, 10_000, {7: CODEC.writer(plan.schema, plan.schema.native or "",
                                                                           "id 7")}, {}).decode_event(
            frame_confluent(5, value[5:]))
