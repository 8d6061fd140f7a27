"""Audit events, their per-partition hash chain and its authentication.

One audit entry per input event: what was done, under which policy and keys, with what outcome;
never a field value. The sanitize worker writes a source partition's entries of one batch as one
audit record, type ``events`` (`batch_body`): the batch's chain, instance and time once, its
entries in offset order under ``events``. Other writers (forget, retention, DP releases) write one
record per event, sealed with `seal_audit_event`. Records of one chain form a hash chain: each
carries the previous record's hash, and its own hash covers its canonical body, every entry
included. The chain key is ``<source_topic>:<partition>``; all its records go to one audit
partition, in order. Readers take entries with `entries`, which gives every record's entries in
the per-event form.

Format 2 (``"v": 2``) authenticates each record: ``mac`` is HMAC-SHA256 over the record's hash
under the audit key ``mac_key_id`` (`AuditKeys`, held in the keyring like the token keys), so write
access to the audit topic is not enough to append a record that verifies. ``hash`` and ``mac`` are
the only fields outside the hashed body. Format 1 records (no ``v``) are still read: the verifier
reports them as unauthenticated.
"""

from __future__ import annotations

import hashlib
import hmac
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import orjson

GENESIS = "0" * 64
BATCH_TYPE = "events"  # a record holding one batch's entries of one chain
BATCH_FIELDS = ("chain", "instance", "time")  # a batch record's fields that each of its entries shares
FORMAT = 2  # "v" of an authenticated record; records without "v" are format 1 (unauthenticated)
_MAC_CONTEXT = b"privacy-gateway/audit-mac/v2\x00"  # domain separation: this key MACs audit hashes only


class AuditKeys:
    """The audit MAC keys: the active one seals, every version held verifies (rotation keeps old
    records verifiable). Built from the keyring's audit section (`Keyring.audit_keys`); with none
    active ("") it only verifies, and holds no key at all when the keyring has none. Key bytes never
    appear in a repr."""

    def __init__(self, active: str, keys: Mapping[str, bytes]) -> None:
        if active and active not in keys:
            raise ValueError(f"the active audit key '{active}' is not among the keys given")
        self.active = active
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"<AuditKeys active={self.active!r} versions={len(self._keys)}>"

    def held(self, key_id: str) -> bool:
        return key_id in self._keys

    def mac(self, digest: str, key_id: str | None = None) -> str:
        """HMAC-SHA256 (hex) of a record's hash under `key_id` (default: the active key)."""
        key = self._keys[key_id or self.active]
        return hmac.new(key, _MAC_CONTEXT + digest.encode("ascii"), hashlib.sha256).hexdigest()

    def authentic(self, key_id: str, digest: str, mac: str) -> bool:
        return hmac.compare_digest(self.mac(digest, key_id), mac)

    def tag(self, context: bytes, data: bytes, key_id: str | None = None) -> str:
        """HMAC-SHA256 (hex) of `data` under `key_id` (default: the active key), domain-separated by
        `context` (never _MAC_CONTEXT: a tag can never pass for a record's MAC). For what the audit
        vouches for outside a record: an erasure receipt and its commitment to the subject."""
        if context == _MAC_CONTEXT:
            raise ValueError("a tag's context must differ from the record MAC's")
        return hmac.new(self._keys[key_id or self.active], context + data, hashlib.sha256).hexdigest()


def chain_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def audit_partition(key: str, partitions: int) -> int:
    """Deterministic audit partition of a chain (stable across processes, unlike hash())."""
    return zlib.crc32(key.encode("utf-8")) % partitions


def canonical(body: dict[str, Any]) -> bytes:
    """The bytes an audit hash covers: the body as JSON with sorted keys, at every level."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def event_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(body)).hexdigest()


def seal_audit_event(body: dict[str, Any], prev_hash: str, keys: AuditKeys) -> dict[str, Any]:
    """Add v, mac_key_id, prev_hash, hash and mac to an audit body (format 2): the hash covers
    everything but hash and mac, the mac is the active audit key's over the hash."""
    body["v"] = FORMAT
    body["mac_key_id"] = keys.active
    body["prev_hash"] = prev_hash
    body["hash"] = digest = event_hash(body)
    body["mac"] = keys.mac(digest)
    return body


def seal_audit_value(body: dict[str, Any], prev_hash: str, keys: AuditKeys) -> tuple[bytes, str]:
    """(record value, hash) of an audit body, serializing it once; the per-event form of seal_audit_event.

    The hash covers the canonical body with v, mac_key_id and prev_hash (as seal_audit_event's does);
    the value is those same bytes with "hash" and "mac" spliced in as the last keys (the body is never
    empty). JSON key order carries no meaning and the verifier pops "hash" and "mac" and
    re-canonicalizes, so both verify alike. The body may hold orjson.Fragment values, each itself
    canonical JSON (sorted keys).
    """
    body["v"] = FORMAT
    body["mac_key_id"] = keys.active
    body["prev_hash"] = prev_hash
    data = canonical(body)
    digest = hashlib.sha256(data).hexdigest()
    mac = keys.mac(digest)
    return b"".join((data[:-1], b',"hash":"', digest.encode("ascii"), b'","mac":"', mac.encode("ascii"),
                     b'"}')), digest


def batch_body(chain: str, instance: str, time_ms: int, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of one batch's audit record for `chain`: each entry without the fields it shares."""
    return {"type": BATCH_TYPE, "chain": chain, "instance": instance, "time": time_ms, "events": events}


def entries(body: Any) -> list[dict[str, Any]]:
    """The audit entries of one decoded record, each in the per-event form (a batch's shared chain,
    instance and time put back into each; its chain_restart stays on the record). A record that is not
    a JSON object has none."""
    if not isinstance(body, dict):
        return []
    if body.get("type") != BATCH_TYPE:
        return [body]
    shared = {name: body.get(name) for name in BATCH_FIELDS}
    events = body.get("events")
    return [shared | e for e in events if isinstance(e, dict)] if isinstance(events, list) else []


def record_entries(values: Iterable[bytes | None]) -> list[dict[str, Any]]:
    """The audit entries of raw audit record values, in record order (values that are not JSON skipped)."""
    out: list[dict[str, Any]] = []
    for value in values:
        try:
            out += entries(orjson.loads(value or b""))
        except orjson.JSONDecodeError:
            continue
    return out


@dataclass
class ChainHeads:
    """Last hash per chain key, for the partitions this worker owns."""

    heads: dict[str, str] = field(default_factory=dict)
    restarted: set[str] = field(default_factory=set)

    def next_prev(self, key: str) -> tuple[str, bool]:
        """(prev_hash, is_restart) for the next event of chain `key`."""
        if key in self.heads:
            return self.heads[key], False
        return GENESIS, key in self.restarted

    def resume(self, key: str, head: str | None, restarted: bool = False) -> None:
        """Continue chain `key` from `head`; without one it starts at genesis (marked if `restarted`)."""
        self.heads.pop(key, None)
        self.restarted.discard(key)
        if head is not None:
            self.heads[key] = head
        elif restarted:
            self.restarted.add(key)

    def forget(self, key: str) -> None:
        self.heads.pop(key, None)
        self.restarted.discard(key)


class Kind(Enum):
    """What the verifier found. Findings fail `gateway audit verify`; notes are reported only."""

    MALFORMED = "malformed"  # not an audit record of this gateway
    ALTERED = "altered"  # the body does not match its hash
    BROKEN = "broken"  # prev_hash is not the previous record's hash
    FORGED = "forged"  # a format 2 record whose MAC does not verify
    KEY_NOT_HELD = "key_not_held"  # a format 2 record under an audit key the verifier does not hold
    UNAUTHENTICATED = "unauthenticated"  # a format 1 record (no MAC)
    DUPLICATE = "duplicate"  # source offsets audited more than once
    GAP = "gap"  # source offsets holding records that no entry audits
    PAST_COMMIT = "past_commit"  # entries for source offsets at or past the committed offset
    MISSING = "missing"  # a committed chain head whose records are not on the audit topic
    HEAD_MISMATCH = "head_mismatch"  # the committed head is not a record of the chain
    NO_HEAD = "no_head"  # the chain has records but the committed state carries no head
    NO_ANCHORS = "no_anchors"  # records on the audit topic, but the group committed nothing to anchor them
    # notes
    RESTART = "restart"  # a chain_restart marker: the chain starts again from genesis
    LEGACY = "legacy"  # format 1 records accepted (--allow-legacy), before any authenticated one
    UNANCHORED = "unanchored"  # no committed head to compare the chain's end with
    AFTER_HEAD = "after_head"  # records after the committed head (committed after it was read)
    UNCHECKED_GAP = "unchecked_gap"  # unaudited source offsets the source no longer holds


NOTES = frozenset({Kind.RESTART, Kind.LEGACY, Kind.UNANCHORED, Kind.AFTER_HEAD, Kind.UNCHECKED_GAP})


@dataclass(frozen=True)
class Finding:
    kind: Kind
    message: str  # complete: names the chain, the audit position or the source offset range
    chain: str | None = None
    offsets: tuple[int, int] | None = None  # first and last source offset concerned (inclusive)

    @property
    def is_note(self) -> bool:
        return self.kind in NOTES


@dataclass
class ChainWalk:
    """One chain as walked: per record its hash and the source offsets its entries audit."""

    key: str
    last: str = GENESIS
    broken: bool = False
    authenticated: bool = False  # a format 2 record verified on this chain
    hashes: list[str] = field(default_factory=list)
    offsets: list[list[int]] = field(default_factory=list)  # per record, its entries' own-source offsets
    legacy: int = 0  # format 1 records before the first authenticated one
    first_legacy: str = ""


@dataclass
class ChainReport:
    chains: int = 0
    events: int = 0  # audit entries in the verified records (a batch record holds many)
    records: int = 0
    findings: list[Finding] = field(default_factory=list)
    walks: dict[str, ChainWalk] = field(default_factory=dict)
    authenticated: bool = False  # MACs were checked (a verifier with the audit keys)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.is_note]

    @property
    def notes(self) -> list[Finding]:
        return [f for f in self.findings if f.is_note]

    @property
    def breaks(self) -> list[str]:
        return [f.message for f in self.problems]

    @property
    def restarts(self) -> list[str]:
        return [f.message for f in self.findings if f.kind is Kind.RESTART]

    @property
    def ok(self) -> bool:
        return not self.problems


def own_offset(chain: str, entry: dict[str, Any]) -> int | None:
    """The source offset an entry audits when it belongs to its chain's own source partition (a
    sanitize chain ``<topic>:<partition>``), else None (DP late events, forget, retention...)."""
    event = entry.get("event")
    if not isinstance(event, dict):
        return None
    offset, topic, partition = event.get("offset"), event.get("topic"), event.get("partition")
    if not isinstance(offset, int) or not isinstance(topic, str) or not isinstance(partition, int):
        return None
    return offset if chain_key(topic, partition) == chain else None


def verify_chains(events: Iterable[tuple[int, int, bytes]], keys: AuditKeys | None = None,
                  allow_legacy: bool = False) -> ChainReport:
    """Walk audit records (audit partition, audit offset, value) in offset order per partition.

    Reports every chain's first break: a body whose hash does not match, a prev_hash that is not the
    previous record's hash, and, given `keys`, a MAC that does not verify, a key not held, or a
    format 1 (unauthenticated) record: a finding, or with `allow_legacy` a note as long as no
    authenticated record preceded it on its chain. Without `keys` only the hashes are checked. A
    chain_restart marker (a worker could not find the chain's head) starts the chain again from
    genesis and is a note; the offsets it skipped are coverage's to report (gateway.core.audit_verify).
    Source offsets audited twice on a chain are findings.
    """
    report = ChainReport(authenticated=keys is not None)
    walks = report.walks
    for partition, offset, value in events:
        where = f"audit partition {partition} offset {offset}"
        try:
            body = orjson.loads(value)
            key = body["chain"]
            stored_hash = body.pop("hash")
            mac = body.pop("mac", None)
            if not isinstance(key, str):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            report.findings.append(Finding(Kind.MALFORMED, f"{where}: not an audit event of this gateway"))
            continue
        report.records += 1
        found = entries(body)
        report.events += len(found)
        walk = walks.get(key)
        if walk is None:
            walk = walks[key] = ChainWalk(key)
            report.chains += 1
        if walk.broken:
            continue
        problem = _check_record(body, stored_hash, mac, walk, keys, where)
        if problem is not None:
            kind, what = problem
            report.findings.append(Finding(kind, f"chain {key}: {where}: {what}", key))
            walk.broken = kind not in (Kind.UNAUTHENTICATED, Kind.KEY_NOT_HELD)
            if walk.broken:
                continue
        prev = body.get("prev_hash")
        own = [o for e in found if (o := own_offset(key, e)) is not None]
        if prev == GENESIS and body.get("chain_restart") and not walk.hashes and own:
            # a sanitize chain restarts only when it had records before (a fresh partition starts at
            # genesis unmarked): none is on the topic, truncated up to here, hiding them from coverage.
            # (forget and retention mark their chain's first record restarted: they cannot tell.)
            report.findings.append(Finding(Kind.MISSING, f"chain {key}: {where}: the chain's first record is a "
                                                         "chain_restart: the records before it are not on the topic "
                                                         "(truncated or replaced)", key))
        elif prev != walk.last:
            if prev == GENESIS and body.get("chain_restart"):
                report.findings.append(Finding(Kind.RESTART, f"chain {key}: {where}: restarted (head not found by "
                                                             "the worker)", key))
            else:
                report.findings.append(Finding(Kind.BROKEN, f"chain {key}: {where}: prev_hash does not match the "
                                                            "previous event (an event is missing, reordered or "
                                                            "altered)", key))
                walk.broken = True
                continue
        walk.last = stored_hash
        walk.hashes.append(stored_hash)
        walk.offsets.append(own)
    for walk in walks.values():
        if walk.legacy:
            what = (f"chain {walk.key}: {walk.legacy} format 1 record(s) (no MAC), the first at {walk.first_legacy}, "
                    "before its first authenticated one: not authenticated")
            report.findings.append(Finding(Kind.LEGACY, f"{what} (accepted with --allow-legacy)", walk.key)
                                   if allow_legacy else
                                   Finding(Kind.UNAUTHENTICATED, f"{what} (pass --allow-legacy to accept records "
                                                                 "written before the upgrade)", walk.key))
        report.findings += duplicates(walk)
    return report


def _check_record(body: dict[str, Any], stored_hash: Any, mac: Any, walk: ChainWalk, keys: AuditKeys | None,
                  where: str) -> tuple[Kind, str] | None:
    """The first problem of one record, before its link is checked (None: none). Format 1 records
    before the chain's first authenticated one are counted on the walk, reported once per chain."""
    if event_hash(body) != stored_hash:
        return Kind.ALTERED, "content does not match its hash (altered)"
    if keys is None:
        return None
    version = body.get("v")
    if version is None:
        if walk.authenticated:
            return Kind.UNAUTHENTICATED, ("format 1 record (no MAC) after authenticated ones: appended by someone "
                                          "without the audit key")
        walk.legacy += 1
        walk.first_legacy = walk.first_legacy or where
        return None
    key_id = body.get("mac_key_id")
    if version != FORMAT or not isinstance(key_id, str) or not isinstance(mac, str):
        return Kind.FORGED, f"format {version!r} record without a valid mac and mac_key_id"
    if not keys.held(key_id):
        return Kind.KEY_NOT_HELD, f"audit key '{key_id}' is not in the verifier's keyring: not authenticated"
    if not keys.authentic(key_id, stored_hash, mac):
        return Kind.FORGED, f"MAC does not verify under audit key '{key_id}' (forged or altered)"
    walk.authenticated = True
    return None


def ranges(offsets: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct offsets as inclusive (first, last) runs."""
    out: list[tuple[int, int]] = []
    for o in sorted(set(offsets)):
        if out and o == out[-1][1] + 1:
            out[-1] = (out[-1][0], o)
        else:
            out.append((o, o))
    return out


def span(first: int, last: int) -> str:
    return f"{first}" if first == last else f"{first}-{last}"


def duplicates(walk: ChainWalk, upto: int | None = None) -> list[Finding]:
    """Source offsets audited more than once on a chain (within its first `upto` records)."""
    seen: set[int] = set()
    twice: set[int] = set()
    for record in walk.offsets[:upto]:
        for o in record:
            (twice if o in seen else seen).add(o)
    return [Finding(Kind.DUPLICATE, f"chain {walk.key}: source offsets {span(a, b)} audited more than once",
                    walk.key, (a, b)) for a, b in ranges(twice)]


def head_metadata(head: str) -> str:
    """The offset-commit metadata that carries a chain's head with its partition's offset."""
    return orjson.dumps({"audit_head": head}).decode()


def committed_without_head(metadata: str | None) -> bool:
    """The committed metadata says explicitly that the chain has no record yet (``"audit_head": null``)."""
    try:
        data = orjson.loads(metadata or b"")
    except orjson.JSONDecodeError:
        return False
    return isinstance(data, dict) and "audit_head" in data and data["audit_head"] is None


def parse_head_metadata(metadata: str | None) -> str | None:
    """The chain head in committed metadata, or None (none committed, or not ours)."""
    if not metadata:
        return None
    try:
        head = orjson.loads(metadata).get("audit_head")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return head if isinstance(head, str) and len(head) == 64 else None
