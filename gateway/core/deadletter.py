"""Dead-letter records: reason, message and coordinates in clear; the original event sealed.

The original value, key and headers are encrypted (AES-256-GCM) and bound to their source
coordinates, so an operator holding the key can inspect or replay them and nobody else can read
them. Three seal formats:

- format 3: under a seal key of this process, derived (HKDF-SHA256) from the keyring's active
  quarantine key and a random 128-bit seal id, for events whose subject cannot be read (they did
  not decode, or the plan has no tokenized subject). Bound to the source coordinates, the
  quarantine key id and the seal id, which the dead letter names. A seal key seals at most
  `max_uses` events (random 96-bit nonces: kept far below NIST SP 800-38D's 2^32 per key), then
  this process draws a new seal id; no two processes share one, so the bound holds across the
  group without any coordination. After `gateway keys rotate-quarantine` new seals use the new
  quarantine key (picked up at the next seal, one stat() of the keyring); old ones still unseal
  while the keyring holds their key. Bounded only by the dead-letter topic's retention: `gateway
  forget` cannot reach them.
- format 1 (written before format 3, still unsealed): directly under the quarantine key named by
  `key_id`, bound to the source coordinates.
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
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.errors import DecryptError, GatewayError, KeyringError
from gateway.keys.envelope import DEK_ID_BYTES
from gateway.keys.errors import KmsUnavailable
from gateway.keys.subject_keys import SubjectKeys
from gateway.values import b64

SEAL_FORMAT = 1  # directly under the quarantine key (no longer written; still unsealed)
SUBJECT_SEAL_FORMAT = 2  # under a per-subject key (erased by gateway forget)
QUARANTINE_SEAL_FORMAT = 3  # under a seal key derived from the quarantine key, used by one process only
QUARANTINE_FORMATS = frozenset({SEAL_FORMAT, QUARANTINE_SEAL_FORMAT})  # dead letters under the quarantine key
SEAL_ID_BYTES = 16
DEFAULT_MAX_USES = 4_000_000  # per seal key, like dek_max_uses
_DERIVE_INFO = b"privacy-gateway/quarantine-seal/v3/"

# reasons raised while decoding: no decoded record exists, so the subject can only be read by the
# best-effort JSON look (gateway.core.pipeline); any other reason came after a clean decode
DECODE_REASONS = frozenset({
    "empty_value", "record_too_large", "bad_framing", "bad_magic_byte", "unknown_schema_id",
    "unknown_schema_fingerprint", "incompatible_writer_schema", "avro_truncated", "avro_trailing_bytes",
    "avro_decode_error", "invalid_utf8", "json_invalid", "missing_field", "wrong_type",
    # Protobuf (gateway.core.codec.protobuf)
    "protobuf_bad_message_index", "protobuf_unknown_message_index", "protobuf_truncated", "protobuf_wrong_wire_type",
    "protobuf_decode_error", "protobuf_unknown_enum_value", "protobuf_value_out_of_range",
})
# decode failures of a JSON object that parsed but did not validate: its top-level fields are readable
JSON_SHAPE_REASONS = frozenset({"missing_field", "wrong_type"})


def _coordinates(topic: str, partition: int, offset: int) -> bytes:
    return orjson.dumps(["privacy-gateway/quarantine/v1", topic, partition, offset])


def _seal_coordinates(topic: str, partition: int, offset: int, key_id: str, seal_id: bytes) -> bytes:
    """Format 3's associated data: the source coordinates, the quarantine key id and the seal id."""
    return orjson.dumps(["privacy-gateway/quarantine/v3", topic, partition, offset, key_id, seal_id.hex()])


def _seal_aead(quarantine_key: bytes, key_id: str, seal_id: bytes) -> AESGCM:
    """The seal key of (quarantine key, seal id): HKDF-SHA256, the seal id as salt, the key id in the info."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=seal_id, info=_DERIVE_INFO + key_id.encode())
    return AESGCM(hkdf.derive(quarantine_key))


class QuarantineKeys(Protocol):
    """Where the quarantine keys come from: the keyring (gateway.keys.keyring.Keyring)."""

    def quarantine_key(self, key_id: str | None = None) -> tuple[str, bytes]: ...

    def reload_if_changed(self) -> bool: ...


class _OneQuarantineKey:
    """A single quarantine key, for callers that hold one (key id, key) rather than the keyring."""

    def __init__(self, key_id: str, key: bytes) -> None:
        self._key_id, self._key = key_id, key

    def __repr__(self) -> str:
        return f"<quarantine key {self._key_id!r}>"

    def quarantine_key(self, key_id: str | None = None) -> tuple[str, bytes]:
        if key_id not in (None, self._key_id):
            raise DecryptError("key_not_held", f"sealed under quarantine key '{key_id}', not '{self._key_id}'")
        return self._key_id, self._key

    def reload_if_changed(self) -> bool:
        return False


@dataclass
class _SealKey:
    """The seal key this process uses now, and how many events it sealed."""

    key_id: str
    seal_id: bytes
    aead: AESGCM
    uses: int = 0

    def __repr__(self) -> str:
        return f"<seal key {self.key_id!r}/{self.seal_id.hex()} uses={self.uses}>"


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
    """Seals dead letters (format 3 under a seal key derived from the quarantine key, format 2 under a
    subject's key) and opens them (formats 1 to 3). `subject_keys` (the key topic's content) is
    needed for format 2 either way.

    Built on the keyring (`of_keyring`), it seals under the newest quarantine key and opens any the
    keyring holds; built on one (key id, key), under and with that key only."""

    def __init__(self, key_id: str, key: bytes, subject_keys: SubjectKeys | None = None,
                 max_uses: int = DEFAULT_MAX_USES) -> None:
        self._init(_OneQuarantineKey(key_id, key), subject_keys, max_uses)

    @classmethod
    def of_keyring(cls, keyring: QuarantineKeys, subject_keys: SubjectKeys | None = None,
                   max_uses: int = DEFAULT_MAX_USES) -> QuarantineSealer:
        sealer = cls.__new__(cls)
        sealer._init(keyring, subject_keys, max_uses)
        return sealer

    def _init(self, keys: QuarantineKeys, subject_keys: SubjectKeys | None, max_uses: int) -> None:
        self._keys = keys
        self.subject_keys = subject_keys
        self.max_uses = max_uses
        self._lock = threading.Lock()
        self._current: _SealKey | None = None
        self._opened: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()  # format 3 seal keys, bounded
        self._audit_ids: tuple[str, orjson.Fragment] | None = None
        keys.quarantine_key()  # fails now, not at the first dead letter, when the keyring holds none

    def __repr__(self) -> str:
        return f"<QuarantineSealer key_id={self.key_id!r} subject_keys={self.subject_keys is not None}>"

    @property
    def key_id(self) -> str:
        """The quarantine key new seals use (the audit names it)."""
        current = self._current
        return current.key_id if current is not None else self._keys.quarantine_key()[0]

    def audit_key_ids(self) -> orjson.Fragment:
        """The audit's `key_ids` of a dead letter sealed under the quarantine key, serialized once per key."""
        key_id = self.key_id
        cached = self._audit_ids
        if cached is None or cached[0] != key_id:
            cached = self._audit_ids = (key_id, orjson.Fragment(orjson.dumps([key_id])))
        return cached[1]

    def _seal_key(self) -> _SealKey:
        """The seal key for the next event: a new one (new random seal id) when the quarantine key
        rotated or the current one sealed `max_uses` events."""
        try:
            self._keys.reload_if_changed()  # one stat(): a rotation by `gateway keys rotate-quarantine`
        except (KeyringError, OSError):
            pass  # keep sealing under the key held: a dead letter must never fail on the keyring file
        key_id, key = self._keys.quarantine_key()
        current = self._current
        if current is None or current.key_id != key_id or current.uses >= self.max_uses:
            seal_id = secrets.token_bytes(SEAL_ID_BYTES)
            current = self._current = _SealKey(key_id, seal_id, _seal_aead(key, key_id, seal_id))
        current.uses += 1
        return current

    def seal(self, topic: str, partition: int, offset: int, value: bytes | None, key: bytes | None,
             headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
        """Format 3: under this process's seal key, bound to the source coordinates and the key's names."""
        with self._lock:
            seal_key = self._seal_key()
        nonce = secrets.token_bytes(12)
        aad = _seal_coordinates(topic, partition, offset, seal_key.key_id, seal_key.seal_id)
        sealed = nonce + seal_key.aead.encrypt(nonce, _payload(value, key, headers), aad)
        return {"format": QUARANTINE_SEAL_FORMAT, "key_id": seal_key.key_id, "seal_id": seal_key.seal_id.hex(),
                "data": base64.b64encode(sealed).decode("ascii")}

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
            aead, aad = AESGCM(self._quarantine_key(sealed)[1]), _coordinates(topic, partition, offset)
        elif version == QUARANTINE_SEAL_FORMAT:
            aead, aad = self._opened_seal_key(sealed, topic, partition, offset)
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

    def _quarantine_key(self, sealed: dict[str, Any]) -> tuple[str, bytes]:
        """The quarantine key a format-1 or -3 seal names; key_not_held when the keyring lacks it."""
        key_id = sealed.get("key_id")
        if not isinstance(key_id, str) or not key_id:
            raise DecryptError("malformed", "a quarantine seal names its key (key_id)")
        try:
            return self._keys.quarantine_key(key_id)
        except DecryptError:
            if not self._keys.reload_if_changed():  # rotated by another process since the keyring was read
                raise
            return self._keys.quarantine_key(key_id)

    def _opened_seal_key(self, sealed: dict[str, Any], topic: str, partition: int,
                         offset: int) -> tuple[AESGCM, bytes]:
        try:
            seal_id = bytes.fromhex(sealed["seal_id"])
        except (KeyError, TypeError, ValueError):
            raise DecryptError("malformed", "a format-3 seal names its seal id (seal_id, hex)") from None
        if len(seal_id) != SEAL_ID_BYTES:
            raise DecryptError("malformed", "a format-3 seal's seal id is not 16 bytes")
        key_id, key = self._quarantine_key(sealed)
        with self._lock:
            aead = self._opened.get((key_id, seal_id))
            if aead is None:
                aead = self._opened[(key_id, seal_id)] = _seal_aead(key, key_id, seal_id)
                if len(self._opened) > 1024:
                    self._opened.popitem(last=False)
        return aead, _seal_coordinates(topic, partition, offset, key_id, seal_id)

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
    return None if data is None else b64(data)


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


@dataclass(frozen=True)
class Unsealed:
    """One line of `gateway dlq unseal`'s input: the dead letter's original (bytes base64, for inspection or
    replay), or why it did not open (`problem`: reason and message, never a value)."""

    where: str  # "dead letter <topic>/<partition>/<offset>", or "line N" when the line is not a dead letter
    original: dict[str, Any] | None = None  # {"source", "reason", "value", "key", "headers"}
    problem: str | None = None


def unseal_lines(sealer: QuarantineSealer, lines: Iterable[bytes]) -> Iterator[Unsealed]:
    """Each non-blank line (a dead letter as JSON, as `gateway dump` prints it) opened; one that does not
    open is reported with its reason (key_erased: its subject was forgotten) and the others still open."""
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            letter = orjson.loads(line)
            source = letter["source"]
            where = f"dead letter {source['topic']}/{source['partition']}/{source['offset']}"
            opened = sealer.unseal(letter)
        except DecryptError as exc:
            yield Unsealed(where, problem=f"{exc.reason}: {exc.message}")
            continue
        except KmsUnavailable as exc:
            yield Unsealed(where, problem=f"kms_unavailable: {exc}")
            continue
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            yield Unsealed(where, problem="malformed: not a dead letter (JSON with source and sealed)")
            continue
        yield Unsealed(where, original={
            "source": source, "reason": letter.get("reason"), "value": _b64(opened["value"]),
            "key": _b64(opened["key"]), "headers": [[name, _b64(data)] for name, data in opened["headers"]],
        })
