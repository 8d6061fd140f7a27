"""Per-subject data keys: the state behind crypto-shredding (no Kafka here; see keytopic.py for I/O).

Each data subject (identified by its TOKEN in a token domain, never in clear) gets its own DEK for
fields annotated ``"encrypt": {"per_subject": true}``. The DEK is stored only wrapped by the KEK,
in a compacted key topic, one record per key::

    key   = "<domain>/<subject token>/<dek id hex>"
    value = {"format": 1, "kek_id": ..., "wrapped": base64, "created": ms}   (null: erased)

A field that is also role-scoped (``"roles"``, ciphertext format v6) has keys of its own, named with
its roles (``<domain>/<subject token>/roles:<role>,<role>/<dek id hex>``) and wrapped under each
role's KEK instead of the KEK (gateway.keys.key_store): `gateway forget` erases them with the
subject's other keys, since they share its prefix.

Ciphertexts (format v2) carry only (domain, dek id); the subject token comes from the record. A
tombstone for every key of a subject (``gateway forget``) leaves no copy of the DEK anywhere the
gateway writes, so every ciphertext of that subject, in every topic and backup, is unreadable.
A subject has a set of keys: each process encrypts only under keys it created (one per subject it
saw, replaced after `max_uses` values or a restart), so use limits hold across the group
(gateway.keys.key_store); every key of the set opens its ciphertexts, and all are erased together.

Keys starting with ``_`` are the gateway's own bookkeeping in that topic, never a subject key (a
token domain starts with a letter or digit): the head of the ``gateway forget`` audit chain and
the forget's fence records (keytopic.py). `SubjectKeys.apply` ignores them.

Keys starting with ``period:`` are period keys (retention by key expiry, gateway.keys.period_keys;
a token domain cannot hold ':'). `SubjectKeys.apply` hands them to `SubjectKeys.periods`, and
`publish_pending` stores new ones with the new subject keys, so the key topic has one state object.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import DEK_ID_BYTES, DataKey, role_keyed_header, subject_header
from gateway.keys.errors import KmsConfigError
from gateway.keys.key_store import ENTRY_FORMAT as ENTRY_FORMAT
from gateway.keys.key_store import PERIOD_PREFIX, KeyRecord, KeyStore, roles_segment
from gateway.keys.kms import KmsProvider
from gateway.keys.period_keys import PeriodKeys

_WRAP_CONTEXT = b"privacy-gateway/subject-dek/"

RESERVED_PREFIX = "_"  # key-topic records that are not subject keys (token domains never start with it)


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


class SubjectKeys(KeyStore):
    """Live subject keys as the key topic holds them, plus the DEKs this process uses or opened.

    Thread-safe: the key-topic consumer applies records while the pipeline encrypts.
    `publisher`, when set, stores new keys durably before the events using them are published.
    """

    _no_kms = "subject keys were loaded without a KMS: they can be listed and erased, not used"

    def __init__(self, kms: KmsProvider, max_uses: int = 4_000_000, cache_size: int = 100_000,
                 publisher: Callable[[list[KeyRecord]], None] | None = None) -> None:
        super().__init__(kms, _WRAP_CONTEXT, max_uses, cache_size)
        self.publisher = publisher
        self._role_kms: dict[tuple[str, ...], tuple[tuple[str, KmsProvider], ...]] = {}  # role set -> its KMSs
        self.periods = PeriodKeys(kms, max_uses, cache_size)  # the key topic's period keys (retention)

    def __repr__(self) -> str:
        return f"<SubjectKeys live={len(self._entries)} cached={len(self._aeads)} periods={len(self.periods)}>"

    # ---- encryption side -------------------------------------------------------------------
    def current(self, domain: str, token: str) -> DataKey:
        """The subject's DEK for new ciphertexts: the one this process made for the subject while it
        has uses left, else a new one (never one loaded from the key topic: see gateway.keys.key_store)."""
        if not token:
            raise GatewayError("a per-subject key needs the subject's token")
        return self._current_key(subject_prefix(domain, token), lambda: self._create(domain, token))

    def _create(self, domain: str, token: str) -> DataKey:
        dek = AESGCM.generate_key(bit_length=256)
        dek_id = secrets.token_bytes(DEK_ID_BYTES)
        aead = self._store_new(entry_key(domain, token, dek_id), dek)
        return DataKey(dek_id, aead, subject_header(domain, dek_id), time.monotonic())

    def current_for_roles(self, roles: tuple[str, ...], domain: str, token: str) -> DataKey:
        """The subject's DEK for a role-scoped field (format v6): its own key per role set, wrapped under
        each role's KEK only, so the KEK's holder cannot open it and `gateway forget` erases it (made by
        this process, like `current`)."""
        if not token:
            raise GatewayError("a per-subject key needs the subject's token")
        prefix = subject_prefix(domain, token) + roles_segment(roles)
        providers = self.role_providers(roles)

        def create() -> DataKey:
            dek = AESGCM.generate_key(bit_length=256)
            dek_id = secrets.token_bytes(DEK_ID_BYTES)
            header = role_keyed_header(roles, 0, 0, domain, dek_id)
            return DataKey(dek_id, self._store_new_for_roles(prefix + dek_id.hex(), dek, providers), header,
                           time.monotonic())

        return self._current_key(prefix, create)

    def role_providers(self, roles: tuple[str, ...]) -> tuple[tuple[str, KmsProvider], ...]:
        """(role, the KMS wrapping its keys) for each role, from the KMS's role keys (the worker's side),
        looked up once per role set."""
        providers = self._role_kms.get(roles)
        if providers is None:
            wrapping = getattr(self._require_kms(), "role_wrapping_kms", None)
            if wrapping is None:
                raise KmsConfigError(f"KMS provider '{self._require_kms().name}' holds no role keys")
            providers = self._role_kms[roles] = tuple((role, wrapping(role)) for role in roles)
        return providers

    def publish_pending(self) -> int:
        """Store new keys, period keys included (durably, through `publisher`), before any ciphertext under
        them is published."""
        pending = self.drain_pending()
        if pending and self.publisher is not None:
            self.publisher(pending)
        return len(pending)

    def drain_pending(self) -> list[KeyRecord]:
        return super().drain_pending() + self.periods.drain_pending()

    # ---- the key topic's content -------------------------------------------------------------
    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one key-topic record: a stored key, or a tombstone that erases it (and evicts it).

        Period keys go to `periods`; bookkeeping records (e.g. the forget chain's head) are ignored."""
        name = key.decode("utf-8", "replace")
        if name.startswith(PERIOD_PREFIX):
            self.periods.apply(key, value)
            return
        if is_subject_key(name):
            self._apply(name, value)

    def refuse(self, key: bytes) -> None:
        """An erased-names record: the key (subject or period) it names is never live again here."""
        name = key.decode("utf-8", "replace")
        if name.startswith(PERIOD_PREFIX):
            self.periods.refuse(key)
        elif is_subject_key(name):
            self._refuse(name)

    def keys_of(self, domain: str, token: str) -> list[str]:
        prefix = subject_prefix(domain, token)
        with self._lock:
            return sorted(n for n in self._entries if n.startswith(prefix))

    # ---- decryption side -------------------------------------------------------------------
    def role_aead_for(self, roles: tuple[str, ...], days: int, day: int, domain: str, subject: str,
                      dek_id: bytes, role: str, role_kms: KmsProvider) -> AESGCM:
        """The DEK of a v6 ciphertext through `role`'s wrap in the key topic ("key_erased" once erased)."""
        if days:
            return self.periods.role_aead_for(roles, days, day, domain, subject, dek_id, role, role_kms)
        if not subject:
            raise DecryptError("key_erased", "the field is under a per-subject key, but the record has no subject")
        return self._role_open(subject_prefix(domain, subject) + roles_segment(roles) + dek_id.hex(), role, role_kms)

    def aead_for(self, domain: str, subject: str, dek_id: bytes) -> AESGCM:
        name = entry_key(domain, subject, dek_id)
        with self._lock:
            if name not in self._entries:
                raise DecryptError("key_erased", "the subject's key is erased (gateway forget) or was never "
                                   "stored: this field can no longer be decrypted")
            return self._aead(name)

    # ---- rewrap ------------------------------------------------------------------------------
