"""Per-subject data keys: the state behind crypto-shredding (no Kafka here; see keytopic.py for I/O).

Each data subject (identified by its TOKEN in a token domain, never in clear) gets its own DEK for
fields annotated ``"encrypt": {"per_subject": true}``. The DEK is stored only wrapped by the KEK,
in a compacted key topic, one record per key::

    key   = "<domain>/<subject token>/<dek id hex>"
    value = {"format": 1, "kek_id": ..., "wrapped": base64, "created": ms}   (null: erased)

Ciphertexts (format v2) carry only (domain, dek id); the subject token comes from the record. A
tombstone for every key of a subject (``gateway forget``) leaves no copy of the DEK anywhere the
gateway writes, so every ciphertext of that subject, in every topic and backup, is unreadable.
Several keys per subject may coexist (two workers creating one concurrently, or a rotation); the
newest is used for new events, all of them are erased together.

Keys starting with ``_`` are the gateway's own bookkeeping in that topic, never a subject key (a
token domain starts with a letter or digit): the head of the ``gateway forget`` audit chain
(keytopic.py). `SubjectKeys.apply` ignores them.

Keys starting with ``period:`` are period keys (retention by key expiry, gateway.keys.period_keys;
a token domain cannot hold ':'). `SubjectKeys.apply` hands them to `SubjectKeys.periods`, and
`publish_pending` stores new ones with the new subject keys, so the key topic has one state object.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import DEK_ID_BYTES, DataKey, subject_header
from gateway.keys.kms import KmsProvider, WrappedKey

_WRAP_CONTEXT = b"privacy-gateway/subject-dek/"
ENTRY_FORMAT = 1

KeyRecord = tuple[bytes, bytes | None]  # (key, value or None for a tombstone)
RESERVED_PREFIX = "_"  # key-topic records that are not subject keys (token domains never start with it)
PERIOD_PREFIX = "period:"  # period keys (gateway.keys.period_keys); no token domain holds ':'


def is_subject_key(key: bytes | str) -> bool:
    """Whether a key-topic record's key names a subject key (not the gateway's bookkeeping, not a period key)."""
    name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return not name.startswith(RESERVED_PREFIX) and not name.startswith(PERIOD_PREFIX)


def is_key_record(key: bytes | str) -> bool:
    """Whether a key-topic record holds a key (subject or period) rather than the gateway's bookkeeping."""
    name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return not name.startswith(RESERVED_PREFIX)


def entry_key(domain: str, token: str, dek_id: bytes) -> str:
    return f"{domain}/{token}/{dek_id.hex()}"


def subject_prefix(domain: str, token: str) -> str:
    return f"{domain}/{token}/"


@dataclass(frozen=True)
class _Entry:
    wrapped: WrappedKey
    created: int


class SubjectKeys:
    """Live subject keys as the key topic holds them, plus the DEKs this process uses or opened.

    Thread-safe: the key-topic consumer applies records while the pipeline encrypts.
    `publisher`, when set, stores new keys durably before the events using them are published.
    """

    def __init__(self, kms: KmsProvider, max_uses: int = 4_000_000, cache_size: int = 100_000,
                 publisher: Callable[[list[KeyRecord]], None] | None = None) -> None:
        self._kms = kms
        self._max_uses = max_uses
        self._cache_size = cache_size
        self.publisher = publisher
        self._entries: dict[str, _Entry] = {}
        self._newest: dict[str, str] = {}  # "<domain>/<token>/" -> entry key of its newest live key
        self._aeads: OrderedDict[str, AESGCM] = OrderedDict()  # unwrapped, bounded
        self._current: OrderedDict[str, DataKey] = OrderedDict()  # per subject prefix, for encryption
        self._pending: list[KeyRecord] = []
        self._lock = threading.RLock()
        self.kms_calls = 0
        self.erased = 0
        from gateway.keys.period_keys import PeriodKeys  # here: period_keys builds on this module's entries

        self.periods = PeriodKeys(kms, max_uses, cache_size)  # the key topic's period keys (retention)

    def __repr__(self) -> str:
        return f"<SubjectKeys live={len(self._entries)} cached={len(self._aeads)} periods={len(self.periods)}>"

    def __len__(self) -> int:
        return len(self._entries)

    # ---- encryption side -------------------------------------------------------------------
    def current(self, domain: str, token: str) -> DataKey:
        """The subject's DEK for new ciphertexts: cached, else its newest stored key, else a new one."""
        if not token:
            raise GatewayError("a per-subject key needs the subject's token")
        prefix = subject_prefix(domain, token)
        with self._lock:
            key = self._current.get(prefix)
            if key is not None and key.uses < self._max_uses:
                self._current.move_to_end(prefix)
                return key
            name = self._newest.get(prefix)
            if name is not None and key is None:
                dek_id = bytes.fromhex(name.rsplit("/", 1)[1])
                key = DataKey(dek_id, self._aead(name), subject_header(domain, dek_id), time.monotonic())
            else:
                key = self._create(domain, token)
            self._current[prefix] = key
            if len(self._current) > self._cache_size:
                self._current.popitem(last=False)
            return key

    def _create(self, domain: str, token: str) -> DataKey:
        dek = AESGCM.generate_key(bit_length=256)
        dek_id = secrets.token_bytes(DEK_ID_BYTES)
        name = entry_key(domain, token, dek_id)
        wrapped = self._kms.wrap(dek, _WRAP_CONTEXT + name.encode())
        self.kms_calls += 1
        created = int(time.time() * 1000)
        self._pending.append((name.encode(), _encode(wrapped, created)))
        self._add(name, _Entry(wrapped, created))
        aead = self._aeads[name] = AESGCM(dek)
        return DataKey(dek_id, aead, subject_header(domain, dek_id), time.monotonic())

    def publish_pending(self) -> int:
        """Store new keys, period keys included (durably, through `publisher`), before any ciphertext under
        them is published."""
        with self._lock:
            pending, self._pending = self._pending, []
        pending += self.periods.drain_pending()
        if pending and self.publisher is not None:
            self.publisher(pending)
        return len(pending)

    def drain_pending(self) -> list[KeyRecord]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending + self.periods.drain_pending()

    # ---- the key topic's content -------------------------------------------------------------
    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one key-topic record: a stored key, or a tombstone that erases it (and evicts it).

        Period keys go to `periods`; bookkeeping records (e.g. the forget chain's head) are ignored."""
        name = key.decode("utf-8", "replace")
        if name.startswith(PERIOD_PREFIX):
            self.periods.apply(key, value)
            return
        if not is_subject_key(name):
            return
        prefix, _, dek_hex = name.rpartition("/")
        prefix += "/"
        with self._lock:
            if value is None:
                self._erase(name, prefix)
                return
            try:
                entry = _decode(value)
            except (ValueError, KeyError, TypeError):
                return  # not ours or damaged: never fatal, the key simply stays unknown
            self._add(name, entry)

    def _add(self, name: str, entry: _Entry) -> None:
        prefix = name.rsplit("/", 1)[0] + "/"
        self._entries[name] = entry
        newest = self._newest.get(prefix)
        if newest is None or self._entries[newest].created <= entry.created:
            self._newest[prefix] = name

    def _erase(self, name: str, prefix: str) -> None:
        if self._entries.pop(name, None) is not None:
            self.erased += 1
        self._aeads.pop(name, None)
        current = self._current.get(prefix)
        if current is not None and name.endswith(current.dek_id.hex()):
            del self._current[prefix]
        if self._newest.get(prefix) == name:
            rest = [(e.created, n) for n, e in self._entries.items() if n.startswith(prefix)]
            if rest:
                self._newest[prefix] = max(rest)[1]
            else:
                del self._newest[prefix]

    def keys_of(self, domain: str, token: str) -> list[str]:
        prefix = subject_prefix(domain, token)
        with self._lock:
            return sorted(n for n in self._entries if n.startswith(prefix))

    def entries(self) -> list[tuple[str, WrappedKey]]:
        with self._lock:
            return [(n, e.wrapped) for n, e in self._entries.items()]

    # ---- decryption side -------------------------------------------------------------------
    def aead_for(self, domain: str, subject: str, dek_id: bytes) -> AESGCM:
        name = entry_key(domain, subject, dek_id)
        with self._lock:
            if name not in self._entries:
                raise DecryptError("key_erased", "the subject's key is erased (gateway forget) or was never "
                                   "stored: this field can no longer be decrypted")
            return self._aead(name)

    def _aead(self, name: str) -> AESGCM:
        aead = self._aeads.get(name)
        if aead is not None:
            self._aeads.move_to_end(name)
            return aead
        dek = self._kms.unwrap(self._entries[name].wrapped, _WRAP_CONTEXT + name.encode())
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
        """
        kms = kms or self._kms
        active = kms.active_key_id()
        out: list[KeyRecord] = []
        for name, wrapped in self.entries():
            if wrapped.kek_id == active:
                continue
            context = _WRAP_CONTEXT + name.encode()
            rewrapped = kms.wrap(kms.unwrap(wrapped, context), context)
            created = self._entries[name].created
            out.append((name.encode(), _encode(rewrapped, created)))
            with self._lock:
                self._entries[name] = _Entry(rewrapped, created)
        return out


def _encode(wrapped: WrappedKey, created: int) -> bytes:
    return orjson.dumps({"format": ENTRY_FORMAT, "kek_id": wrapped.kek_id,
                         "wrapped": base64.b64encode(wrapped.blob).decode("ascii"), "created": created})


def _decode(value: bytes) -> _Entry:
    data = orjson.loads(value)
    if data.get("format") != ENTRY_FORMAT:
        raise ValueError("unknown key entry format")
    return _Entry(WrappedKey(str(data["kek_id"]), base64.b64decode(data["wrapped"], validate=True)),
                  int(data["created"]))
