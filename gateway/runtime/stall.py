"""The stall monitor: a thread that asks the broker for the committed offsets and ends of the
partitions a job owns, and reports those that make no progress (gateway.ops.stall).

Two consumers, neither in the group: one read_uncommitted for the committed offsets (answered at
once even while a transaction holds pending offsets, the stall it looks for) and the high
watermarks; one read_committed for the last stable offsets and, when the rule asks, a fetch from a
committed offset that says whether a record waits there or only transaction markers."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from gateway.ops import metrics
from gateway.ops.stall import Ends, Source, StallDetector
from gateway.runtime import clients
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.ops.stall")


class StallMonitor:
    def __init__(self, config: GatewayConfig, group_id: str, job: str, health: metrics.Health,
                 every_s: float | None = None) -> None:
        self.detector = StallDetector(config.stall_after_s)
        self.job = job
        self.health = health
        self.every_s = every_s or max(0.5, min(5.0, config.stall_after_s / 4))
        self.owned: set[Source] = set()
        self.stalled: set[Source] = set()
        self._stop = threading.Event()
        self._consumer = clients.offsets_probe(config, group_id)
        self._reader = clients.reader(config, f"{group_id}.stall-probe", **clients.READ_TO_END)
        self._thread = threading.Thread(target=self._loop, name=f"stall-{job}", daemon=True)

    def start(self) -> StallMonitor:
        self._thread.start()
        return self

    def set_owned(self, owned: set[Source]) -> None:
        self.owned = set(owned)

    def check_now(self, now: Callable[[], float] = time.monotonic) -> set[Source]:
        owned = set(self.owned)
        committed: dict[Source, int] = {}
        ends: dict[Source, Ends] = {}
        if owned:
            tps = [TopicPartition(t, p) for t, p in sorted(owned)]
            for tp in self._consumer.committed(tps, timeout=10):
                committed[(tp.topic, tp.partition)] = tp.offset
            for tp in tps:
                low, high = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
                # a read_committed consumer's "high" is the last stable offset
                _, stable = self._reader.get_watermark_offsets(tp, timeout=5, cached=False)
                ends[(tp.topic, tp.partition)] = Ends(low, high, min(stable, high))
        stalled = self.detector.observe(owned, committed, ends, now(), self.fetchable)
        self._report(stalled, committed, ends)
        return stalled

    def fetchable(self, source: Source, start: int, stable: int, timeout_s: float = 10.0) -> bool:
        """Whether a read_committed fetch from `start` returns a record before the stable end `stable`
        (False: only commit or abort markers and aborted records lie there). Not known in time: True,
        as the rule was before it could tell."""
        self._reader.assign([TopicPartition(source[0], source[1], start)])
        try:
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                msg = self._reader.poll(left)
                if msg is None:
                    break
                err = msg.error()
                if err is None:
                    return msg.offset() < stable
                if err.code() == KafkaError._PARTITION_EOF:
                    return False
            return True
        finally:
            self._reader.unassign()

    def _report(self, stalled: set[Source], committed: dict[Source, int], ends: dict[Source, Ends]) -> None:
        if stalled and stalled != self.stalled:
            log.warning("no progress: the committed position of these partitions has not moved for "
                        f"{self.detector.stall_after_s:g}s while input waits (an open transaction of a dead "
                        "worker, or a failing commit)",
                        extra={"job": self.job, "partitions": {
                            f"{t}:{p}": {"committed": committed.get((t, p)),
                                         "end": ends[(t, p)].high if (t, p) in ends else 0,
                                         "stable": ends[(t, p)].stable if (t, p) in ends else 0}
                            for t, p in sorted(stalled)}})
        elif self.stalled and not stalled:
            log.info("progress again: no partition is stalled", extra={"job": self.job})
        self.stalled = stalled
        metrics.STALLED.labels(self.job).set(len(stalled))
        self.health.set_stalled(self.job, sorted(f"{t}:{p}" for t, p in stalled))

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check_now()
            except KafkaException as exc:
                log.info("stall check failed", extra={"job": self.job, "code": exc.args[0].name()})

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started (a monitor driven by check_now alone never is)
            self._thread.join(10)
        self._consumer.close()
        self._reader.close()
