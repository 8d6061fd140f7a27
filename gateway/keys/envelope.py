"""Envelope encryption of fields: AES-256-GCM under cached DEKs wrapped by a KMS key.

Ciphertext format v1 (self-describing, all integers big-endian)::

    0x01 | u8 len | kek_id | dek_id (16 bytes) | u16 len | wrapped DEK | nonce (12) | ciphertext+tag

Format v2, per-subject keys (``"encrypt": {"per_subject": true}``): the DEK is the subject's own,
stored wrapped in the key topic only, so erasing it there (``gateway forget``) shreds every copy::

    0x02 | u8 len | token domain | dek_id (16 bytes) | nonce (12) | ciphertext+tag

The wrapped DEK travels with the ciphertext (as Kroxylicious does per record), so a holder of
the KEK can decrypt offline. The associated data is the header plus the context (topic, field
path, subject), each length-prefixed: a ciphertext moved to another field, record subject or
topic, or with any header byte changed, fails to authenticate.
"""

from __future__ import annotations

import functools
import os
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, GatewayError
from gateway.keys.errors import KmsError, KmsUnavailable
from gateway.keys.kms import KmsProvider, WrappedKey

FORMAT_V1 = 1
FORMAT_SUBJECT = 2
NONCE_BYTES = 12
DEK_ID_BYTES = 16
MIN_WRAPPED_BYTES = 16  # any KMS's wrapped 32-byte key is longer: shorter is corrupt
_DEK_CONTEXT = b"privacy-gateway/field-dek"


def _length_prefixed(part: str) -> bytes:
    data = part.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def context_prefix(topic: str, field_path: str) -> bytes:
    """The static part of a field's context, computed once per field when the sanitizer is built."""
    return _length_prefixed(topic) + _length_prefixed(field_path)


def context_bytes(topic: str, field_path: str, subject: str) -> bytes:
    """Length-prefixed encoding of the context, so no two contexts share a byte string."""
    return context_prefix(topic, field_path) + _length_prefixed(subject)


def subject_suffix(subject: str) -> bytes:
    """The per-event part of the context (see `context_bytes`)."""
    return _length_prefixed(subject)


@dataclass
class DataKey:
    """One DEK in use: its AEAD object (built once), its wrapped form and its usage."""

    dek_id: bytes
    aead: AESGCM
    header: bytes
    created: float
    uses: int = 0

    def __repr__(self) -> str:
        return f"<DataKey id={self.dek_id.hex()} uses={self.uses}>"

    @functools.cached_property
    def key_id(self) -> str:
        """Printable id for audit: '<kek_id>/<dek_id hex>' (v1) or 'subject:<domain>/<dek_id hex>' (v2)."""
        kek_len = self.header[1]
        prefix = "subject:" if self.header[0] == FORMAT_SUBJECT else ""
        return f"{prefix}{self.header[2:2 + kek_len].decode()}/{self.dek_id.hex()}"


def subject_header(domain: str, dek_id: bytes) -> bytes:
    """Header of a format-v2 ciphertext: the DEK is found by (domain, subject token, dek_id)."""
    data = domain.encode("utf-8")
    return bytes([FORMAT_SUBJECT, len(data)]) + data + dek_id


class DekCache:
    """Hands out the current DEK; makes a new one after `max_age_s` or `max_uses`.

    The KMS is called once per new DEK, never per event.
    """

    def __init__(self, kms: KmsProvider, max_age_s: float, max_uses: int) -> None:
        self._kms = kms
        self._max_age_s = max_age_s
        self.max_uses = max_uses
        self._current: DataKey | None = None
        self.kms_calls = 0
        self.hits = 0  # lookups served by the cached DEK (metrics: gateway_dek_cache_total)

    def current(self) -> DataKey:
        key = self._current
        if key is None or key.uses >= self.max_uses or time.monotonic() - key.created > self._max_age_s:
            key = self._current = self._new_key()
        else:
            self.hits += 1
        return key

    def _new_key(self) -> DataKey:
        dek = AESGCM.generate_key(bit_length=256)
        dek_id = secrets.token_bytes(DEK_ID_BYTES)
        wrapped = self._kms.wrap(dek, _DEK_CONTEXT + dek_id)
        self.kms_calls += 1
        kek = wrapped.kek_id.encode("utf-8")
        if len(kek) > 255 or len(wrapped.blob) > 65535:
            raise GatewayError("KMS returned a key id or wrapped key too long for ciphertext format v1")
        header = (bytes([FORMAT_V1, len(kek)]) + kek + dek_id
                  + struct.pack(">H", len(wrapped.blob)) + wrapped.blob)
        return DataKey(dek_id=dek_id, aead=AESGCM(dek), header=header, created=time.monotonic())


class _Nonces:
    """96-bit AES-GCM nonces: uniformly random and independent, as ``os.urandom(12)`` per field made
    them, drawn from the OS 341 at a time (one getrandom call per 4 KB instead of one per field,
    which cost about as much as the encryption of a short field).

    Each nonce is handed out once: ``next()`` on a list iterator is a single step under the GIL, so
    two threads never get the same one, and a forked child drops what its parent drew (it would
    otherwise repeat the parent's nonces under the same DEKs).
    """

    BLOCK = 4096 // NONCE_BYTES * NONCE_BYTES

    def __init__(self) -> None:
        self.it: Iterator[bytes] = iter(())

    def next(self) -> bytes:
        return next(self.it, None) or self._refill()

    def _refill(self) -> bytes:
        block = os.urandom(self.BLOCK)
        it = iter([block[i:i + NONCE_BYTES] for i in range(0, self.BLOCK, NONCE_BYTES)])
        nonce = next(it)
        self.it = it
        return nonce

    def forget(self) -> None:
        self.it = iter(())


NONCES = _Nonces()
os.register_at_fork(after_in_child=NONCES.forget)


def encrypt_field(key: DataKey, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt one field value under `key`, bound to `context` (see `context_bytes`): the one
    encryption path of the gateway (the sanitizer's encrypt operator calls it per field)."""
    key.uses += 1
    nonce = next(NONCES.it, None) or NONCES.next()
    header = key.header
    return header + nonce + key.aead.encrypt(nonce, plaintext, header + context)


@dataclass(frozen=True)
class ParsedCiphertext:
    kek_id: str  # v2: the subject's token domain
    dek_id: bytes
    wrapped: bytes  # v2: empty (the wrapped DEK lives in the key topic)
    header: bytes
    nonce: bytes
    body: bytes
    version: int = FORMAT_V1

    @property
    def key_id(self) -> str:
        return f"{self.kek_id}/{self.dek_id.hex()}"


def parse_ciphertext(data: bytes) -> ParsedCiphertext:
    if data[:1] == bytes([FORMAT_SUBJECT]):
        return _parse_subject(data)
    try:
        if data[0] != FORMAT_V1:
            raise DecryptError("unknown_format", f"ciphertext format version {data[0]} is not supported")
        kek_len = data[1]
        pos = 2 + kek_len
        kek_id = data[2:pos].decode("utf-8")
        dek_id = data[pos:pos + DEK_ID_BYTES]
        pos += DEK_ID_BYTES
        (wrapped_len,) = struct.unpack(">H", data[pos:pos + 2])
        pos += 2
        wrapped = data[pos:pos + wrapped_len]
        pos += wrapped_len
        header = data[:pos]
        nonce = data[pos:pos + NONCE_BYTES]
        body = data[pos + NONCE_BYTES:]
    except (IndexError, struct.error, UnicodeDecodeError):
        raise DecryptError("malformed", "ciphertext is truncated or not in the gateway's format") from None
    if (len(dek_id) != DEK_ID_BYTES or wrapped_len < MIN_WRAPPED_BYTES or len(wrapped) != wrapped_len
            or len(nonce) != NONCE_BYTES or len(body) < 16):
        raise DecryptError("malformed", "ciphertext is truncated or not in the gateway's format")
    return ParsedCiphertext(kek_id, dek_id, wrapped, header, nonce, body)


def _parse_subject(data: bytes) -> ParsedCiphertext:
    try:
        pos = 2 + data[1]
        domain = data[2:pos].decode("utf-8")
    except (IndexError, UnicodeDecodeError):
        raise DecryptError("malformed", "ciphertext is truncated or not in the gateway's format") from None
    dek_id = data[pos:pos + DEK_ID_BYTES]
    header = data[:pos + DEK_ID_BYTES]
    nonce = data[pos + DEK_ID_BYTES:pos + DEK_ID_BYTES + NONCE_BYTES]
    body = data[pos + DEK_ID_BYTES + NONCE_BYTES:]
    if not domain or len(dek_id) != DEK_ID_BYTES or len(nonce) != NONCE_BYTES or len(body) < 16:
        raise DecryptError("malformed", "ciphertext is truncated or not in the gateway's format")
    return ParsedCiphertext(domain, dek_id, b"", header, nonce, body, FORMAT_SUBJECT)


class SubjectKeyResolver(Protocol):
    def aead_for(self, domain: str, subject: str, dek_id: bytes) -> AESGCM: ...


class FieldDecryptor:
    """The authorized consumer's side: unwraps each DEK once (bounded cache) and opens fields.

    Per-subject ciphertexts (format v2) need `subject_keys` (the key topic's content) and the
    record's subject token; an erased subject's fields fail with reason "key_erased".
    """

    def __init__(self, kms: KmsProvider, cache_size: int = 10_000,
                 subject_keys: SubjectKeyResolver | None = None) -> None:
        self._kms = kms
        self._cache: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._cache_size = cache_size
        self._subject_keys = subject_keys

    def decrypt(self, data: bytes, context: bytes, subject: str = "") -> bytes:
        parsed = parse_ciphertext(data)
        if parsed.version == FORMAT_SUBJECT:
            if self._subject_keys is None:
                raise DecryptError("key_not_held", "the field is under a per-subject key: read the key topic "
                                   "(gateway decrypt --bootstrap ...) to open it")
            aead = self._subject_keys.aead_for(parsed.kek_id, subject, parsed.dek_id)
        else:
            aead = self._aead_for(parsed)
        try:
            return aead.decrypt(parsed.nonce, parsed.body, parsed.header + context)
        except InvalidTag:
            raise DecryptError("tampered", "ciphertext does not authenticate: it was altered, or moved "
                               "to another topic, field or subject") from None

    def _aead_for(self, parsed: ParsedCiphertext) -> AESGCM:
        cache_key = parsed.header
        aead = self._cache.get(cache_key)
        if aead is not None:
            self._cache.move_to_end(cache_key)
            return aead
        try:
            dek = self._kms.unwrap(WrappedKey(parsed.kek_id, parsed.wrapped), _DEK_CONTEXT + parsed.dek_id)
        except KmsUnavailable as exc:
            raise DecryptError("kms_unavailable", f"{exc}; try again when the KMS is back") from None
        except KmsError as exc:
            raise DecryptError("not_permitted", str(exc)) from None
        aead = self._cache[cache_key] = AESGCM(dek)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return aead
