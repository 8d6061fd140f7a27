"""faust-streaming adapter: read sanitized topics as streams of `Decoded` events.

Why a `faust.Schema` and not only a codec: a faust codec (`Codec._loads(bytes)`) is handed the value
bytes and nothing else, but a sanitized record says in its headers which schema wrote it and how
(`gateway-schema`, `gateway-encoding`; with `output: same` one topic mixes Avro and JSON).
`faust.Schema.loads_value(app, message, ...)` is the deserialization hook that receives the whole
`Message` (topic, headers), so `GatewaySchema` overrides it::

    payments = app.topic("payments.sanitized", schema=GatewaySchema("schemas/", keyring="keyring.json"))

    @app.agent(payments)
    async def process(events):
        async for event in events:           # a Decoded: event.value (dict or your Record), event.fields
            ...

The codec `register_codec` installs (named "gateway") is for places where faust has bytes only
(`value_serializer="gateway"`): it decodes JSON or the one policy's Avro and returns a dict with
the status under `_gateway` (see `Decoded.as_dict`).

Both take `registry_url=`, the Schema Registry the gateway registers its sanitized schemas in: records
written with another sanitized schema version (the gateway's policy changed) are then decoded with
their writer schema into this app's view, instead of failing.

A record that does not decode raises faust's `ValueDecodeError` (the message names topic and
cause, never a value), which faust logs and throws into the agent, as for any undecodable value.
The schema only reads: faust re-publishes a stream's values with its topic's schema on `group_by`,
which would put opened fields into a Kafka topic in clear, so `dumps_value` refuses. Send the few
fields you need (never an opened one) to a topic of your own instead. Only apps import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faust import Schema
from faust.exceptions import ValueDecodeError
from faust.serializers import codecs
from faust.serializers.codecs import Codec

from gateway.integrations.common import Decoded, SanitizedReader, UndecodableRecord
from gateway.keys.envelope import FieldDecryptor

__all__ = ["GatewayCodec", "GatewaySchema", "register_codec"]


class GatewaySchema(Schema):
    """Decodes each message by its headers into a `Decoded` whose value is a dict, or an instance of
    `record` (a `faust.Record` class; fields it does not declare are kept as attributes)."""

    def __init__(self, schemas: str | Path, keyring: str | Path | None = None, *,
                 decryptor: FieldDecryptor | None = None, record: type[Any] | None = None,
                 key_type: Any = str, registry_url: str | None = None) -> None:
        super().__init__(key_type=key_type)
        self.reader = SanitizedReader(schemas, keyring, decryptor=decryptor, registry_url=registry_url)
        self.record = record

    def loads_value(self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None) -> Decoded:
        try:
            decoded = self.reader.decode(message.topic, message.value, message.headers)
        except UndecodableRecord as exc:
            raise ValueDecodeError(str(exc)) from None
        if self.record is None:
            return decoded
        return decoded.with_value(self.record.from_data(decoded.value, preferred_type=self.record))

    def dumps_value(self, app: Any, value: Any, *, serializer: Any = None, headers: Any) -> Any:
        raise TypeError("GatewaySchema only reads sanitized topics: faust is re-publishing their values "
                        "(group_by?), which would write opened fields in clear; send the fields you need "
                        "to a topic with a schema of its own")


class GatewayCodec(Codec):
    """Header-less decoding for faust's codec registry: JSON, or Avro of the reader's one policy."""

    def __init__(self, children: tuple[Any, ...] | None = None, **kwargs: Any) -> None:
        super().__init__(children, **kwargs)  # faust's clone() passes the reader back through kwargs
        self.reader: SanitizedReader = kwargs["reader"]

    def _loads(self, s: bytes) -> Any:
        try:
            return self.reader.decode_value(s).as_dict()
        except UndecodableRecord as exc:
            raise ValueError(str(exc)) from None

    def _dumps(self, s: Any) -> bytes:
        raise TypeError("the gateway codec only reads sanitized records")


def register_codec(schemas: str | Path, keyring: str | Path | None = None, *, topic: str | None = None,
                   decryptor: FieldDecryptor | None = None, name: str = "gateway",
                   registry_url: str | None = None) -> GatewayCodec:
    """Compile the policies once and register the codec under `name` (`topic` picks the policy
    when `schemas` holds several; `registry_url` decodes records of other sanitized schema versions)."""
    codec = GatewayCodec(reader=SanitizedReader(schemas, keyring, decryptor=decryptor, topic=topic,
                                                registry_url=registry_url))
    codecs.register(name, codec)
    return codec
