"""The latency trace (setting latency_trace): one JSON line per committed batch with the wall-clock
time of each of its stages and the timestamps of its events, so that a bounded latency run can say
where the slowest events spent their time, stage by stage, rather than only the stage means.

It carries no value: only record timestamps (already public on every output), topic names and the
loop's own clock readings. Off by default; `make bench` turns it on for its latency runs.

Stages of a batch, in the order an event meets them (benchmarks/bench.py reads them back):
  polled        the consume call that returned the batch began
  started       consume returned it (polled..started: the wait for the batch to fill)
  processed     the handler made its output (key read-back included: `keys` says how long that was)
  settled       the previous batch's commit was done (the overlap: this batch may be produced)
  produced      every record handed to the producer
  offsets_sent  send_offsets_to_transaction returned
  committed     commit_transaction returned
Beside them: `gc_ms` and `gc_max_ms`, the garbage collector's pauses (any thread's: a collection
holds the GIL, so every Python thread of the worker waits) from `polled` to `committed`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import orjson

from gateway.runtime.transactional import Batch

STAGES = ("polled", "started", "processed", "settled", "produced", "offsets_sent", "committed")


class LatencyTrace:
    """Appends a batch's line to `path`; monotonic clock readings are written as wall-clock ms."""

    def __init__(self, path: str | Path) -> None:
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._pauses: list[tuple[float, float]] = []  # the collector's (start, end), monotonic
        self._collecting = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._collecting = time.monotonic()
        else:
            self._pauses.append((self._collecting, time.monotonic()))

    def write(self, batch: Batch, committed: float,
              read_backs: Iterable[tuple[float, float, float]] = ()) -> None:
        wall_ms = time.time() * 1000 - time.monotonic() * 1000
        at = {"polled": batch.polled, "started": batch.started, "processed": batch.processed,
              "settled": batch.settled, "produced": batch.produced, "offsets_sent": batch.offsets_sent,
              "committed": committed}
        # the key topic's publishes (store, then read back) made while this batch was processed
        keys = [(stored - began, done - stored) for began, stored, done in read_backs
                if batch.started <= began <= batch.processed]
        line = {stage: round(at[stage] * 1000 + wall_ms, 3) for stage in STAGES}
        line["key_store_ms"] = round(sum(k[0] for k in keys) * 1000, 3)
        line["key_read_back_ms"] = round(sum(k[1] for k in keys) * 1000, 3)
        line["slices"] = batch.slices  # the handler's calls for this batch (the fill's slices)
        line["process_ms"] = round(batch.process_s * 1000, 3)  # the handler's time over all of them
        pauses = [end - start for start, end in self._pauses if start >= batch.polled and end <= committed]
        # the next batch began before this one committed (the overlap): keep what a later batch may span
        self._pauses = [p for p in self._pauses if p[1] > committed - 10.0]
        line["gc_ms"] = round(sum(pauses) * 1000, 3)
        line["gc_max_ms"] = round(max(pauses, default=0.0) * 1000, 3)
        line["events"] = [[m.topic(), m.timestamp()[1]] for m in batch.messages]
        self._file.write(orjson.dumps(line) + b"\n")
        self._file.flush()

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._file.close()
