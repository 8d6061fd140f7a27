"""The embedded Schema Registry (Apicurio, Confluent-compatible API) answers confluent_kafka's client."""

from __future__ import annotations

import json
import shutil

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import to_parsing_canonical_form

from gateway.embedded.registry import EmbeddedRegistry

_MISSING = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(_MISSING), reason=f"the embedded Schema Registry is built by Maven and run on Java: "
                                              f"{' and '.join(_MISSING)} not on PATH"),
]

PAYMENT = {
    "type": "record", "name": "Payment", "namespace": "com.example.payments",
    "fields": [
        {"name": "payment_id", "type": "string"},
        {"name": "amount_cents", "type": "long"},
        {"name": "card_number", "type": ["null", "string"], "default": None},
    ],
}


def test_a_schema_registered_with_the_confluent_client_reads_back_by_id_and_by_subject() -> None:
    subject = "payments.raw-value"
    with EmbeddedRegistry() as registry:
        client = SchemaRegistryClient({"url": registry.url})
        assert client.get_subjects() == []  # in-memory storage: every registry starts empty
        schema_id = client.register_schema(subject, Schema(json.dumps(PAYMENT), "AVRO"))
        assert isinstance(schema_id, int)

        fresh = SchemaRegistryClient({"url": registry.url})  # no cache: these come from the server
        by_id = fresh.get_schema(schema_id)
        assert by_id.schema_type == "AVRO"
        assert to_parsing_canonical_form(json.loads(by_id.schema_str)) == to_parsing_canonical_form(PAYMENT)
        latest = fresh.get_latest_version(subject)
        assert (latest.subject, latest.version, latest.schema_id) == (subject, 1, schema_id)
        assert to_parsing_canonical_form(json.loads(latest.schema.schema_str)) == to_parsing_canonical_form(PAYMENT)
        assert fresh.get_subjects() == [subject]

        # registered again (as serializers do, the same string), it is the same id and no new version
        uncached = SchemaRegistryClient({"url": registry.url})
        again = uncached.register_schema(subject, Schema(json.dumps(PAYMENT), "AVRO"))
        assert again == schema_id
        assert fresh.get_versions(subject) == [1]

        # the serializer frames a record with the registered id (magic byte 0, then the id big-endian)
        serializer = AvroSerializer(fresh, json.dumps(PAYMENT), conf={"auto.register.schemas": False,
                                                                      "use.latest.version": True})
        framed = serializer({"payment_id": "p-1", "amount_cents": 1250, "card_number": None},
                            SerializationContext("payments.raw", MessageField.VALUE))
        assert framed[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    assert registry.failure is None and registry.process is None
