"""The stall monitor on the real broker: an idle partition is not a stalled one (gateway.runtime.stall).

Input written in transactions ends with a commit marker that no consumer receives, so an idle
partition's end is one past its last record. The monitor's clock is injected (check_now's `now`),
so hours of quiet take no time; the broker's answers are real."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.ops import metrics
from gateway.runtime.stall import StallMonitor
from gateway.settings import GatewayConfig

HOUR = 3600.0


@pytest.fixture
def topic(bootstrap: str) -> Iterator[str]:
    name = f"stall-idle-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, 2, 1)])[name].result(30)
    yield name


def _produce(bootstrap: str, topic: str, n: int, transactional: bool, partition: int = 0) -> None:
    if transactional:
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
        producer.init_transactions(30)
        producer.begin_transaction()
        for i in range(n):
            producer.produce(topic, b"v%d" % i, b"k", partition=partition)
        producer.commit_transaction(30)
    else:
        producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        for i in range(n):
            producer.produce(topic, b"v%d" % i, b"k", partition=partition)
        assert producer.flush(30) == 0


def _consume_and_commit(bootstrap: str, group: str, topic: str, partitions: int, upto: int | None = None) -> None:
    """What a worker does: read every record (read_committed) and commit the offset after the last one
    (or after the first `upto` of partition 0)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "isolation.level": "read_committed", "enable.partition.eof": True,
                         "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    last: dict[int, int] = {}
    at_end: set[int] = set()
    while len(at_end) < partitions:
        msg = consumer.poll(10)
        assert msg is not None, "the partitions' ends were not reached"
        if msg.error() is not None:
            assert msg.error().code() == KafkaError._PARTITION_EOF
            at_end.add(msg.partition())
            continue
        if upto is not None and msg.partition() == 0 and msg.offset() >= upto:
            continue
        last[msg.partition()] = msg.offset()
    consumer.commit(offsets=[TopicPartition(topic, p, o + 1) for p, o in last.items()], asynchronous=False)
    consumer.close()


def _monitor(bootstrap: str, group: str, topic: str) -> StallMonitor:
    config = GatewayConfig(bootstrap=bootstrap, group_id=group, stall_after_s=15)
    monitor = StallMonitor(config, group, f"idle-{group}", metrics.Health())
    monitor.set_owned({(topic, 0), (topic, 1)})
    return monitor


def _quiet_for_an_hour(monitor: StallMonitor) -> set[tuple[str, int]]:
    """The stalled partitions after checks at 0 s, 15 s, 16 s and an hour (the injected clock)."""
    stalled: set[tuple[str, int]] = set()
    for now in (0.0, 15.0, 16.0, HOUR):
        stalled = monitor.check_now(lambda now=now: now)
    return stalled


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "plain"])
def test_an_idle_partition_consumed_to_its_end_is_never_stalled(bootstrap: str, topic: str,
                                                                transactional: bool) -> None:
    """Every record consumed and committed, then an hour of quiet: no partition is stalled, whether
    the input was written in transactions (its end is the commit marker, one past the committed
    offset) or by a plain producer. /readyz's stalled list stays empty."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, topic, 13, transactional, partition=0)
    _produce(bootstrap, topic, 4, transactional, partition=1)
    _consume_and_commit(bootstrap, group, topic, 2)
    monitor = _monitor(bootstrap, group, topic)
    try:
        high = monitor._consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)[1]
        assert high == (14 if transactional else 13)  # the marker takes an offset: the case this is about
        assert _quiet_for_an_hour(monitor) == set()
        assert monitor.health.stalled() == []
    finally:
        monitor.stop()


@pytest.mark.parametrize("transactional", [True, False], ids=["transactional", "plain"])
def test_a_record_waiting_behind_a_committed_offset_that_stands_still_is_a_stall(
        bootstrap: str, topic: str, transactional: bool) -> None:
    """The counterpart: records the consumer can fetch wait behind a committed offset that does not move
    (a failing commit, a dead worker): that partition, and only that one, is stalled."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, topic, 13, transactional, partition=0)
    _produce(bootstrap, topic, 4, transactional, partition=1)
    _consume_and_commit(bootstrap, group, topic, 2, upto=8)  # partition 0: 8..12 are never consumed
    monitor = _monitor(bootstrap, group, topic)
    try:
        assert _quiet_for_an_hour(monitor) == {(topic, 0)}
        assert monitor.health.stalled() == [f"{topic}:0"]
    finally:
        monitor.stop()


def test_records_held_behind_an_open_transaction_are_a_stall_until_it_aborts(bootstrap: str, topic: str) -> None:
    """Another producer's open transaction holds records past the committed offset: the consumer gets
    nothing until it ends, so that partition is stalled; once it aborts, only aborted records and the
    abort marker are left, and the partition is idle again."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    _produce(bootstrap, topic, 5, True, partition=0)
    _produce(bootstrap, topic, 5, True, partition=1)
    _consume_and_commit(bootstrap, group, topic, 2)
    holder = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"holder-{uuid.uuid4().hex[:8]}"})
    holder.init_transactions(30)
    holder.begin_transaction()
    holder.produce(topic, b"held", b"k", partition=0)
    assert holder.flush(30) == 0
    monitor = _monitor(bootstrap, group, topic)
    try:
        assert _quiet_for_an_hour(monitor) == {(topic, 0)}
        holder.abort_transaction(30)
        # abort_transaction returns once the coordinator logged the abort; the markers reach the partitions
        # after it (a full-suite run checked in between and still saw the transaction open): wait for
        # partition 0's last stable offset past its abort marker (5 records, their commit marker, the held
        # record, the abort marker): a read_committed consumer's high watermark is the last stable offset
        deadline = time.monotonic() + 30
        while monitor._reader.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)[1] < 8:
            assert time.monotonic() < deadline, "the abort marker never reached partition 0"
            time.sleep(0.05)
        assert monitor.check_now(lambda: 2 * HOUR) == set()
        assert monitor.check_now(lambda: 3 * HOUR) == set()
    finally:
        monitor.stop()
