"""Schema evolution without a broker: writer versions resolved to the policy's schema, single-object
framing by fingerprint, fields the policy does not name dropped and audited, compatibility problems
named by field and rule."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.evolution import (
    UNANNOTATED_ACTION,
    evolution_problems,
    fingerprint,
    incompatibilities,
    resolve_writer,
    single_object_header,
    unannotated_paths,
)
from gateway.core.codec.raw import EventDecoder, load_schema_file
from gateway.core.codec.writer import avro_bytes
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.errors import PolicyError, RejectedEvent
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

CANARY_NOTE = "canary-note-7f3a@example.com"

# v1 is the policy's schema; producers upgrade to v2 (adds an optional "note") and v3 (drops "amount",
# which has a default in the policy, and promotes "count" from int to long: the policy reads it as long)
V1: dict[str, Any] = {
    "type": "record", "name": "Order", "namespace": "shop",
    "privacy": {"source_topic": "orders.raw", "sanitized_topic": "orders.sanitized", "subject": "customer"},
    "fields": [
        {"name": "customer", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
        {"name": "amount", "type": "double", "default": 0.0, "privacy": "keep"},
        {"name": "count", "type": "long", "privacy": "keep"},
    ],
}


def _bare(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema as a producer has it: no annotations."""
    out = copy.deepcopy(schema)
    out.pop("privacy", None)
    for f in out["fields"]:
        f.pop("privacy", None)
    return out


V2 = _bare(V1)
V2["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
V3 = _bare(V1)
V3["fields"] = [{"name": "customer", "type": "string"}, {"name": "count", "type": "int"}]


def test_the_fingerprint_is_the_avro_specifications() -> None:
    # Avro's schema test vectors: CRC-64-AVRO of "null" is 0x63dd24e7cc258f8a, carried little-endian
    assert fingerprint("null") == (0x63DD24E7CC258F8A).to_bytes(8, "little")
    assert single_object_header("null") == b"\xc3\x01" + (0x63DD24E7CC258F8A).to_bytes(8, "little")
    # the canonical form leaves annotations and doc out: the policy and the producer's schema agree
    assert fingerprint(V1) == fingerprint(_bare(V1)) != fingerprint(V2)


def test_writer_versions_resolve_to_the_policy_schema_and_new_fields_are_named() -> None:
    decoder = EventDecoder(load_schema_file_from(V1), "confluent", 1, 1_000_000,
                           writers={2: resolve_writer(V1, V2, "id 2"), 3: resolve_writer(V1, V3, "id 3")})
    v2 = {"customer": "c-1", "amount": 3.5, "count": 2, "note": CANARY_NOTE}
    record, encoding, unannotated = decoder.decode_event(frame_confluent(2, avro_bytes(V2, v2)))
    assert record == {"customer": "c-1", "amount": 3.5, "count": 2} and encoding == "confluent"
    assert unannotated == ("note",)
    record, _, unannotated = decoder.decode_event(frame_confluent(3, avro_bytes(V3, {"customer": "c-2", "count": 7})))
    assert record == {"customer": "c-2", "amount": 0.0, "count": 7} and unannotated == ()
    with pytest.raises(RejectedEvent) as unknown:
        decoder.decode_event(frame_confluent(4, avro_bytes(V2, v2)))
    assert unknown.value.reason == "unknown_schema_id" and CANARY_NOTE not in str(unknown.value)


def test_an_unreadable_writer_is_dead_lettered_with_its_rule_never_decoded_wrongly() -> None:
    breaking = _bare(V1)
    breaking["fields"] = [{"name": "customer", "type": "long"}, {"name": "count", "type": "long"}]
    writer = resolve_writer(V1, breaking, "id 9")
    assert writer.parsed is None and "field 'customer'" in (writer.problem or "") and "type_mismatch" in writer.problem
    decoder = EventDecoder(load_schema_file_from(V1), "confluent", 1, 1_000_000, writers={9: writer})
    with pytest.raises(RejectedEvent) as rejected:
        decoder.decode_event(frame_confluent(9, avro_bytes(breaking, {"customer": 5, "count": 1})))
    assert rejected.value.reason == "incompatible_writer_schema" and "id 9" in rejected.value.message


def test_single_object_events_resolve_by_fingerprint_and_an_unknown_one_has_its_reason(
        write_schema: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "writers").mkdir()
    (tmp_path / "writers" / "orders.v2.avsc").write_text(json.dumps(V2))
    schema = dict(V1, privacy={**V1["privacy"], "input": "single_object", "writer_schemas": ["writers/orders.v2.avsc"]})
    plan = compile_plan(load_schema_file(write_schema(schema, "orders.avsc")))
    decoder = EventDecoder(plan.schema, plan.input_mode, None, 1_000_000, plan.writers_by_id,
                           plan.writers_by_fingerprint)
    own = single_object_header(V1) + avro_bytes(V1, {"customer": "a", "amount": 1.0, "count": 1})
    assert decoder.decode_event(own) == ({"customer": "a", "amount": 1.0, "count": 1}, "single_object", ())
    v2 = single_object_header(V2) + avro_bytes(V2, {"customer": "b", "amount": 2.0, "count": 2, "note": "x"})
    assert decoder.decode_event(v2) == ({"customer": "b", "amount": 2.0, "count": 2}, "single_object", ("note",))
    v3 = single_object_header(V3) + avro_bytes(V3, {"customer": "c", "count": 3})
    with pytest.raises(RejectedEvent) as unknown:
        decoder.decode_event(v3)
    assert unknown.value.reason == "unknown_schema_fingerprint" and fingerprint(V3).hex() in unknown.value.message
    # auto mode recognizes the marker too
    auto = EventDecoder(plan.schema, "auto", None, 1_000_000, {}, plan.writers_by_fingerprint)
    assert auto.decode_event(v2)[1:] == ("single_object", ("note",))


def test_a_writer_schema_the_policy_cannot_read_fails_the_policy(write_schema: Callable[..., Path],
                                                                 tmp_path: Path) -> None:
    breaking = _bare(V1)
    breaking["fields"] = [{"name": "customer", "type": "string"}]  # drops "count", which has no default
    (tmp_path / "old.avsc.json").write_text(json.dumps(breaking))
    schema = dict(V1, privacy={**V1["privacy"], "writer_schemas": ["old.avsc.json", "missing.avsc"]})
    with pytest.raises(PolicyError) as failed:
        compile_plan(load_schema_file(write_schema(schema, "orders.avsc")))
    message = str(failed.value)
    assert "writer schema old.avsc.json" in message and "field 'count'" in message
    assert "reader_field_missing_default_value" in message and "missing.avsc: cannot read it" in message


def test_unannotated_paths_descend_into_records() -> None:
    reader = {"type": "record", "name": "R", "fields": [
        {"name": "a", "type": "string"},
        {"name": "addr", "default": None,
         "type": ["null", {"type": "record", "name": "A", "fields": [{"name": "city", "type": "string"}]}]}]}
    writer = copy.deepcopy(reader)
    writer["fields"][1]["type"][1]["fields"].append({"name": "street", "type": "string"})
    writer["fields"].append({"name": "b", "type": "int"})
    assert unannotated_paths(reader, writer) == ("addr.street", "b")
    assert unannotated_paths(reader, reader) == ()


def test_compatibility_problems_name_the_field_and_the_rule() -> None:
    old = {"type": "record", "name": "S", "fields": [{"name": "email", "type": "string"},
                                                     {"name": "country", "type": "string"}]}
    retyped = {"type": "record", "name": "S", "fields": [{"name": "email", "type": "bytes"},
                                                         {"name": "country", "type": "long"}]}
    found = incompatibilities(retyped, old)
    assert [(p.path, p.rule) for p in found] == [("country", "type_mismatch")]  # string -> bytes is a promotion
    dropped = {"type": "record", "name": "S", "fields": [{"name": "email", "type": "string"}]}
    assert evolution_problems(dropped, [("version 1", old)], "backward") == []  # new readers ignore "country"
    forward = evolution_problems(dropped, [("version 1", old)], "forward")
    assert len(forward) == 1 and "field 'country'" in forward[0] and "reader_field_missing_default_value" in forward[0]
    assert evolution_problems(dropped, [("version 1", old)], "full") == forward
    added = {"type": "record", "name": "S", "fields": [*old["fields"], {"name": "age", "type": ["null", "int"],
                                                                        "default": None}]}
    assert evolution_problems(added, [("version 1", old)], "full") == []
    assert evolution_problems(retyped, [("version 1", old)], "none") == []
    with pytest.raises(PolicyError):
        evolution_problems(added, [], "sideways")


def test_the_audit_names_a_newer_producers_field_and_its_value_goes_nowhere(tmp_path: Path,
                                                                            write_schema: Callable[..., Path]) -> None:
    schema = dict(V1, privacy={**V1["privacy"], "input": "confluent", "schema_id": 1, "output": "json"})
    plan = compile_plan(load_schema_file(write_schema(schema, "orders.avsc")))
    plan = type(plan)(**{**plan.__dict__, "writers_by_id": {2: resolve_writer(V1, V2, "registry id 2")}})
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test")
    ring = Keyring.open(tmp_path / "k.json")
    pipeline = Pipeline([plan], ring, config, audit_partitions=1, tokenizers=tokenizers(ring, [plan]))
    v1 = frame_confluent(1, avro_bytes(V1, {"customer": "c-1", "amount": 1.0, "count": 1}))
    v2 = frame_confluent(2, avro_bytes(V2, {"customer": "c-2", "amount": 2.0, "count": 2, "note": CANARY_NOTE}))
    events = [RawEvent("orders.raw", 0, i, 1_790_000_000_000, None, v, None) for i, v in enumerate((v1, v2))]
    result = pipeline.process(events)
    sanitized = [orjson.loads(r.value) for r in result.records if r.topic == "orders.sanitized"]
    audits = record_entries(r.value for r in result.records if r.topic == config.audit_topic)
    assert [s["count"] for s in sanitized] == [1, 2] and all("note" not in s for s in sanitized)
    assert "note" not in audits[0]["actions"] and audits[1]["actions"]["note"] == UNANNOTATED_ACTION
    assert audits[1]["actions"]["customer"] == audits[0]["actions"]["customer"]
    assert result.counts.unannotated[("orders.raw", "note")] == 1
    assert all(CANARY_NOTE.encode() not in r.value for r in result.records)


def load_schema_file_from(schema: dict[str, Any]) -> Any:
    import fastavro

    from gateway.core.codec.raw import SchemaFile

    return SchemaFile(Path("inline.avsc"), schema, fastavro.parse_schema(schema))
