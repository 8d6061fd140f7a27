"""The latency trace (setting latency_trace): one line per committed batch, stages in order on the wall
clock, the events' timestamps and topics, the key read-backs made while the batch was processed, and
never a value; and the bench's decomposition of an event's latency from it adds up to that latency."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import orjson

from benchmarks.bench import PART_OF_ABOVE, TRACE_STAGES, decompose
from gateway.runtime.latency_trace import STAGES, LatencyTrace
from gateway.runtime.transactional import Batch, Output

CANARY = b"4111-1111-1111-1111 Jane Canary"


class _Message:
    def __init__(self, topic: str, stamp: int) -> None:
        self._topic, self._stamp = topic, stamp

    def topic(self) -> str:
        return self._topic

    def timestamp(self) -> tuple[int, int]:
        return (1, self._stamp)

    def value(self) -> bytes:
        return CANARY

    def key(self) -> bytes:
        return CANARY


def _batch(t0: float) -> Batch:
    batch = Batch([_Message("payments.raw", 1_000), _Message("visits.raw", 1_001)], Output([]), {},
                  started=t0 + 0.020, processed=t0 + 0.025)
    batch.polled, batch.settled, batch.produced, batch.offsets_sent = t0, t0 + 0.030, t0 + 0.031, t0 + 0.040
    batch.slices, batch.process_s = 3, 0.012  # three slices, 12 ms of handler time in all
    return batch


def test_a_line_per_batch_with_its_stages_in_order_and_no_value(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    trace = LatencyTrace(path)
    t0 = time.monotonic()
    read_backs = [(t0 + 0.021, t0 + 0.022, t0 + 0.024),  # during the batch's processing: its key stages
                  (t0 - 5.0, t0 - 4.9, t0 - 4.8)]  # an earlier batch's
    trace.write(_batch(t0), t0 + 0.050, read_backs)
    trace.write(_batch(t0 + 1), t0 + 1.050)
    trace.close()
    text = path.read_bytes()
    assert CANARY not in text
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert len(lines) == 2
    first = lines[0]
    stamps = [first[s] for s in STAGES]
    assert stamps == sorted(stamps)
    assert abs(first["committed"] - first["polled"] - 50.0) < 0.01  # ms, on one clock
    assert first["slices"] == 3 and first["process_ms"] == 12.0
    assert abs(first["committed"] - time.time() * 1000) < 60_000  # the wall clock, as the events' timestamps
    assert first["events"] == [["payments.raw", 1_000], ["visits.raw", 1_001]]
    assert abs(first["key_store_ms"] - 1.0) < 0.01 and abs(first["key_read_back_ms"] - 2.0) < 0.01
    assert lines[1]["key_read_back_ms"] == 0.0


def test_a_batch_carries_the_collector_pauses_within_its_span_only(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    trace = LatencyTrace(path)
    junk = [[i] for i in range(200_000)]  # tracked objects: the full collection takes a measurable time
    t0 = time.monotonic()
    gc.collect()  # inside the first batch's span
    t1 = time.monotonic()
    trace.write(_batch(t0 - 0.010), t1 + 0.001)
    later = time.monotonic() + 1.0
    trace.write(_batch(later), later + 0.050)  # its span holds no collection
    trace.close()
    del junk
    first, second = (orjson.loads(line) for line in path.read_bytes().splitlines())
    assert 0 < first["gc_max_ms"] <= first["gc_ms"] <= (t1 - (t0 - 0.010)) * 1000 + 0.01  # within its span
    assert second["gc_ms"] == 0.0 and second["gc_max_ms"] == 0.0
    assert trace._on_gc not in gc.callbacks  # closed: no callback left behind


def test_the_decomposition_adds_up_to_the_latency() -> None:
    batch = {"polled": 1_000.0, "started": 1_020.0, "processed": 1_025.0, "settled": 1_030.0, "produced": 1_031.0,
             "offsets_sent": 1_040.0, "committed": 1_050.0, "key_store_ms": 1.0, "key_read_back_ms": 2.0,
             "gc_ms": 4.0}
    early = decompose(990, 70.0, batch)  # in the queue before the consume call: waited for it
    late = decompose(1_005, 55.0, batch)  # arrived during the batch-fill wait
    for latency, parts in ((70.0, early), (55.0, late)):
        assert len(parts) == len(TRACE_STAGES)
        assert PART_OF_ABOVE == {TRACE_STAGES.index("  of which key read-back"),
                                 TRACE_STAGES.index("  of which garbage collection")}
        assert abs(sum(p for i, p in enumerate(parts) if i not in PART_OF_ABOVE) - latency) < 1e-9
        assert all(p >= 0 for p in parts)
    assert early[0] == 10.0 and late[0] == 0.0
    assert early[1] == 20.0 and late[1] == 15.0
    assert early[3] == 3.0 and early[4] == 4.0
