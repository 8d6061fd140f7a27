"""`gateway produce-samples --schemas DIR` on a schema the project does not ship (a ride-hailing
schema a new user writes): every event decodes, and the worker sanitizes them all, no dead letter."""

from __future__ import annotations

import time
from collections import Counter

import orjson
import pytest

from gateway.core.codec.raw import EventDecoder
from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.policy.lint import load_plans

from .conftest import Deployment, cli

pytestmark = pytest.mark.integration

COUNT = 300


def _ride_schema(suffix: str) -> dict[str, object]:
    timestamp = {"type": "long", "logicalType": "timestamp-millis"}
    return {
        "type": "record", "name": "Ride", "namespace": "example.rides",
        "privacy": {"source_topic": f"rides.raw.{suffix}", "sanitized_topic": f"rides.sanitized.{suffix}",
                    "subject": "rider_id", "event_id": "ride_id", "schema_id": 7, "sanitized_schema_id": 107},
        "fields": [
            {"name": "ride_id", "type": "string", "privacy": "keep"},
            {"name": "pickup_at", "type": timestamp, "privacy": {"generalize": {"truncate": "hour"}}},
            {"name": "dropoff_at", "type": ["null", timestamp], "default": None, "privacy": "keep"},
            {"name": "rider_id", "type": "string", "privacy": {"tokenize": {"domain": "rider"}}},
            {"name": "driver_email", "type": "string",
             "privacy": {"tokenize": {"domain": "driver", "normalizer": "email"}}},
            {"name": "driver_phone", "type": ["null", "string"], "default": None, "privacy": "drop"},
            {"name": "pickup", "privacy": {"generalize": {"geohash": 5}}, "type": {
                "type": "record", "name": "Point", "fields": [{"name": "lat", "type": "double"},
                                                              {"name": "lon", "type": "double"}]}},
            {"name": "dropoff", "type": "Point", "privacy": "encrypt"},
            {"name": "fare_minor", "type": "long", "privacy": "keep"},
            {"name": "vehicle", "type": {"type": "enum", "name": "Vehicle", "symbols": ["SEDAN", "SUV", "BIKE"]},
             "privacy": "keep"},
            {"name": "stops", "privacy": "keep", "type": {"type": "array", "items": {
                "type": "record", "name": "Stop", "fields": [
                    {"name": "city", "type": "string", "privacy": "keep"},
                    {"name": "postal_code", "type": "string", "privacy": {"generalize": {"prefix": 3}}}]}}},
            {"name": "rider_notes", "type": ["null", "string"], "default": None, "privacy": {"redact": {}}},
            {"name": "card_number", "type": "string", "privacy": {"mask": {"keep_last": 4}}},
            {"name": "country", "type": "string", "privacy": "keep"},
        ],
    }


def test_produce_samples_for_a_schema_the_project_does_not_ship(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    for shipped in d.schemas.glob("*.avsc"):  # only the user's schema in the directory
        shipped.unlink()
    (d.schemas / "rides.avsc").write_bytes(orjson.dumps(_ride_schema(d.suffix)))
    [plan] = load_plans(d.schemas)

    started_ms = int(time.time() * 1000)
    result = cli("produce-samples", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas), "--count", str(COUNT))
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b'"msg":"samples produced"' in result.stderr

    raw = d.read(plan.source_topic)
    decoder = EventDecoder(plan.schema, plan.input_mode, plan.schema_id, 1_048_576)
    decoded = [decoder.decode(r.value) for r in raw]
    assert len(decoded) == COUNT
    assert Counter(encoding for _, encoding in decoded) == {"confluent": 100, "avro": 100, "json": 100}
    now_ms = int(time.time() * 1000)
    assert all(started_ms - 1000 <= rec["pickup_at"] <= now_ms for rec, _ in decoded)  # stamped now
    assert all("@" in rec["driver_email"] for rec, _ in decoded)

    worker = d.start_worker("rides-1")
    try:
        audit = d.wait_for_audit(COUNT, timeout_s=60)
    finally:
        assert worker.stop() == 0
    outcomes = Counter(a["outcome"] for a in audit)
    assert outcomes == {"sanitized": COUNT}, outcomes
    assert d.read(plan.dlq_topic) == []
    sanitized = d.read(plan.sanitized_topic)
    assert len(sanitized) == COUNT
    records = [SanitizedDecoder([plan]).decode(s)[1] for s in sanitized]
    emails = {rec["driver_email"] for rec, _ in decoded}
    for record in records:
        assert record["driver_email"].startswith("tok_v") and record["rider_id"].startswith("tok_v")
        assert record["driver_email"] not in emails
        assert len(record["pickup"]) == 5 and record["card_number"].startswith("************")
        # encrypted: bytes, or base64 in the JSON output of a JSON input ("output": "same")
        assert isinstance(record["dropoff"], (bytes, str)) and "driver_phone" not in record
