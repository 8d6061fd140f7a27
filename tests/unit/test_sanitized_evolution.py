"""Consumers across sanitized schema versions: records framed with the registry ids of an older and a
newer sanitized schema decode in the consumer's view (its policy's fields), through a dict-backed
lookup standing in for the registry; unknown and unreadable ids fail naming id and cause, never a
value (no broker, no registry)."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.evolution import fingerprint, single_object_header, strip_logical_types
from gateway.core.codec.raw import load_schema_file
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.errors import GatewayError
from gateway.integrations.common import SanitizedReader, UndecodableRecord

CANARY = "canary-9f3e-note"  # a field value that must never reach an error message
OWN_ID, OLDER_ID, NEWER_ID, UNREADABLE_ID, UNKNOWN_ID = 5, 7, 8, 9, 99
POLICY = {
    "type": "record", "name": "Visit", "namespace": "ex.visits",
    "privacy": {"source_topic": "visits.raw", "sanitized_topic": "visits.sanitized",
                "sanitized_schema_id": OWN_ID, "output": "confluent"},
    "fields": [
        {"name": "event_id", "type": "string", "privacy": "keep"},
        {"name": "note", "type": "string", "privacy": "keep"},
        {"name": "country", "type": "string", "default": "ZZ", "privacy": "keep"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}, "privacy": "keep"},
        {"name": "amount", "type": "long", "privacy": "keep"},
        {"name": "ip", "type": "string"},  # not annotated: dropped
    ],
}
TOPIC = "visits.sanitized"


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    directory = tmp_path / "schemas"
    directory.mkdir()
    (directory / "visits.avsc").write_text(json.dumps(POLICY))
    return directory


@pytest.fixture
def plan(schemas: Path) -> Plan:
    return compile_plan(load_schema_file(schemas / "visits.avsc"))


def _variant(plan: Plan, drop: str | None = None, add: dict[str, Any] | None = None,
             retype: tuple[str, Any] | None = None) -> dict[str, Any]:
    """Another version of the plan's sanitized schema (the same record name, as the gateway derives it)."""
    schema = copy.deepcopy(plan.sanitized_schema)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != drop]
    if retype is not None:
        for f in schema["fields"]:
            if f["name"] == retype[0]:
                f["type"] = retype[1]
    if add is not None:
        schema["fields"].append(add)
    return schema


def _older(plan: Plan) -> dict[str, Any]:
    return _variant(plan, drop="country")  # the reader's default fills it


def _newer(plan: Plan) -> dict[str, Any]:
    return _variant(plan, add={"name": "channel", "type": ["null", "string"], "default": None})


def _avro(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(strip_logical_types(schema)), record)
    return out.getvalue()


def _record(value: bytes, encoding: str | None = "confluent") -> StoredRecord:
    headers = {"gateway-schema": b"ex.visits.sanitized.Visit"}
    if encoding is not None:
        headers["gateway-encoding"] = encoding.encode()
    return StoredRecord(TOPIC, 0, 0, None, value, headers)


class Registry:
    """A dict-backed writer-schema lookup that counts its calls (the decoder caches per id)."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas
        self.calls: list[int] = []

    def __call__(self, schema_id: int) -> dict[str, Any] | None:
        self.calls.append(schema_id)
        return self.schemas.get(schema_id)


@pytest.fixture
def registry(plan: Plan) -> Registry:
    unreadable = _variant(plan, retype=("amount", "string"))
    return Registry({OWN_ID: plan.sanitized_schema, OLDER_ID: _older(plan), NEWER_ID: _newer(plan),
                     UNREADABLE_ID: unreadable})


BASE = {"event_id": "e1", "note": CANARY, "at": 1_790_000_000_000, "amount": 1250}


def _framed(plan: Plan) -> dict[int, bytes]:
    return {
        OWN_ID: frame_confluent(OWN_ID, _avro(plan.sanitized_schema, {**BASE, "country": "FR"})),
        OLDER_ID: frame_confluent(OLDER_ID, _avro(_older(plan), BASE)),
        NEWER_ID: frame_confluent(NEWER_ID, _avro(_newer(plan), {**BASE, "country": "DE", "channel": "web"})),
    }


EXPECTED = {OWN_ID: {**BASE, "country": "FR"}, OLDER_ID: {**BASE, "country": "ZZ"},
            NEWER_ID: {**BASE, "country": "DE"}}  # the consumer's view: no "channel", defaults filled


def test_older_and_newer_versions_decode_in_the_consumer_s_view(plan: Plan, registry: Registry) -> None:
    decoder = SanitizedDecoder([plan], registry)
    for _ in range(2):  # the second round comes from the cache
        for schema_id, value in _framed(plan).items():
            got_plan, record = decoder.decode(_record(value))
            assert got_plan is plan
            assert record == EXPECTED[schema_id], schema_id
    assert sorted(registry.calls) == [OLDER_ID, NEWER_ID]  # the plan's own id needs no lookup, each other once


def test_header_less_confluent_records_of_other_versions_decode_too(plan: Plan, registry: Registry) -> None:
    decoder = SanitizedDecoder([plan], registry)
    for schema_id, value in _framed(plan).items():
        assert decoder.decode(_record(value, encoding=None))[1] == EXPECTED[schema_id]


def test_a_plan_without_an_id_looks_every_id_up(schemas: Path, registry: Registry) -> None:
    policy = copy.deepcopy(POLICY)
    policy["privacy"]["sanitized_schema_id"] = "registry"  # not resolved: consumers load plans without a registry
    (schemas / "visits.avsc").write_text(json.dumps(policy))
    plan = compile_plan(load_schema_file(schemas / "visits.avsc"))
    assert plan.sanitized_schema_id is None
    decoder = SanitizedDecoder([plan], registry)
    for schema_id, value in _framed(plan).items():
        assert decoder.decode(_record(value))[1] == EXPECTED[schema_id]
    assert sorted(registry.calls) == [OWN_ID, OLDER_ID, NEWER_ID]
    # without a lookup such a plan decodes every id with its own schema, as before
    assert SanitizedDecoder([plan]).decode(_record(_framed(plan)[OWN_ID]))[1] == EXPECTED[OWN_ID]


def test_another_id_without_a_lookup_says_to_pass_the_registry_url(plan: Plan) -> None:
    decoder = SanitizedDecoder([plan])
    assert decoder.decode(_record(_framed(plan)[OWN_ID]))[1] == EXPECTED[OWN_ID]
    with pytest.raises(GatewayError) as caught:
        decoder.decode(_record(_framed(plan)[NEWER_ID]))
    message = str(caught.value)
    assert f"id {NEWER_ID}" in message and f"({OWN_ID};" in message and TOPIC in message
    assert "--schema-registry-url" in message and CANARY not in message


def test_an_id_the_registry_does_not_know_is_named(plan: Plan, registry: Registry) -> None:
    value = frame_confluent(UNKNOWN_ID, _avro(_newer(plan), {**BASE, "country": "DE", "channel": CANARY}))
    decoder = SanitizedDecoder([plan], registry)
    for _ in range(2):  # not cached: the registry may learn the id later
        with pytest.raises(GatewayError) as caught:
            decoder.decode(_record(value))
        message = str(caught.value)
        assert f"id {UNKNOWN_ID}" in message and "registry does not know" in message and TOPIC in message
        assert CANARY not in message
    assert registry.calls == [UNKNOWN_ID, UNKNOWN_ID]


@pytest.mark.parametrize(("writer", "rule"), [
    ({"retype": ("amount", "string")}, "type_mismatch"),
    ({"drop": "amount"}, "reader_field_missing_default_value"),
])
def test_an_unreadable_writer_names_the_field_and_rule_once_checked(plan: Plan, writer: dict[str, Any],
                                                                    rule: str) -> None:
    schema = _variant(plan, **writer)
    record = {**BASE, "country": CANARY}
    if "retype" in writer:
        record["amount"] = CANARY
    else:
        del record["amount"]
    registry = Registry({UNREADABLE_ID: schema})
    decoder = SanitizedDecoder([plan], registry)
    for _ in range(2):
        with pytest.raises(GatewayError) as caught:
            decoder.decode(_record(frame_confluent(UNREADABLE_ID, _avro(schema, record))))
        message = str(caught.value)
        assert f"id {UNREADABLE_ID}" in message and TOPIC in message
        assert "field 'amount'" in message and rule in message
        assert CANARY not in message
    assert registry.calls == [UNREADABLE_ID]  # checked once per id


def test_single_object_records_of_the_policy_s_schema_decode(plan: Plan) -> None:
    value = single_object_header(plan.sanitized_schema) + _avro(plan.sanitized_schema, {**BASE, "country": "FR"})
    assert SanitizedDecoder([plan]).decode(_record(value, "single_object"))[1] == EXPECTED[OWN_ID]


def test_a_single_object_record_of_another_version_names_its_fingerprint(plan: Plan) -> None:
    newer = _newer(plan)
    value = single_object_header(newer) + _avro(newer, {**BASE, "country": "DE", "channel": CANARY})
    with pytest.raises(GatewayError) as caught:
        SanitizedDecoder([plan]).decode(_record(value, "single_object"))
    message = str(caught.value)
    assert fingerprint(newer).hex() in message and fingerprint(plan.sanitized_schema).hex() in message
    assert TOPIC in message and CANARY not in message
    with pytest.raises(GatewayError, match="single-object header"):
        SanitizedDecoder([plan]).decode(_record(b"\x00\x01" + value[2:], "single_object"))


def test_the_reader_decodes_other_versions_with_and_without_headers(schemas: Path, plan: Plan,
                                                                    registry: Registry) -> None:
    reader = SanitizedReader(schemas, writer_schemas=registry)
    for schema_id, value in _framed(plan).items():
        headers = [("gateway-schema", b"ex.visits.sanitized.Visit"), ("gateway-encoding", b"confluent")]
        assert reader.decode(TOPIC, value, headers).value == EXPECTED[schema_id]
        assert reader.decode_value(value).value == EXPECTED[schema_id]  # the faust codec's header-less path
        assert reader.decode_value(value).as_dict()["_gateway"]["schema"] == "ex.visits.sanitized.Visit"


def test_the_reader_reports_unreadable_versions_without_values(schemas: Path, plan: Plan,
                                                               registry: Registry) -> None:
    unknown = frame_confluent(UNKNOWN_ID, _avro(_newer(plan), {**BASE, "country": "DE", "channel": CANARY}))
    unreadable = frame_confluent(UNREADABLE_ID, _avro(registry.schemas[UNREADABLE_ID], {**BASE, "amount": CANARY}))
    reader = SanitizedReader(schemas, writer_schemas=registry)
    for value, needle in ((unknown, "registry does not know"), (unreadable, "field 'amount'")):
        with pytest.raises(UndecodableRecord) as with_headers:
            reader.decode(TOPIC, value, {"gateway-schema": "ex.visits.sanitized.Visit",
                                         "gateway-encoding": "confluent"})
        with pytest.raises(UndecodableRecord) as header_less:
            reader.decode_value(value)
        for message in (str(with_headers.value), str(header_less.value)):
            assert needle in message and CANARY not in message
    with pytest.raises(UndecodableRecord, match="--schema-registry-url"):  # no lookup: says how to fix
        SanitizedReader(schemas).decode_value(_framed(plan)[NEWER_ID])
    with pytest.raises(ValueError, match="not both"):
        SanitizedReader(schemas, registry_url="http://127.0.0.1:1", writer_schemas=registry)
