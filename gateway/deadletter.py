"""Dead-letter records: reason, message and coordinates in clear; the original event sealed.

The original value, key and headers are encrypted (AES-256-GCM) under the quarantine key and
bound to their source coordinates, so an operator holding that key can inspect or replay them
and nobody else can read them.
"""

from __future__ import annotations

import base64
import secrets
import struct
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError

SEAL_FORMAT = 1


def _coordinates(topic: str, partition: int, offset: int) -> bytes:
    return orjson.dumps(["privacy-gateway/quarantine/v1", topic, partition, offset])


class QuarantineSealer:
    def __init__(self, key_id: str, key: bytes) -> None:
        self.key_id = key_id
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"<QuarantineSealer key_id={self.key_id!r}>"

    def seal(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None,
             headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
        # binary framing (u32 metadata length | metadata JSON | raw value): the value is base64'd
        # once, for the dead-letter JSON, not twice
        meta = orjson.dumps({"key": _b64(key), "value_is_null": value is None,
                             "headers": [[name, _b64(data)] for name, data in (headers or [])]})
        payload = struct.pack(">I", len(meta)) + meta + (value or b"")
        nonce = secrets.token_bytes(12)
        sealed = nonce + self._aead.encrypt(nonce, payload, _coordinates(topic, partition, offset))
        return {"format": SEAL_FORMAT, "key_id": self.key_id, "data": base64.b64encode(sealed).decode("ascii")}

    def unseal(self, dead_letter: dict[str, Any]) -> dict[str, Any]:
        """Recover {'value', 'key', 'headers'} (bytes) from a dead-letter record."""
        source = dead_letter["source"]
        sealed = base64.b64decode(dead_letter["sealed"]["data"])
        try:
            payload = self._aead.decrypt(sealed[:12], sealed[12:], _coordinates(
                source["topic"], source["partition"], source["offset"]))
        except InvalidTag:
            raise DecryptError("tampered", "sealed payload does not authenticate for its source coordinates") \
                from None
        (meta_len,) = struct.unpack(">I", payload[:4])
        meta = orjson.loads(payload[4:4 + meta_len])
        value = None if meta["value_is_null"] else payload[4 + meta_len:]
        return {"value": value, "key": _unb64(meta["key"]),
                "headers": [(n, _unb64(d)) for n, d in meta["headers"]]}


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)
