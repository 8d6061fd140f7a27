"""The in-memory key store that subject keys and period keys share (no Kafka here; see keytopic.py for I/O).

Both hold wrapped DEKs as the compacted key topic does, one record per key, named
``<scope prefix><dek id hex>``, with the same value::

    value = {"format": 1, "kek_id": ..., "wrapped": base64, "created": ms}   (null: erased)

A role-scoped key (ciphertext format v6: ``roles`` with ``per_subject`` or a retention) is named with
its role set (``.../roles:<role>,<role>/<dek id hex>``) and stored wrapped under each listed role's KEK
and under no other key, each wrap bound to the key's name and its role::

    value = {"format": 2, "roles": [{"role": ..., "kek_id": ..., "wrapped": base64}, ...], "created": ms}

It is erased like any other key (a tombstone for its name), and only a holder of one of those roles'
keys can unwrap it.

One class keeps the bookkeeping (the DEK in use per scope, the unwrapped-DEK cache, what erasing a
key evicts) in one place, so the two kinds of key cannot drift apart. What differs (names, headers,
wrap context, what a record's key must look like) stays in the subclasses.

Use limits hold across the whole group because a process encrypts only under keys it created
itself and counted since: a key loaded from the key topic (made by another process, or by this one
before a restart) opens ciphertexts but never makes new ones, since nobody knows how often it was
used. So a scope (a subject, a period) holds a set of keys, one or more per process that wrote to
it, all erased together; each key encrypts at most `max_uses` values, under random 96-bit nonces
(kept far below NIST SP 800-38D's 2^32 per key).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, GatewayError, MalformedStateRecord
from gateway.keys.envelope import DataKey, RoleWrap
from gateway.keys.errors import KmsError, KmsUnavailable
from gateway.keys.kms import KmsProvider, WrappedKey

ENTRY_FORMAT = 1
ROLES_ENTRY_FORMAT = 2  # wrapped per role only (format v6 keys)
ROLES_SEGMENT = "roles:"  # the name segment of a role-scoped key: "roles:<role>,<role>/"

KeyRecord = tuple[bytes, bytes | None]  # (key, value or None for a tombstone)

PERIOD_PREFIX = "period:"  # period keys (gateway.keys.period_keys); no token domain holds ':'


@dataclass(frozen=True)
class _Entry:
    wrapped: WrappedKey | None  # None: a role-scoped key, wrapped per role only
    created: int
    role_wraps: tuple[RoleWrap, ...] = ()


def roles_segment(roles: tuple[str, ...]) -> str:
    """The part of a role-scoped key's name naming its roles (sorted, unique), ending in '/'."""
    return f"{ROLES_SEGMENT}{','.join(roles)}/"


def role_wrap_context(wrap_context: bytes, name: str, role: str) -> bytes:
    """What one role's wrap of a key-topic key is bound to: the store's context, the key's name and the role."""
    return wrap_context + name.encode() + b"|role:" + role.encode()


def _scope(name: str) -> str:
    """A key's scope prefix: its name up to the DEK id (the keys of one scope replace each other)."""
    return name.rsplit("/", 1)[0] + "/"


class KeyStore:
    """Live keys as the key topic holds them, plus the DEKs this process uses or opened.

    Thread-safe: the key-topic consumer applies records while the pipeline encrypts. New keys wait in
    `drain_pending` until they are stored, before the ciphertexts under them are published.
    """

    _no_kms = "keys were loaded without a KMS: they can be listed and erased, not used"

    def __init__(self, kms: KmsProvider | None, wrap_context: bytes, max_uses: int, cache_size: int) -> None:
        self._kms = kms
        self._wrap_context = wrap_context
        self._max_uses = max_uses
        self._cache_size = cache_size
        self._entries: dict[str, _Entry] = {}
        self._aeads: OrderedDict[str, AESGCM] = OrderedDict()  # unwrapped, bounded
        # per scope prefix, for encryption: only keys this process created (their use count is complete)
        self._current: OrderedDict[str, DataKey] = OrderedDict()
        self._pending: list[KeyRecord] = []
        self._refused: set[str] = set()  # names an erasure recorded for good (see `_refuse`)
        self._lock = threading.RLock()
        self.kms_calls = 0
        self.erased = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _require_kms(self) -> KmsProvider:
        if self._kms is None:
            raise GatewayError(self._no_kms)
        return self._kms

    # ---- encryption side -------------------------------------------------------------------
    def _current_key(self, prefix: str, create: Callable[[], DataKey]) -> DataKey:
        """The scope's DEK for new ciphertexts: the one this process created for it while it has uses
        left, else `create()`. Never a key loaded from the key topic: its uses elsewhere are unknown."""
        with self._lock:
            key = self._current.get(prefix)
            if key is not None and key.uses < self._max_uses:
                self._current.move_to_end(prefix)
                return key
            key = self._current[prefix] = create()
            self._current.move_to_end(prefix)
            if len(self._current) > self._cache_size:
                self._current.popitem(last=False)  # dropped for encryption for good: a new key next time
            return key

    def _store_new(self, name: str, dek: bytes) -> AESGCM:
        """Wrap a new DEK, queue its record for the key topic and make it live here."""
        wrapped = self._require_kms().wrap(dek, self._wrap_context + name.encode())
        self.kms_calls += 1
        created = int(time.time() * 1000)
        self._pending.append((name.encode(), _encode(wrapped, created)))
        self._add(name, _Entry(wrapped, created))
        aead = self._aeads[name] = AESGCM(dek)
        return aead

    def _store_new_for_roles(self, name: str, dek: bytes, providers: tuple[tuple[str, KmsProvider], ...]) -> AESGCM:
        """Like `_store_new`, for a role-scoped key: wrapped under each role's KEK, never under the KEK."""
        wraps = []
        for role, kms in providers:
            wrapped = kms.wrap(dek, role_wrap_context(self._wrap_context, name, role))
            self.kms_calls += 1
            wraps.append(RoleWrap(role, wrapped.kek_id, wrapped.blob))
        created = int(time.time() * 1000)
        entry = _Entry(None, created, tuple(wraps))
        self._pending.append((name.encode(), _encode_entry(entry)))
        self._add(name, entry)
        aead = self._aeads[name] = AESGCM(dek)
        return aead

    def _role_open(self, name: str, role: str, kms: KmsProvider) -> AESGCM:
        """The DEK of a role-scoped key through `role`'s wrap: "key_erased" once its tombstone is read,
        "not_permitted" when the key has no wrap for the role or the KMS refuses, "kms_unavailable"."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                raise DecryptError("key_erased", "the field's role-scoped key is erased (gateway forget or gateway "
                                   "retention enforce) or was never stored: this field can no longer be decrypted")
            wrap = next((w for w in entry.role_wraps if w.role == role), None)
            if wrap is None:
                raise DecryptError("not_permitted", f"role '{role}' has no wrap of the field's key")
            aead = self._aeads.get(name)
            if aead is not None:
                self._aeads.move_to_end(name)
                return aead
            try:
                context = role_wrap_context(self._wrap_context, name, role)
                dek = kms.unwrap(WrappedKey(wrap.kek_id, wrap.wrapped), context)
            except KmsUnavailable as exc:
                raise DecryptError("kms_unavailable", f"{exc}; try again when the KMS is back") from None
            except KmsError as exc:
                raise DecryptError("not_permitted", str(exc)) from None
            self.kms_calls += 1
            aead = self._aeads[name] = AESGCM(dek)
            if len(self._aeads) > self._cache_size:
                self._aeads.popitem(last=False)
            return aead

    def drain_pending(self) -> list[KeyRecord]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    # ---- the key topic's content -------------------------------------------------------------
    def _apply(self, name: str, value: bytes | None) -> None:
        """Apply one record whose name the subclass accepted: a stored key, or a tombstone that erases it.

        A value that is no key entry (MalformedStateRecord) leaves no key under that name, as the
        compacted topic will (it keeps only this record): every reader, running or fresh, agrees.
        A value under a refused name is ignored, whoever wrote it."""
        with self._lock:
            if value is None or name in self._refused:
                self._erase(name)
                return
            try:
                entry = _decode(value)
            except MalformedStateRecord:
                self._erase(name)
                raise
            self._add(name, entry)

    def _refuse(self, name: str) -> None:
        """`name` was erased for good (an erasure recorded it where key-topic writers cannot undo it):
        drop it, and ignore any value stored under it from now on, in any order the records arrive."""
        with self._lock:
            self._refused.add(name)
            self._erase(name)

    def _add(self, name: str, entry: _Entry) -> None:
        self._entries[name] = entry

    def _erase(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self.erased += 1
        self._aeads.pop(name, None)
        prefix = _scope(name)
        current = self._current.get(prefix)
        if current is not None and name == prefix + current.dek_id.hex():
            del self._current[prefix]  # the scope's next value gets a new key

    def entries(self) -> list[tuple[str, WrappedKey]]:
        """The keys wrapped by the KEK (role-scoped keys, wrapped per role only, are not)."""
        with self._lock:
            return [(n, e.wrapped) for n, e in self._entries.items() if e.wrapped is not None]

    # ---- decryption side -------------------------------------------------------------------
    def _aead(self, name: str) -> AESGCM:
        aead = self._aeads.get(name)
        if aead is not None:
            self._aeads.move_to_end(name)
            return aead
        wrapped = self._entries[name].wrapped
        if wrapped is None:
            raise DecryptError("not_permitted", "the key is wrapped for its roles only: open it as one of them")
        dek = self._require_kms().unwrap(wrapped, self._wrap_context + name.encode())
        self.kms_calls += 1
        aead = self._aeads[name] = AESGCM(dek)
        if len(self._aeads) > self._cache_size:
            self._aeads.popitem(last=False)
        return aead

    # ---- rewrap ------------------------------------------------------------------------------
    def rewrap(self, kms: KmsProvider | None = None) -> list[KeyRecord]:
        """Records that re-store every live key not under the active KEK, wrapped under it.

        The DEK and its id stay the same, so every ciphertext keeps decrypting; afterwards the old
        KEK wraps nothing in the key topic and can be retired (once compaction drops the old values).
        A key erased meanwhile is never stored again."""
        out: list[KeyRecord] = []
        for name, rewrapped in self._rewrapped(kms or self._require_kms()):
            with self._lock:
                entry = self._entries.get(name)
                if entry is None:
                    continue
                self._entries[name] = _Entry(rewrapped, entry.created)
            out.append((name.encode(), _encode(rewrapped, entry.created)))
        return out

    def _rewrapped(self, kms: KmsProvider) -> Iterator[tuple[str, WrappedKey]]:
        """(name, the same DEK wrapped under the active KEK) for every live key not under it yet."""
        active = kms.active_key_id()
        for name, wrapped in self.entries():
            if wrapped.kek_id == active:
                continue
            context = self._wrap_context + name.encode()
            yield name, kms.wrap(kms.unwrap(wrapped, context), context)


def _encode(wrapped: WrappedKey, created: int) -> bytes:
    return orjson.dumps({"format": ENTRY_FORMAT, "kek_id": wrapped.kek_id,
                         "wrapped": base64.b64encode(wrapped.blob).decode("ascii"), "created": created})


def _encode_entry(entry: _Entry) -> bytes:
    if entry.wrapped is not None:
        return _encode(entry.wrapped, entry.created)
    wraps = [{"role": w.role, "kek_id": w.kek_id, "wrapped": base64.b64encode(w.wrapped).decode("ascii")}
             for w in entry.role_wraps]
    return orjson.dumps({"format": ROLES_ENTRY_FORMAT, "roles": wraps, "created": entry.created})


def _decode(value: bytes) -> _Entry:
    """A key entry; MalformedStateRecord for anything else (the message never quotes the value)."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise MalformedStateRecord("a key-topic record is not JSON (or not UTF-8)") from None
    if not isinstance(data, dict):
        raise MalformedStateRecord("a key-topic record is JSON but not an object")
    if data.get("format") == ROLES_ENTRY_FORMAT:
        return _decode_roles(data)
    if data.get("format") != ENTRY_FORMAT:
        raise MalformedStateRecord(f"a key-topic record is not a key entry of format {ENTRY_FORMAT}")
    kek_id, wrapped, created = data.get("kek_id"), data.get("wrapped"), data.get("created")
    if not isinstance(kek_id, str) or not isinstance(wrapped, str) or not isinstance(created, int) \
            or isinstance(created, bool):
        raise MalformedStateRecord("a key-topic record lacks kek_id, wrapped or created of the right type")
    try:
        blob = base64.b64decode(wrapped, validate=True)
    except ValueError:
        raise MalformedStateRecord("a key-topic record's wrapped key is not base64") from None
    return _Entry(WrappedKey(kek_id, blob), created)


def _decode_roles(data: dict[str, object]) -> _Entry:
    """A role-scoped key entry (format 2); MalformedStateRecord for anything else."""
    roles, created = data.get("roles"), data.get("created")
    if not isinstance(roles, list) or not roles or not isinstance(created, int) or isinstance(created, bool):
        raise MalformedStateRecord("a role-scoped key-topic record lacks roles or created of the right type")
    wraps: list[RoleWrap] = []
    for wrap in roles:
        if not isinstance(wrap, dict) or not all(isinstance(wrap.get(k), str) for k in ("role", "kek_id", "wrapped")):
            raise MalformedStateRecord("a role-scoped key-topic record has a wrap without role, kek_id or wrapped")
        try:
            blob = base64.b64decode(wrap["wrapped"], validate=True)
        except ValueError:
            raise MalformedStateRecord("a role-scoped key-topic record's wrapped key is not base64") from None
        wraps.append(RoleWrap(wrap["role"], wrap["kek_id"], blob))
    return _Entry(None, created, tuple(wraps))
