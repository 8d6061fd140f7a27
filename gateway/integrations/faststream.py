"""FastStream adapter: a subscriber's `decoder=` that reads the gateway's sanitized records as they are.

A sanitized record says in its headers which schema wrote it and how (`gateway-schema`,
`gateway-encoding`; one topic may mix Avro and JSON), and its `gateway-source` header binds the
ciphertexts of a purpose view. FastStream's default decoder sees the body only (JSON or bytes) and
turns header values into text, so `GatewayDecoder` takes the original headers from the client's own
message and hands the record to `SanitizedReader`, the framework-free decoder every adapter shares::

    from faststream.confluent import KafkaBroker
    from gateway.integrations.faststream import GatewayDecoder

    broker = KafkaBroker("127.0.0.1:9092")
    decode = GatewayDecoder("schemas/", keyring="keyring.json")   # or decryptor=, role=, registry_url=

    @broker.subscriber("payments.sanitized", group_id="app", decoder=decode,
                       auto_offset_reset="earliest", isolation_level="read_committed")
    async def handle(event: dict) -> None:   # event["_gateway"]["fields"]: each encrypted field's outcome
        ...

The handler receives `Decoded.as_dict()`: the record (opened fields in clear when the reader holds
their keys, the others as the record carried them) with the per-field outcomes under `_gateway`
("decrypted", "key_not_held: ...", "key_erased: ...", ...). A dict, because FastStream validates
the handler's arguments against their annotations and a plain mapping passes through unchanged.

Works with both FastStream brokers: `faststream.confluent` (a confluent-kafka `Message`, headers
from `.headers()`) and `faststream.kafka` (an aiokafka `ConsumerRecord`, `.headers`). Subscribe with
`isolation_level="read_committed"`: the gateway writes in transactions, and a read_uncommitted
subscriber also sees the copies an aborted transaction left (FastStream's default is uncommitted).

A record that does not decode raises `UndecodableRecord` (topic and cause, never a value): FastStream
logs it and goes on with the next message. Publishing what a handler decoded (a `@broker.publisher`
on it, or returning the event) would write opened fields to a topic in clear: publish the fields you
need, never an opened one. Only apps import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.integrations.common import HeadersLike, SanitizedReader, UndecodableRecord
from gateway.keys.envelope import FieldDecryptor

__all__ = ["GatewayDecoder", "UndecodableRecord"]


def _client_message(message: Any) -> tuple[str | None, bytes | None, HeadersLike]:
    """Topic, value and headers of the client's own message under a FastStream `StreamMessage`:
    confluent-kafka's `Message` has methods, aiokafka's `ConsumerRecord` attributes."""
    raw = message.raw_message
    if isinstance(raw, tuple):  # a batch subscriber hands a tuple of messages to one decoder call
        raise TypeError("GatewayDecoder decodes one record at a time: subscribe without batch=True")
    headers = raw.headers
    if callable(headers):  # confluent_kafka.Message
        return raw.topic(), raw.value(), headers()
    return raw.topic, raw.value, headers


class GatewayDecoder:
    """A FastStream `decoder=`: each message decoded (and opened) by its headers into a dict.

    `schemas`: the policies' directory; `keyring`, `decryptor`, `role`, `registry_url` as for
    `SanitizedReader` (without keys every encrypted field stays closed and reads `key_not_held`)."""

    def __init__(self, schemas: str | Path, keyring: str | Path | None = None, *,
                 decryptor: FieldDecryptor | None = None, role: str | None = None,
                 registry_url: str | None = None) -> None:
        self.reader = SanitizedReader(schemas, keyring, decryptor=decryptor, role=role, registry_url=registry_url)

    async def __call__(self, message: Any) -> dict[str, Any]:
        topic, value, headers = _client_message(message)
        return self.reader.decode(topic, value, headers).as_dict()
