"""`gateway audit verify` against someone looking for the side door, on the real broker.

An honest run on plain and on transactional input verifies (exit 0); a record appended by a plain
producer, hashed as the README documents, fails; so does one carrying a made-up MAC. An empty
audit topic in place of the real one fails against the heads the group committed. Offsets reset
outside the gateway (forward: skipped events; backward: events audited twice) are findings with
their offset ranges, even though the worker marks the chain restarted."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from gateway.core.audit import audit_partition, batch_body, canonical, chain_key
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment, cli

pytestmark = pytest.mark.integration


def _verify(d: Deployment, *extra: str, topic: str | None = None, group: str | None = None) -> tuple[int, str]:
    result = cli("audit", "verify", "--bootstrap", d.bootstrap, "--topic", topic or d.audit_topic,
                 "--group-id", group or d.group_id, "--keyring", str(d.keyring),
                 "--key-topic", f"privacy.keys.none.{d.suffix}", *extra, timeout=180)
    return result.returncode, result.stdout.decode() + result.stderr.decode()


def _payments(d: Deployment, count: int, seed: int) -> list[bytes]:
    samples = SampleEvents(seed=seed)
    return [encode_raw(d.payments, samples.payment(), "confluent") for _ in range(count)]


def _produce_transactions(d: Deployment, topic: str, batches: list[tuple[list[bytes], bool]]) -> None:
    """Each (values, commit) in a transaction of its own, committed or aborted: markers and aborted
    records take offsets that no read_committed consumer sees."""
    producer = Producer({"bootstrap.servers": d.bootstrap, "transactional.id": f"test-audit-{d.suffix}",
                         "linger.ms": 5})
    producer.init_transactions(30)
    for values, commit in batches:
        producer.begin_transaction()
        for value in values:
            producer.produce(topic, value, partition=0)
        if commit:
            producer.commit_transaction(30)
        else:
            producer.flush(30)
            producer.abort_transaction(30)


def _audit_records(d: Deployment) -> dict[str, list[tuple[int, dict[str, Any]]]]:
    """Per chain, its records' (audit partition, body) in order."""
    out: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in d.read(d.audit_topic):
        body = orjson.loads(r.value or b"")
        out.setdefault(body["chain"], []).append((r.partition, body))
    return out


def test_honest_run_verifies_and_forged_records_fail(deployment: Deployment) -> None:
    d = deployment
    worker = d.start_worker("honest", partitions=2)
    try:
        d.produce(d.payments.source_topic, _payments(d, 10, 1), partition=0)
        d.produce(d.payments.source_topic, _payments(d, 10, 2), partition=1)
        samples = SampleEvents(seed=3)
        visits = [encode_raw(d.clinical, samples.clinical_visit(), "avro") for _ in range(18)]
        # offsets 0-4 + marker 5, aborted 6-8 + marker 9, 10-14 + marker 15, 16-20 + marker 21
        _produce_transactions(d, d.clinical.source_topic, [(visits[0:5], True), (visits[5:8], False),
                                                           (visits[8:13], True), (visits[13:18], True)])
        d.wait_for_audit(20 + 15)
    finally:
        assert worker.stop() == 0

    code, out = _verify(d)
    assert code == 0, out
    assert "audit chain OK" in out and "BREAK" not in out
    assert "[gap]" not in out and "[unchecked_gap]" not in out  # the markers and the aborted records are no gap

    admin = AdminClient({"bootstrap.servers": d.bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, d.audit_topic)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["retention.ms"].value == "-1"

    # a plain producer with write access appends to two chains: a record hashed as the README
    # documents (format 1, no MAC), and one dressed as format 2 with a MAC it cannot compute
    chains = _audit_records(d)
    partitions = len(admin.list_topics(d.audit_topic, timeout=10).topics[d.audit_topic].partitions)
    producer = Producer({"bootstrap.servers": d.bootstrap})
    forged_at: dict[str, int] = {}
    for n, mac in ((0, None), (1, secrets.token_hex(32))):
        chain = chain_key(d.payments.source_topic, n)
        _, last = chains[chain][-1]
        body = batch_body(chain, "forger", int(time.time() * 1000), [
            {"type": "event", "event": {"topic": d.payments.source_topic, "partition": n, "offset": 10,
                                        "timestamp": 1}, "outcome": "sanitized"}])
        if mac is not None:
            body.update(v=2, mac_key_id=last["mac_key_id"])
        body["prev_hash"] = last["hash"]
        body["hash"] = hashlib.sha256(canonical(body)).hexdigest()
        if mac is not None:
            body["mac"] = mac
        partition = audit_partition(chain, partitions)
        producer.produce(d.audit_topic, orjson.dumps(body), chain.encode(), partition=partition,
                         on_delivery=lambda err, msg, c=chain: forged_at.__setitem__(c, msg.offset()))
    assert producer.flush(30) == 0

    code, out = _verify(d)
    assert code == 1, out
    zero, one = (chain_key(d.payments.source_topic, n) for n in (0, 1))
    assert f"BREAK: chain {zero}: audit partition {audit_partition(zero, partitions)} offset {forged_at[zero]}: " \
           "format 1 record (no MAC) after authenticated ones" in out, out
    assert f"BREAK: chain {one}: audit partition {audit_partition(one, partitions)} offset {forged_at[one]}: " \
           "MAC does not verify" in out, out
    assert "audit chain BROKEN (2 finding(s))" in out


def test_empty_or_truncated_audit_topic_fails(deployment: Deployment) -> None:
    """The group committed chain heads (the test above): a fresh, empty audit topic cannot stand in,
    a group that committed none cannot vouch for the real one, and the real one truncated fails."""
    d = deployment
    empty = f"{d.audit_topic}.empty"
    admin = AdminClient({"bootstrap.servers": d.bootstrap})
    admin.create_topics([NewTopic(empty, 1, 1)])[empty].result()
    code, out = _verify(d, topic=empty)
    assert code == 1, out
    for n in (0, 1):
        assert f"BREAK: chain {chain_key(d.payments.source_topic, n)}: group '{d.group_id}'" in out, out
    assert f"BREAK: chain {chain_key(d.clinical.source_topic, 0)}" in out
    assert out.count("[missing]") == 3
    code, out = _verify(d, topic=f"{d.audit_topic}.deleted")
    assert code == 1 and f"audit topic '{d.audit_topic}.deleted' does not exist" in out, out
    # nor does a group that anchors nothing pass the real topic off as verified
    code, out = _verify(d, group=f"{d.group_id}.other")
    assert code == 1 and f"BREAK: group '{d.group_id}.other' has no committed offsets" in out, out
    # nor a topic truncated from its start (Kafka's only way to remove records: DeleteRecords, or
    # retention): the first record left no longer links to genesis
    chain = chain_key(d.payments.source_topic, 0)
    first, second = sorted((r.partition, r.offset) for r in d.read(d.audit_topic)
                           if orjson.loads(r.value or b"")["chain"] == chain)[:2]  # its batch, then the forgery
    for future in admin.delete_records([TopicPartition(d.audit_topic, first[0], first[1] + 1)]).values():
        future.result()
    code, out = _verify(d)
    assert code == 1 and f"BREAK: chain {chain}: audit partition {second[0]} offset {second[1]}: prev_hash does " \
                         "not match" in out, out


def test_offsets_reset_outside_the_gateway_show_as_gap_and_duplicate(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    topic = d.payments.source_topic
    worker = d.start_worker("before-reset", partitions=2)
    try:
        d.produce(topic, _payments(d, 10, 4), partition=0)
        d.produce(topic, _payments(d, 10, 5), partition=1)
        d.wait_for_audit(20)
    finally:
        assert worker.stop() == 0
    d.produce(topic, _payments(d, 10, 6), partition=0)  # offsets 10-19
    d.produce(topic, _payments(d, 10, 7), partition=1)
    # an operator resets the group's offsets (the metadata, with the chain heads, goes with it):
    # partition 0 forward past 10-14, partition 1 back to 5
    admin = AdminClient({"bootstrap.servers": d.bootstrap})
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(
        d.group_id, [TopicPartition(topic, 0, 15), TopicPartition(topic, 1, 5)])])[d.group_id].result()
    worker = d.start_worker("after-reset", partitions=2)
    try:
        d.wait_for_audit(20 + 5 + 15)
    finally:
        assert worker.stop() == 0

    code, out = _verify(d)
    assert code == 1, out
    assert f"BREAK: chain {topic}:0: source offsets 10-14 hold records that no audit entry covers (skipped) [gap]" \
        in out, out
    assert f"BREAK: chain {topic}:1: source offsets 5-9 audited more than once [duplicate]" in out, out
    assert out.count("[restart]") == 2  # the worker's restart markers: reported, and hiding nothing
    assert "audit chain BROKEN (2 finding(s))" in out
