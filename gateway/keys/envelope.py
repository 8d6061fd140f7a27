"""Envelope encryption of fields: AES-256-GCM under cached DEKs wrapped by a KMS key.

Ciphertext format v1 (self-describing, all integers big-endian)::

    0x01 | u8 len | kek_id | dek_id (16 bytes) | u16 len | wrapped DEK | nonce (12) | ciphertext+tag

Format v2, per-subject keys (``"encrypt": {"per_subject": true}``): the DEK is the subject's own,
stored wrapped in the key topic only, so erasing it there (``gateway forget``) shreds every copy::

    0x02 | u8 len | token domain | dek_id (16 bytes) | nonce (12) | ciphertext+tag

Format v3, role-scoped (``"encrypt": {"roles": ["fraud", "support"]}``): one DEK wrapped under each
listed role's KEK, so only a holder of one of those KEKs can unwrap it (gateway.keys.roles)::

    0x03 | dek_id (16 bytes) | u8 count | count x (u8 len | role | u8 len | kek_id | u16 len | wrapped DEK)
         | nonce (12) | ciphertext+tag

Format v4, period keys (``"encrypt": {"retention_days": N}``): the DEK of the UTC day the event falls
in, for that retention, stored wrapped in the key topic only (gateway.keys.period_keys), so erasing
it there (``gateway retention enforce``) makes that day's ciphertexts unreadable everywhere. A
per-subject field with a retention names the subject's token domain: its key is per subject and day::

    0x04 | u16 retention days | u32 day (days since 1970-01-01 UTC) | u8 len | token domain ("": shared)
         | dek_id (16 bytes) | nonce (12) | ciphertext+tag

Format v5, record-bound (every ciphertext the gateway writes from this version on): a prefix in front
of a v1-v4 or v6 ciphertext naming what binds it to its record::

    0x05 | binding (1 B: 1 = the record's event id, 2 = its source coordinates) | a v1-v4 or v6 ciphertext

and the associated data grows by the record's binding and the element's position: the event id as the
sanitized record carries it (or the `gateway-source` header, ``<topic>/<partition>/<offset>`` of the raw
event, for a view without an event id), length-prefixed, then the array indexes and map keys from the
record down to the value. A ciphertext moved to another record of the same subject, or to another
element of the same array, fails to authenticate. Older versions (no prefix) still decrypt.

Format v6, role-scoped key-topic keys (``"roles"`` with ``"per_subject"`` or a retention): the DEK is
a per-subject or period key stored in the key topic, wrapped under each listed role's KEK there and
under no other key, so ``gateway forget`` and ``gateway retention enforce`` erase it as they erase v2
and v4 keys, and only the roles' holders open it::

    0x06 | u8 count | count x (u8 len | role) | u16 retention days (0: a subject key, no retention)
         | u32 day | u8 len | token domain ("": the day's shared key) | dek_id (16 bytes) | nonce (12)
         | ciphertext+tag

Which format a field gets is decided in one place, `key_format`, from its key scope (`Format`).

Roles are sorted and unique. Each wrap is bound to its role and the DEK id (the KMS's encryption
context or associated data), so an entry cannot be relabelled for another role even where two
roles share a KMS key; the header, role list included, is part of the associated data.

The wrapped DEK travels with the ciphertext (as Kroxylicious does per record), so a holder of
the KEK can decrypt offline. The associated data is the header plus the context (topic, field
path, subject), each length-prefixed: a ciphertext moved to another field, record subject or
topic, or with any header byte changed, fails to authenticate.
"""

from __future__ import annotations

import datetime
import functools
import os
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, GatewayError
from gateway.keys.errors import KmsConfigError, KmsError, KmsUnavailable
from gateway.keys.kms import KmsProvider, WrappedKey
from gateway.keys.roles import ROLE_NAME_RULE, valid_role


class Format(IntEnum):
    """Ciphertext format versions (the first byte). A new key scope or binding is a new version; every
    older one stays readable."""

    SHARED = 1  # a DEK of the DEK cache, wrapped by the KEK, in the header
    SUBJECT = 2  # the subject's key, in the key topic (gateway forget)
    ROLES = 3  # a DEK wrapped under each role's KEK, in the header
    PERIOD = 4  # the key of a retention's day (and subject), in the key topic (gateway retention enforce)
    RECORD_BOUND = 5  # a prefix: the ciphertext that follows is bound to its record and element
    ROLE_KEYED = 6  # a subject or period key stored in the key topic wrapped per role only


class Binding(IntEnum):
    """What binds a v5 ciphertext to its record (its second byte)."""

    EVENT_ID = 1  # the event id as the sanitized record carries it (the plan's event_id field)
    SOURCE = 2  # the raw event's coordinates, the `gateway-source` header (views without an event id)


def key_format(per_subject: bool, roles: tuple[str, ...], retention_days: int | None) -> Format:
    """The one decision of which key scope (and so which format) an encrypted field uses."""
    if roles:
        return Format.ROLE_KEYED if per_subject or retention_days is not None else Format.ROLES
    if retention_days is not None:
        return Format.PERIOD
    return Format.SUBJECT if per_subject else Format.SHARED


_BINDINGS = frozenset(b.value for b in Binding)
FORMAT_V1 = Format.SHARED
FORMAT_SUBJECT = Format.SUBJECT
FORMAT_ROLES = Format.ROLES
FORMAT_PERIOD = Format.PERIOD
NONCE_BYTES = 12
DEK_ID_BYTES = 16
MIN_WRAPPED_BYTES = 16  # any KMS's wrapped 32-byte key is longer: shorter is corrupt
_DEK_CONTEXT = b"privacy-gateway/field-dek"
_ROLE_DEK_CONTEXT = b"privacy-gateway/role-dek/"
_MALFORMED = "ciphertext is truncated or not in the gateway's format"
EPOCH_DATE = datetime.date(1970, 1, 1)  # day 0 of format v4's day numbers (UTC)
MAX_PERIOD_DAY = (datetime.date.max - EPOCH_DATE).days  # 9999-12-31: later days have no date to name them


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


def record_prefix(binding: Binding) -> bytes:
    """The v5 prefix of a ciphertext bound to its record by `binding`."""
    return bytes([Format.RECORD_BOUND, binding])


def record_suffix(record_ref: str) -> bytes:
    """A v5 ciphertext's record binding in its associated data (after the subject): the event id as the
    sanitized record carries it, or the `gateway-source` coordinates."""
    return _length_prefixed(record_ref)


def index_step(index: int) -> bytes:
    """One array level of an element's position (appended after `record_suffix`)."""
    return b"i" + struct.pack(">Q", index)


def key_step(key: str) -> bytes:
    """One map level of an element's position."""
    return b"k" + _length_prefixed(key)


def role_wrap_context(role: str, dek_id: bytes) -> bytes:
    """What a role's wrap of a DEK is bound to: the role and the DEK id (format v3)."""
    data = role.encode("utf-8")
    return _ROLE_DEK_CONTEXT + bytes([len(data)]) + data + dek_id


@dataclass(frozen=True)
class RoleWrap:
    """One entry of a v3 header: the DEK wrapped for `role` under `kek_id`."""

    role: str
    kek_id: str
    wrapped: bytes

    def __repr__(self) -> str:
        return f"RoleWrap(role={self.role!r}, kek_id={self.kek_id!r}, wrapped=<{len(self.wrapped)} bytes>)"


def _role_entries(data: bytes, pos: int) -> tuple[tuple[RoleWrap, ...], int]:
    """The entries of a v3 header starting at the count byte; (entries, position after them).
    Raises DecryptError("malformed") on anything but sorted, unique, complete entries."""
    try:
        count = data[pos]
        pos += 1
        entries: list[RoleWrap] = []
        for _ in range(count):
            end = pos + 1 + data[pos]
            role = data[pos + 1:end].decode("utf-8")
            pos = end + 1 + data[end]
            kek_id = data[end + 1:pos].decode("utf-8")
            (wrapped_len,) = struct.unpack(">H", data[pos:pos + 2])
            wrapped = data[pos + 2:pos + 2 + wrapped_len]
            pos += 2 + wrapped_len
            if not valid_role(role) or not kek_id or wrapped_len < MIN_WRAPPED_BYTES or len(wrapped) != wrapped_len:
                raise DecryptError("malformed", _MALFORMED)
            if entries and entries[-1].role >= role:
                raise DecryptError("malformed", "ciphertext's role list is not sorted and unique")
            entries.append(RoleWrap(role, kek_id, wrapped))
    except (IndexError, struct.error, UnicodeDecodeError):
        raise DecryptError("malformed", _MALFORMED) from None
    if not entries:
        raise DecryptError("malformed", "ciphertext lists no role")
    return tuple(entries), pos


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
        """Printable id for audit: '<kek_id>/<dek_id hex>' (v1), 'subject:<domain>/<dek_id hex>' (v2),
        'roles:<role>,<role>/<dek_id hex>' (v3) or 'period:<days>/<yyyy-mm-dd>[/subject:<domain>]/<dek_id hex>'
        (v4; never the subject's token)."""
        if self.header[0] == FORMAT_PERIOD:
            days, day, domain = _period_fields(self.header)
            return period_key_id(days, day, domain, self.dek_id)
        if self.header[0] == Format.ROLE_KEYED:
            roles, days, day, domain, _ = _role_keyed_fields(self.header)
            return role_keyed_key_id(roles, days, day, domain, self.dek_id)
        if self.header[0] == FORMAT_ROLES:
            entries, _ = _role_entries(self.header, 1 + DEK_ID_BYTES)
            return f"roles:{','.join(e.role for e in entries)}/{self.dek_id.hex()}"
        kek_len = self.header[1]
        prefix = "subject:" if self.header[0] == FORMAT_SUBJECT else ""
        return f"{prefix}{self.header[2:2 + kek_len].decode()}/{self.dek_id.hex()}"


def subject_header(domain: str, dek_id: bytes) -> bytes:
    """Header of a format-v2 ciphertext: the DEK is found by (domain, subject token, dek_id)."""
    data = domain.encode("utf-8")
    return bytes([FORMAT_SUBJECT, len(data)]) + data + dek_id


def period_header(days: int, day: int, domain: str, dek_id: bytes) -> bytes:
    """Header of a format-v4 ciphertext: the DEK is found by (retention days, day, domain, subject token
    when `domain` is set, dek_id) in the key topic."""
    data = domain.encode("utf-8")
    if not 1 <= days <= 0xFFFF or not 0 <= day <= MAX_PERIOD_DAY or len(data) > 255 or len(dek_id) != DEK_ID_BYTES:
        raise GatewayError("a period key's retention, day, domain or id does not fit ciphertext format v4")
    return bytes([FORMAT_PERIOD]) + struct.pack(">HI", days, day) + bytes([len(data)]) + data + dek_id


def role_keyed_header(roles: tuple[str, ...], days: int, day: int, domain: str, dek_id: bytes) -> bytes:
    """Header of a format-v6 ciphertext: the DEK is the key-topic key named by (roles, retention days or 0
    for a subject key, day, domain, subject token when `domain` is set, dek_id), wrapped per role there."""
    data = domain.encode("utf-8")
    names = [r.encode("utf-8") for r in roles]
    if (not 1 <= len(roles) <= 255 or list(roles) != sorted(set(roles)) or not all(valid_role(r) for r in roles)
            or not 0 <= days <= 0xFFFF or not 0 <= day <= MAX_PERIOD_DAY or len(data) > 255
            or len(dek_id) != DEK_ID_BYTES or (days == 0 and (not data or day))):
        raise GatewayError("a role-scoped key's roles, retention, day, domain or id does not fit ciphertext format v6")
    return (bytes([Format.ROLE_KEYED, len(names)]) + b"".join(bytes([len(n)]) + n for n in names)
            + struct.pack(">HI", days, day) + bytes([len(data)]) + data + dek_id)


def role_keyed_key_id(roles: tuple[str, ...], days: int, day: int, domain: str, dek_id: bytes) -> str:
    """The audit's name for a v6 key: its roles, then the period or subject key's id (never a token)."""
    inner = period_key_id(days, day, domain, dek_id) if days else f"subject:{domain}/{dek_id.hex()}"
    return f"roles:{','.join(roles)}/{inner}"


def _period_fields(header: bytes) -> tuple[int, int, str]:
    """(retention days, day, token domain) of a v4 header (its first bytes are checked by the parser)."""
    days, day = struct.unpack(">HI", header[1:7])
    return days, day, header[8:8 + header[7]].decode("utf-8")


def period_key_id(days: int, day: int, domain: str, dek_id: bytes) -> str:
    """The audit's name for a period key: retention, day and DEK id, and the token domain of a per-subject
    one, never the subject's token (gateway.keys.period_keys names the key-topic records)."""
    period = (EPOCH_DATE + datetime.timedelta(days=day)).isoformat()
    scope = f"subject:{domain}/" if domain else ""
    return f"period:{days}/{period}/{scope}{dek_id.hex()}"


class _RotatingDek:
    """The DEK bounds, kept in one place: hands out the current DEK until it was used `max_uses` times or
    is older than `max_age_s`, then makes a new one (`_new_key`: the KMS wraps, once per new DEK)."""

    def __init__(self, max_age_s: float, max_uses: int) -> None:
        self._max_age_s = max_age_s
        self.max_uses = max_uses
        self._current: DataKey | None = None
        self._hits = 0

    def current(self) -> DataKey:
        key = self._current
        if key is None or key.uses >= self.max_uses or time.monotonic() - key.created > self._max_age_s:
            key = self._current = self._new_key()
        else:
            self._hits += 1
        return key

    def _new_key(self) -> DataKey:
        raise NotImplementedError


class DekCache(_RotatingDek):
    """Hands out the current DEK; makes a new one after `max_age_s` or `max_uses`.

    The KMS is called once per new DEK, never per event.
    """

    def __init__(self, kms: KmsProvider, max_age_s: float, max_uses: int) -> None:
        super().__init__(max_age_s, max_uses)
        self._kms = kms
        self._kms_calls = 0
        self._role_caches: dict[tuple[str, ...], RoleDekCache] = {}

    @property
    def kms_calls(self) -> int:
        """KMS wraps made for new DEKs, role-scoped ones included (one per role per DEK)."""
        return self._kms_calls + sum(c.kms_calls for c in self._role_caches.values())

    @property
    def hits(self) -> int:
        """Lookups served by a cached DEK (metrics: gateway_dek_cache_total), role-scoped ones included."""
        return self._hits + sum(c.hits for c in self._role_caches.values())

    def for_roles(self, roles: tuple[str, ...]) -> RoleDekCache:
        """The DEK cache of one role set (format v3), made once and shared by every field naming that
        set. Raises KmsConfigError when the KMS has no key for one of the roles."""
        key = tuple(sorted(set(roles)))
        cache = self._role_caches.get(key)
        if cache is None:
            wrapping = getattr(self._kms, "role_wrapping_kms", None)
            if wrapping is None:
                raise KmsConfigError(f"KMS provider '{self._kms.name}' holds no role keys")
            providers = tuple((role, wrapping(role)) for role in key)
            cache = self._role_caches[key] = RoleDekCache(providers, self._max_age_s, self.max_uses)
        return cache

    def _new_key(self) -> DataKey:
        dek = AESGCM.generate_key(bit_length=256)
        dek_id = secrets.token_bytes(DEK_ID_BYTES)
        wrapped = self._kms.wrap(dek, _DEK_CONTEXT + dek_id)
        self._kms_calls += 1
        kek = wrapped.kek_id.encode("utf-8")
        if len(kek) > 255 or len(wrapped.blob) > 65535:
            raise GatewayError("KMS returned a key id or wrapped key too long for ciphertext format v1")
        header = (bytes([FORMAT_V1, len(kek)]) + kek + dek_id
                  + struct.pack(">H", len(wrapped.blob)) + wrapped.blob)
        return DataKey(dek_id=dek_id, aead=AESGCM(dek), header=header, created=time.monotonic())


class RoleDekCache(_RotatingDek):
    """Like `DekCache`, for one role set: each new DEK is wrapped under every role's KEK (format v3).

    The KMSs are called once per new DEK per role, never per event. `providers` are (role, KMS) pairs.
    """

    def __init__(self, providers: tuple[tuple[str, KmsProvider], ...], max_age_s: float, max_uses: int) -> None:
        roles = [role for role, _ in providers]
        if not 1 <= len(set(roles)) == len(roles) <= 255:
            raise GatewayError("a role-scoped field needs 1 to 255 distinct roles (ciphertext format v3)")
        super().__init__(max_age_s, max_uses)
        self._providers = tuple(sorted(providers, key=lambda pair: pair[0]))  # the header's order
        self.roles = tuple(role for role, _ in self._providers)
        self.kms_calls = 0

    @property
    def hits(self) -> int:
        """Lookups served by a cached DEK."""
        return self._hits

    def __repr__(self) -> str:
        return f"<RoleDekCache roles={list(self.roles)} kms_calls={self.kms_calls}>"

    def _new_key(self) -> DataKey:
        dek = AESGCM.generate_key(bit_length=256)
        dek_id = secrets.token_bytes(DEK_ID_BYTES)
        header = bytearray([FORMAT_ROLES]) + dek_id + bytes([len(self._providers)])
        for role, kms in self._providers:
            wrapped = kms.wrap(dek, role_wrap_context(role, dek_id))
            self.kms_calls += 1
            role_bytes, kek = role.encode("utf-8"), wrapped.kek_id.encode("utf-8")
            if len(kek) > 255 or len(wrapped.blob) > 65535 or len(role_bytes) > 255:
                raise GatewayError(f"KMS returned a key id or wrapped key for role '{role}' too long for "
                                   "ciphertext format v3")
            header += (bytes([len(role_bytes)]) + role_bytes + bytes([len(kek)]) + kek
                       + struct.pack(">H", len(wrapped.blob)) + wrapped.blob)
        return DataKey(dek_id=dek_id, aead=AESGCM(dek), header=bytes(header), created=time.monotonic())


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


def encrypt_field(key: DataKey, plaintext: bytes, context: bytes, prefix: bytes = b"") -> bytes:
    """Encrypt one field value under `key`, bound to `context` (see `context_bytes`): the one
    encryption path of the gateway (the sanitizer's encrypt operator calls it per field). With a v5
    `prefix` (`record_prefix`), `context` ends with the record's binding and the element's position
    (`record_suffix`, `index_step`, `key_step`)."""
    key.uses += 1
    nonce = next(NONCES.it, None) or NONCES.next()
    header = prefix + key.header
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
    role_wraps: tuple[RoleWrap, ...] = ()  # v3: the DEK wrapped per role (kek_id: "roles:<r1>,<r2>")
    retention_days: int = 0  # v4, v6: the retention the period key belongs to (kek_id: the token domain or "")
    day: int = 0  # v4, v6: the period, days since 1970-01-01 UTC
    key_roles: tuple[str, ...] = ()  # v6: the roles whose wraps of the key-topic key may open it
    binding: Binding | None = None  # v5: what binds it to its record (None: an older, unbound ciphertext)

    @property
    def key_id(self) -> str:
        if self.version == Format.ROLE_KEYED:
            return role_keyed_key_id(self.key_roles, self.retention_days, self.day, self.kek_id, self.dek_id)
        if self.version == FORMAT_PERIOD:
            return period_key_id(self.retention_days, self.day, self.kek_id, self.dek_id)
        return f"{self.kek_id}/{self.dek_id.hex()}"

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles that may open a v3 or v6 ciphertext (empty for the others)."""
        return self.key_roles or tuple(w.role for w in self.role_wraps)


def parse_ciphertext(data: bytes) -> ParsedCiphertext:
    """The parts of a ciphertext of any format. `version` is its key scope (1-4, 6); a v5 (record-bound)
    one is that of the ciphertext after its prefix, with `binding` set and the prefix in `header`."""
    if data[:1] == bytes([Format.RECORD_BOUND]):
        if len(data) < 3 or data[1] not in _BINDINGS or data[2] == Format.RECORD_BOUND:
            raise DecryptError("malformed", _MALFORMED)
        inner = parse_ciphertext(data[2:])
        return replace(inner, header=data[:2] + inner.header, binding=Binding(data[1]))
    if data[:1] == bytes([Format.ROLE_KEYED]):
        return _parse_role_keyed(data)
    if data[:1] == bytes([FORMAT_SUBJECT]):
        return _parse_subject(data)
    if data[:1] == bytes([FORMAT_ROLES]):
        return _parse_roles(data)
    if data[:1] == bytes([FORMAT_PERIOD]):
        return _parse_period(data)
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


def _parse_roles(data: bytes) -> ParsedCiphertext:
    dek_id = data[1:1 + DEK_ID_BYTES]
    entries, pos = _role_entries(data, 1 + DEK_ID_BYTES)
    header, nonce, body = data[:pos], data[pos:pos + NONCE_BYTES], data[pos + NONCE_BYTES:]
    if len(dek_id) != DEK_ID_BYTES or len(nonce) != NONCE_BYTES or len(body) < 16:
        raise DecryptError("malformed", _MALFORMED)
    label = "roles:" + ",".join(e.role for e in entries)
    return ParsedCiphertext(label, dek_id, b"", header, nonce, body, FORMAT_ROLES, entries)


def _parse_period(data: bytes) -> ParsedCiphertext:
    try:
        days, day = struct.unpack(">HI", data[1:7])
        pos = 8 + data[7]
        domain = data[8:pos].decode("utf-8")
    except (IndexError, struct.error, UnicodeDecodeError):
        raise DecryptError("malformed", _MALFORMED) from None
    dek_id = data[pos:pos + DEK_ID_BYTES]
    header = data[:pos + DEK_ID_BYTES]
    nonce = data[pos + DEK_ID_BYTES:pos + DEK_ID_BYTES + NONCE_BYTES]
    body = data[pos + DEK_ID_BYTES + NONCE_BYTES:]
    if (days < 1 or day > MAX_PERIOD_DAY or len(dek_id) != DEK_ID_BYTES or len(nonce) != NONCE_BYTES
            or len(body) < 16):
        raise DecryptError("malformed", _MALFORMED)
    return ParsedCiphertext(domain, dek_id, b"", header, nonce, body, FORMAT_PERIOD, retention_days=days, day=day)


def _role_keyed_fields(data: bytes) -> tuple[tuple[str, ...], int, int, str, int]:
    """(roles, retention days, day, token domain, position of the DEK id) of a v6 header."""
    try:
        count, pos, roles = data[1], 2, []
        for _ in range(count):
            end = pos + 1 + data[pos]
            roles.append(data[pos + 1:end].decode("utf-8"))
            pos = end
        days, day = struct.unpack(">HI", data[pos:pos + 6])
        end = pos + 7 + data[pos + 6]
        domain = data[pos + 7:end].decode("utf-8")
    except (IndexError, struct.error, UnicodeDecodeError):
        raise DecryptError("malformed", _MALFORMED) from None
    return tuple(roles), days, day, domain, end


def _parse_role_keyed(data: bytes) -> ParsedCiphertext:
    roles, days, day, domain, end = _role_keyed_fields(data)
    dek_id = data[end:end + DEK_ID_BYTES]
    header = data[:end + DEK_ID_BYTES]
    nonce = data[end + DEK_ID_BYTES:end + DEK_ID_BYTES + NONCE_BYTES]
    body = data[end + DEK_ID_BYTES + NONCE_BYTES:]
    if (not roles or list(roles) != sorted(set(roles)) or not all(valid_role(r) for r in roles) or day > MAX_PERIOD_DAY
            or (days == 0 and (not domain or day)) or len(dek_id) != DEK_ID_BYTES or len(nonce) != NONCE_BYTES
            or len(body) < 16):
        raise DecryptError("malformed", _MALFORMED)
    return ParsedCiphertext(domain, dek_id, b"", header, nonce, body, Format.ROLE_KEYED, retention_days=days,
                            day=day, key_roles=roles)


@dataclass(frozen=True)
class RecordRef:
    """What the consumer knows of the record a ciphertext sits in, to check a v5 binding: the event id as
    the sanitized record carries it (None when the plan has none or the record lacks it), the
    `gateway-source` header (None when the consumer does not have it), and the element's position."""

    event_id: str | None = None
    source: str | None = None
    position: bytes = b""

    def suffix(self, binding: Binding) -> bytes:
        if binding == Binding.EVENT_ID:
            if self.event_id is None:
                raise DecryptError("tampered", "the ciphertext is bound to an event id this record does not carry")
            return record_suffix(self.event_id) + self.position
        return record_suffix(self.source or "") + self.position  # none given: what a call without one binds


class SubjectKeyResolver(Protocol):
    def aead_for(self, domain: str, subject: str, dek_id: bytes) -> AESGCM: ...


class RoleKeyResolver(Protocol):
    def role_aead_for(self, roles: tuple[str, ...], days: int, day: int, domain: str, subject: str,
                      dek_id: bytes, role: str, role_kms: KmsProvider) -> AESGCM: ...


class PeriodKeyResolver(Protocol):
    def aead_for(self, days: int, day: int, domain: str, subject: str, dek_id: bytes) -> AESGCM: ...


class FieldDecryptor:
    """The authorized consumer's side: unwraps each DEK once (bounded cache) and opens fields.

    Per-subject ciphertexts (format v2) need `subject_keys` (the key topic's content) and the
    record's subject token; an erased subject's fields fail with reason "key_erased".

    Period ciphertexts (format v4) need `period_keys` (the key topic's period keys; by default those
    `subject_keys` holds, gateway.keys.subject_keys.SubjectKeys.periods); a period whose key was erased
    by retention fails with "key_erased".

    Role-scoped ciphertexts (format v3) open only for a decryptor made with `role`, and only through
    that role's own entry and key (`kms.role_unwrapping_kms(role)`): a field whose header does not
    list the role is "not_permitted" whatever other keys this process holds, and "key_not_held"
    when the role's key is not available here. Role-scoped key-topic keys (format v6) likewise, with
    the role's wrap read from the key topic (`subject_keys`): "key_erased" once forget or retention
    erased it.

    Record-bound ciphertexts (format v5) also need the record they sit in (`RecordRef`: its event id
    or `gateway-source`, and the element's position); gateway.core.decrypt.decrypt_record builds it.
    """

    def __init__(self, kms: KmsProvider, cache_size: int = 10_000,
                 subject_keys: SubjectKeyResolver | None = None, role: str | None = None,
                 period_keys: PeriodKeyResolver | None = None) -> None:
        self._kms = kms
        self._cache: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._cache_size = cache_size
        self._subject_keys = subject_keys
        self._period_keys = period_keys if period_keys is not None else getattr(subject_keys, "periods", None)
        if role is not None and not valid_role(role):
            raise GatewayError(f"role '{role}' is not a role name ({ROLE_NAME_RULE})")
        self.role = role
        self._role_kms: KmsProvider | None = None

    def decrypt(self, data: bytes, context: bytes, subject: str = "", record: RecordRef | None = None) -> bytes:
        """Open one field. `context` is `context_bytes(topic, path, subject)`; a v5 (record-bound) ciphertext
        also needs `record`, what the consumer knows of the record it sits in."""
        parsed = parse_ciphertext(data)
        if parsed.version == Format.ROLE_KEYED:
            aead = self._role_keyed_aead_for(parsed, subject)
        elif parsed.version == FORMAT_SUBJECT:
            if self._subject_keys is None:
                raise DecryptError("key_not_held", "the field is under a per-subject key: read the key topic "
                                   "(gateway decrypt --bootstrap ...) to open it")
            aead = self._subject_keys.aead_for(parsed.kek_id, subject, parsed.dek_id)
        elif parsed.version == FORMAT_PERIOD:
            if self._period_keys is None:
                raise DecryptError("key_not_held", "the field is under a period key (retention): read the key topic "
                                   "(gateway decrypt --bootstrap ...) to open it")
            aead = self._period_keys.aead_for(parsed.retention_days, parsed.day, parsed.kek_id,
                                              subject if parsed.kek_id else "", parsed.dek_id)
        elif parsed.version == FORMAT_ROLES:
            aead = self._role_aead_for(parsed)
        else:
            aead = self._aead_for(parsed)
        if parsed.binding is not None:  # after the key: who may open it is said first
            context += (record or RecordRef()).suffix(parsed.binding)
        try:
            return aead.decrypt(parsed.nonce, parsed.body, parsed.header + context)
        except InvalidTag:
            unsure = ""
            if parsed.binding == Binding.SOURCE and (record is None or record.source is None):
                unsure = (" (it is bound to its record's source coordinates, and none were given: pass the record's "
                          "gateway-source header, decrypt_record(..., source=...))")
            raise DecryptError("tampered", "ciphertext does not authenticate: it was altered, or moved "
                               f"to another topic, field, subject, record or element{unsure}") from None

    def _role_keyed_aead_for(self, parsed: ParsedCiphertext, subject: str) -> AESGCM:
        """A v6 key: listed for this decryptor's role, still in the key topic, opened with the role's wrap."""
        readers = ", ".join(parsed.roles)
        if self.role is None or self.role not in parsed.roles:
            who = "no role" if self.role is None else f"role '{self.role}'"
            raise DecryptError("not_permitted", f"the field is readable by role(s) {readers} only; this decryptor "
                               f"acts as {who} (gateway decrypt --role R; FieldDecryptor(..., role=R))")
        if self._subject_keys is None or not hasattr(self._subject_keys, "role_aead_for"):
            raise DecryptError("key_not_held", "the field is under a role-scoped key of the key topic: read the key "
                               "topic (gateway decrypt --bootstrap ... --role R) to open it")
        resolver: RoleKeyResolver = self._subject_keys  # type: ignore[assignment]
        return resolver.role_aead_for(parsed.roles, parsed.retention_days, parsed.day, parsed.kek_id,
                                      subject if parsed.kek_id else "", parsed.dek_id, self.role,
                                      self._role_provider())

    def _role_provider(self) -> KmsProvider:
        if self._role_kms is None:
            unwrapping = getattr(self._kms, "role_unwrapping_kms", None)
            if unwrapping is None:
                raise DecryptError("key_not_held", f"KMS provider '{self._kms.name}' holds no role keys")
            self._role_kms = unwrapping(self.role)
        return self._role_kms

    def _role_aead_for(self, parsed: ParsedCiphertext) -> AESGCM:
        readers = ", ".join(parsed.roles)
        if self.role is None:
            raise DecryptError("not_permitted", f"the field is readable by role(s) {readers} only: decrypt as "
                               "one of them (gateway decrypt --role R; FieldDecryptor(..., role=R))")
        entry = next((w for w in parsed.role_wraps if w.role == self.role), None)
        if entry is None:
            raise DecryptError("not_permitted", f"role '{self.role}' may not open the field (readable by role(s) "
                               f"{readers})")
        return self._unwrap_cached(parsed.header, self._role_provider(), WrappedKey(entry.kek_id, entry.wrapped),
                                   role_wrap_context(self.role, parsed.dek_id))

    def _aead_for(self, parsed: ParsedCiphertext) -> AESGCM:
        return self._unwrap_cached(parsed.header, self._kms, WrappedKey(parsed.kek_id, parsed.wrapped),
                                   _DEK_CONTEXT + parsed.dek_id)

    def _unwrap_cached(self, header: bytes, kms: KmsProvider, wrapped: WrappedKey, context: bytes) -> AESGCM:
        """The DEK's AEAD, unwrapped once per header (a header names exactly one DEK and its wraps; a v5
        prefix names no key, so it is left out)."""
        cache_key = header[2:] if header[:1] == bytes([Format.RECORD_BOUND]) else header
        aead = self._cache.get(cache_key)
        if aead is not None:
            self._cache.move_to_end(cache_key)
            return aead
        try:
            dek = kms.unwrap(wrapped, context)
        except KmsUnavailable as exc:
            raise DecryptError("kms_unavailable", f"{exc}; try again when the KMS is back") from None
        except KmsError as exc:
            raise DecryptError("not_permitted", str(exc)) from None
        aead = self._cache[cache_key] = AESGCM(dek)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return aead
