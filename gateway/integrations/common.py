"""Decoding (and opening) sanitized records, framework-free: what every stream-processor adapter shares.

An adapter hands over what its framework has (topic, value bytes, headers) and gets a `Decoded`:
the record's value as a dict, with the encrypted fields opened when the reader holds keys, and the
outcome of each encrypted field. The policies are compiled once, when the reader is made; nothing
here imports a Kafka client, so it is tested without a broker.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.core.codec.sanitized import (
    CONFLUENT_HEADER_BYTES,
    SanitizedDecoder,
    StoredRecord,
    WriterSchemas,
    read_avro,
)
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import SOURCE_HEADER
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import FieldDecryptor, RecordRef
from gateway.keys.keyring import Keyring

HeadersLike = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
DECRYPTED = "decrypted"


class UndecodableRecord(GatewayError):
    """A record the reader cannot decode; the message names topic and cause, never a value."""


@dataclass(frozen=True)
class Decoded:
    """One sanitized record as a consumer sees it.

    `value` is the decoded record (a dict, or the model an adapter built from it); opened fields hold
    their plaintext, the others keep the ciphertext as the record carried it (bytes in Avro, base64
    text in JSON). `fields` maps each encrypted field path that held a value to "decrypted" or
    "<reason>: <message>" (the reasons of `gateway decrypt`: key_not_held, tampered, ...).
    """

    schema: str
    value: Any
    fields: Mapping[str, str]

    @property
    def opened(self) -> bool:
        """Every encrypted field is open (true too when the record has none)."""
        return all(outcome == DECRYPTED for outcome in self.fields.values())

    def reason(self, path: str) -> str | None:
        """The reason code of one field ("decrypted", "key_not_held", ...), None if it held no ciphertext."""
        outcome = self.fields.get(path)
        return None if outcome is None else outcome.split(":", 1)[0]

    def with_value(self, value: Any) -> Decoded:
        return dataclasses.replace(self, value=value)

    def as_dict(self) -> dict[str, Any]:
        """The value with the status under `_gateway`, for hooks that can only return a mapping."""
        return {**self.value, "_gateway": {"schema": self.schema, "fields": dict(self.fields)}}


class _NoKeys(FieldDecryptor):
    """Stands in for a decryptor when the reader holds no keys, so every ciphertext is still reported."""

    def __init__(self) -> None:  # holds no KMS: it never opens anything
        pass

    def decrypt(self, data: bytes, context: bytes, subject: str = "", record: RecordRef | None = None) -> bytes:
        raise DecryptError("key_not_held", "this reader was given no keyring or decryptor")


def header_dict(headers: HeadersLike) -> dict[str, bytes]:
    """Kafka clients give headers as a mapping or as (name, value) pairs, values as bytes or str."""
    if headers is None:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, bytes] = {}
    for name, value in pairs:
        if value is not None:
            out.setdefault(name, value.encode() if isinstance(value, str) else bytes(value))
    return out


class SanitizedReader:
    """Compiles the policies of `schemas` once, then decodes (and opens) sanitized records one by one.

    Keys, optional: `keyring` (the local keyring file the key holder gave this consumer), or a
    `decryptor` built by the caller (`FieldDecryptor` over a remote KMS the consumer's role may use,
    with per-subject keys read from the key topic). `role` (with `keyring`): the role whose
    role-scoped fields (format v3) to open, e.g. with a keyring from `gateway keys export --role R`.
    Without either, encrypted fields stay closed and are reported `key_not_held`. `topic` names the
    sanitized topic for records that arrive without headers when `schemas` holds several policies.

    Sanitized schema versions, optional: `registry_url` (the Schema Registry the gateway registers its
    sanitized schemas in) or a `writer_schemas` callable (registry id -> schema JSON or None).
    Records of another version are then decoded in this reader's view (its policy's fields); without
    either, a record framed with an id other than the policy's is undecodable.
    """

    def __init__(self, schemas: str | Path, keyring: str | Path | None = None, *,
                 decryptor: FieldDecryptor | None = None, topic: str | None = None,
                 registry_url: str | None = None, writer_schemas: WriterSchemas | None = None,
                 role: str | None = None) -> None:
        if keyring is not None and decryptor is not None:
            raise ValueError("give a keyring or a decryptor, not both")
        if role is not None and keyring is None:
            raise ValueError("role goes with keyring (a decryptor carries its own: FieldDecryptor(kms, role=R))")
        if registry_url and writer_schemas is not None:
            raise ValueError("give a registry_url or a writer_schemas lookup, not both")
        self.plans = load_plans(Path(schemas))
        if registry_url:
            from gateway.runtime.registry import WriterSchemaLookup  # confluent_kafka's registry client

            writer_schemas = WriterSchemaLookup(registry_url)
        self.decoder = SanitizedDecoder(self.plans, writer_schemas)
        if keyring is not None:
            decryptor = FieldDecryptor(Keyring.open(Path(keyring), create=False), role=role)  # role: format v3
        self.decryptor: FieldDecryptor = decryptor or _NoKeys()
        self.topic = topic

    @property
    def holds_keys(self) -> bool:
        return not isinstance(self.decryptor, _NoKeys)

    def decode(self, topic: str | None, value: bytes | None, headers: HeadersLike = None) -> Decoded:
        """Decode by the `gateway-schema` and `gateway-encoding` headers the gateway sets on every
        sanitized record; without them, as `decode_value` does. The `gateway-source` header opens the
        ciphertexts of a view without an event id (bound to it, format v5)."""
        if value is None:
            raise UndecodableRecord(f"record on '{topic}' has no value (a tombstone): nothing to decode")
        hdrs = header_dict(headers)
        plan = self._plan(topic, hdrs.get("gateway-schema", b"").decode(errors="replace") or None)
        encoding = hdrs.get("gateway-encoding", b"").decode(errors="replace")
        if not encoding:
            return self._guess(plan, value, topic, hdrs.get(SOURCE_HEADER))
        try:
            _, record = self.decoder.decode(StoredRecord(plan.sanitized_topic, -1, -1, None, value, hdrs))
        except GatewayError as exc:  # another schema version it cannot read: the message names no value
            raise UndecodableRecord(str(exc)) from None
        except Exception as exc:  # fastavro and orjson raise many kinds on corrupt input
            raise UndecodableRecord(f"record on '{topic}' does not decode as {plan.sanitized_schema['name']} "
                                    f"({encoding}: {type(exc).__name__})") from None
        return self._open(plan, record, topic, hdrs.get(SOURCE_HEADER))

    def decode_value(self, value: bytes | None, topic: str | None = None) -> Decoded:
        """Decode without headers, for hooks that see bytes only: a JSON object, else bare or
        Confluent-framed Avro of the topic's policy (the only one, or `topic`), whichever decodes whole.
        Without the `gateway-source` header, ciphertexts of a view without an event id do not open."""
        if value is None:
            raise UndecodableRecord(f"record on '{topic}' has no value (a tombstone): nothing to decode")
        return self._guess(self._plan(topic, None), value, topic)

    def _guess(self, plan: Plan, value: bytes, topic: str | None, source: bytes | None = None) -> Decoded:
        # the order of the gateway's own `input: auto`: JSON on "{", Confluent framing on byte 0 when
        # the policy has a registry id (or the reader can look ids up); a value that fails one is
        # tried as the others
        problems: list[str] = []  # why Confluent framing did not decode, for the error

        def confluent(plan: Plan, value: bytes) -> Any:
            return self._confluent(plan, value, topic, problems)

        attempts = [_json, _avro, confluent]
        if value[:1] == b"\x00" and (plan.sanitized_schema_id is not None or self.decoder.writer_schemas is not None):
            attempts = [confluent, _avro, _json]
        elif value[:1] != b"{":
            attempts = [_avro, confluent, _json]
        for attempt in attempts:
            record = attempt(plan, value)
            if record is not None:
                return self._open(plan, record, topic, source)
        why = f" ({problems[0]})" if problems else ""
        raise UndecodableRecord(f"record on '{topic or plan.sanitized_topic}' is neither a JSON object nor "
                                f"Avro of {plan.sanitized_schema['name']}{why}")

    def _confluent(self, plan: Plan, value: bytes, topic: str | None, problems: list[str]) -> Any:
        """Confluent-framed Avro of the plan's id, or of another id the decoder can look up and resolve;
        None (with the reason in `problems`) when the value is not that."""
        if value[:1] != b"\x00" or len(value) < CONFLUENT_HEADER_BYTES:
            return None
        try:
            writer = self.decoder.writer_for(plan, int.from_bytes(value[1:CONFLUENT_HEADER_BYTES], "big"), topic)
        except GatewayError as exc:  # unknown or unreadable id, registry down: maybe bare Avro after all
            problems.append(str(exc))
            return None
        return _avro(plan, value[CONFLUENT_HEADER_BYTES:], writer)

    def _plan(self, topic: str | None, schema_name: str | None) -> Plan:
        by_name, by_topic = self.decoder.by_name, self.decoder.by_topic
        plan = by_name.get(schema_name or "") or by_topic.get(topic or "") or by_topic.get(self.topic or "")
        if plan is None and len(self.plans) == 1:
            plan = self.plans[0]
        if plan is None:
            raise UndecodableRecord(f"no policy sanitizes topic '{topic}' (schema {schema_name or 'not named'}); "
                                    f"known schemas: {', '.join(sorted(by_name))}")
        return plan

    def _open(self, plan: Plan, record: Any, topic: str | None, source: bytes | None = None) -> Decoded:
        """`source`: the `gateway-source` header, which binds the ciphertexts of a view without an event id."""
        if not isinstance(record, dict):
            raise UndecodableRecord(f"record on '{topic}' is a JSON {type(record).__name__}, not an object")
        opened, report = decrypt_record(record, plan, self.decryptor, source)
        return Decoded(plan.sanitized_schema["name"], opened, report.fields)


def _json(plan: Plan, value: bytes) -> Any:
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _avro(plan: Plan, value: bytes, writer: Any = None) -> Any:
    """Bare Avro written with `writer` (default: the plan's sanitized schema) in the plan's view,
    None unless it decodes and uses every byte."""
    buffer = io.BytesIO(value)
    try:
        record = read_avro(buffer, plan.sanitized_parsed if writer is None else writer, plan)
    except Exception:  # fastavro raises IndexError, ValueError, EOFError, ... on bytes of another shape
        return None
    return record if buffer.tell() == len(value) else None
