"""The audit verifier's pure logic: MACs and their keys, coverage of source offsets, anchors.

Each test builds what an attacker (or a lost offset) leaves on the audit topic and checks the
finding names the chain and the offset range; an honest chain verifies clean."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.core.audit import (
    GENESIS,
    AuditKeys,
    Kind,
    batch_body,
    canonical,
    committed_without_head,
    seal_audit_event,
    seal_audit_value,
)
from gateway.core.audit_verify import Anchor, SourceOffsets, verify_audit
from gateway.runtime.jobs.sanitize import SanitizeHandler

KEYS = AuditKeys("audit-a", {"audit-a": bytes(range(32))})
CHAIN = "payments.raw:0"


class Source:
    """A source partition as a read_committed consumer sees it: the offsets holding records."""

    def __init__(self, present: set[int], low: int = 0) -> None:
        self.present = present
        self.low = low
        self.asked: list[tuple[str, int, int, int]] = []

    def offsets(self, topic: str, partition: int, first: int, end: int) -> SourceOffsets:
        self.asked.append((topic, partition, first, end))
        return SourceOffsets(frozenset(o for o in self.present if first <= o < end and o >= self.low), self.low)


def _entry(offset: int, chain: str = CHAIN) -> dict[str, Any]:
    topic, _, partition = chain.rpartition(":")
    return {"type": "event", "event": {"topic": topic, "partition": int(partition), "offset": offset,
                                       "timestamp": 1}, "outcome": "sanitized"}


class Chain:
    """An honest writer: batch records of entries, MACed, chained."""

    def __init__(self, key: str = CHAIN, keys: AuditKeys = KEYS) -> None:
        self.key = key
        self.keys = keys
        self.head = GENESIS
        self.values: list[bytes] = []

    def batch(self, offsets: list[int], restart: bool = False) -> str:
        body = batch_body(self.key, "unit", 1, [_entry(o, self.key) for o in offsets])
        if restart:
            body["chain_restart"] = True
        value, self.head = seal_audit_value(body, GENESIS if restart else self.head, self.keys)
        self.values.append(value)
        return self.head

    def records(self, partition: int = 0) -> list[tuple[int, int, bytes]]:
        return [(partition, i, v) for i, v in enumerate(self.values)]


def _anchor(head: str | None, offset: int | None = None) -> dict[str, Anchor]:
    return {CHAIN: Anchor(head, "group 'g' at offset x", offset)}


def _kinds(report: Any) -> list[Kind]:
    return [f.kind for f in report.problems]


def _plain_forgery(prev: str, offsets: list[int]) -> bytes:
    """A record appended by someone with write access only: hashed as the README documents (SHA-256 of
    the canonical body), with no MAC (format 1) or with a MAC under a key of their own."""
    body = batch_body(CHAIN, "evil", 1, [_entry(o) for o in offsets])
    body["prev_hash"] = prev
    body["hash"] = hashlib.sha256(canonical(body)).hexdigest()
    return orjson.dumps(body)


def test_honest_chain_verifies() -> None:
    chain = Chain()
    chain.batch([0, 1, 2])
    head = chain.batch([3, 4])
    source = Source(set(range(5)))
    report = verify_audit(chain.records(), KEYS, _anchor(head, 5), source)
    assert report.ok, report.breaks
    assert report.notes == []
    assert (report.chains, report.records, report.events) == (1, 2, 5)
    assert source.asked == []  # dense coverage: the source is not read


def test_record_forged_with_a_plain_producer_fails() -> None:
    chain = Chain()
    chain.batch([0, 1])
    forged = _plain_forgery(chain.head, [2])
    records = [*chain.records(), (0, 1, forged)]
    report = verify_audit(records, KEYS, _anchor(chain.head, 2), Source({0, 1}))
    assert Kind.UNAUTHENTICATED in _kinds(report)
    assert any("audit partition 0 offset 1" in b for b in report.breaks)


def test_record_with_the_forgers_own_mac_fails() -> None:
    chain = Chain()
    chain.batch([0])
    evil = Chain(keys=AuditKeys("audit-a", {"audit-a": b"\x01" * 32}))  # the id is public, the key is not
    evil.head = chain.head
    evil.batch([1])
    report = verify_audit([*chain.records(), (0, 1, evil.values[0])], KEYS, {}, Source({0, 1}))
    assert _kinds(report) == [Kind.FORGED]
    assert report.breaks[0].startswith(f"chain {CHAIN}: audit partition 0 offset 1: MAC does not verify")


def test_stripping_the_mac_field_fails() -> None:
    chain = Chain()
    chain.batch([0])
    body = orjson.loads(chain.values[0])
    del body["mac"]
    report = verify_audit([(0, 0, orjson.dumps(body))], KEYS, {}, Source({0}))
    assert _kinds(report) == [Kind.FORGED]


def test_key_not_held_is_a_finding() -> None:
    other = Chain(keys=AuditKeys("audit-other", {"audit-other": b"\x02" * 32}))
    other.batch([0])
    report = verify_audit(other.records(), KEYS, {}, Source({0}))
    assert _kinds(report) == [Kind.KEY_NOT_HELD]
    assert "audit-other" in report.breaks[0]


def test_rotated_keys_both_verify() -> None:
    old = AuditKeys("audit-a", {"audit-a": bytes(range(32))})
    new = AuditKeys("audit-b", {"audit-a": bytes(range(32)), "audit-b": b"\x03" * 32})
    chain = Chain(keys=old)
    chain.batch([0])
    chain.keys = new
    head = chain.batch([1])
    assert orjson.loads(chain.values[1])["mac_key_id"] == "audit-b"
    assert verify_audit(chain.records(), new, _anchor(head, 2), Source({0, 1})).ok
    assert _kinds(verify_audit(chain.records(), old, _anchor(head, 2), Source({0, 1}))) == [Kind.KEY_NOT_HELD]


def _legacy(prev: str, offsets: list[int]) -> tuple[bytes, str]:
    body = batch_body(CHAIN, "old", 1, [_entry(o) for o in offsets])
    body["prev_hash"] = prev
    digest = hashlib.sha256(canonical(body)).hexdigest()
    return orjson.dumps(dict(body, hash=digest)), digest


def test_legacy_records_are_reported_and_accepted_only_when_asked() -> None:
    first, head = _legacy(GENESIS, [0, 1])
    chain = Chain()
    chain.head = head
    last = chain.batch([2])
    records = [(0, 0, first), (0, 1, chain.values[0])]
    strict = verify_audit(records, KEYS, _anchor(last, 3), Source({0, 1, 2}))
    assert _kinds(strict) == [Kind.UNAUTHENTICATED]
    assert "1 format 1 record(s)" in strict.breaks[0]
    lenient = verify_audit(records, KEYS, _anchor(last, 3), Source({0, 1, 2}), allow_legacy=True)
    assert lenient.ok, lenient.breaks
    assert [n.kind for n in lenient.notes] == [Kind.LEGACY]


def test_legacy_after_authenticated_fails_even_when_allowed() -> None:
    chain = Chain()
    chain.batch([0])
    forged, _ = _legacy(chain.head, [1])
    report = verify_audit([*chain.records(), (0, 1, forged)], KEYS, {}, Source({0, 1}), allow_legacy=True)
    assert _kinds(report) == [Kind.UNAUTHENTICATED]


def test_gap_holding_records_is_reported_with_its_range() -> None:
    chain = Chain()
    chain.batch([0, 1, 2])
    head = chain.batch([6, 7])  # 3-5 skipped
    report = verify_audit(chain.records(), KEYS, _anchor(head, 8), Source(set(range(8))))
    assert _kinds(report) == [Kind.GAP]
    assert report.problems[0].offsets == (3, 5)
    assert "source offsets 3-5 hold records that no audit entry covers" in report.breaks[0]


def test_transaction_markers_are_not_gaps() -> None:
    """A transactional producer: each commit marker takes an offset no consumer sees (2, 5, 8), and
    an aborted transaction's records (9-10) are skipped by read_committed."""
    chain = Chain()
    chain.batch([0, 1])
    chain.batch([3, 4, 6])
    head = chain.batch([7, 12])
    source = Source({0, 1, 3, 4, 6, 7, 12})
    report = verify_audit(chain.records(), KEYS, _anchor(head, 14), source)
    assert report.ok, report.breaks
    assert source.asked == [("payments.raw", 0, 2, 14)]  # only the holes' span is read


def test_unaudited_tail_up_to_the_committed_offset_is_a_gap() -> None:
    chain = Chain()
    head = chain.batch([0, 1])
    report = verify_audit(chain.records(), KEYS, _anchor(head, 4), Source({0, 1, 2, 3}))
    assert [(f.kind, f.offsets) for f in report.problems] == [(Kind.GAP, (2, 3))]


def test_holes_the_source_no_longer_holds_are_notes() -> None:
    chain = Chain()
    chain.batch([0])
    head = chain.batch([5])
    report = verify_audit(chain.records(), KEYS, _anchor(head, 6), Source({5}, low=3))
    assert report.ok, report.breaks
    assert [(n.kind, n.offsets) for n in report.notes] == [(Kind.UNCHECKED_GAP, (1, 2))]


def test_duplicates_are_reported_with_their_range() -> None:
    chain = Chain()
    chain.batch([0, 1, 2, 3])
    head = chain.batch([2, 3, 4])
    report = verify_audit(chain.records(), KEYS, _anchor(head, 5), Source(set(range(5))))
    assert [(f.kind, f.offsets) for f in report.problems] == [(Kind.DUPLICATE, (2, 3))]


def test_restart_after_an_offset_reset_does_not_hide_the_skipped_offsets() -> None:
    chain = Chain()
    chain.batch([0, 1])
    head = chain.batch([10, 11], restart=True)  # offsets reset forward: 2-9 never processed
    report = verify_audit(chain.records(), KEYS, _anchor(head, 12), Source(set(range(12))))
    assert [(f.kind, f.offsets) for f in report.problems] == [(Kind.GAP, (2, 9))]
    assert [n.kind for n in report.notes] == [Kind.RESTART]


def test_restart_after_a_reset_backwards_shows_duplicates() -> None:
    chain = Chain()
    chain.batch([0, 1, 2])
    head = chain.batch([1, 2, 3], restart=True)
    report = verify_audit(chain.records(), KEYS, _anchor(head, 4), Source(set(range(4))))
    assert [(f.kind, f.offsets) for f in report.problems] == [(Kind.DUPLICATE, (1, 2))]


def test_empty_audit_topic_with_committed_heads_is_a_finding() -> None:
    report = verify_audit([], KEYS, _anchor("a" * 64, 100), Source(set()))
    assert _kinds(report) == [Kind.MISSING]
    assert report.breaks[0].startswith(f"chain {CHAIN}: group 'g'")


def test_truncated_chain_is_a_finding() -> None:
    """The committed head is a record the topic no longer (or never) had: a replaced topic holding an
    honest prefix of the chain."""
    chain = Chain()
    chain.batch([0])
    prefix = chain.records()
    head = chain.batch([1])
    report = verify_audit(prefix, KEYS, _anchor(head, 2), Source({0, 1}))
    assert _kinds(report) == [Kind.HEAD_MISMATCH]


def test_records_past_the_committed_head_are_a_note_and_outside_coverage() -> None:
    chain = Chain()
    head = chain.batch([0, 1])
    chain.batch([2, 3])  # committed after the anchors were read
    report = verify_audit(chain.records(), KEYS, _anchor(head, 2), Source(set(range(4))))
    assert report.ok, report.breaks
    assert [n.kind for n in report.notes] == [Kind.AFTER_HEAD]


def test_entries_past_the_committed_offset_are_a_finding() -> None:
    chain = Chain()
    head = chain.batch([0, 1, 2])
    report = verify_audit(chain.records(), KEYS, _anchor(head, 2), Source({0, 1, 2}))
    assert [(f.kind, f.offsets) for f in report.problems] == [(Kind.PAST_COMMIT, (2, 2))]


def test_committed_state_without_a_head_is_a_finding_when_the_chain_exists() -> None:
    chain = Chain()
    chain.batch([0])
    assert _kinds(verify_audit(chain.records(), KEYS, _anchor(None, 1), Source({0}))) == [Kind.NO_HEAD]
    assert verify_audit([], KEYS, _anchor(None, 1), Source({0})).ok  # nothing audited yet, nothing committed


def test_unanchored_chain_is_a_note() -> None:
    chain = Chain()
    chain.batch([0, 1])
    report = verify_audit(chain.records(), KEYS, {}, Source({0, 1}))
    assert report.ok
    assert [n.kind for n in report.notes] == [Kind.UNANCHORED]


def test_per_event_records_of_other_writers_verify() -> None:
    """forget, retention and DP releases: one sealed record per event, no source coverage. Forget marks
    its chain's first record restarted (it cannot tell a first forget from a lost head): no finding."""
    first = seal_audit_event({"type": "subject_forgotten", "chain": "keys:forget", "tokens": ["tok_v1_x"],
                              "chain_restart": True}, GENESIS, KEYS)
    second = seal_audit_event({"type": "subject_forgotten", "chain": "keys:forget", "tokens": ["tok_v1_y"]},
                              first["hash"], KEYS)
    records = [(1, 0, orjson.dumps(first)), (1, 1, orjson.dumps(second))]
    report = verify_audit(records, KEYS, {"keys:forget": Anchor(second["hash"], "key topic")}, Source(set()))
    assert report.ok and report.notes == [], report.findings


def test_without_keys_only_hashes_are_checked() -> None:
    """gateway report (no keyring) still walks format 2 chains."""
    chain = Chain()
    head = chain.batch([0])
    report = verify_audit(chain.records(), None, _anchor(head, 1), Source({0}))
    assert report.ok and not report.authenticated


def test_audit_keys_repr_hides_the_key() -> None:
    assert bytes(range(32)).hex() not in repr(KEYS) and "audit-a" in repr(KEYS)


def test_truncating_a_chain_up_to_a_restart_is_a_finding() -> None:
    """A chain_restart says the chain had records before it: a chain that starts with one lost them."""
    chain = Chain()
    chain.batch([0, 1])
    chain.batch([2, 3], restart=True)
    head = chain.batch([4])
    truncated = chain.records()[1:]
    report = verify_audit(truncated, KEYS, _anchor(head, 5), Source(set(range(5))))
    assert _kinds(report) == [Kind.MISSING]
    assert "the chain's first record is a chain_restart" in report.breaks[0]
    assert verify_audit(chain.records(), KEYS, _anchor(head, 5), Source(set(range(5)))).ok


class _Resumes:
    """What SanitizeHandler.open asks of the pipeline, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, bool]] = []

    def resume_chain(self, topic: str, partition: int, head: str | None, fresh: bool) -> None:
        self.calls.append((head, fresh))

    def resume_quality(self, topic: str, partition: int, committed: Any) -> None:
        pass


def test_a_partition_committed_before_its_first_record_starts_fresh_not_restarted() -> None:
    """A held window commits its partition's offset before any audit record: the explicit null head
    lets the next owner start the chain at genesis, where a restart marker would read as records lost."""
    assert committed_without_head('{"audit_head":null,"quality":{}}')
    assert not committed_without_head('{"quality":{}}') and not committed_without_head(None)
    assert not committed_without_head('{"audit_head":"' + "a" * 64 + '"}') and not committed_without_head("x")
    pipeline = _Resumes()
    handler = SanitizeHandler(pipeline)  # type: ignore[arg-type]
    handler.open(("t", 0), 7, '{"audit_head":null}')
    handler.open(("t", 1), 7, None)  # committed without the gateway's metadata: lost, so restarted
    handler.open(("t", 2), -1001, None)
    assert pipeline.calls == [(None, True), (None, False), (None, True)]
