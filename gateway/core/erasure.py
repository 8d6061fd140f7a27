"""Erasure receipts and the subject's key inventory (pure: no Kafka; gateway/runtime/erasure.py does the I/O).

One function, `key_inventory`, says which keys protect a subject's data, in which scopes and on which
topics: `gateway forget` puts it in its audit event and in the receipt it returns (the keys it
erased), and `gateway subject report` shows it (what forget would erase). Scopes and topics come from
the audit: an event entry names the key ids it used and where its output went (a sanitized topic: the
field scope; a dead-letter topic: the dead-letter scope); a period key is in the period scope.

A receipt names no value and no token in clear. It carries:

- a commitment to the subject per token version: HMAC-SHA256 of (domain, token) under the audit key,
  so a regulator holding the receipt cannot recover or test an identifier (no audit key), while the
  operator's verifier, given the identifier the person supplies, recomputes it and tells them the
  receipt is theirs;
- the erasure's audit position (topic, partition, offset) with the record's hash and audit key id:
  the audit record is authenticated (its MAC, gateway.core.audit), and `gateway erasure verify`
  re-reads and re-checks it;
- the key ids erased per scope, the topics they protected, the key topic, the time;
- its own MAC under the same audit key, so a receipt edited after the fact does not verify.

Key ids never embed the token (`subject:<domain>/<dek id>`, `period:<days>/<day>/subject:<domain>/<dek id>`):
the DEK id is 128 random bits, so a key id names exactly one key without naming its subject.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum, StrEnum
from typing import Any

import orjson

from gateway.core.audit import AuditKeys, canonical, event_hash
from gateway.core.pipeline.outcome import Outcome, OutcomeKind
from gateway.errors import GatewayError

RECEIPT_FORMAT = 1
RECEIPT_TYPE = "erasure_receipt"
_RECEIPT_CONTEXT = b"privacy-gateway/erasure-receipt/v1\x00"
_SUBJECT_CONTEXT = b"privacy-gateway/erasure-subject/v1\x00"


class Scope(StrEnum):
    """What a key protected, as the audit shows it."""

    FIELD = "field"  # fields of sanitized (or purpose) records
    DEAD_LETTER = "dead-letter"  # originals sealed in dead letters (format 2)
    PERIOD = "period"  # a per-subject period key (retention)


def dek_of(key_id: str) -> str:
    """The DEK id (hex) a key id ends with: the part that names one key, whatever the id's form."""
    return key_id.rsplit("/", 1)[-1]


def day_of_ms(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).date().isoformat()


def iso_ms(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class KeyUse:
    """What the audit says one key protected: its scopes, the topics, and events per (topic, day)."""

    scopes: set[Scope] = field(default_factory=set)
    topics: set[str] = field(default_factory=set)
    days: dict[tuple[str, str], int] = field(default_factory=dict)  # (output topic, UTC day) -> events


def key_uses(entries: Iterable[Mapping[str, Any]], key_ids: Iterable[str]) -> dict[str, KeyUse]:
    """Per key id of `key_ids`, what the audit entries that name it (by its DEK id) protected."""
    by_dek = {dek_of(k): k for k in key_ids}
    uses: dict[str, KeyUse] = {}
    for entry in entries:
        named = entry.get("key_ids")
        if not isinstance(named, list) or not by_dek:
            continue
        mine = {by_dek[d] for k in named if isinstance(k, str) and (d := dek_of(k)) in by_dek}
        if not mine:
            continue
        outcome = Outcome.parse(entry.get("outcome"))
        output = entry.get("output")
        topic = output.get("topic") if isinstance(output, dict) else None
        event = entry.get("event")
        stamp = event.get("timestamp") if isinstance(event, dict) else None
        for key_id in mine:
            use = uses.setdefault(key_id, KeyUse())
            if outcome is not None and outcome.kind is OutcomeKind.REJECTED:
                use.scopes.add(Scope.DEAD_LETTER)
            elif outcome is not None and outcome.kind is OutcomeKind.SANITIZED:
                use.scopes.add(Scope.FIELD)
            if isinstance(topic, str):
                use.topics.add(topic)
                if isinstance(stamp, int):
                    day = (topic, day_of_ms(stamp))
                    use.days[day] = use.days.get(day, 0) + 1
    return uses


@dataclass(frozen=True)
class InventoryKey:
    """One key of a subject: its id (no token), its scopes and the topics it protected."""

    key_id: str
    scopes: tuple[str, ...]
    topics: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "scopes": list(self.scopes), "topics": list(self.topics)}

    @classmethod
    def from_json(cls, data: Any) -> InventoryKey:
        if not isinstance(data, dict) or not isinstance(data.get("key_id"), str):
            raise ValueError("a key entry needs a key_id")
        return cls(data["key_id"], tuple(str(s) for s in data.get("scopes") or ()),
                   tuple(str(t) for t in data.get("topics") or ()))


def key_inventory(key_ids: Iterable[str], uses: Mapping[str, KeyUse]) -> list[InventoryKey]:
    """The subject's keys with their scopes and topics: THE inventory, for the forget's audit event, its
    receipt and `gateway subject report` alike (a key the audit never named still is listed: it may
    protect events whose batch is not committed yet)."""
    out: list[InventoryKey] = []
    for key_id in sorted(set(key_ids)):
        use = uses.get(key_id, KeyUse())
        scopes = set(use.scopes) | ({Scope.PERIOD} if key_id.startswith("period:")
                                    or key_id.startswith("roles:") and "/period:" in key_id else set())
        out.append(InventoryKey(key_id, tuple(sorted(scopes)), tuple(sorted(use.topics))))
    return out


def token_version(token: str) -> str:
    """The key version a token was made under (`tok_v<version>_...`)."""
    head = token.split("_", 2)
    return head[1][1:] if len(head) == 3 and head[0] == "tok" and head[1].startswith("v") else ""


def subject_commitment(keys: AuditKeys, domain: str, token: str, key_id: str | None = None) -> str:
    """The receipt's commitment to a subject: HMAC of (domain, token) under the audit key `key_id`. Without
    the audit key nobody can test an identifier against it; with it, the verifier recomputes it from the
    identifier the person supplies."""
    return keys.tag(_SUBJECT_CONTEXT, domain.encode() + b"\x00" + token.encode(), key_id)


@dataclass(frozen=True)
class AuditPosition:
    """Where the erasure's audit record is, and what it must be there."""

    topic: str
    partition: int
    offset: int
    hash: str
    mac_key_id: str

    def __str__(self) -> str:
        return f"{self.topic} partition {self.partition} offset {self.offset}"


@dataclass(frozen=True)
class ErasureReceipt:
    """What `gateway forget` returns (see the module's docstring). `to_json` is the file a data subject
    or a regulator keeps; `human` its short form."""

    domain: str
    subject: tuple[tuple[str, str], ...]  # (token version, commitment)
    keys: tuple[InventoryKey, ...]
    key_topic: str
    consent_records_erased: int
    time_ms: int
    audit: AuditPosition
    mac_key_id: str
    mac: str = ""
    format: int = RECEIPT_FORMAT

    def body(self) -> dict[str, Any]:
        """Everything the receipt's MAC covers."""
        return {
            "type": RECEIPT_TYPE,
            "format": self.format,
            "domain": self.domain,
            "subject": [{"token_version": v, "commitment": c} for v, c in self.subject],
            "keys": [k.to_json() for k in self.keys],
            "key_topic": self.key_topic,
            "consent_records_erased": self.consent_records_erased,
            "time": iso_ms(self.time_ms),
            "time_ms": self.time_ms,
            "audit": {"topic": self.audit.topic, "partition": self.audit.partition, "offset": self.audit.offset,
                      "hash": self.audit.hash, "mac_key_id": self.audit.mac_key_id},
            "mac_key_id": self.mac_key_id,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.body() | {"mac": self.mac}, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    def sealed(self, keys: AuditKeys) -> ErasureReceipt:
        mac = keys.tag(_RECEIPT_CONTEXT, canonical(self.body()), self.mac_key_id)
        return ErasureReceipt(self.domain, self.subject, self.keys, self.key_topic, self.consent_records_erased,
                              self.time_ms, self.audit, self.mac_key_id, mac, self.format)

    def authentic(self, keys: AuditKeys) -> bool:
        if not keys.held(self.mac_key_id):
            return False
        return self.sealed(keys).mac == self.mac

    def scopes(self) -> dict[str, list[str]]:
        """Key ids per scope (a key used in several scopes is under each; one the audit never named
        under "unused")."""
        out: dict[str, list[str]] = {}
        for key in self.keys:
            for scope in key.scopes or ("unused",):
                out.setdefault(scope, []).append(key.key_id)
        return out

    def topics(self) -> list[str]:
        return sorted({t for k in self.keys for t in k.topics})

    def human(self) -> str:
        versions = ", ".join(f"v{v} {c[:16]}..." for v, c in self.subject)
        lines = [f"Erasure receipt (format {self.format}), {iso_ms(self.time_ms)}",
                 f"  subject: token domain '{self.domain}', commitment(s) {versions} (no identifier, no token)",
                 f"  audit record: {self.audit}, hash {self.audit.hash[:16]}..., audit key '{self.audit.mac_key_id}'",
                 f"  key topic: {self.key_topic}; {len(self.keys)} key(s) erased; "
                 f"{self.consent_records_erased} consent record(s) erased"]
        for scope, ids in sorted(self.scopes().items()):
            lines.append(f"  {scope}: {', '.join(ids)}")
        lines.append(f"  topics those keys protected: {', '.join(self.topics()) or 'none named by the audit'}")
        lines.append("  check it: gateway erasure verify RECEIPT.json --bootstrap ... (exit 0 verified, "
                     "1 failed, 3 pending compaction)")
        return "\n".join(lines)


def parse_receipt(data: bytes) -> ErasureReceipt:
    """A receipt from its JSON; GatewayError saying what is wrong with it."""
    try:
        raw = orjson.loads(data)
        if raw.get("type") != RECEIPT_TYPE or raw.get("format") != RECEIPT_FORMAT:
            raise ValueError(f"not an erasure receipt of format {RECEIPT_FORMAT}")
        audit = raw["audit"]
        return ErasureReceipt(
            str(raw["domain"]), tuple((str(s["token_version"]), str(s["commitment"])) for s in raw["subject"]),
            tuple(InventoryKey.from_json(k) for k in raw["keys"]), str(raw["key_topic"]),
            int(raw["consent_records_erased"]), int(raw["time_ms"]),
            AuditPosition(str(audit["topic"]), int(audit["partition"]), int(audit["offset"]), str(audit["hash"]),
                          str(audit["mac_key_id"])),
            str(raw["mac_key_id"]), str(raw["mac"]), int(raw["format"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise GatewayError(f"the receipt is not a readable erasure receipt ({exc})") from None


def receipt_of(event: Mapping[str, Any], position: tuple[str, int, int], keys: AuditKeys) -> ErasureReceipt:
    """The receipt of a sealed `subject_forgotten` audit event written at `position` (topic, partition,
    offset), sealed with the audit key that sealed the event."""
    key_id = str(event["mac_key_id"])
    domain = str(event["domain"])
    inventory = event.get("keys")
    listed = (tuple(InventoryKey.from_json(k) for k in inventory) if isinstance(inventory, list)
              else tuple(InventoryKey(k, (), ()) for k in event.get("key_ids") or ()))
    receipt = ErasureReceipt(
        domain, tuple((token_version(t), subject_commitment(keys, domain, t, key_id))
                      for t in event.get("subject_tokens") or ()),
        listed, str(event["key_topic"]), int(event.get("consent_records_erased") or 0), int(event["time"]),
        AuditPosition(position[0], position[1], position[2], str(event["hash"]), key_id), key_id)
    return receipt.sealed(keys)


# ---- verification: what was checked, and the verdict ---------------------------------------------------


class Status(Enum):
    PASSED = "passed"
    PENDING = "pending compaction"
    FAILED = "FAILED"


class ExitCode(IntEnum):
    """`gateway erasure verify`'s exit codes (2 is every command's for a usage or connection error)."""

    VERIFIED = 0
    FAILED = 1
    PENDING = 3


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: Status, message: str) -> None:
        self.checks.append(Check(name, status, message))

    @property
    def status(self) -> Status:
        kinds = {c.status for c in self.checks}
        if Status.FAILED in kinds or not self.checks:
            return Status.FAILED
        return Status.PENDING if Status.PENDING in kinds else Status.PASSED

    @property
    def exit_code(self) -> ExitCode:
        return {Status.PASSED: ExitCode.VERIFIED, Status.PENDING: ExitCode.PENDING,
                Status.FAILED: ExitCode.FAILED}[self.status]

    def human(self) -> str:
        lines = [f"[{c.status.value}] {c.name}: {c.message}" for c in self.checks]
        lines.append({Status.PASSED: "erasure verified",
                      Status.PENDING: "erasure not yet verified: pending compaction (run again later)",
                      Status.FAILED: "erasure verification FAILED"}[self.status])
        return "\n".join(lines)

    def to_json(self) -> bytes:
        return orjson.dumps({"status": self.status.value, "exit_code": int(self.exit_code),
                             "checks": [{"name": c.name, "status": c.status.value, "message": c.message}
                                        for c in self.checks]}, option=orjson.OPT_INDENT_2)


@dataclass(frozen=True)
class KeyRecordSeen:
    """One record of the key topic, reduced to what the judge needs: the key id its name maps to (never
    the name, which holds the token), where it is, and whether it holds a value."""

    key_id: str
    partition: int
    offset: int
    has_value: bool


@dataclass(frozen=True)
class CompactionSettings:
    """The key topic's settings that decide when the cleaner may remove an erased key's old value (ms)."""

    segment_ms: int
    min_lag_ms: int
    max_lag_ms: int
    delete_retention_ms: int

    def window(self, erased_ms: int) -> tuple[int, int]:
        """(earliest, latest) time the cleaner removes the old values of keys erased at `erased_ms`: the
        tombstone's segment must have rolled (segment.ms; a segment rolls on the topic's next write after
        that) and the tombstone be older than min.compaction.lag.ms; max.compaction.lag.ms bounds it."""
        earliest = erased_ms + max(self.segment_ms, self.min_lag_ms)
        return earliest, max(earliest, erased_ms + self.max_lag_ms)


def judge_key_topic(verdict: Verdict, receipt: ErasureReceipt, physical: Iterable[KeyRecordSeen],
                    committed: Iterable[KeyRecordSeen], refused: set[str], settings: CompactionSettings | None) -> None:
    """The key topic's checks. `physical`: every record from the beginning as a read_uncommitted reader
    sees it (aborted values too); `committed`: read_committed, in offset order per partition; `refused`:
    the key ids the erased-names topic holds. A named key with a live value (its last committed record
    holds one) fails; an old value still in the log is pending compaction; a named key the erased-names
    topic does not refuse fails."""
    named = {k.key_id for k in receipt.keys}
    last: dict[str, KeyRecordSeen] = {}
    for record in committed:
        if record.key_id in named:
            last[record.key_id] = record
    live = sorted(k for k, r in last.items() if r.has_value)
    if live:
        where = ", ".join(f"{k} (partition {last[k].partition} offset {last[k].offset})" for k in live)
        verdict.add("no live copy", Status.FAILED, f"{len(live)} erased key(s) hold a live value on "
                    f"'{receipt.key_topic}': {where}: the wrapped key was written again after the erasure")
    else:
        verdict.add("no live copy", Status.PASSED, f"none of the {len(named)} key(s) has a live value on "
                    f"'{receipt.key_topic}' (read_committed from the beginning)")
    old = [r for r in physical if r.key_id in named and r.has_value and r.key_id not in live]
    if old:
        offsets = ", ".join(f"{r.partition}:{r.offset}" for r in old[:10]) + (" ..." if len(old) > 10 else "")
        when = ""
        if settings is not None:
            earliest, latest = settings.window(receipt.time_ms)
            when = (f"; the topic's settings let the log cleaner remove them from {iso_ms(earliest)} (segment.ms "
                    f"{settings.segment_ms}, min.compaction.lag.ms {settings.min_lag_ms}: the segment holding the "
                    f"tombstones rolls on the topic's next write after that) and at the latest around "
                    f"{iso_ms(latest)} (max.compaction.lag.ms {settings.max_lag_ms})")
        verdict.add("compacted", Status.PENDING, f"{len(old)} old value(s) of erased keys are still in the log at "
                    f"partition:offset {offsets}{when}")
    else:
        verdict.add("compacted", Status.PASSED, "no old value of an erased key is left in the log (read from the "
                    "beginning, aborted records included)")
    missing = sorted(named - refused)
    if missing:
        verdict.add("refused", Status.FAILED, f"{len(missing)} erased key(s) are not on the erased-names topic, so "
                    f"a reader would accept them again: {', '.join(missing)}")
    else:
        verdict.add("refused", Status.PASSED, f"all {len(named)} key(s) are on the erased-names topic: every reader "
                    "refuses a value written under them")


def judge_audit_record(verdict: Verdict, receipt: ErasureReceipt, keys: AuditKeys, value: bytes | None,
                       chain_ok: str | None) -> list[str]:
    """The audit's checks: the record at the receipt's position is the erasure it names, authentic under
    its audit key, and its chain holds up to it (`chain_ok`: None, or why not). The subject tokens the
    record holds (to sample ciphertexts with; [] when the record does not check)."""
    where = str(receipt.audit)
    if not receipt.authentic(keys):
        verdict.add("receipt", Status.FAILED, f"the receipt's MAC does not verify under audit key "
                    f"'{receipt.mac_key_id}' (altered, or a key this keyring does not hold)")
    else:
        verdict.add("receipt", Status.PASSED, f"authentic under audit key '{receipt.mac_key_id}'")
    if value is None:
        verdict.add("audit record", Status.FAILED, f"no record at {where}")
        return []
    try:
        body = orjson.loads(value)
        stored, mac = body.pop("hash"), body.pop("mac")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        verdict.add("audit record", Status.FAILED, f"the record at {where} is not an audit event")
        return []
    key_id = body.get("mac_key_id")
    problems = []
    if stored != receipt.audit.hash or event_hash(body) != stored:
        problems.append("its hash is not the receipt's, or its content does not match its hash")
    if not isinstance(key_id, str) or key_id != receipt.audit.mac_key_id or not keys.held(key_id) \
            or not isinstance(mac, str) or not keys.authentic(key_id, stored, mac):
        problems.append(f"its MAC does not verify under audit key '{receipt.audit.mac_key_id}'")
    if body.get("type") != "subject_forgotten" or body.get("domain") != receipt.domain \
            or body.get("key_topic") != receipt.key_topic or body.get("time") != receipt.time_ms:
        problems.append("it is not this erasure (type, domain, key topic or time differ)")
    listed = body.get("keys")
    if sorted(body.get("key_ids") or []) != sorted(k.key_id for k in receipt.keys) or (
            isinstance(listed, list) and listed != [k.to_json() for k in receipt.keys]):
        problems.append("the keys it erased (or their scopes and topics) are not the receipt's")
    tokens = [t for t in body.get("subject_tokens") or [] if isinstance(t, str)]
    if not problems and keys.held(receipt.mac_key_id):
        ours = sorted((token_version(t), subject_commitment(keys, receipt.domain, t, receipt.mac_key_id))
                      for t in tokens)
        if ours != sorted(receipt.subject):
            problems.append("its subject is not the one the receipt commits to")
    if chain_ok is not None:
        problems.append(chain_ok)
    if problems:
        verdict.add("audit record", Status.FAILED, f"{where}: {'; '.join(problems)}")
        return []
    verdict.add("audit record", Status.PASSED, f"{where} holds this erasure, authentic under audit key "
                f"'{key_id}', its forget chain unbroken up to it")
    return tokens
