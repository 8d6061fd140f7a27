"""Dead-letter records: reason, message and coordinates in clear; the original event sealed.

The original value, key and headers are encrypted (AES-256-GCM) and bound to their source
coordinates, so an operator holding the key can inspect or replay them and nobody else can read
them. Two seal formats:

- format 1: under the quarantine key (keyring), for events whose subject cannot be read (they did
  not decode, or the plan has no tokenized subject). Bound to the source coordinates. Bounded only
  by the dead-letter topic's retention: `gateway forget` cannot reach them.
- format 2: under a per-subject key of the key topic (`SubjectKeys`, named by domain, subject token
  and DEK id, never the subject in clear), for events whose subject could be read. Bound to the
  source coordinates and that key's name, so `gateway forget` (a tombstone of the key) makes the
  dead letter unreadable like every other ciphertext of the subject.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import struct
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import DEK_ID_BYTES
from gateway.keys.subject_keys import SubjectKeys

SEAL_FORMAT = 1  # under the quarantine key
SUBJECT_SEAL_FORMAT = 2  # under a per-subject key (erased by gateway forget)

# reasons raised while decoding: no decoded record exists, so the subject can only be read by the
# best-effort JSON look (gateway.pipeline); any other reason came after a clean decode
DECODE_REASONS = frozenset({
    "empty_value", "record_too_large", "bad_framing", "bad_magic_byte", "unknown_schema_id",
    "unknown_schema_fingerprint", "incompatible_writer_schema", "avro_truncated", "avro_trailing_bytes",
    "avro_decode_error", "invalid_utf8", "json_invalid", "missing_field", "wrong_type",
})
# decode failures of a JSON object that parsed but did not validate: its top-level fields are readable
JSON_SHAPE_REASONS = frozenset({"missing_field", "wrong_type"})


def _coordinates(topic: str, partition: int, offset: int) -> bytes:
    return orjson.dumps(["privacy-gateway/quarantine/v1", topic, partition, offset])


def _subject_coordinates(topic: str, partition: int, offset: int, domain: str, token: str, dek_id: bytes) -> bytes:
    """Format 2's associated data: the source coordinates and the key's full name (subject token
    included), so a seal moved to another event or relabelled with another subject does not open."""
    return orjson.dumps(["privacy-gateway/quarantine/v2", topic, partition, offset, domain, token, dek_id.hex()])


def _payload(value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]] | None) -> bytes:
    # binary framing (u32 metadata length | metadata JSON | raw value): the value is base64'd
    # once, for the dead-letter JSON, not twice
    meta = orjson.dumps({"key": _b64(key), "value_is_null": value is None,
                         "headers": [[name, _b64(data)] for name, data in (headers or [])]})
    return struct.pack(">I", len(meta)) + meta + (value or b"")


def _open_payload(payload: bytes) -> dict[str, Any]:
    (meta_len,) = struct.unpack(">I", payload[:4])
    meta = orjson.loads(payload[4:4 + meta_len])
    value = None if meta["value_is_null"] else payload[4 + meta_len:]
    return {"value": value, "key": _unb64(meta["key"]), "headers": [(n, _unb64(d)) for n, d in meta["headers"]]}


class QuarantineSealer:
    """Seals dead letters (format 1 under the quarantine key, format 2 under a subject's key) and
    opens them. `subject_keys` (the key topic's content) is needed for format 2 either way."""

    def __init__(self, key_id: str, key: bytes, subject_keys: SubjectKeys | None = None) -> None:
        self.key_id = key_id
        self._aead = AESGCM(key)
        self.subject_keys = subject_keys

    def __repr__(self) -> str:
        return f"<QuarantineSealer key_id={self.key_id!r} subject_keys={self.subject_keys is not None}>"

    def seal(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None,
             headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
        """Format 1: under the quarantine key, bound to the source coordinates."""
        nonce = secrets.token_bytes(12)
        aad = _coordinates(topic, partition, offset)
        sealed = nonce + self._aead.encrypt(nonce, _payload(value, key, headers), aad)
        return {"format": SEAL_FORMAT, "key_id": self.key_id, "data": base64.b64encode(sealed).decode("ascii")}

    def seal_for_subject(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None,
                         headers: list[tuple[str, bytes]] | None, domain: str, token: str) -> dict[str, Any]:
        """Format 2: under the subject's current key (created if it has none; the pipeline publishes
        it before the batch commits), bound to the source coordinates and the key's name.

        Raises when no key can be had (KMS down: KmsUnavailable); the caller falls back to `seal`."""
        if self.subject_keys is None:
            raise GatewayError("sealing under a subject's key needs the subject keys (the key topic)")
        data_key = self.subject_keys.current(domain, token)
        data_key.uses += 1  # shares the use bound of the subject's field ciphertexts (random nonces)
        nonce = secrets.token_bytes(12)
        aad = _subject_coordinates(topic, partition, offset, domain, token, data_key.dek_id)
        sealed = nonce + data_key.aead.encrypt(nonce, _payload(value, key, headers), aad)
        return {"format": SUBJECT_SEAL_FORMAT, "key_id": data_key.key_id,
                "key": {"domain": domain, "subject": token, "dek": data_key.dek_id.hex()},
                "data": base64.b64encode(sealed).decode("ascii")}

    def unseal(self, dead_letter: dict[str, Any]) -> dict[str, Any]:
        """Recover {'value', 'key', 'headers'} (bytes) from a dead-letter record.

        Raises DecryptError: `key_erased` (format 2 after `gateway forget`), `key_not_held` (another
        quarantine key, or format 2 without the key topic), `tampered`, `malformed`."""
        try:
            source = dead_letter["source"]
            topic, partition, offset = str(source["topic"]), int(source["partition"]), int(source["offset"])
            sealed = dead_letter["sealed"]
            if sealed is None:
                raise DecryptError("malformed", "the original was too large to seal: it is only at its source "
                                   "coordinates")
            data = base64.b64decode(sealed["data"], validate=True)
            version = sealed["format"]
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise DecryptError("malformed", "not a sealed dead letter (source, sealed.format, sealed.data)") from None
        if version == SEAL_FORMAT:
            if sealed.get("key_id") != self.key_id:
                raise DecryptError("key_not_held", f"sealed under quarantine key '{sealed.get('key_id')}', "
                                   f"not '{self.key_id}'")
            aead, aad = self._aead, _coordinates(topic, partition, offset)
        elif version == SUBJECT_SEAL_FORMAT:
            aead, aad = self._subject_aead(sealed, topic, partition, offset)
        else:
            raise DecryptError("malformed", f"unknown dead-letter seal format {version!r}")
        try:
            payload = aead.decrypt(data[:12], data[12:], aad)
        except InvalidTag:
            raise DecryptError("tampered", "sealed payload does not authenticate for its source coordinates "
                               "and key") from None
        return _open_payload(payload)

    def _subject_aead(self, sealed: dict[str, Any], topic: str, partition: int,
                      offset: int) -> tuple[AESGCM, bytes]:
        try:
            name = sealed["key"]
            domain, token, dek_id = str(name["domain"]), str(name["subject"]), bytes.fromhex(name["dek"])
        except (KeyError, TypeError, ValueError):
            raise DecryptError("malformed", "a format-2 seal names its key as {domain, subject, dek}") from None
        if len(dek_id) != DEK_ID_BYTES:
            raise DecryptError("malformed", "a format-2 seal's dek id is not a DEK id")
        if self.subject_keys is None:
            raise DecryptError("key_not_held", "sealed under the subject's own key: read the key topic "
                               "(gateway dlq unseal --bootstrap ...) to open it")
        aead = self.subject_keys.aead_for(domain, token, dek_id)  # key_erased after gateway forget
        return aead, _subject_coordinates(topic, partition, offset, domain, token, dek_id)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)
