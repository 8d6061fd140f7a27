"""The batch fill counts from the last batch's start (issue 35), and start-up's heap is frozen out of
the collector's reach before a job's loop runs.

The loop's consume timeout is pure arithmetic over its clock, so it is tested here with test doubles
for the two clients (the loop's Kafka behaviour is covered on a real broker in tests/integration);
the clock is the module's, replaced, so no test waits.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest

from gateway.runtime import transactional
from gateway.runtime.jobs import settle_heap
from gateway.runtime.transactional import Output, TransactionalLoop


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

    def consume(self, num: int, timeout: float) -> list[_Message]:
        self.timeouts.append(timeout)
        if self.empty:
            self.clock.now += timeout  # nothing came: the whole wait
            return []
        self.next_offset += 1
        return [_Message(self.next_offset - 1)]

    def committed(self, partitions: list[Any], timeout: float) -> list[_Committed]:
        return [_Committed()]

    def consumer_group_metadata(self) -> object:
        return object()


class _Producer:
    def begin_transaction(self) -> None: ...

    def produce(self, *args: Any, **kwargs: Any) -> None: ...

    def send_offsets_to_transaction(self, *args: Any) -> None: ...

    def commit_transaction(self, *args: Any) -> None: ...


class _Handler:
    """Each batch takes `process_s` on the clock."""

    def __init__(self, clock: _Clock, process_s: list[float]) -> None:
        self.clock = clock
        self.process_s = process_s

    def open(self, source: Any, committed_offset: int, metadata: str | None) -> None: ...

    def close(self, sources: Any) -> None: ...

    def process(self, messages: list[Any]) -> Output:
        self.clock.now += self.process_s.pop(0)
        return Output([])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    clock = _Clock()
    monkeypatch.setattr(transactional.time, "monotonic", clock.monotonic)
    return clock


def _loop(clock: _Clock, process_s: list[float]) -> tuple[TransactionalLoop, _Consumer]:
    consumer = _Consumer(clock)
    loop = TransactionalLoop("t", consumer, _Producer(), _Handler(clock, process_s), ["raw"],  # type: ignore[arg-type]
                             batch_max_events=1000, batch_timeout_s=0.020)
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
    assert consumer.timeouts == [0.1, 0.1]


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
