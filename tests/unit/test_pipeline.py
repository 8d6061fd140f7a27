"""Pipeline.process: one outcome and one audit entry per input (one chained audit record per source
partition and batch), and no PII anywhere."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.audit import (
    GENESIS,
    audit_partition,
    head_metadata,
    parse_head_metadata,
    record_entries,
    seal_audit_event,
    verify_chains,
)
from gateway.core.codec.encoding import CONFLUENT_MAGIC, frame_confluent
from gateway.core.codec.raw import load_schema_file
from gateway.core.codec.writer import avro_bytes
from gateway.core.deadletter import QuarantineSealer
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import SOURCE_HEADER, OutRecord, Pipeline, RawEvent, parse_source_ref
from gateway.core.pipeline.outcome import SANITIZED, BatchCounts, Outcome
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.embedded.samples import CANARIES, SampleEvents, broken_payment_events
from gateway.errors import GatewayError, RejectedEvent
from gateway.keys.envelope import FieldDecryptor
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

PAY, CLIN = "payments.raw", "clinical.visits.raw"
AUDIT = "privacy.audit"


class _Batch:
    """Raw events plus what each one should become."""

    def __init__(self) -> None:
        self.events: list[RawEvent] = []
        self.expected: list[str] = []  # "sanitized" or "rejected:<reason>"
        self.offsets: Counter[tuple[str, int]] = Counter()

    def add(self, topic: str, partition: int, value: bytes, expected: str, key: bytes | None = None,
            headers: list[tuple[str, bytes]] | None = None) -> None:
        offset = self.offsets[(topic, partition)]
        self.offsets[(topic, partition)] += 1
        self.events.append(RawEvent(topic, partition, offset, 1_790_000_000_000 + offset, key, value, headers))
        self.expected.append(expected)


def _mixed_batch(payments_plan: Plan, clinical_plan: Plan) -> _Batch:
    samples = SampleEvents(seed=42)
    batch = _Batch()
    pay_schema, clin_schema = payments_plan.schema.parsed, clinical_plan.schema.parsed
    for i in range(4):
        payment = samples.payment(canary=i % 2 == 0)
        bare = avro_bytes(pay_schema, payment)
        headers = [("trace-user", CANARIES["email"].encode())]
        batch.add(PAY, i % 2, frame_confluent(1, bare), "sanitized", key=payment["user_id"].encode(),
                  headers=headers)
        batch.add(PAY, i % 2, bare, "sanitized", key=payment["user_id"].encode())
        batch.add(PAY, i % 2, orjson.dumps(payment), "sanitized")
        visit = samples.clinical_visit(canary=i % 2 == 1)
        batch.add(CLIN, i % 3, avro_bytes(clin_schema, visit), "sanitized", key=visit["patient_id"].encode())
        batch.add(CLIN, i % 3, orjson.dumps(visit), "sanitized")
    valid = samples.payment(canary=True)
    for reason, data in broken_payment_events(valid, 1, lambda r: avro_bytes(pay_schema, r)):
        batch.add(PAY, 2, data, f"rejected:{reason}", key=CANARIES["card"].encode(),
                  headers=[("x-card", CANARIES["card"].encode())])
    return batch


@pytest.fixture
def batch(payments_plan: Plan, clinical_plan: Plan) -> _Batch:
    return _mixed_batch(payments_plan, clinical_plan)


def _split(records: list[OutRecord]) -> tuple[list[OutRecord], list[OutRecord], list[OutRecord]]:
    sanitized = [r for r in records if r.topic.endswith(".sanitized")]
    dlq = [r for r in records if r.topic.endswith(".dlq")]
    audit = [r for r in records if r.topic == AUDIT]
    assert len(sanitized) + len(dlq) + len(audit) == len(records)
    return sanitized, dlq, audit


def _audit_log(audit: list[OutRecord]) -> list[tuple[int, int, bytes]]:
    """Assign offsets per audit partition in publish order, as Kafka would."""
    offsets: Counter[int] = Counter()
    out = []
    for record in audit:
        assert record.partition is not None
        out.append((record.partition, offsets[record.partition], record.value))
        offsets[record.partition] += 1
    return out


def _all_bytes(record: OutRecord) -> list[bytes]:
    parts = [record.value, record.key or b"", record.topic.encode()]
    for name, value in record.headers or []:
        parts += [name.encode(), value]
    return parts


def _chains_of(events: list[RawEvent]) -> dict[str, list[int]]:
    """Per audit chain, in order of its first event: the indexes of its events (the batch's order)."""
    chains: dict[str, list[int]] = {}
    for i, e in enumerate(events):
        chains.setdefault(f"{e.topic}:{e.partition}", []).append(i)
    return chains


def test_one_outcome_and_one_audit_entry_per_input(pipeline: Pipeline, batch: _Batch) -> None:
    result = pipeline.process(batch.events)
    sanitized, dlq, audit = _split(result.records)
    assert len(sanitized) + len(dlq) == len(batch.events)
    assert len(sanitized) == batch.expected.count("sanitized")
    assert len(dlq) == len(batch.events) - batch.expected.count("sanitized")
    # the events' outcome records in the batch's order, then one audit record per source partition
    chains = _chains_of(batch.events)
    assert [r.topic for r in result.records[len(batch.events):]] == [AUDIT] * len(chains)
    assert [orjson.loads(r.value)["chain"] for r in audit] == list(chains)
    assert [r.key for r in audit] == [c.encode() for c in chains]
    order = [i for indexes in chains.values() for i in indexes]  # the entries' order: by chain, then offset
    audited = record_entries(r.value for r in audit)
    assert len(audited) == len(batch.events)
    for i, body in zip(order, audited, strict=True):
        event, outcome = batch.events[i], result.records[i]
        assert body["chain"] == f"{event.topic}:{event.partition}"
        assert body["instance"] == "unit-test" and isinstance(body["time"], int)
        assert body["event"]["topic"] == event.topic
        assert (body["event"]["partition"], body["event"]["offset"]) == (event.partition, event.offset)
        assert body["outcome"] == batch.expected[i], i
        assert body["output"]["topic"] == outcome.topic
        if batch.expected[i] == "sanitized":
            assert outcome.topic == pipeline.stages[event.topic].plan.sanitized_topic
        else:
            dead = orjson.loads(outcome.value)
            assert outcome.topic == f"{event.topic}.dlq"
            assert f"rejected:{dead['reason']}" == batch.expected[i]
            assert dict(outcome.headers or [])["gateway-reason"] == dead["reason"].encode()
            assert dead["source"]["offset"] == event.offset
            assert dead["message"]


def test_the_audit_outcomes_read_back_are_the_counts(pipeline: Pipeline, batch: _Batch) -> None:
    """The audit entries' outcome strings, read through Outcome.parse, are exactly the batch's counts:
    the typed outcome the metrics see and the string the audit carries are one value."""
    result = pipeline.process(batch.events)
    audited = record_entries(r.value for r in _split(result.records)[2])
    read_back = Counter((body["event"]["topic"], Outcome.parse(body["outcome"])) for body in audited)
    assert None not in {outcome for _, outcome in read_back}
    assert read_back == result.counts.outcomes


def test_counts_match(pipeline: Pipeline, batch: _Batch) -> None:
    result = pipeline.process(batch.events)
    expected = Counter((e.topic, Outcome.parse(outcome))
                       for e, outcome in zip(batch.events, batch.expected, strict=True))
    assert result.counts == BatchCounts(outcomes=expected)
    assert result.counts.events == sum(result.counts.outcomes.values()) == len(batch.events)
    assert result.counts.outcomes[(PAY, Outcome.rejected("json_invalid"))] == 2
    assert result.counts.outcomes[(CLIN, SANITIZED)] == 8


def test_audit_chain_verifies(pipeline: Pipeline, batch: _Batch) -> None:
    result = pipeline.process(batch.events)
    _, _, audit = _split(result.records)
    for record in audit:
        assert record.partition == audit_partition(record.key.decode(), 3)  # type: ignore[union-attr]
    report = verify_chains(_audit_log(audit))
    assert report.ok, report.breaks
    assert report.events == len(batch.events)
    assert report.chains == len({(e.topic, e.partition) for e in batch.events})
    assert report.restarts == []


def test_audit_chain_continues_across_batches(pipeline: Pipeline, batch: _Batch) -> None:
    half = len(batch.events) // 2
    first = pipeline.process(batch.events[:half])
    second = pipeline.process(batch.events[half:])
    audit = _split(first.records)[2] + _split(second.records)[2]
    report = verify_chains(_audit_log(audit))
    assert report.ok, report.breaks
    assert report.events == len(batch.events)
    # dropping the whole first batch breaks every chain that continued into the second
    continued = {f"{e.topic}:{e.partition}" for e in batch.events[:half]} & \
                {f"{e.topic}:{e.partition}" for e in batch.events[half:]}
    broken = verify_chains(_audit_log(_split(second.records)[2]))
    assert len(broken.breaks) == len(continued) > 0


def test_restarted_chain_is_marked(pipeline: Pipeline, batch: _Batch) -> None:
    before = pipeline.process(batch.events[:3])
    pipeline.resume_chain(PAY, 0, None, fresh=False)  # offsets committed before, but no head with them
    later = next(e for e in batch.events[3:] if (e.topic, e.partition) == (PAY, 0))
    after = pipeline.process([later])
    restart_body = orjson.loads(_split(after.records)[2][0].value)
    assert restart_body["chain_restart"] is True
    assert restart_body["prev_hash"] == GENESIS
    assert pipeline.chains.restarted == set()
    report = verify_chains(_audit_log(_split(before.records)[2] + _split(after.records)[2]))
    assert report.ok, report.breaks
    assert len(report.restarts) == 1


def _plain_entry(pipeline: Pipeline, event: RawEvent, outcome: str, parsed: dict[str, Any]) -> dict[str, Any]:
    """An event's audit entry as plain dicts, field by field (the reference for the pre-serialized fast path)."""
    plan = pipeline.stages[event.topic].plan
    body: dict[str, Any] = {
        "type": "event",
        "event": {"topic": event.topic, "partition": event.partition, "offset": event.offset,
                  "timestamp": event.timestamp_ms},
        "schema": plan.name, "policy": plan.policy_hash, "outcome": outcome,
    }
    if outcome == "sanitized":
        body["event"]["event_id"] = parsed["event"]["event_id"]  # the record's own id, checked non-empty below
        body.update(output={"topic": plan.sanitized_topic}, actions=dict(plan.field_actions),
                    key_ids=parsed["key_ids"])  # the DEK id varies; its shape is checked elsewhere
    else:
        body.update(output={"topic": plan.dlq_topic}, key_ids=[pipeline.sealer.key_id])
    return body


def test_audit_value_is_the_canonical_body_with_its_hash(pipeline: Pipeline, batch: _Batch,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Each audit record's value is orjson.dumps(plain batch body, OPT_SORT_KEYS) with "hash" and "mac"
    spliced in last, and seal_audit_event of that plain body gives the same hash and the same object."""
    monkeypatch.setattr(time, "time", lambda: 4_102_444_800.456)  # after the events: none is dated ahead of it
    pipeline.chains.restarted.add(f"{CLIN}:1")
    batches = [(batch.events, batch.expected, _split(pipeline.process(batch.events).records)[2])]

    def explode(record: dict[str, Any]) -> Any:
        raise ValueError("boom")

    monkeypatch.setattr(pipeline.stages[PAY].sanitizer, "sanitize", explode)
    batches.append((batch.events[:2], ["rejected:internal_error"] * 2,
                    _split(pipeline.process(batch.events[:2]).records)[2]))

    heads: dict[str, str] = {}
    cases: Counter[str] = Counter()
    for events, outcomes, records in batches:
        for (chain, indexes), record in zip(_chains_of(events).items(), records, strict=True):
            parsed = orjson.loads(record.value)
            restart = chain == f"{CLIN}:1" and chain not in heads
            expected: dict[str, Any] = {
                "type": "events", "chain": chain, "instance": "unit-test", "time": 4_102_444_800_456,
                "events": [_plain_entry(pipeline, events[i], outcomes[i], entry)
                           for i, entry in zip(indexes, parsed["events"], strict=True)]}
            if restart:
                expected["chain_restart"] = True
            expected["prev_hash"] = heads.get(chain, GENESIS)
            expected.update(v=2, mac_key_id=pipeline.audit_keys.active)
            plain = orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)
            digest = hashlib.sha256(plain).hexdigest()
            mac = pipeline.audit_keys.mac(digest)
            assert record.value == plain[:-1] + b',"hash":"' + digest.encode() + b'","mac":"' + mac.encode() + b'"}'
            sealed = seal_audit_event(expected, expected["prev_hash"], pipeline.audit_keys)
            assert sealed["hash"] == digest
            assert parsed == sealed
            heads[chain] = digest
            cases["chain_restart"] += restart
            for i, entry in zip(indexes, parsed["events"], strict=True):
                cases[outcomes[i].split(":")[0]] += 1
                cases["internal_error"] += outcomes[i] == "rejected:internal_error"
                cases["event_id"] += bool(entry["event"].get("event_id"))
    assert heads == pipeline.chains.heads
    assert cases["sanitized"] == cases["event_id"] == 20
    assert cases["rejected"] > cases["internal_error"] == 2
    assert cases["chain_restart"] == 1


def test_no_canary_in_any_output(pipeline: Pipeline, batch: _Batch) -> None:
    result = pipeline.process(batch.events)
    inputs = b"".join(e.value or b"" for e in batch.events)
    for canary in CANARIES.values():
        assert canary.encode() in inputs  # the corpus does carry them
    for record in result.records:
        for part in _all_bytes(record):
            for canary in CANARIES.values():
                assert canary.encode() not in part, (record.topic, canary)


def test_audit_events_carry_no_values(pipeline: Pipeline, batch: _Batch) -> None:
    result = pipeline.process(batch.events)
    audit = _split(result.records)[2]
    for record in audit:
        assert set(orjson.loads(record.value)) <= {"type", "chain", "instance", "time", "events", "prev_hash",
                                                   "hash", "chain_restart", "v", "mac_key_id", "mac"}
    for body in record_entries(r.value for r in audit):
        assert set(body) <= {"type", "chain", "event", "schema", "policy", "instance", "time", "outcome",
                             "output", "key_ids", "actions"}
        assert body["instance"] == "unit-test"
        assert body["policy"].startswith("sha256:")
        if body["outcome"] == "sanitized" and body["chain"].startswith(PAY):
            assert "token:customer/v1" in body["key_ids"]
            assert any("/" in k and not k.startswith("token:") for k in body["key_ids"])  # the DEK
            assert body["actions"]["card_number"] == "encrypt"
            assert body["event"]["event_id"]
        if body["outcome"].startswith("rejected:"):
            assert body["key_ids"] == [pipeline.sealer.key_id]


def _decode_sanitized(plan: Plan, record: OutRecord) -> dict[str, Any]:
    headers = dict(record.headers or [])
    encoding = headers["gateway-encoding"].decode()
    assert headers["gateway-schema"] == plan.sanitized_schema["name"].encode()
    assert headers["gateway-policy"] == plan.policy_hash.encode()
    if encoding == "json":
        return orjson.loads(record.value)
    payload = record.value
    if encoding == "confluent":
        assert payload[0] == CONFLUENT_MAGIC
        assert int.from_bytes(payload[1:5], "big") == plan.sanitized_schema_id
        payload = payload[5:]
    buf = io.BytesIO(payload)
    decoded = fastavro.schemaless_reader(buf, plan.sanitized_parsed, None)
    assert buf.tell() == len(payload)
    return decoded


def test_sanitized_outputs_decode_and_decrypt(pipeline: Pipeline, batch: _Batch, keyring: Keyring,
                                              payments_plan: Plan, clinical_plan: Plan) -> None:
    result = pipeline.process(batch.events)
    plans = {payments_plan.sanitized_topic: payments_plan, clinical_plan.sanitized_topic: clinical_plan}
    decryptor = FieldDecryptor(keyring)
    encodings: Counter[tuple[str, str]] = Counter()
    for record in _split(result.records)[0]:
        plan = plans[record.topic]
        encodings[(record.topic, dict(record.headers or [])["gateway-encoding"].decode())] += 1
        decoded = _decode_sanitized(plan, record)
        assert record.key == decoded[plan.subject_field].encode()  # keyed by the tokenized subject
        assert record.key.startswith(b"tok_v1_")
        _, report = decrypt_record(decoded, plan, decryptor)
        assert report.ok, report.fields
    assert encodings == {("payments.sanitized", "confluent"): 4, ("payments.sanitized", "avro"): 4,
                         ("payments.sanitized", "json"): 4, ("clinical.visits.sanitized", "avro"): 4,
                         ("clinical.visits.sanitized", "json"): 4}


def test_dead_letters_unseal_to_the_original_event(pipeline: Pipeline, batch: _Batch, keyring: Keyring) -> None:
    result = pipeline.process(batch.events)
    sealer = QuarantineSealer(*keyring.quarantine_key())
    by_offset = {e.offset: e for e in batch.events if e.partition == 2 and e.topic == PAY}
    unsealed = 0
    for record in _split(result.records)[1]:
        dead = orjson.loads(record.value)
        event = by_offset[dead["source"]["offset"]]
        if dead["reason"] == "record_too_large":
            assert dead["sealed"] is None  # too big to seal: only its coordinates are kept
            continue
        opened = sealer.unseal(dead)
        assert opened == {"value": event.value, "key": event.key, "headers": event.headers}
        unsealed += 1
    assert unsealed == len(by_offset) - 1


def test_unexpected_exception_becomes_internal_error(pipeline: Pipeline, batch: _Batch,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(record: dict[str, Any], *_more: Any) -> Any:  # the sanitizer's arguments after the record
        raise ValueError(f"boom {record['email']}")

    monkeypatch.setattr(pipeline.stages[PAY].sanitizer, "sanitize", explode)
    result = pipeline.process(batch.events[:3])
    sanitized, dlq, audit = _split(result.records)
    assert sanitized == []
    assert [orjson.loads(r.value)["reason"] for r in dlq] == ["internal_error"] * 3
    for record in dlq:
        assert b"boom" not in record.value
        assert CANARIES["email"].encode() not in record.value
        assert b"ValueError" in record.value
    assert [e["outcome"] for e in record_entries(r.value for r in audit)] == ["rejected:internal_error"] * 3
    assert result.counts == BatchCounts(outcomes=Counter({(PAY, Outcome.rejected("internal_error")): 3}))


def test_output_too_large(pipeline: Pipeline, batch: _Batch) -> None:
    pipeline.max_output_bytes = 50
    result = pipeline.process(batch.events[:1])
    dead = orjson.loads(result.records[0].value)
    assert dead["reason"] == "output_too_large"
    assert result.counts == BatchCounts(outcomes=Counter({(PAY, Outcome.rejected("output_too_large")): 1}))


def test_field_too_large_uses_the_configured_limit(payments_plan: Plan, keyring: Keyring, tmp_path: Path) -> None:
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t", max_field_bytes=64)
    pipeline = Pipeline([payments_plan], keyring, config, 1, tokenizers(keyring, [payments_plan]))
    payment = dict(SampleEvents(seed=1).payment(), customer_name="n" * 100)
    result = pipeline.process([RawEvent(PAY, 0, 0, 0, None, orjson.dumps(payment), None)])
    dead = orjson.loads(result.records[0].value)
    assert dead["reason"] == "field_too_large"
    assert "customer_name" in dead["message"]
    assert result.records[1].partition == 0


def test_json_output_is_the_same_for_avro_and_json_input(write_schema, keyring: Keyring, tmp_path: Path,
                                                         schemas_dir: Path) -> None:
    raw = json.loads((schemas_dir / "payments.avsc").read_text())
    raw["privacy"]["output"] = "json"
    plan = compile_plan(load_schema_file(write_schema(raw, name="payments_json.avsc")))
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    payment = SampleEvents(seed=3).payment()
    result = pipeline.process([
        RawEvent(PAY, 0, 0, 0, None, avro_bytes(plan.schema.parsed, payment), None),
        RawEvent(PAY, 0, 1, 0, None, orjson.dumps(payment), None),
    ])
    from_avro, from_json = orjson.loads(result.records[0].value), orjson.loads(result.records[1].value)
    assert from_json["occurred_at"] == payment["occurred_at"]
    assert from_avro["occurred_at"] == from_json["occurred_at"]


def test_stage_transform_is_the_per_event_path(pipeline: Pipeline, batch: _Batch, payments_plan: Plan) -> None:
    stage = pipeline.stages[PAY]
    framed = batch.events[0]  # a Confluent-framed payment
    value, encoding, result = stage.transform(framed.value, pipeline.max_output_bytes)
    assert encoding == "confluent"
    assert value[:5] == frame_confluent(payments_plan.sanitized_schema_id or 0, b"")
    assert fastavro.schemaless_reader(io.BytesIO(value[5:]), payments_plan.sanitized_parsed, None) == result.record
    assert result.subject == result.record["user_id"] and result.dek_key_id
    bare_value, bare_encoding, _ = stage.transform(batch.events[1].value, pipeline.max_output_bytes)
    assert bare_encoding == "avro" and bare_value[:1] != b"\x00"
    with pytest.raises(RejectedEvent) as excinfo:
        stage.transform(framed.value, 50)
    assert excinfo.value.reason == "output_too_large"


def _source_of(record: OutRecord) -> tuple[str, int, int]:
    ref = parse_source_ref(dict(record.headers or [])[SOURCE_HEADER])
    assert ref is not None
    return ref


def test_every_output_names_its_raw_event(pipeline: Pipeline, batch: _Batch) -> None:
    sanitized, dlq, _audit = _split(pipeline.process(batch.events).records)
    expected = [(e.topic, e.partition, e.offset) for e in batch.events]
    assert [_source_of(r) for r in sanitized + dlq] == [expected[i] for i, outcome in enumerate(batch.expected)
                                                        if outcome == "sanitized"] + \
        [expected[i] for i, outcome in enumerate(batch.expected) if outcome != "sanitized"]


def test_a_chain_resumed_from_its_committed_head_verifies_across_owners(
        payments_plan: Plan, clinical_plan: Plan, keyring: Keyring, config: GatewayConfig, batch: _Batch) -> None:
    """A new owner resumes each chain from the head committed with the offset (offset-commit
    metadata): the audit log of both owners verifies as one chain per partition, with no restart."""
    first = Pipeline([payments_plan, clinical_plan], keyring, config, audit_partitions=3,
                     tokenizers=tokenizers(keyring, [payments_plan, clinical_plan]))
    half = len(batch.events) // 2
    before = first.process(batch.events[:half]).records
    heads = {(e.topic, e.partition): head_metadata(first.chain_head(e.topic, e.partition) or "")
             for e in batch.events[:half]}
    second = Pipeline([payments_plan, clinical_plan], keyring, config, audit_partitions=3,
                      tokenizers=tokenizers(keyring, [payments_plan, clinical_plan]))
    for (topic, partition), metadata in heads.items():
        second.resume_chain(topic, partition, parse_head_metadata(metadata), fresh=False)
    after = second.process(batch.events[half:]).records
    audit = [r for r in before + after if r.topic == AUDIT]
    report = verify_chains(_audit_log(audit))
    assert report.ok and not report.restarts, (report.breaks, report.restarts)
    assert report.events == len(batch.events)
    # the same second half resumed without the heads: every continued chain is a marked restart, not a break
    blind = Pipeline([payments_plan, clinical_plan], keyring, config, audit_partitions=3,
                     tokenizers=tokenizers(keyring, [payments_plan, clinical_plan]))
    for topic, partition in heads:
        blind.resume_chain(topic, partition, None, fresh=False)
    restarted = verify_chains(_audit_log([r for r in before if r.topic == AUDIT] +
                                         [r for r in blind.process(batch.events[half:]).records if r.topic == AUDIT]))
    continued = {(e.topic, e.partition) for e in batch.events[half:]} & set(heads)
    assert restarted.ok and len(restarted.restarts) == len(continued) > 0


def test_head_metadata_round_trips_and_rejects_what_is_not_a_head() -> None:
    head = "ab" * 32
    assert parse_head_metadata(head_metadata(head)) == head
    for metadata in (None, "", "not json", '{"audit_head": "short"}', "[1]", '{"other": 1}'):
        assert parse_head_metadata(metadata) is None


def test_a_chain_with_more_entries_than_a_record_holds_is_split_in_order(
        payments_plan: Plan, keyring: Keyring, config: GatewayConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """More entries than AUDIT_ENTRIES_PER_RECORD, and records that would pass the producer's limit:
    several records per chain, each within the limit, chained, every event audited once in order."""
    import gateway.core.pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "AUDIT_ENTRIES_PER_RECORD", 7)
    pipeline = Pipeline([payments_plan], keyring, config, audit_partitions=3,
                        tokenizers=tokenizers(keyring, [payments_plan]))
    samples = SampleEvents(seed=5)
    events = [RawEvent(PAY, 0, i, 0, None, orjson.dumps(samples.payment()), None) for i in range(30)]
    audit = _split(pipeline.process(events).records)[2]
    assert [len(orjson.loads(r.value)["events"]) for r in audit] == [7, 7, 7, 7, 2]
    pipeline.max_output_bytes = max(len(r.value) for r in audit) // 3  # about 2 entries fit
    more = [RawEvent(PAY, 0, 30 + i, 0, None, orjson.dumps(samples.payment()), None) for i in range(7)]
    split = _split(pipeline.process(more).records)[2]
    assert len(split) >= 3 and all(len(r.value) <= pipeline.max_output_bytes for r in split)
    report = verify_chains(_audit_log(audit + split))
    assert report.ok and (report.records, report.events) == (len(audit) + len(split), 37), report.breaks
    assert [e["event"]["offset"] for e in record_entries(r.value for r in audit + split)] == list(range(37))


def test_a_batch_that_raised_leaves_no_entries_for_the_next(pipeline: Pipeline, batch: _Batch,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that raises is aborted and read again: its entries must not go out with the next batch."""
    import gateway.core.pipeline as pipeline_module

    def fail(*_args: Any) -> Any:
        raise RuntimeError("producer gone")

    sealing = pipeline_module.seal_audit_value
    monkeypatch.setattr(pipeline_module, "seal_audit_value", fail)
    with pytest.raises(RuntimeError):
        pipeline.process(batch.events[:5])
    monkeypatch.setattr(pipeline_module, "seal_audit_value", sealing)
    again = pipeline.process(batch.events[5:8])
    audited = record_entries(r.value for r in _split(again.records)[2])
    assert sorted((e["event"]["topic"], e["event"]["partition"], e["event"]["offset"]) for e in audited) == \
        sorted((e.topic, e.partition, e.offset) for e in batch.events[5:8])


def test_a_pipeline_without_a_tokenizer_for_a_domain_of_its_plans_refuses_to_start(
        payments_plan: Plan, keyring: Keyring, config: GatewayConfig) -> None:
    """The tokenizers are given (gateway.app.tokenizers): a domain given none fails at construction,
    naming the domain, rather than at the first event that needs it."""
    with pytest.raises(GatewayError, match="customer"):
        Pipeline([payments_plan], keyring, config, 1, {})


def test_a_batch_in_slices_is_audited_as_one_batch_of_the_same_entries(payments_plan: Plan, clinical_plan: Plan,
                                                                       keyring: Keyring, config: GatewayConfig,
                                                                       batch: _Batch) -> None:
    """The sanitize worker transforms a batch slice by slice as its events arrive (process with
    finish=False) and seals it once (finish_batch): one audit record per chain for the whole batch,
    the same entries in the same order as one process call of the same events, and the chain heads
    (committed with the offsets) those records' hashes. A rewound batch's slices leave nothing behind."""
    whole = Pipeline([payments_plan, clinical_plan], keyring, config, audit_partitions=3,
                     tokenizers=tokenizers(keyring, [payments_plan, clinical_plan]))
    sliced = Pipeline([payments_plan, clinical_plan], keyring, config, audit_partitions=3,
                      tokenizers=tokenizers(keyring, [payments_plan, clinical_plan]))
    at_once = _split(whole.process(batch.events).records)[2]
    third = len(batch.events) // 3
    slices = [batch.events[:third], batch.events[third:2 * third], batch.events[2 * third:]]
    assert all(not _split(sliced.process(s, finish=False).records)[2] for s in slices)  # no audit record yet
    sources = {(e.topic, e.partition) for e in batch.events}
    assert all(json.loads(sliced.commit_metadata(*s) or "{}").get("audit_head") is None for s in sources)
    audit = sliced.finish_batch()
    chains = _chains_of(batch.events)
    assert len(audit) == len(chains) and {orjson.loads(r.value)["chain"] for r in audit} == set(chains)

    def what(records: list[OutRecord]) -> list[tuple[Any, ...]]:  # an entry but its time and key ids
        return [(e["chain"], e["event"]["partition"], e["event"]["offset"], e["outcome"], e.get("actions"))
                for e in record_entries(r.value for r in records)]

    assert what(audit) == what(at_once) and len(what(audit)) == len(batch.events)
    heads = {s: json.loads(sliced.commit_metadata(*s) or "{}").get("audit_head") for s in sources}
    assert all(heads.values()) and len(set(heads.values())) == len(sources)  # each chain's new head, committed
    sliced.process(slices[0], finish=False)
    sliced.discard_batch()  # rewound: read again from the committed offsets
    assert sliced.finish_batch() == []
