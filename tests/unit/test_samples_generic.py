"""Sample events for any annotated schema (SchemaSamples): valid for the schema, seeded, shaped by
field names, accepted by the pipeline in every encoding the demo sends; the generic broken corpus."""

from __future__ import annotations

import copy
import datetime
import ipaddress
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import fastavro.validation
import orjson
import pytest
from stdnum import iban, luhn

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.raw import EventDecoder, load_schema_file, strip_logical_types
from gateway.core.detectors.card import luhn_ok
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.pipeline.outcome import SANITIZED
from gateway.core.policy.compiler import compile_plan
from gateway.embedded.demo import encode_raw, sample_sources
from gateway.embedded.samples import (
    BASE_TIME_MS,
    CANARIES,
    SampleEvents,
    SchemaSamples,
    broken_events,
    field_kind,
    json_encodable,
    sample_maker,
)
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

TIMESTAMP_MS = {"type": "long", "logicalType": "timestamp-millis"}

# a ride-hailing schema a new user writes: nothing in it has a hand-written generator
RIDE: dict[str, Any] = {
    "type": "record", "name": "Ride", "namespace": "example.rides",
    "privacy": {"source_topic": "rides.raw", "sanitized_topic": "rides.sanitized", "subject": "rider_id",
                "event_id": "ride_id", "schema_id": 7, "sanitized_schema_id": 107},
    "fields": [
        {"name": "ride_id", "type": "string", "privacy": "keep"},
        {"name": "pickup_at", "type": TIMESTAMP_MS, "privacy": {"generalize": {"truncate": "hour"}}},
        {"name": "dropoff_at", "type": ["null", TIMESTAMP_MS], "default": None, "privacy": "keep"},
        {"name": "rider_id", "type": "string", "privacy": {"tokenize": {"domain": "rider"}}},
        {"name": "driver_email", "type": "string",
         "privacy": {"tokenize": {"domain": "driver", "normalizer": "email"}}},
        {"name": "driverPhone", "type": ["null", "string"], "default": None, "privacy": {"mask": {"keep_last": 2}}},
        {"name": "pickup", "privacy": {"generalize": {"geohash": 5}}, "type": {
            "type": "record", "name": "Point", "fields": [{"name": "lat", "type": "double"},
                                                          {"name": "lon", "type": "double"}]}},
        {"name": "dropoff", "type": "Point", "privacy": "encrypt"},
        {"name": "fare_minor", "type": "long", "privacy": {"generalize": {"bucket": {"width": 500}}}},
        {"name": "currency", "type": "string", "privacy": "keep"},
        {"name": "vehicle", "type": {"type": "enum", "name": "Vehicle", "symbols": ["SEDAN", "SUV", "BIKE"]},
         "privacy": "keep"},
        {"name": "stops", "privacy": "keep", "type": {"type": "array", "items": {
            "type": "record", "name": "Stop", "fields": [
                {"name": "city", "type": "string", "privacy": "keep"},
                {"name": "postal_code", "type": "string", "privacy": {"generalize": {"prefix": 3}}}]}}},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "privacy": "keep"},
        {"name": "rider_notes", "type": ["null", "string"], "default": None, "privacy": {"redact": {}}},
        {"name": "rider_dob", "type": {"type": "int", "logicalType": "date"},
         "privacy": {"generalize": {"age_band": {"width": 10, "max": 90}}}},
        {"name": "card_number", "type": "string", "privacy": {"mask": {"keep_last": 4}}},
        {"name": "device_ip", "type": "string", "privacy": "drop"},
        {"name": "country", "type": "string", "privacy": "keep"},
    ],
}

# every kind of Avro type: nested and referenced records in two namespaces, arrays and maps of
# records, unions of several branches, enums, fixed, bytes, and each logical type
KITCHEN_SINK: dict[str, Any] = {
    "type": "record", "name": "Everything", "namespace": "example.sink",
    "privacy": {"source_topic": "sink.raw", "subject": "customer_id"},
    "fields": [
        {"name": "event_uuid", "type": {"type": "string", "logicalType": "uuid"}, "privacy": "keep"},
        {"name": "customer_id", "type": ["null", "string"], "default": None,
         "privacy": {"tokenize": {"domain": "customer"}}},
        {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}, "privacy": "keep"},
        {"name": "local_ts", "type": {"type": "long", "logicalType": "local-timestamp-millis"}, "privacy": "keep"},
        {"name": "opened_on", "type": {"type": "int", "logicalType": "date"}, "privacy": "keep"},
        {"name": "at_time", "type": {"type": "int", "logicalType": "time-millis"}, "privacy": "keep"},
        {"name": "at_time_us", "type": {"type": "long", "logicalType": "time-micros"}, "privacy": "keep"},
        {"name": "balance", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
         "privacy": "keep"},
        {"name": "limit", "type": {"type": "fixed", "name": "Money", "size": 6, "logicalType": "decimal",
                                   "precision": 10, "scale": 3}, "privacy": "encrypt"},
        {"name": "digest", "type": {"type": "fixed", "name": "Md5", "size": 16}, "privacy": "keep"},
        {"name": "raw_payload", "type": "bytes", "privacy": "encrypt"},
        {"name": "active", "type": "boolean", "privacy": "keep"},
        {"name": "ratio", "type": "float", "privacy": "keep"},
        {"name": "score", "type": ["null", "int", "string"], "default": None, "privacy": "keep"},
        {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["FREE", "PRO"]}, "privacy": "keep"},
        {"name": "home", "privacy": "keep", "type": {
            "type": "record", "name": "Address", "namespace": "example.common", "fields": [
                {"name": "street", "type": "string", "privacy": "encrypt"},
                {"name": "city", "type": "string", "privacy": "keep"},
                {"name": "zip", "type": "string", "privacy": "drop"},
                {"name": "country", "type": "string", "privacy": "keep"},
                {"name": "geo", "type": ["null", {"type": "record", "name": "LatLon", "fields": [
                    {"name": "latitude", "type": "double"}, {"name": "longitude", "type": "double"}]}],
                 "default": None, "privacy": "encrypt"}]}},
        {"name": "previous_addresses", "type": {"type": "array", "items": "example.common.Address"},
         "privacy": "encrypt"},
        {"name": "contacts", "privacy": "keep", "type": {"type": "map", "values": {
            "type": "record", "name": "Contact", "fields": [
                {"name": "email", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
                {"name": "phone_number", "type": ["null", "string"], "default": None, "privacy": "drop"},
                {"name": "ip", "type": "string", "privacy": "drop"}]}}},
        {"name": "labels", "type": {"type": "array", "items": {"type": "map", "values": "long"}}, "privacy": "keep"},
        {"name": "payment", "privacy": "encrypt", "type": ["null", {
            "type": "record", "name": "Card", "fields": [
                {"name": "card_number", "type": "string"}, {"name": "card_expiry", "type": "string"},
                {"name": "iban", "type": "string"}, {"name": "amount", "type": "double"}]}]},
        {"name": "lookup", "type": ["null", "Tier", "Md5"], "default": None, "privacy": "keep"},
    ],
}

# few fields and no annotations but the required ones: plain primitives, names that say nothing
PLAIN: dict[str, Any] = {
    "type": "record", "name": "Plain", "namespace": "t", "privacy": {"sanitized_topic": "plain.out"},
    "fields": [{"name": "a", "type": "string", "privacy": "keep"}, {"name": "b", "type": "int", "privacy": "keep"},
               {"name": "c", "type": "double", "privacy": "keep"}, {"name": "d", "type": ["null", "long"],
                                                                      "default": None, "privacy": "keep"}],
}

SCHEMAS = {"ride": RIDE, "kitchen_sink": KITCHEN_SINK, "plain": PLAIN}


def _events(schema: dict[str, Any], n: int, seed: int = 3) -> list[dict[str, Any]]:
    gen = SchemaSamples(schema, seed=seed)
    return [gen.event(canary=i == 0) for i in range(n)]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_events_validate_against_the_schema_and_its_base_types(name: str) -> None:
    schema = SCHEMAS[name]
    with_logical = fastavro.parse_schema(copy.deepcopy(schema))
    base = fastavro.parse_schema(strip_logical_types(schema))  # what the gateway decodes with
    for event in _events(schema, 200):
        assert fastavro.validation.validate(event, with_logical), event
        assert fastavro.validation.validate(event, base), event
        assert set(event) == {f["name"] for f in schema["fields"]}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_a_seed_gives_the_same_events_and_another_seed_others(name: str) -> None:
    schema = SCHEMAS[name]
    assert _events(schema, 20, seed=11) == _events(schema, 20, seed=11)
    assert _events(schema, 20, seed=11) != _events(schema, 20, seed=12)


def test_the_shipped_schemas_use_the_one_generator() -> None:
    repo = Path(__file__).resolve().parents[2]
    for file, method in (("payments.avsc", "payment"), ("clinical_visits.avsc", "clinical_visit")):
        schema = load_schema_file(repo / "schemas" / file)
        make = sample_maker(schema, SampleEvents(seed=5))
        assert make() == getattr(SampleEvents(seed=5), method)() == SchemaSamples(schema.raw, seed=5).event()
        # the same name with other fields: the generator follows the schema it is given
        changed = copy.deepcopy(schema.raw)
        changed["fields"].append({"name": "ride_id", "type": "string", "privacy": "keep"})
        other = load_schema_file_from(changed)
        make = sample_maker(other, SampleEvents(seed=5))
        assert fastavro.validation.validate(make(), other.parsed)


def test_card_numbers_pass_the_card_detectors_luhn_check() -> None:
    samples = SampleEvents(seed=3)
    cards = [samples.payment()["card_number"] for _ in range(200)]
    assert all(luhn_ok(c) and luhn.is_valid(c) for c in cards), [c for c in cards if not luhn_ok(c)]
    assert len(set(cards)) > 150


def test_a_field_an_aggregate_groups_by_takes_a_few_values() -> None:
    """spend_by_country groups the payments by country: a handful of countries, so groups fill and pass
    the key-selection threshold, as they do in production."""
    samples = SampleEvents(seed=4)
    payments = [samples.payment(canary=i == 0) for i in range(300)]
    countries = Counter(p["country"] for p in payments)
    assert 2 <= len(countries) <= 5 and min(countries.values()) >= 20, countries
    assert len({p["billing_address"]["country"] for p in payments}) > 5  # not grouped by: any country


def test_a_canary_event_fills_its_nullable_pii_fields() -> None:
    samples = SampleEvents(seed=6)
    for _ in range(30):
        visit = samples.clinical_visit(canary=True)
        assert visit["email"] == CANARIES["email"] and visit["patient_name"] == CANARIES["patient"]
        payment = samples.payment(canary=True)
        assert (payment["email"], payment["card_number"], payment["customer_name"], payment["ip_address"]) == (
            CANARIES["email"], CANARIES["card"], CANARIES["name"], CANARIES["ip"])


def load_schema_file_from(raw: dict[str, Any]) -> Any:
    from gateway.core.codec.raw import SchemaFile

    return SchemaFile(Path("mem.avsc"), raw, fastavro.parse_schema(copy.deepcopy(raw)))


def test_field_names_give_plausible_values() -> None:
    events = _events(RIDE, 300)[1:]  # the first one carries the canaries
    for e in events:
        assert re.fullmatch(r"[a-z]+\.[a-z]+\d+@example\.com", e["driver_email"]), e["driver_email"]
        assert re.fullmatch(r"[A-Z]{2}", e["country"]), e["country"]
        assert re.fullmatch(r"[A-Z]{3}", e["currency"])
        assert str(uuid.UUID(e["ride_id"])) == e["ride_id"]
        assert re.fullmatch(r"rider-\d{5}", e["rider_id"])  # the subject: never null, from a pool
        assert -90 <= e["pickup"]["lat"] <= 90 and -180 <= e["pickup"]["lon"] <= 180
        assert luhn.is_valid(e["card_number"]) and len(e["card_number"]) == 16
        assert ipaddress.ip_address(e["device_ip"]).version == 4
        assert e["driverPhone"] is None or re.fullmatch(r"\+1-\d{3}-555-01\d{2}", e["driverPhone"])
        assert all(re.fullmatch(r"\d{5}", s["postal_code"]) for s in e["stops"])
        assert BASE_TIME_MS <= e["pickup_at"] <= BASE_TIME_MS + 2 * 86_400_000
        assert e["dropoff_at"] is None or e["dropoff_at"] > e["pickup_at"]  # in field order, later
        born = datetime.date(1970, 1, 1) + datetime.timedelta(days=e["rider_dob"])
        assert 17 <= (datetime.date(2026, 9, 21) - born).days // 365 <= 91
        assert 100 <= e["fare_minor"] <= 250_000
        assert e["rider_notes"] is None or "@" in e["rider_notes"]  # redacted text: something to redact
    riders = Counter(e["rider_id"] for e in events)
    assert len(riders) < len(events)  # subjects repeat, as they do in production
    assert sum(e["dropoff_at"] is None for e in events) in range(20, 120)  # nullable: null now and then

    sink = _events(KITCHEN_SINK, 100)[1:]
    for e in sink:
        assert uuid.UUID(e["event_uuid"]).version == 4
        assert e["customer_id"] is not None  # the subject is never null, even when nullable
        assert iban.is_valid(e["payment"]["iban"]) if e["payment"] else True
        assert e["payment"] is None or re.fullmatch(r"\d{2}/\d{2}", e["payment"]["card_expiry"])
        assert len(e["digest"]) == 16 and len(e["limit"]) == 6
        for contact in e["contacts"].values():
            assert "@" in contact["email"] and ipaddress.ip_address(contact["ip"])
        if e["home"]["geo"] is not None:
            assert -90 <= e["home"]["geo"]["latitude"] <= 90
        assert re.fullmatch(r"[A-Z]{2}", e["home"]["country"]) and re.fullmatch(r"\d{5}", e["home"]["zip"])
    assert abs(sink[0]["created_at"] // 1000 - BASE_TIME_MS) <= 2 * 86_400_000


def test_canaries_go_into_the_fields_that_hold_pii() -> None:
    first = SchemaSamples(RIDE, seed=1).event(canary=True)
    assert first["driver_email"] == CANARIES["email"]
    assert first["card_number"] == CANARIES["card"]
    assert first["device_ip"] == CANARIES["ip"]


@pytest.mark.parametrize(("name", "kind"), [
    ("email", "email"), ("driverEmail", "email"), ("contact_mail", "email"), ("phone", "phone"),
    ("mobile_number", "phone"), ("ip_address", "ip"), ("client_ipv6", "ipv6"), ("card_number", "card"),
    ("card_expiry", "expiry"), ("iban", "iban"), ("customer_name", "name"), ("first_name", "first_name"),
    ("city", "city"), ("country", "country"), ("postal_code", "postal"), ("zip", "postal"), ("lat", "lat"),
    ("pickup_lng", "lon"), ("amount_minor", "amount"), ("ride_id", "id"), ("ts", "timestamp"),
    ("pickup_at", "timestamp"), ("merchant_name", "company"), ("status", "status"), ("notes", "text"),
    ("date_of_birth", "birth_date"), ("something", None),
])
def test_field_kinds(name: str, kind: str | None) -> None:
    assert field_kind(name) == kind


def _pipeline(tmp_path: Path, schema: dict[str, Any]) -> tuple[Any, Pipeline]:
    path = tmp_path / "s.avsc"
    path.write_bytes(orjson.dumps(schema))
    plan = compile_plan(load_schema_file(path))
    keyring = Keyring.open(tmp_path / "k.json")
    return plan, Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit"),
                          audit_partitions=1, tokenizers=tokenizers(keyring, [plan]))


@pytest.mark.parametrize("name", ["ride", "plain"])
def test_the_pipeline_sanitizes_generated_events_in_every_encoding_and_rejects_the_broken_ones(
        tmp_path: Path, name: str) -> None:
    plan, pipeline = _pipeline(tmp_path, SCHEMAS[name])
    source = sample_sources([plan], SampleEvents(seed=9))[plan.source_topic]
    assert source.broken is not None and not plan.warnings
    expected = ["confluent", "avro", "json"] if plan.schema_id is not None else ["avro", "json"]
    assert list(source.encodings) == expected
    events, outcomes = [], []
    for i in range(60):
        value = encode_raw(plan, source.make(canary=i == 0), source.encodings[i % len(source.encodings)])
        events.append(RawEvent(plan.source_topic, 0, i, 1_790_000_000_000 + i, None, value, None))
        outcomes.append("sanitized")
    broken = source.broken(source.make(canary=True))
    for reason, value in broken:
        events.append(RawEvent(plan.source_topic, 0, len(events), 1_790_000_000_000, None, value, None))
        outcomes.append(f"rejected:{reason}")
    result = pipeline.process(events)
    audits = [e["outcome"] for e in record_entries(r.value for r in result.records if r.topic == "privacy.audit")]
    assert audits == outcomes
    reasons = {r for r, _ in broken}
    must = {"avro_truncated", "avro_trailing_bytes", "json_invalid", "invalid_utf8", "wrong_type", "missing_field",
            "record_too_large", "empty_value", "field_too_large"}
    assert must | ({"bad_magic_byte", "unknown_schema_id"} if plan.schema_id is not None else set()) <= reasons
    assert CANARIES["email"].encode() not in b"".join(r.value for r in result.records if r.topic != "rides.raw")


def test_schemas_with_bytes_are_not_sent_as_json(tmp_path: Path) -> None:
    assert json_encodable(RIDE) and not json_encodable(KITCHEN_SINK)
    plan, pipeline = _pipeline(tmp_path, KITCHEN_SINK)
    source = sample_sources([plan], SampleEvents(seed=2))[plan.source_topic]
    assert source.encodings == ("avro",)
    events = [RawEvent(plan.source_topic, 0, i, 1_790_000_000_000, None, encode_raw(plan, source.make(), "avro"),
                       None) for i in range(40)]
    result = pipeline.process(events)
    assert result.counts.outcomes[(plan.source_topic, SANITIZED)] == 40


def test_broken_corpus_entries_are_checked_against_the_decoder() -> None:
    """An entry that would not be rejected for its stated reason is left out, never mislabelled."""
    schema = load_schema_file_from(RIDE)
    valid = SchemaSamples(RIDE, seed=4).event()
    for mode in ("auto", "json", "avro"):
        corpus = broken_events(valid, schema, 7 if mode == "auto" else None, mode)
        decoder = EventDecoder(schema, mode, 7 if mode == "auto" else None, 1_048_576)
        assert corpus
        for reason, value in corpus:
            if reason == "field_too_large":
                decoder.decode(value)  # decodes: the worker refuses the field
                continue
            with pytest.raises(Exception, match=f"^{reason}:"):
                decoder.decode(value)
