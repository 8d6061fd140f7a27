"""Audit hash chains: sealing, verification, breaks, restarts and partition assignment."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from gateway.core.audit import (
    GENESIS,
    AuditKeys,
    ChainHeads,
    audit_partition,
    batch_body,
    canonical,
    chain_key,
    entries,
    event_hash,
    record_entries,
    seal_audit_event,
    seal_audit_value,
    verify_chains,
)

KEYS = AuditKeys("audit-unit", {"audit-unit": bytes(range(32))})


def _body(chain: str, n: int) -> dict[str, Any]:
    topic, _, partition = chain.rpartition(":")
    return {"type": "event", "chain": chain,
            "event": {"topic": topic, "partition": int(partition), "offset": n, "timestamp": 1_700_000_000_000 + n},
            "schema": "example.payments.Payment", "policy": "sha256:abc", "instance": "unit",
            "time": 1_700_000_000_000, "outcome": "sanitized", "key_ids": ["token:customer/v1"],
            "actions": {"email": "tokenize:customer"}}


def _chain(chain: str, count: int, prev: str = GENESIS, first: int = 0) -> list[dict[str, Any]]:
    events = []
    for n in range(first, first + count):
        sealed = seal_audit_event(_body(chain, n), prev, KEYS)
        prev = sealed["hash"]
        events.append(sealed)
    return events


def _records(events: list[dict[str, Any]], partition: int = 0) -> list[tuple[int, int, bytes]]:
    return [(partition, offset, orjson.dumps(e)) for offset, e in enumerate(events)]


def _interleaved() -> list[tuple[int, int, bytes]]:
    a, b = _chain("payments.raw:0", 5), _chain("payments.raw:1", 5)
    mixed = [e for pair in zip(a, b, strict=True) for e in pair]
    return _records(mixed, partition=2)


def test_seal_sets_prev_and_hash() -> None:
    sealed = seal_audit_event(_body("t:0", 0), GENESIS, KEYS)
    assert sealed["prev_hash"] == GENESIS
    without_hash = {k: v for k, v in sealed.items() if k not in ("hash", "mac")}
    assert sealed["hash"] == event_hash(without_hash)
    assert (sealed["v"], sealed["mac_key_id"]) == (2, "audit-unit")
    assert sealed["mac"] == KEYS.mac(sealed["hash"])
    assert len(sealed["hash"]) == 64


def test_event_hash_ignores_key_order() -> None:
    body = _body("t:0", 1)
    assert event_hash(body) == event_hash(dict(reversed(list(body.items()))))


def _hash_spliced(canonical_body: bytes, digest: str) -> bytes:
    return canonical_body[:-1] + b',"hash":"' + digest.encode() + b'","mac":"' + KEYS.mac(digest).encode() + b'"}'


@pytest.mark.parametrize("body", [
    _body("payments.raw:0", 0),
    dict(_body("payments.raw:0", 1), chain_restart=True),
    {"chain": "x:0", "note": "Ångström ✓ \u2028 \"quoted\" \\", "nested": {"b": [1, {"z": 2, "a": None}], "a": True}},
])
def test_seal_audit_value_is_seal_audit_event_serialized_once(body: dict[str, Any]) -> None:
    value, digest = seal_audit_value(copy.deepcopy(body), "a" * 64, KEYS)
    sealed = seal_audit_event(copy.deepcopy(body), "a" * 64, KEYS)
    assert digest == sealed["hash"]
    assert orjson.loads(value) == sealed
    assert orjson.loads(value) == orjson.loads(orjson.dumps(sealed))
    # the value is the canonical body (what the hash covers) with "hash" spliced in last
    assert value == _hash_spliced(canonical({k: v for k, v in sealed.items() if k not in ("hash", "mac")}), digest)


def test_fragments_of_canonical_json_serialize_like_the_dicts() -> None:
    """The pipeline pre-serializes fixed parts as orjson Fragments: the canonical bytes must not change."""
    actions = {"zeta": "keep", "email": "tokenize:customer", "a.b": "drop", "a": "keep", "Ä": "encrypt"}
    body = dict(_body("payments.raw:0", 0), actions=actions, output={"topic": "p.sanitized"}, key_ids=["q/1"])
    fast = dict(body, actions=orjson.Fragment(canonical(actions)),
                output=orjson.Fragment(canonical({"topic": "p.sanitized"})), key_ids=orjson.Fragment(b'["q/1"]'))
    assert canonical(fast) == canonical(body)
    assert seal_audit_value(fast, GENESIS, KEYS) == seal_audit_value(body, GENESIS, KEYS)


def test_chains_sealed_once_verify_and_detect_alteration() -> None:
    prev, records = GENESIS, []
    for n in range(6):
        if n % 2:  # the two forms interleave in one chain
            sealed = seal_audit_event(_body("payments.raw:0", n), prev, KEYS)
            value, prev = orjson.dumps(sealed), sealed["hash"]
        else:
            value, prev = seal_audit_value(_body("payments.raw:0", n), prev, KEYS)
        records.append((0, n, value))
    report = verify_chains(records)
    assert report.ok, report.breaks
    assert (report.chains, report.events) == (1, 6)
    altered = orjson.loads(records[2][2])
    altered["event"]["offset"] = 99
    records[2] = (0, 2, orjson.dumps(altered))
    assert verify_chains(records).breaks[0].startswith("chain payments.raw:0: audit partition 0 offset 2: content")


def test_valid_chains_verify() -> None:
    report = verify_chains(_interleaved())
    assert report.ok
    assert report.breaks == []
    assert report.restarts == []
    assert report.chains == 2
    assert report.events == 10


def test_chains_across_audit_partitions_verify() -> None:
    records = _records(_chain("a:0", 3), partition=0) + _records(_chain("b:0", 4), partition=1)
    report = verify_chains(records)
    assert report.ok
    assert (report.chains, report.events) == (2, 7)


def _alterations() -> list[tuple[str, Any]]:
    return [("type", "other"), ("event.offset", 999), ("event.topic", "x"), ("schema", "S"),
            ("policy", "sha256:def"), ("instance", "evil"), ("time", 1), ("outcome", "rejected:x"),
            ("key_ids", []), ("actions", {"email": "keep"}), ("prev_hash", "1" * 64), ("hash", "2" * 64),
            ("chain", "payments.raw:9"), ("extra", "added")]


@pytest.mark.parametrize("field,value", _alterations())
@pytest.mark.parametrize("position", [0, 2, 4])
def test_altering_any_field_breaks_the_chain(field: str, value: Any, position: int) -> None:
    events = _chain("payments.raw:0", 5)
    altered = copy.deepcopy(events)
    target = altered[position]
    if "." in field:
        outer, inner = field.split(".")
        target[outer][inner] = value
    else:
        target[field] = value
    report = verify_chains(_records(altered))
    assert not report.ok
    # the break names the chain; an altered "chain" field can only be named as the chain it now claims
    named = {"payments.raw:0", value} if field == "chain" else {"payments.raw:0"}
    assert any(b.startswith(tuple(f"chain {n}: audit partition 0 offset {position}:" for n in named))
               for b in report.breaks), report.breaks


def test_altered_event_reports_the_right_position_and_chain() -> None:
    records = _interleaved()
    body = orjson.loads(records[4][2])
    body["outcome"] = "rejected:forged"
    records[4] = (records[4][0], records[4][1], orjson.dumps(body))
    report = verify_chains(records)
    assert report.breaks == [f"chain {body['chain']}: audit partition 2 offset 4: content does not match its hash "
                             "(altered)"]


@pytest.mark.parametrize("position", [0, 1, 3])
def test_removing_an_event_breaks_the_chain(position: int) -> None:
    events = _chain("payments.raw:0", 5)
    del events[position]
    report = verify_chains(_records(events))
    assert len(report.breaks) == 1
    assert report.breaks[0].startswith("chain payments.raw:0:")
    assert "prev_hash does not match" in report.breaks[0]


def test_removing_from_one_chain_leaves_the_other_intact() -> None:
    records = _interleaved()
    del records[2]  # the second event of payments.raw:0
    report = verify_chains(records)
    assert len(report.breaks) == 1
    assert report.breaks[0].startswith("chain payments.raw:0:")


def test_reordering_events_breaks_the_chain() -> None:
    events = _chain("t:0", 4)
    events[1], events[2] = events[2], events[1]
    assert not verify_chains(_records(events)).ok


def test_restart_marker_is_reported_not_a_break() -> None:
    before = _chain("payments.raw:0", 3)
    restart = seal_audit_event(dict(_body("payments.raw:0", 3), chain_restart=True), GENESIS, KEYS)
    after = _chain("payments.raw:0", 2, prev=restart["hash"], first=4)
    report = verify_chains(_records(before + [restart] + after))
    assert report.ok, report.breaks
    assert len(report.restarts) == 1
    assert report.restarts[0].startswith("chain payments.raw:0: audit partition 0 offset 3")
    assert report.events == 6
    assert report.chains == 1


def test_genesis_without_restart_marker_is_a_break() -> None:
    before = _chain("payments.raw:0", 3)
    forged = seal_audit_event(_body("payments.raw:0", 3), GENESIS, KEYS)
    report = verify_chains(_records(before + [forged]))
    assert not report.ok
    assert report.restarts == []


def test_restart_marker_cannot_point_elsewhere() -> None:
    before = _chain("payments.raw:0", 3)
    bogus = seal_audit_event(dict(_body("payments.raw:0", 3), chain_restart=True), "3" * 64, KEYS)
    assert not verify_chains(_records(before + [bogus])).ok


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'{"no": "chain"}', b'{"chain": "x"}', b"7"])
def test_foreign_records_are_breaks(value: bytes) -> None:
    records = _records(_chain("t:0", 2)) + [(0, 2, value)]
    report = verify_chains(records)
    assert report.breaks == ["audit partition 0 offset 2: not an audit event of this gateway"]


def test_chain_key_and_deterministic_partition() -> None:
    assert chain_key("payments.raw", 4) == "payments.raw:4"
    # fixed values: the assignment must be stable across processes and releases (crc32, not hash())
    assert audit_partition("payments.raw:0", 3) == 0
    assert audit_partition("payments.raw:1", 3) == 2
    assert audit_partition("payments.raw:0", 12) == 6
    assert audit_partition("clinical.visits.raw:0", 12) == 9
    keys = [chain_key("payments.raw", p) for p in range(60)]
    assert [audit_partition(k, 7) for k in keys] == [audit_partition(k, 7) for k in keys]
    assert {audit_partition(k, 7) for k in keys} == set(range(7))


def test_chain_heads() -> None:
    heads = ChainHeads()
    assert heads.next_prev("a:0") == (GENESIS, False)
    heads.resume("b:0", None, restarted=True)
    assert heads.next_prev("b:0") == (GENESIS, True)
    heads.resume("a:0", "f" * 64)
    assert heads.next_prev("a:0") == ("f" * 64, False)
    heads.resume("b:0", "e" * 64)  # a head found later clears the restart mark
    assert heads.next_prev("b:0") == ("e" * 64, False)
    heads.forget("a:0")
    assert heads.next_prev("a:0") == (GENESIS, False)


def _batches(chain: str, sizes: list[int]) -> list[tuple[int, int, bytes]]:
    """Batch records of `chain` holding `sizes` entries each, chained, as the sanitize worker writes them."""
    prev, offset, out = GENESIS, 0, []
    for number, size in enumerate(sizes):
        batch = [{k: v for k, v in _body(chain, offset + n).items() if k not in ("chain", "instance", "time")}
                 for n in range(size)]
        value, prev = seal_audit_value(batch_body(chain, "unit", 1_700_000_000_000 + number, batch), prev, KEYS)
        out.append((0, number, value))
        offset += size
    return out


def test_batch_records_verify_and_count_their_entries() -> None:
    records = _batches("payments.raw:0", [3, 1, 4])
    report = verify_chains(records)
    assert report.ok, report.breaks
    assert (report.chains, report.records, report.events) == (1, 3, 8)


def test_entries_put_the_batch_fields_back_into_each_entry() -> None:
    records = _batches("payments.raw:0", [2, 3])
    got = record_entries(value for _, _, value in records)
    assert [e["event"]["offset"] for e in got] == [0, 1, 2, 3, 4]
    assert all(e["chain"] == "payments.raw:0" and e["instance"] == "unit" for e in got)
    assert [e["time"] for e in got] == [1_700_000_000_000] * 2 + [1_700_000_000_001] * 3
    single = _body("t:0", 7)  # a record of one event (forget, retention, DP) is its own entry
    assert entries(single) == [single]
    assert entries(None) == entries([1, 2]) == entries({"type": "events", "events": "x"}) == []
    assert record_entries([b"not json", orjson.dumps(single)]) == [single]


@pytest.mark.parametrize("change", ["outcome", "offset", "drop", "add"])
def test_altering_one_entry_of_a_batch_breaks_its_record(change: str) -> None:
    records = _batches("payments.raw:0", [3, 3])
    body = orjson.loads(records[0][2])
    entry = body["events"][1]
    if change == "outcome":
        entry["outcome"] = "rejected:avro_decode_error"
    elif change == "offset":
        entry["event"]["offset"] = 99
    elif change == "drop":
        del body["events"][1]
    else:
        body["events"].append(dict(entry))
    records[0] = (0, 0, orjson.dumps(body))
    report = verify_chains(records)
    assert len(report.breaks) == 1 and "offset 0: content does not match" in report.breaks[0]


def test_a_missing_batch_record_breaks_the_chain() -> None:
    records = _batches("payments.raw:0", [2, 2, 2])
    report = verify_chains([records[0], records[2]])
    assert len(report.breaks) == 1 and "prev_hash does not match" in report.breaks[0]
