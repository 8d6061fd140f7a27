"""Audit events and their per-partition hash chain.

One audit entry per input event: what was done, under which policy and keys, with what outcome;
never a field value. The sanitize worker writes a source partition's entries of one batch as one
audit record, type ``events`` (`batch_body`): the batch's chain, instance and time once, its
entries in offset order under ``events``. Other writers (forget, retention, DP releases) write one
record per event. Records of one chain form a hash chain: each carries the previous record's hash,
and its own hash covers its canonical body, every entry included. The chain key is
``<source_topic>:<partition>``; all its records go to one audit partition, in order. Readers take
entries with `entries`, which gives every record's entries in the per-event form.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

GENESIS = "0" * 64
BATCH_TYPE = "events"  # a record holding one batch's entries of one chain
BATCH_FIELDS = ("chain", "instance", "time")  # a batch record's fields that each of its entries shares


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


def seal_audit_event(body: dict[str, Any], prev_hash: str) -> dict[str, Any]:
    """Add prev_hash and hash to an audit body; the hash covers everything else."""
    body["prev_hash"] = prev_hash
    body["hash"] = event_hash(body)
    return body


def seal_audit_value(body: dict[str, Any], prev_hash: str) -> tuple[bytes, str]:
    """(record value, hash) of an audit body, serializing it once; the per-event form of seal_audit_event.

    The hash covers the canonical body with prev_hash (as seal_audit_event's does); the value is those
    same bytes with "hash" spliced in as the last key (the body is never empty: it holds prev_hash).
    JSON key order carries no meaning and verify_chains pops "hash" and re-canonicalizes, so both
    verify alike. The body may hold orjson.Fragment values, each itself canonical JSON (sorted keys).
    """
    body["prev_hash"] = prev_hash
    data = canonical(body)
    digest = hashlib.sha256(data).hexdigest()
    return b"".join((data[:-1], b',"hash":"', digest.encode("ascii"), b'"}')), digest


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


@dataclass
class ChainReport:
    chains: int = 0
    events: int = 0  # audit entries in the verified records (a batch record holds many)
    records: int = 0
    restarts: list[str] = field(default_factory=list)
    breaks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


def verify_chains(events: Iterable[tuple[int, int, bytes]]) -> ChainReport:
    """Walk audit records (audit partition, audit offset, value) in offset order per partition.

    Reports every chain's first break: a body whose hash does not match, or a prev_hash that is
    not the previous event's hash. A chain_restart marker (a worker could not find the chain's
    head) starts the chain again from genesis and is reported, not counted as a break.
    """
    report = ChainReport()
    last: dict[str, str] = {}
    broken: set[str] = set()
    for partition, offset, value in events:
        where = f"audit partition {partition} offset {offset}"
        try:
            body = orjson.loads(value)
            key = body["chain"]
            stored_hash = body.pop("hash")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            report.breaks.append(f"{where}: not an audit event of this gateway")
            continue
        report.records += 1
        report.events += len(entries(body))
        if key in broken:
            continue
        if key not in last:
            report.chains += 1
        if event_hash(body) != stored_hash:
            report.breaks.append(f"chain {key}: {where}: content does not match its hash (altered)")
            broken.add(key)
            continue
        expected = last.get(key, GENESIS)
        prev = body.get("prev_hash")
        if prev != expected:
            if prev == GENESIS and body.get("chain_restart"):
                report.restarts.append(f"chain {key}: {where}: restarted (head not found by the worker)")
            else:
                report.breaks.append(f"chain {key}: {where}: prev_hash does not match the previous event "
                                     "(an event is missing, reordered or altered)")
                broken.add(key)
                continue
        last[key] = stored_hash
    return report


def head_metadata(head: str) -> str:
    """The offset-commit metadata that carries a chain's head with its partition's offset."""
    return orjson.dumps({"audit_head": head}).decode()


def parse_head_metadata(metadata: str | None) -> str | None:
    """The chain head in committed metadata, or None (none committed, or not ours)."""
    if not metadata:
        return None
    try:
        head = orjson.loads(metadata).get("audit_head")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return head if isinstance(head, str) and len(head) == 64 else None
