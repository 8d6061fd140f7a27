"""The audit's completeness: each chain anchored in committed state, each source partition covered.

`gateway.core.audit.verify_chains` proves that the records on the audit topic link and authenticate.
That alone proves nothing about what is *not* there: an emptied or replaced topic, a chain cut
after its last good record, or source offsets never audited (an offset reset hidden behind a
chain_restart). This module adds the two checks that do:

* Anchors. The writer of each chain commits its head somewhere the audit topic's writers cannot
  rewrite: the sanitize job in the offset-commit metadata of the source partition, in the same
  transaction as the records (so with the committed offset), the DP stages in their groups'
  metadata, forget and retention in the key topic. The chain's records up to that head must be on
  the topic: a committed head with no chain is MISSING, a head that is not one of the chain's
  records is HEAD_MISMATCH, a chain whose committed state holds no head is NO_HEAD. Records after
  the head were committed after the anchors were read (the verifier reads anchors first): a note.
* Coverage. A sanitize chain's entries up to its head must audit every source offset that holds a
  record from the chain's first audited offset to the committed offset, each exactly once.
  Offsets are not dense: a transactional producer's commit markers (and aborted records) occupy
  offsets no read_committed consumer ever sees. So an offset no entry audits is a GAP only if the
  source still holds a committed record there (`SourceView`, read read_committed); offsets the
  source no longer holds (below its low watermark) cannot be judged and are a note.

Pure: the Kafka reads (anchors, the audit topic, the source) are gateway.runtime.audit_check's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.core.audit import AuditKeys, ChainReport, ChainWalk, Finding, Kind, ranges, span, verify_chains


@dataclass(frozen=True)
class Anchor:
    """A chain's head as its writer committed it outside the audit topic."""

    head: str | None  # None: committed state without a head (the chain must have no record)
    where: str  # e.g. "group 'privacy-gateway' payments.raw:0 offset 120", for messages
    offset: int | None = None  # a sanitize chain: the source partition's committed offset (coverage's end)


@dataclass(frozen=True)
class SourceOffsets:
    """What a source partition holds within asked ranges: the offsets of committed records, and its
    low watermark (offsets below it are gone: retention or deletion)."""

    present: frozenset[int]
    low: int


class SourceView(Protocol):
    def offsets(self, topic: str, partition: int, first: int, end: int) -> SourceOffsets:
        """Offsets in [first, end) holding committed records of the partition, and its low watermark."""
        ...


def source_of(chain: str) -> tuple[str, int] | None:
    topic, _, partition = chain.rpartition(":")
    return (topic, int(partition)) if topic and partition.isdigit() else None


def verify_audit(records: Iterable[tuple[int, int, bytes]], keys: AuditKeys | None, anchors: Mapping[str, Anchor],
                 source: SourceView, allow_legacy: bool = False) -> ChainReport:
    """The whole verification: chains (hashes, links, MACs, duplicates), then anchors and coverage."""
    report = verify_chains(records, keys, allow_legacy)
    for key, anchor in sorted(anchors.items()):
        if key not in report.walks and anchor.head is not None:
            report.findings.append(Finding(Kind.MISSING, f"chain {key}: {anchor.where} committed head "
                                                         f"{anchor.head[:16]}… but the audit topic holds no record of "
                                                         "the chain (emptied, replaced or truncated)", key))
    for key, walk in sorted(report.walks.items()):
        if walk.broken:
            continue  # already a finding: nothing after the break can be trusted
        anchor = anchors.get(key)
        upto = _anchored(walk, anchor, report)
        if upto is None:
            continue
        if any(walk.offsets[:upto]):
            report.findings += coverage(walk, upto, anchor.offset if anchor is not None else None, source)
    return report


def _anchored(walk: ChainWalk, anchor: Anchor | None, report: ChainReport) -> int | None:
    """How many of the chain's records its anchor vouches for (None: a finding, coverage not judged)."""
    count = len(walk.hashes)
    if anchor is None:
        report.findings.append(Finding(Kind.UNANCHORED, f"chain {walk.key}: no committed head to compare its last "
                                                        "record with (its writer's group or key topic holds none)",
                                       walk.key))
        return count
    if anchor.head is None:
        if count:
            report.findings.append(Finding(Kind.NO_HEAD, f"chain {walk.key}: {count} record(s) on the audit topic but "
                                                         f"{anchor.where} committed no chain head (offsets reset or "
                                                         "metadata lost outside the gateway)", walk.key))
            return None
        return 0
    try:
        at = len(walk.hashes) - 1 - walk.hashes[::-1].index(anchor.head)
    except ValueError:
        last = walk.hashes[-1][:16] if walk.hashes else "none"
        report.findings.append(Finding(Kind.HEAD_MISMATCH, f"chain {walk.key}: {anchor.where} committed head "
                                                           f"{anchor.head[:16]}…, which is not a record of the chain "
                                                           f"(its last: {last}…): records removed or replaced",
                                       walk.key))
        return None
    if at + 1 < count:
        report.findings.append(Finding(Kind.AFTER_HEAD, f"chain {walk.key}: {count - at - 1} record(s) after its "
                                                        f"committed head ({anchor.where}): committed since the heads "
                                                        "were read", walk.key))
    return at + 1


def coverage(walk: ChainWalk, upto: int, committed: int | None, source: SourceView) -> list[Finding]:
    """A sanitize chain's first `upto` records must audit each record of its source partition once,
    from the first offset they audit to `committed` (exclusive; without one, to the last audited)."""
    audited = {o for record in walk.offsets[:upto] for o in record}
    first, last = min(audited), max(audited)
    end = committed if committed is not None else last + 1
    out: list[Finding] = []
    past = [o for o in audited if o >= end]
    out += [Finding(Kind.PAST_COMMIT, f"chain {walk.key}: source offsets {span(a, b)} audited at or past the committed "
                                      f"offset {end}", walk.key, (a, b)) for a, b in ranges(past)]
    holes = [(a, b) for a, b in _holes(audited, first, end)]
    where = source_of(walk.key)
    if not holes or where is None:
        return out
    found = source.offsets(where[0], where[1], holes[0][0], holes[-1][1] + 1)
    for a, b in holes:
        gone_to = min(b, found.low - 1)
        if a <= gone_to:
            out.append(Finding(Kind.UNCHECKED_GAP, f"chain {walk.key}: source offsets {span(a, gone_to)} are not "
                                                   f"audited and no longer in the source (low watermark {found.low}): "
                                                   "cannot tell transaction markers from skipped records",
                                               walk.key, (a, gone_to)))
        for x, y in ranges(o for o in found.present if a <= o <= b):
            out.append(Finding(Kind.GAP, f"chain {walk.key}: source offsets {span(x, y)} hold records that no audit "
                                         "entry covers (skipped)", walk.key, (x, y)))
    return out


def _holes(audited: set[int], first: int, end: int) -> Iterable[tuple[int, int]]:
    """Inclusive runs of [first, end) that `audited` lacks."""
    expect = first
    for a, b in ranges(o for o in audited if o < end):
        if a > expect:
            yield expect, a - 1
        expect = b + 1
    if expect < end:
        yield expect, end - 1
