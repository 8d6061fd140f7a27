"""Period keys: retention by key expiry (no Kafka here; gateway/runtime/keytopic.py does the I/O).

A field with a retention (``"encrypt": {"retention_days": N}``, or the record's ``retention_days``)
is encrypted under a DEK of the period its event falls in: the UTC day of its Kafka timestamp. The
DEK is stored only wrapped by the KEK, in the compacted key topic, one record per key, like a
subject key (gateway.keys.subject_keys)::

    key   = "period:<days>/<yyyy-mm-dd>/<dek id hex>"                          shared by every field
                                                                               with that retention
          | "period:<days>/<yyyy-mm-dd>/<domain>/<subject token>/<dek id hex>"  per subject and day
                                                                               (per_subject fields)
          | either with "roles:<role>,<role>/" before the dek id              role-scoped fields
                                                                               (format v6: wrapped per
                                                                               role, gateway.keys.key_store)
    value = {"format": 1, "kek_id": ..., "wrapped": base64, "created": ms}     (null: erased)

A day's keys are due once the day ended more than the retention ago, at 00:00 UTC of day + 1 + N
(`due_keys`); `gateway retention enforce` writes their tombstones. Ciphertexts (format v4) carry
only (days, day, domain, dek id), so once the key is gone no copy of them, in any topic or backup,
opens. A per-subject one is erased by `gateway forget` too.

Why a UTC day: retentions are declared in days, so a day is the coarsest period that keeps the
bound tight (data stays readable at least N and at most N + 1 days, plus the enforcement interval),
and the finest worth its keys (one per retention per day; for per-subject fields one per subject
per day with events).

Names start with ``period:``. A token domain cannot hold ':' (``[a-z0-9][a-z0-9_-]*``) and the
gateway's bookkeeping starts with ``_``, so no name is both a period key and a subject key or a
bookkeeping record; `parse_period_key` accepts only the canonical form.
"""

from __future__ import annotations

import datetime
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import (
    DEK_ID_BYTES,
    EPOCH_DATE,
    DataKey,
    period_header,
    period_key_id,
    role_keyed_header,
    role_keyed_key_id,
)
from gateway.keys.errors import KmsError, KmsUnavailable
from gateway.keys.key_store import PERIOD_PREFIX, KeyStore, roles_segment
from gateway.keys.kms import KmsProvider
from gateway.keys.roles import valid_role

DAY_MS = 86_400_000
MAX_RETENTION_DAYS = 36_500  # 100 years; format v4 could say 65535
PREFIX = PERIOD_PREFIX
_WRAP_CONTEXT = b"privacy-gateway/period-dek/"
_NAME_RE = re.compile(r"period:([1-9][0-9]{0,4})/([0-9]{4}-[0-9]{2}-[0-9]{2})/(?:([^/]+)/([^/]+)/)?"
                      r"(?:roles:([a-z0-9_,-]+)/)?([0-9a-f]{32})")


def retention_problem(value: Any) -> str | None:
    """Why `value` is not a retention (None: it is one), for the policy compiler's messages."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETENTION_DAYS:
        return f"retention_days must be a whole number of days from 1 to {MAX_RETENTION_DAYS}, e.g. 30"
    return None


def day_of(timestamp_ms: int) -> int:
    """The period (UTC day, days since 1970-01-01) of a time in epoch milliseconds."""
    return timestamp_ms // DAY_MS


def event_day(timestamp_ms: int, now_ms: int) -> int:
    """The period of an event: the day of its timestamp, or of now when it claims a later time (a
    producer's clock ahead would otherwise keep its data readable past the retention)."""
    return day_of(min(timestamp_ms, now_ms))


def day_label(day: int) -> str:
    return (EPOCH_DATE + datetime.timedelta(days=day)).isoformat()


def erase_at_ms(days: int, day: int) -> int:
    """When the keys of `day` under a retention of `days` are due: the day's end plus the retention."""
    return (day + 1 + days) * DAY_MS


class _Period:
    """When a retention's day is erased: shared by a key's name and a period's summary (both hold days, day)."""

    days: int
    day: int

    @property
    def period(self) -> str:
        return day_label(self.day)

    @property
    def erase_at_ms(self) -> int:
        return erase_at_ms(self.days, self.day)

    def due(self, now_ms: int) -> bool:
        return now_ms >= self.erase_at_ms


@dataclass(frozen=True)
class PeriodKeyName(_Period):
    """One period key's name, parsed: retention, day, DEK id and, per subject, domain and token."""

    days: int
    day: int
    dek_id: bytes
    domain: str = ""  # per-subject keys only
    token: str = ""
    roles: tuple[str, ...] = ()  # role-scoped keys only (format v6)

    def __repr__(self) -> str:  # the token stays out of logs and reprs
        return f"<PeriodKeyName {self.key_id}>"

    @property
    def name(self) -> str:
        return scope_prefix(self.days, self.day, self.domain, self.token, self.roles) + self.dek_id.hex()

    @property
    def key_id(self) -> str:
        """The audit's name: no subject token (gateway.keys.envelope.period_key_id)."""
        if self.roles:
            return role_keyed_key_id(self.roles, self.days, self.day, self.domain, self.dek_id)
        return period_key_id(self.days, self.day, self.domain, self.dek_id)


def scope_prefix(days: int, day: int, domain: str = "", token: str = "", roles: tuple[str, ...] = ()) -> str:
    """The part of a period key's name before its DEK id (one scope: a retention's day, or a subject's;
    a role set's own keys in either)."""
    subject = f"{domain}/{token}/" if domain else ""
    return f"{PREFIX}{days}/{day_label(day)}/{subject}{roles_segment(roles) if roles else ''}"


def is_period_key(name: bytes | str) -> bool:
    """Whether a key-topic record's key names a period key (it may still be malformed: see parse_period_key)."""
    return (name.decode("utf-8", "replace") if isinstance(name, bytes) else name).startswith(PREFIX)


def parse_period_key(name: str) -> PeriodKeyName | None:
    """The parsed name, or None for anything but a period key in its canonical form."""
    match = _NAME_RE.fullmatch(name)
    if match is None:
        return None
    days_text, date_text, domain, token, roles_text, dek_hex = match.groups()
    try:
        day = (datetime.date.fromisoformat(date_text) - EPOCH_DATE).days
    except ValueError:
        return None
    roles = tuple(roles_text.split(",")) if roles_text else ()
    if roles and (list(roles) != sorted(set(roles)) or not all(valid_role(r) for r in roles)):
        return None
    parsed = PeriodKeyName(int(days_text), day, bytes.fromhex(dek_hex), domain or "", token or "", roles)
    if day < 0 or parsed.days > 0xFFFF or parsed.name != name:
        return None
    return parsed


def due_keys(names: Iterable[str], now_ms: int) -> list[PeriodKeyName]:
    """The period keys among `names` whose period ended more than their retention ago, oldest first."""
    parsed = (parse_period_key(n) for n in names)
    return sorted((p for p in parsed if p is not None and p.due(now_ms)),
                  key=lambda p: (p.erase_at_ms, p.days, p.domain, p.name))


@dataclass(frozen=True)
class PeriodSummary(_Period):
    """One period's keys as `gateway retention show` lists them: per retention, day and scope."""

    days: int
    day: int
    domain: str  # "" for the shared keys of the day, else the per-subject keys of that token domain
    key_ids: tuple[str, ...]


def summarize(names: Iterable[str]) -> list[PeriodSummary]:
    """Period keys grouped by retention, day and scope, in the order they are erased."""
    groups: dict[tuple[int, int, str], list[str]] = {}
    for name in names:
        p = parse_period_key(name)
        if p is not None:
            groups.setdefault((p.days, p.day, p.domain), []).append(p.key_id)
    return [PeriodSummary(days, day, domain, tuple(sorted(ids)))
            for (days, day, domain), ids in sorted(groups.items(), key=lambda g: (erase_at_ms(g[0][0], g[0][1]), g[0]))]


class PeriodKeys(KeyStore):
    """Live period keys as the key topic holds them, plus the DEKs this process uses or opened.

    Thread-safe: the key-topic consumer applies records while the pipeline encrypts. New keys wait in
    `drain_pending` until the owner (SubjectKeys.publish_pending) stores them, before the ciphertexts
    under them are published. The KMS is called once per new key (and once per stored key opened),
    never per event. `kms` may be None for tools that only list or erase keys.
    """

    _no_kms = "period keys were loaded without a KMS: they can be listed and erased, not used"

    def __init__(self, kms: KmsProvider | None, max_uses: int = 4_000_000, cache_size: int = 100_000) -> None:
        super().__init__(kms, _WRAP_CONTEXT, max_uses, cache_size)

    def __repr__(self) -> str:
        return f"<PeriodKeys live={len(self._entries)} cached={len(self._aeads)}>"

    # ---- encryption side -------------------------------------------------------------------
    def current(self, days: int, day: int, domain: str = "", token: str = "") -> DataKey:
        """The DEK for new ciphertexts of `day` under a retention of `days` (per subject when `domain` is
        set): the one this process made for it, else a new one (a new one too once it is used up, or
        erased: a late event of an erased day gets a new key, which the next run erases)."""
        if domain and not token:
            raise GatewayError("a per-subject period key needs the subject's token")
        return self._current_key(scope_prefix(days, day, domain, token),
                                 lambda: self._create(days, day, domain, token))

    def current_for_roles(self, roles: tuple[str, ...], days: int, day: int, domain: str = "", token: str = "",
                          providers: tuple[tuple[str, KmsProvider], ...] = ()) -> DataKey:
        """Like `current`, for a role-scoped field (format v6): the role set's own key of the day, wrapped
        under each role's KEK (`providers`: (role, KMS) pairs) and never under the KEK."""
        if domain and not token:
            raise GatewayError("a per-subject period key needs the subject's token")
        prefix = scope_prefix(days, day, domain, token, roles)

        def create() -> DataKey:
            dek = AESGCM.generate_key(bit_length=256)
            dek_id = secrets.token_bytes(DEK_ID_BYTES)
            header = role_keyed_header(roles, days, day, domain, dek_id)  # checks the ranges first
            return DataKey(dek_id, self._store_new_for_roles(prefix + dek_id.hex(), dek, providers), header,
                           time.monotonic())

        return self._current_key(prefix, create)

    def _create(self, days: int, day: int, domain: str, token: str) -> DataKey:
        dek = AESGCM.generate_key(bit_length=256)
        dek_id = secrets.token_bytes(DEK_ID_BYTES)
        header = period_header(days, day, domain, dek_id)  # checks the ranges before the KMS is asked
        aead = self._store_new(PeriodKeyName(days, day, dek_id, domain, token).name, dek)
        return DataKey(dek_id, aead, header, time.monotonic())

    # ---- the key topic's content -------------------------------------------------------------
    def apply(self, key: bytes, value: bytes | None) -> None:
        """Apply one key-topic record: a stored period key, or a tombstone that erases it (and evicts it).
        Names that are not period keys in canonical form are ignored."""
        name = key.decode("utf-8", "replace")
        if parse_period_key(name) is not None:
            self._apply(name, value)

    def refuse(self, key: bytes) -> None:
        """An erased-names record: the period key it names is never live again here."""
        name = key.decode("utf-8", "replace")
        if parse_period_key(name) is not None:
            self._refuse(name)

    def names(self) -> list[str]:
        """Every live period key stored in the key topic (not those still waiting to be stored: a
        tombstone must never go out before the value it erases)."""
        with self._lock:
            pending = {key.decode() for key, _ in self._pending}
            return sorted(n for n in self._entries if n not in pending)

    def keys_of(self, domain: str, token: str) -> list[str]:
        """A subject's per-subject period keys (gateway forget erases them with its subject keys)."""
        with self._lock:
            return sorted(n for n in self._entries
                          if (p := parse_period_key(n)) is not None and p.domain == domain and p.token == token)

    # ---- decryption side -------------------------------------------------------------------
    def role_aead_for(self, roles: tuple[str, ...], days: int, day: int, domain: str, subject: str,
                      dek_id: bytes, role: str, role_kms: KmsProvider) -> AESGCM:
        """The DEK of a v6 ciphertext with a retention, through `role`'s wrap ("key_erased" once erased)."""
        if domain and not subject:
            raise DecryptError("key_erased", "the field is under a per-subject period key, but the record has no "
                               "subject")
        return self._role_open(PeriodKeyName(days, day, dek_id, domain, subject, roles).name, role, role_kms)

    def aead_for(self, days: int, day: int, domain: str, subject: str, dek_id: bytes) -> AESGCM:
        """The DEK of a v4 ciphertext; "key_erased" once retention (or gateway forget) erased it."""
        if domain and not subject:
            raise DecryptError("key_erased", "the field is under a per-subject period key, but the record has no "
                               "subject")
        name = PeriodKeyName(days, day, dek_id, domain, subject).name
        with self._lock:
            if name not in self._entries:
                erased_by = "retention (gateway retention enforce) or gateway forget" if domain else \
                    "retention (gateway retention enforce)"
                raise DecryptError("key_erased", f"the key of period {day_label(day)} (retention {days} day(s)) "
                                   f"is erased by {erased_by}, or was never stored: this field can no longer be "
                                   "decrypted")
            try:
                return self._aead(name)
            except KmsUnavailable as exc:
                raise DecryptError("kms_unavailable", f"{exc}; try again when the KMS is back") from None
            except KmsError as exc:
                raise DecryptError("not_permitted", str(exc)) from None

    # ---- rewrap ------------------------------------------------------------------------------
