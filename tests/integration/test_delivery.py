"""Nothing lost, nothing duplicated: crashes (kill -9), scale-out, SIGTERM, on the real broker."""

from __future__ import annotations

import random
import signal
import time
from collections import Counter

import orjson
import pytest

from gateway.audit import verify_chains
from gateway.consume import SanitizedDecoder
from gateway.demo import encode_raw
from gateway.samples import SampleEvents

from .conftest import Deployment, committed_count

pytestmark = pytest.mark.integration


def _publish_payments(d: Deployment, count: int, seed: int, broken_every: int = 0) -> set[str]:
    """Publish `count` payments with unique event ids; every `broken_every`-th is truncated (dead letter)."""
    samples = SampleEvents(seed=seed)
    ids: set[str] = set()
    values = []
    for i in range(count):
        record = samples.payment()
        ids.add(record["event_id"])
        value = encode_raw(d.payments, record, "confluent")
        if broken_every and i % broken_every == 0:
            value = value[:-3]  # truncated: must land in the dead-letter topic
        values.append(value)
    d.produce(d.payments.source_topic, values)
    return ids


def _outcomes(d: Deployment) -> tuple[Counter[str], int]:
    """(sanitized event ids with multiplicity, dead-letter count)."""
    decoder = SanitizedDecoder(list(d.plans.values()))
    sanitized = Counter(decoder.decode(r)[1]["event_id"] for r in d.read(d.payments.sanitized_topic))
    return sanitized, len(d.read(d.payments.dlq_topic))


def _wait_until(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_kill_9_three_times_loses_and_duplicates_nothing(deployment: Deployment) -> None:
    d = deployment
    total = 20_000
    ids = _publish_payments(d, total, seed=1234, broken_every=97)
    rng = random.Random(5)
    kills = 0
    worker = d.start_worker("crashy")
    try:
        for _ in range(3):
            target = rng.randint(total // 8, total // 2) * (kills + 1) // 2
            _wait_until(lambda t=target: committed_count(d.bootstrap, d.audit_topic) >= t, 120, f"{target} audited")
            worker.proc.send_signal(signal.SIGKILL)
            worker.proc.wait(10)
            worker.handle.close()
            kills += 1
            worker = d.start_worker("crashy")  # same instance id: fences the dead one's transaction
        d.wait_for_audit(total, timeout_s=180)
    finally:
        worker.stop()
    assert kills == 3
    sanitized, dead = _outcomes(d)
    duplicates = sum(n - 1 for n in sanitized.values() if n > 1)
    print(f"\ncrash test: {total} published, {len(sanitized)} sanitized, {dead} dead-lettered, "
          f"{duplicates} duplicates after {kills} kill -9")
    broken = len(range(0, total, 97))
    assert dead == broken
    missing = ids - set(sanitized)
    assert len(missing) == broken  # exactly the truncated ones are not sanitized
    assert duplicates == 0  # exactly once
    audit = d.read(d.audit_topic)
    assert len(audit) == total
    report = verify_chains((r.partition, r.offset, r.value or b"") for r in audit)
    assert report.ok, report.breaks[:3]
    refs = Counter((e["event"]["partition"], e["event"]["offset"]) for e in map(orjson.loads, (r.value for r in audit)))
    assert len(refs) == total and max(refs.values()) == 1


def _assigned(log: str) -> list[list[str]]:
    """Every 'partitions assigned' list in a worker log, in order."""
    return [orjson.loads(line)["partitions"] for line in log.splitlines()
            if '"msg":"partitions assigned"' in line]


def test_two_workers_share_partitions_and_the_survivor_finishes(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    a = d.start_worker("scale-a", partitions=6)
    b = d.start_worker("scale-b", partitions=6)
    try:
        payments_partitions = lambda w: [p for p in _assigned(w.log())[-1] if p.startswith(d.payments.source_topic)]  # noqa: E731
        _wait_until(lambda: len(payments_partitions(a)) == 3 and len(payments_partitions(b)) == 3, 60,
                    "both workers to own 3 of the 6 payments partitions")
        assert set(payments_partitions(a)).isdisjoint(payments_partitions(b))
        ids = _publish_payments(d, 6_000, seed=77)
        _wait_until(lambda: committed_count(d.bootstrap, d.audit_topic) >= 1_500, 60, "some progress")
        b.proc.send_signal(signal.SIGKILL)  # b dies mid-stream, its transaction open
        b.proc.wait(10)
        b.handle.close()
        _wait_until(lambda: len(payments_partitions(a)) == 6, 60, "the survivor to take all partitions")
        d.wait_for_audit(6_000, timeout_s=120)
    finally:
        a.stop()
    sanitized, dead = _outcomes(d)
    assert dead == 0 and set(sanitized) == ids
    assert max(sanitized.values()) == 1
    report = verify_chains((r.partition, r.offset, r.value or b"") for r in d.read(d.audit_topic))
    assert report.ok, report.breaks[:3]


def test_sigterm_mid_stream_exits_cleanly_and_restart_completes(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    worker = d.start_worker("graceful")
    ids = _publish_payments(d, 8_000, seed=8)
    _wait_until(lambda: committed_count(d.bootstrap, d.audit_topic) >= 1_000, 60, "some progress")
    started = time.monotonic()
    assert worker.stop(timeout_s=30) == 0  # finish the batch in flight, commit, exit 0
    assert time.monotonic() - started < 15
    assert '"msg":"worker stopped"' in worker.log()
    worker = d.start_worker("graceful")
    try:
        d.wait_for_audit(8_000, timeout_s=120)
    finally:
        assert worker.stop() == 0
    sanitized, dead = _outcomes(d)
    assert dead == 0 and set(sanitized) == ids and max(sanitized.values()) == 1


def test_a_committed_offset_behind_the_audit_trail_does_not_reprocess(fresh_deployment: Deployment) -> None:
    """A broker may answer an offset fetch before a just-committed transaction's offsets show. The
    worker sees the audit records and outputs beyond the committed offset and does not repeat them:
    here the group's offsets are rewound to 0 by hand, as a stale fetch would show them."""
    from confluent_kafka import Consumer, TopicPartition

    d = fresh_deployment
    _publish_payments(d, 300, seed=77)
    worker = d.start_worker("first")
    d.wait_for_audit(300)
    assert worker.stop() == 0
    rewind = Consumer({"bootstrap.servers": d.bootstrap, "group.id": d.group_id, "enable.auto.commit": False})
    try:
        topic = d.payments.source_topic  # auto-created by the publisher: its partition count is the broker's
        partitions = sorted(rewind.list_topics(topic, timeout=10).topics[topic].partitions)
        rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in partitions], asynchronous=False)
        behind = rewind.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        assert [tp.offset for tp in behind] == [0] * len(partitions)
    finally:
        rewind.close()
    ids = _publish_payments(d, 50, seed=78)
    worker = d.start_worker("second")
    try:
        d.wait_for_audit(350)
        time.sleep(2)
    finally:
        assert worker.stop() == 0
    sanitized, _dead = _outcomes(d)
    assert len(sanitized) == 350 and ids <= set(sanitized)
    assert sum(n - 1 for n in sanitized.values()) == 0  # nothing processed twice
    assert "records show beyond the committed offset" in worker.log()


def test_a_dead_transactions_partial_records_are_neither_repeated_nor_lost(fresh_deployment: Deployment) -> None:
    """A worker killed mid-transaction. A broker that serves aborted records (the embedded Tansu
    does) shows part of its batch: here audit records for the first half of the dead batch and
    outputs for every other event of it. The next worker must publish and audit each event once."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    from gateway.config import GatewayConfig
    from gateway.keys.keyring import Keyring
    from gateway.pipeline import Pipeline, RawEvent

    d = fresh_deployment
    assert d.start_worker("torn").stop() == 0  # creates the topics, then leaves them alone
    ids = _publish_payments(d, 300, seed=31)
    raw = d.read(d.payments.source_topic)
    config = GatewayConfig(bootstrap=d.bootstrap, schemas=d.schemas, keyring=d.keyring, audit_topic=d.audit_topic,
                           group_id=d.group_id, instance_id="torn", partitions=3)
    group = Consumer({"bootstrap.servers": d.bootstrap, "group.id": d.group_id, "enable.auto.commit": False})
    audit_partitions = len(group.list_topics(d.audit_topic, timeout=10).topics[d.audit_topic].partitions)
    pipeline = Pipeline(list(d.plans.values()), Keyring.open(d.keyring), config, audit_partitions)
    producer = Producer({"bootstrap.servers": d.bootstrap, "transactional.id": f"{d.group_id}-torn",
                         "linger.ms": 5})
    producer.init_transactions(30)
    committed_upto, audited_upto, dead_upto = 40, 60, 80

    def transformed(r):  # type: ignore[no-untyped-def]
        return pipeline.process([RawEvent(r.topic, r.partition, r.offset, 0, r.key, r.value, None)]).records

    def send(records) -> None:  # type: ignore[no-untyped-def]
        for r in records:
            producer.produce(r.topic, r.value, r.key, partition=-1 if r.partition is None else r.partition,
                             headers=r.headers)

    producer.begin_transaction()  # a committed batch: offsets below 40 on every partition
    for r in raw:
        if r.offset < committed_upto:
            send(transformed(r))
    producer.commit_transaction(30)
    group.commit(offsets=[TopicPartition(d.payments.source_topic, p, committed_upto) for p in range(3)],
                 asynchronous=False)
    group.close()
    producer.begin_transaction()  # the dead batch: offsets 40-79, torn
    for r in raw:
        if committed_upto <= r.offset < dead_upto:
            output, audit = transformed(r)
            send([output] * (r.offset % 2 == 0) + [audit] * (r.offset < audited_upto))
    assert producer.flush(30) == 0  # sent, never committed: the next worker's start fences it
    worker = d.start_worker("torn")
    try:
        d.wait_for_audit(300, timeout_s=90)
        time.sleep(2)  # anything repeated would show by now
    finally:
        assert worker.stop() == 0
    sanitized, dead = _outcomes(d)
    assert dead == 0 and set(sanitized) == ids
    assert max(sanitized.values()) == 1, "an event was published twice"
    audit = d.read(d.audit_topic)
    refs = Counter((e["event"]["partition"], e["event"]["offset"]) for e in map(orjson.loads, (r.value for r in audit)))
    assert len(refs) == 300 and max(refs.values()) == 1, "an event was audited twice or not at all"
    report = verify_chains((r.partition, r.offset, r.value or b"") for r in audit)
    assert report.ok, report.breaks[:3]


def test_an_aborted_commit_rewinds_its_batch_and_the_one_transformed_behind_it(fresh_deployment: Deployment) -> None:
    """Batch N commits on a thread while batch N + 1 is transformed. A commit that fails must
    rewind both: every event still lands exactly once and the audit chains stay unbroken (a
    wrong chain-head rewind would break them, a batch left behind would be missing).

    The failures are injected after the doomed transactions' records were queued: on the embedded
    Tansu, which serves aborted records, what they sent shows and must not be repeated either.
    """
    import threading

    from confluent_kafka import KafkaError, KafkaException

    from gateway import metrics
    from gateway.config import GatewayConfig
    from gateway.keys.keyring import Keyring
    from gateway.policy import load_plans
    from gateway.worker import Batch, Worker

    d = fresh_deployment
    ids = _publish_payments(d, 2_000, seed=91, broken_every=89)
    config = GatewayConfig(bootstrap=d.bootstrap, schemas=d.schemas, keyring=d.keyring, audit_topic=d.audit_topic,
                           group_id=d.group_id, instance_id="aborts", session_timeout_ms=6000, batch_max_events=150)
    failing = {2, 3, 6}  # the second fails twice in a row: the rewound batches abort again

    class FailingCommits(Worker):
        publishes = 0
        doomed = False

        def _publish(self, batch: Batch) -> None:
            FailingCommits.publishes += 1
            self.doomed = FailingCommits.publishes in failing
            super()._publish(batch)

        def _commit(self, offsets, group):  # type: ignore[no-untyped-def]
            if self.doomed:  # the next _publish waits for this commit: `doomed` is this batch's
                raise KafkaException(KafkaError(KafkaError._STATE, "injected", txn_requires_abort=True))
            return super()._commit(offsets, group)

    worker = FailingCommits(config, load_plans(d.schemas), Keyring.open(config.keyring))

    def stop_when_audited() -> None:
        try:
            d.wait_for_audit(2_000, timeout_s=120)
            time.sleep(1)  # a duplicate would show up in this second
        finally:
            worker.request_stop()

    aborts_before = metrics.ABORTS._value.get()
    stopper = threading.Thread(target=stop_when_audited, daemon=True)
    stopper.start()
    assert worker.run() == 0
    stopper.join()
    assert metrics.ABORTS._value.get() - aborts_before == len(failing)
    sanitized, dead = _outcomes(d)
    assert set(sanitized) <= ids and dead == len(range(0, 2_000, 89)) and len(sanitized) + dead == 2_000
    assert sum(n - 1 for n in sanitized.values()) == 0  # nothing published twice
    audit = d.read(d.audit_topic)
    assert len(audit) == 2_000
    report = verify_chains((r.partition, r.offset, r.value or b"") for r in audit)
    assert report.ok and report.events == 2_000, report.breaks
