"""Decoding (and opening) sanitized records, framework-free: what every stream-processor adapter shares.

An adapter hands over what its framework has (topic, value bytes, headers) and gets a `Decoded`:
the record's value as a dict, with the encrypted fields opened when the reader holds keys, and the
outcome of each encrypted field. The policies are compiled once, when the reader is made; nothing
here imports a Kafka client, so it is tested without a broker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.codec.encoding import SOURCE_HEADER
from gateway.core.codec.sanitized import (
    SanitizedDecoder,
    StoredRecord,
    UndecodableRecord,
    WriterSchemas,
)
from gateway.core.decrypt import decrypt_key_headers, decrypt_record
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import FieldDecryptor, RecordRef
from gateway.keys.keyring import Keyring

HeadersLike = Mapping[str, Any] | Iterable[tuple[str, Any]] | None
DECRYPTED = "decrypted"


__all__ = ["DECRYPTED", "Decoded", "HeadersLike", "SanitizedReader", "UndecodableRecord", "header_dict",
           "header_pairs"]


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
    # the headers the policy names (core/policy/key_headers.py), in order, encrypted ones opened where the
    # reader may (their outcomes in `fields` under `(header)<name>`; the key's, `gateway-key`, under `(record key)`)
    headers: tuple[tuple[str, Any], ...] = ()

    def header(self, name: str) -> Any:
        """The first value of the named header `name` (opened when it was encrypted), None if absent."""
        return next((value for key, value in self.headers if key == name), None)

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


def header_pairs(headers: HeadersLike) -> list[tuple[str, bytes | None]]:
    """Every header as (name, bytes), in order, repeated names kept (a record may carry several)."""
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(name, value.encode() if isinstance(value, str) else None if value is None else bytes(value))
            for name, value in pairs]


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
        self.decoder = SanitizedDecoder(self.plans, writer_schemas, topic)
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
        hdrs = header_dict(headers)
        try:
            plan, record = self.decoder.decode(StoredRecord(topic, -1, -1, None, value, hdrs))
        except UndecodableRecord:
            raise
        except GatewayError as exc:  # another schema version it cannot read: the message names no value
            raise UndecodableRecord(str(exc)) from None
        decoded = self._open(plan, record, topic, hdrs.get(SOURCE_HEADER))
        if not plan.key_headers.actions:
            return decoded
        named, report = decrypt_key_headers(record, header_pairs(headers), plan, self.decryptor,
                                            hdrs.get(SOURCE_HEADER))
        return dataclasses.replace(decoded, headers=tuple(named), fields={**decoded.fields, **report.fields})

    def decode_value(self, value: bytes | None, topic: str | None = None) -> Decoded:
        """Decode without headers, for hooks that see bytes only: a JSON object, else bare or
        Confluent-framed Avro of the topic's policy (the only one, or `topic`), whichever decodes whole.
        Without the `gateway-source` header, ciphertexts of a view without an event id do not open."""
        return self.decode(topic, value)

    def _open(self, plan: Plan, record: Any, topic: str | None, source: bytes | None = None) -> Decoded:
        """`source`: the `gateway-source` header, which binds the ciphertexts of a view without an event id."""
        if not isinstance(record, dict):
            raise UndecodableRecord(f"record on '{topic}' is a JSON {type(record).__name__}, not an object")
        opened, report = decrypt_record(record, plan, self.decryptor, source)
        return Decoded(plan.sanitized_schema["name"], opened, report.fields)

