"""The consent table: which subject granted which purpose, and when, as the consent topic holds it.

The consent topic is compacted and append-only in effect: every change is its own record, keyed
`<domain>/<subject token>/<purpose>/<time ms>`, so two writers never overwrite each other's change
(no read-modify-write), compaction keeps the history that decides events by their time, and
erasing a subject tombstones its keys. Keys carry the subject token, never the identifier. Keys
starting with ``_`` are the gateway's own bookkeeping (a forget's fence record), not changes.

Semantics: consent for a purpose is in force at time t when the subject's latest change for that
purpose at or before t is a grant. A subject the table has never seen has no consent.

An event's time is its producer's stamp, which the gateway cannot trust, so a revocation is not
judged by it alone (`allows`): once the table holds a revocation, every event it judges afterwards
is judged at the revocation's time or the event's, whichever is later. An event stamped before the
revocation but processed after the gateway learned of it is therefore withheld, whatever its stamp;
only a grant later than the revocation (and the event) lets events through again. What the gateway
published before it learned of a revocation stays published.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError, MalformedStateRecord

CONSENT_FORMAT = 1
BOOKKEEPING_PREFIX = b"_"  # the gateway's own records on the consent topic; a token domain never starts with it


@dataclass(frozen=True)
class ConsentChange:
    """One grant or revocation, as stored (the subject as its token only)."""

    domain: str
    token: str
    purpose: str
    at_ms: int
    granted: bool
    source: str  # where it came from: "cli", or the raw consent topic's "<topic>/<partition>/<offset>"

    def key(self) -> bytes:
        return f"{self.domain}/{self.token}/{self.purpose}/{self.at_ms:013d}".encode()

    def value(self) -> bytes:
        return orjson.dumps({"format": CONSENT_FORMAT, "granted": self.granted, "at": self.at_ms,
                             "source": self.source})


def subject_prefix(domain: str, token: str) -> str:
    return f"{domain}/{token}/"


def parse_key(key: bytes) -> tuple[str, str, str, int] | None:
    """(domain, token, purpose, time ms) of a consent key, None for a key of another shape."""
    parts = key.decode("utf-8", errors="replace").split("/")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    return parts[0], parts[1], parts[2], int(parts[3])


class ConsentTable:
    """The consent topic's content, applied record by record in log order (restore, then follow)."""

    def __init__(self) -> None:
        # (domain, token) -> purpose -> sorted [(time ms, granted)]
        self._subjects: dict[tuple[str, str], dict[str, list[tuple[int, bool]]]] = {}

    def __len__(self) -> int:
        return len(self._subjects)

    def apply(self, key: bytes, value: bytes | None) -> None:
        """One consent-topic record; a tombstone (erasure) removes that change. A malformed record
        raises MalformedStateRecord for its reader to skip and count (changelog.apply_records); its
        key's earlier change is gone, as after compaction: no consent is read from it. A key starting
        with BOOKKEEPING_PREFIX is the gateway's own record (`gateway forget`'s fence), skipped silently."""
        if key.startswith(BOOKKEEPING_PREFIX):
            return
        parsed = parse_key(key)
        if parsed is None:
            raise MalformedStateRecord("a consent-topic record's key is not <domain>/<token>/<purpose>/<time ms>")
        domain, token, purpose, at_ms = parsed
        changes = self._subjects.setdefault((domain, token), {}).setdefault(purpose, [])
        position = bisect.bisect_left(changes, (at_ms, False))
        while position < len(changes) and changes[position][0] == at_ms:
            del changes[position]  # the same key again: the later record wins
        if value is None:
            if not changes:
                self._drop_empty(domain, token, purpose)
            return
        granted = _granted(value)
        if granted is None:
            if not changes:
                self._drop_empty(domain, token, purpose)
            raise MalformedStateRecord("a consent-topic record is not a JSON object with \"granted\": true or false")
        bisect.insort(changes, (at_ms, granted))

    def _drop_empty(self, domain: str, token: str, purpose: str) -> None:
        purposes = self._subjects.get((domain, token))
        if purposes is not None:
            purposes.pop(purpose, None)
            if not purposes:
                del self._subjects[(domain, token)]

    def known(self, domain: str, token: str) -> bool:
        return (domain, token) in self._subjects

    def in_force(self, domain: str, token: str, purpose: str, at_ms: int) -> bool:
        """Whether the subject's consent to `purpose` is in force at `at_ms` (see the module docstring)."""
        changes = self._subjects.get((domain, token), {}).get(purpose)
        if not changes:
            return False
        position = bisect.bisect_right(changes, (at_ms, True))
        return position > 0 and changes[position - 1][1]

    def allows(self, domain: str, token: str, purpose: str, at_ms: int) -> bool:
        """Whether an event stamped `at_ms`, judged now, may go to `purpose`: consent in force at the
        later of its stamp and the subject's latest revocation of that purpose the table holds (see
        the module docstring), so no stamp reaches back behind a revocation the gateway knows of."""
        changes = self._subjects.get((domain, token), {}).get(purpose)
        if not changes:
            return False
        revoked = max((at for at, granted in changes if not granted), default=at_ms)
        return self.in_force(domain, token, purpose, max(at_ms, revoked))

    def history(self, domain: str, token: str) -> dict[str, list[tuple[int, bool]]]:
        """Every change of a subject, per purpose, oldest first (`gateway consent show`)."""
        return {p: list(c) for p, c in sorted(self._subjects.get((domain, token), {}).items())}

    def keys_of(self, domain: str, token: str) -> list[bytes]:
        """The consent-topic keys of a subject (erasure tombstones them)."""
        return [ConsentChange(domain, token, purpose, at, granted, "").key()
                for purpose, changes in self._subjects.get((domain, token), {}).items()
                for at, granted in changes]


def _granted(value: bytes) -> bool | None:
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:  # bad UTF-8 too
        return None
    granted = body.get("granted") if isinstance(body, dict) else None
    return granted if isinstance(granted, bool) else None


# ---- raw consent events (what producers send on the consent input topic) -----------------------
@dataclass(frozen=True)
class RawConsent:
    """A validated raw consent event; `subject` is the identifier in clear (tokenized before storing)."""

    subject: str
    domain: str
    purpose: str
    granted: bool
    at_ms: int

    def __repr__(self) -> str:  # the identifier never reaches a log or an exception
        return f"<RawConsent domain={self.domain!r} purpose={self.purpose!r} granted={self.granted}>"


class ConsentEventError(GatewayError):
    """A raw consent event that cannot be applied; `reason` is its dead-letter reason code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_raw_consent(value: bytes | None, timestamp_ms: int, purposes: dict[str, set[str]],
                      default_domain: str | None) -> RawConsent:
    """A raw consent event: a JSON object {"subject": S, "purpose": P, "granted": true|false,
    "at": ms (optional: the record's timestamp), "domain": D (optional when one domain is known)}.
    `purposes`: domain -> the consent purposes declared for it. Messages never carry a value."""
    try:
        body: Any = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        raise ConsentEventError("json_invalid", "the consent event is not valid JSON") from None
    if not isinstance(body, dict):
        raise ConsentEventError("json_invalid", "the consent event is not a JSON object")
    subject, purpose, granted = body.get("subject"), body.get("purpose"), body.get("granted")
    domain = body.get("domain", default_domain)
    at_ms = body.get("at", timestamp_ms)
    if not isinstance(subject, str) or not subject:
        raise ConsentEventError("missing_field", "the consent event needs \"subject\" (a non-empty string)")
    if not isinstance(granted, bool):
        raise ConsentEventError("wrong_type", "the consent event needs \"granted\": true or false")
    if not isinstance(domain, str) or domain not in purposes:
        known = ", ".join(sorted(purposes)) or "none"
        raise ConsentEventError("unknown_domain", f"the consent event's domain is not one whose subjects a policy "
                                f"asks consent of (known: {known}); set \"domain\"")
    if not isinstance(purpose, str) or purpose not in purposes[domain]:
        raise ConsentEventError("unknown_purpose", f"the consent event's purpose is not a consent purpose of "
                                f"domain '{domain}' (known: {', '.join(sorted(purposes[domain]))})")
    if not isinstance(at_ms, int) or isinstance(at_ms, bool) or at_ms < 0:
        raise ConsentEventError("wrong_type", "the consent event's \"at\" must be a time in milliseconds")
    return RawConsent(subject, domain, purpose, granted, at_ms)
