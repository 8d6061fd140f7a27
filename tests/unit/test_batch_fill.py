"""The batch fill counts from the last batch's start, what arrives during it is transformed slice by
slice (issue 35), and start-up's heap is frozen out of the collector's reach before a job's loop runs.

The loop's consume timeout is pure arithmetic over its clock, so it is tested here with test doubles
for the two clients (the loop's Kafka behaviour is covered on a real broker in tests/integration);
the clock is the module's, replaced, so no test waits.
"""

from __future__ import annotations

import gc
import sys
from concurrent.futures import Future
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from gateway.core.pipeline.outcome import SANITIZED, BatchCounts
from gateway.outputs import OutRecord
from gateway.runtime import transactional
from gateway.runtime.jobs import settle_heap
from gateway.runtime.transactional import Batch, Output, TransactionalLoop, merge_outputs


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class _Message:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "raw"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Committed:
    def __init__(self) -> None:
        self.topic, self.partition, self.offset, self.metadata, self.error = "raw", 0, 0, None, None


class _Consumer:
    """Returns one message per consume (or none), after `arrive_s` on the clock; records each timeout."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.timeouts: list[float] = []
        self.next_offset = 0
        self.empty = False
        self.on_consume: Any = None  # called inside consume (a rebalance callback's moment)
        self.seeks: list[Any] = []

    def consume(self, num: int, timeout: float) -> list[_Message]:
        self.timeouts.append(timeout)
        if self.on_consume is not None:
            self.on_consume(len(self.timeouts))
        if self.empty:
            self.clock.now += timeout  # nothing came: the whole wait
            return []
        self.next_offset += 1
        return [_Message(self.next_offset - 1)]

    def committed(self, partitions: list[Any], timeout: float) -> list[_Committed]:
        return [_Committed()]

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: Any) -> None:
        self.seeks.append(tp)


class _Producer:
    """A transaction at a time, as librdkafka's: what was produced, when (on the clock), and what committed."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.transactions = 0
        self.aborted = 0
        self.produced: list[bytes] = []
        self.produced_at: list[float] = []
        self.committed: list[bytes] = []
        self._open: list[bytes] | None = None

    def begin_transaction(self) -> None:
        assert self._open is None, "a transaction is open already"
        self.transactions += 1
        self._open = []

    def produce(self, topic: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        assert self._open is not None, "produced outside a transaction"
        self.produced.append(value)
        self.produced_at.append(self.clock.now)
        self._open.append(value)

    def send_offsets_to_transaction(self, *args: Any) -> None: ...

    def commit_transaction(self, *args: Any) -> None:
        assert self._open is not None
        self.committed += self._open
        self._open = None

    def abort_transaction(self, *args: Any) -> None:
        assert self._open is not None
        self.aborted += 1
        self._open = None

    def flush(self, *args: Any) -> int:
        return 0


class _Handler:
    """Each batch takes `process_s` on the clock."""

    def __init__(self, clock: _Clock, process_s: list[float]) -> None:
        self.clock = clock
        self.process_s = process_s
        self.slices: list[list[int]] = []
        self.closed: list[Any] = []
        self.before_publish_calls = 0

    def open(self, source: Any, committed_offset: int, metadata: str | None) -> None: ...

    def close(self, sources: Any) -> None:
        self.closed += sources

    def before_publish(self) -> Output:
        self.before_publish_calls += 1
        return Output([OutRecord("audit", None, b"sealed")], {("raw", 0): "head"})

    def process(self, messages: list[Any]) -> Output:
        self.clock.now += self.process_s.pop(0) if self.process_s else 0.001
        self.slices.append([m.offset() for m in messages])
        return Output([OutRecord("out", None, str(m.offset()).encode()) for m in messages])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(transactional.time, "monotonic", clock.monotonic)
    return clock


def _loop(clock: _Clock, process_s: list[float], slice_s: float | None = None) -> tuple[TransactionalLoop, _Consumer]:
    consumer = _Consumer(clock)
    loop = TransactionalLoop("t", consumer, _Producer(clock), _Handler(clock, process_s), ["raw"],  # type: ignore[arg-type]
                             batch_max_events=1000, batch_timeout_s=0.020, slice_s=slice_s)
    loop.owned = {("raw", 0)}
    return loop, consumer


def test_the_fill_counts_from_the_last_batch_not_from_the_call(clock: _Clock) -> None:
    """A batch that took 15 ms to process leaves 5 ms of the next one's fill; one that took 30 ms, none.
    Before, each consume waited the whole 20 ms again, so at high rates a batch covered its
    processing time plus the timeout, and every event in it waited for both."""
    loop, consumer = _loop(clock, [0.015, 0.030, 0.001])
    loop.step()
    loop.step()
    loop.step()
    assert consumer.timeouts[0] == pytest.approx(0.020)
    assert consumer.timeouts[1] == pytest.approx(0.005)
    assert consumer.timeouts[2] == 0.0


def test_an_idle_loop_still_waits_the_whole_fill_each_turn(clock: _Clock) -> None:
    """No spin when nothing comes: an empty consume is a batch start as well, so each waits the timeout."""
    loop, consumer = _loop(clock, [])
    consumer.empty = True
    for _ in range(4):
        loop.step()
    assert consumer.timeouts == pytest.approx([0.020] * 4)


def test_an_explicit_timeout_is_kept(clock: _Clock) -> None:
    """The DP stages step with their own timeout (two loops share the turn): not shortened."""
    loop, consumer = _loop(clock, [0.050, 0.050])
    loop.step(0.1)
    loop.step(0.1)
    assert consumer.timeouts == pytest.approx([0.1, 0.1])


def test_what_arrives_during_the_fill_is_transformed_as_it_arrives_and_published_in_one_transaction(
        clock: _Clock) -> None:
    """Events come one per consume here; with 5 ms slices each is transformed as it comes, never
    waiting for the fill's end, and its records go into the batch's transaction at once (nothing was
    committing): the whole fill is still one batch, one transaction, every record produced once, in
    order, and committed."""
    loop, consumer = _loop(clock, [], slice_s=0.005)
    taken = loop.step()
    producer, handler = loop.producer, loop.handler
    assert taken > 1 and len(handler.slices) == taken  # type: ignore[attr-defined]
    assert all(t <= 0.005 + 1e-9 for t in consumer.timeouts)
    assert producer.transactions == 1  # type: ignore[attr-defined]
    # every slice's records in order, then what before_publish adds once per batch (the audit records)
    assert producer.produced == [str(i).encode() for i in range(taken)] + [b"sealed"]  # type: ignore[attr-defined]
    assert producer.committed == producer.produced and producer.aborted == 0  # type: ignore[attr-defined]
    # each slice's record was produced right after it was transformed, during the fill (1 ms a slice here)
    assert producer.produced_at[:taken] == pytest.approx([1000.0 + 0.001 * (i + 1) for i in range(taken)])  # type: ignore[attr-defined]
    assert handler.before_publish_calls == 1  # type: ignore[attr-defined]
    assert clock.now >= 1000.0 + 0.020  # the fill lasted its 20 ms, no more slices after it
    assert clock.now < 1000.0 + 0.020 + 0.002


def test_while_the_last_batch_still_commits_what_arrives_is_transformed_slice_by_slice(clock: _Clock) -> None:
    """The fill is over but the batch before is still committing: the loop goes on taking what arrives,
    a slice at a time, and publishes as soon as that commit is done, instead of waiting for it idle
    and leaving everything that came meanwhile to one big slice."""
    loop, consumer = _loop(clock, [], slice_s=0.005)
    committing: Future[float] = Future()
    loop._in_flight = Batch([], Output([]), {}, clock.now, clock.now, commit=committing)

    def commit_done_at_call_30(call: int) -> None:
        if call == 30:
            committing.set_result(clock.now)

    consumer.on_consume = commit_done_at_call_30
    taken = loop.step()
    assert taken == 30  # 20 slices in the 20 ms fill (1 ms each here), then 10 more while the commit ran
    assert len(loop.handler.slices) == 30  # type: ignore[attr-defined]
    producer = loop.producer
    assert producer.transactions == 1  # type: ignore[attr-defined]
    assert len(producer.produced) == 30 + 1  # type: ignore[attr-defined]  # and the batch's sealed record
    # one transaction at a time: nothing went into this batch's before the batch before had committed
    assert min(producer.produced_at) >= committing.result()  # type: ignore[attr-defined]
    assert producer.committed == producer.produced  # type: ignore[attr-defined]


def test_slices_of_a_partition_revoked_during_the_fill_are_not_published(clock: _Clock) -> None:
    """A revocation inside a later consume: the slices already transformed may hold that partition's
    records, which another member now owns. They are dropped, the transaction they went into aborted,
    every partition rewound to its committed offset, nothing committed; the next turn reads them again."""
    loop, consumer = _loop(clock, [], slice_s=0.005)
    loop.owned.add(("raw", 1))

    def revoke_on_third(call: int) -> None:
        if call == 3:
            loop._on_revoke(consumer, [TopicPartition("raw", 1)])  # type: ignore[arg-type]
        if call == 4:
            loop._on_revoke(consumer, [])  # an empty revocation changes nothing

    consumer.on_consume = revoke_on_third
    assert loop.step() == 0
    producer = loop.producer
    assert producer.produced == [b"0", b"1"] and producer.aborted == 1  # type: ignore[attr-defined]
    assert producer.committed == [] and loop.aborts == 1  # type: ignore[attr-defined]
    assert ("raw", 0) in loop.handler.closed  # type: ignore[attr-defined]
    assert [(tp.topic, tp.partition) for tp in consumer.seeks] == [("raw", 0)]
    consumer.on_consume = revoke_on_third  # calls 5 onwards: an empty revocation only at 4, none after
    assert loop.step() > 0
    assert producer.committed and producer.aborted == 1  # type: ignore[attr-defined]  # the next batch commits


def test_a_slice_that_cannot_be_produced_aborts_the_transaction_and_rewinds(clock: _Clock) -> None:
    """Producing a slice's records fails (the transaction can only be aborted): the transaction is
    aborted with what went into it, every partition rewound, nothing committed; the next turn goes on."""
    loop, consumer = _loop(clock, [], slice_s=0.005)
    producer = loop.producer
    produce = producer.produce

    def fail_third(topic: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        if len(producer.produced) == 2:  # type: ignore[attr-defined]
            raise KafkaException(KafkaError(KafkaError._STATE))
        produce(topic, value, *args, **kwargs)

    producer.produce = fail_third  # type: ignore[method-assign]
    assert loop.step() == 0
    assert producer.aborted == 1 and producer.committed == []  # type: ignore[attr-defined]
    assert [(tp.topic, tp.partition) for tp in consumer.seeks] == [("raw", 0)]
    producer.produce = produce  # type: ignore[method-assign]
    assert loop.step() > 0 and producer.committed  # type: ignore[attr-defined]


def test_a_revocation_before_anything_was_processed_rewinds_nothing(clock: _Clock) -> None:
    """Revoked inside the fill's first consume, before any slice: what that consume returned of the
    revoked partition is dropped on its own (not owned any more), and the batch goes on."""
    loop, consumer = _loop(clock, [], slice_s=0.005)
    loop.owned.add(("raw", 1))

    def revoke_on_first(call: int) -> None:
        if call == 1:
            loop._on_revoke(consumer, [TopicPartition("raw", 1)])  # type: ignore[arg-type]

    consumer.on_consume = revoke_on_first
    assert loop.step() > 1
    assert consumer.seeks == []
    assert loop.producer.transactions == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("batch_max_events", "interval_while_committing"),
                         [(1000, transactional.COMMIT_SWITCH_INTERVAL_S), (3, None)])
def test_an_overlapped_commit_hands_the_gil_over_every_millisecond_only_while_it_runs_and_not_in_a_backlog(
        clock: _Clock, batch_max_events: int, interval_while_committing: float | None) -> None:
    """The commit thread needs the GIL back after each broker call while the main thread transforms: 1 ms
    switches while it commits, the interpreter's own interval again once it is done. A full batch (a
    backlog: here three events, one per consume) keeps the interpreter's interval, which costs less CPU."""
    before = sys.getswitchinterval()
    seen: list[float] = []
    consumer = _Consumer(clock)
    producer = _Producer(clock)
    commit = producer.commit_transaction

    def committing(*args: Any) -> None:
        seen.append(sys.getswitchinterval())
        commit(*args)

    producer.commit_transaction = committing  # type: ignore[method-assign]
    loop = TransactionalLoop("t", consumer, producer, _Handler(clock, []), ["raw"],  # type: ignore[arg-type]
                             batch_max_events=batch_max_events, batch_timeout_s=0.020, slice_s=0.005, overlap=True)
    loop.owned = {("raw", 0)}
    try:
        assert loop.step() > 0
        assert loop.settle()
    finally:
        assert loop._committer is not None
        loop._committer.shutdown(wait=True)
    assert seen == [interval_while_committing or before] and producer.committed
    assert sys.getswitchinterval() == before
    assert (len(producer.committed) == batch_max_events + 1) == (interval_while_committing is None)  # + audit


def test_merged_slices_keep_the_last_state_per_partition_and_every_count() -> None:
    a, b = ("raw", 0), ("raw", 1)
    first = Output([OutRecord("out", None, b"1")], {a: "head-1", b: "head-b"}, {a: 5, b: 9},
                   BatchCounts())
    first.counts.outcomes[("raw", SANITIZED)] += 1
    second = Output([OutRecord("out", None, b"2")], {a: "head-2"}, {a: 7}, BatchCounts())
    second.counts.outcomes[("raw", SANITIZED)] += 2
    sealed = Output([OutRecord("audit", None, b"a")], {a: "head-3"})  # before_publish's, read after the slices
    merged = merge_outputs([first, second, sealed])
    assert [r.value for r in merged.records] == [b"1", b"2", b"a"]
    assert merged.metadata == {a: "head-3", b: "head-b"}
    assert merged.offsets == {a: 7, b: 9}
    assert merged.counts.events == 3
    assert merge_outputs([Output([]), Output([])]).offsets is None
    with pytest.raises(ValueError, match="some slices"):
        merge_outputs([first, Output([]), sealed])
    with pytest.raises(ValueError, match="before_publish"):
        merge_outputs([first, second])  # the last one is before_publish's: it may not move offsets


def test_settle_heap_puts_what_start_up_built_out_of_the_collectors_generations() -> None:
    built = [{"plan": i} for i in range(2000)]  # tracked containers, as start-up's plans and schemas
    try:
        settle_heap()
        tracked = {id(o) for generation in range(3) for o in gc.get_objects(generation)}
        assert not any(id(o) in tracked for o in built)
        assert gc.get_freeze_count() >= len(built)
        after = {"event": [1]}  # what the loop allocates is collected as before (a container: tracked)
        assert id(after) in {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()
