"""The stall monitor: a thread that asks the broker for the committed offsets and ends of the
partitions a job owns, and reports those that make no progress (gateway.stall)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import KafkaException, TopicPartition

from gateway import metrics
from gateway.config import GatewayConfig
from gateway.runtime import clients
from gateway.stall import Source, StallDetector

log = logging.getLogger("gateway.stall")


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
        self._thread = threading.Thread(target=self._loop, name=f"stall-{job}", daemon=True)

    def start(self) -> StallMonitor:
        self._thread.start()
        return self

    def set_owned(self, owned: set[Source]) -> None:
        self.owned = set(owned)

    def check_now(self, now: Callable[[], float] = time.monotonic) -> set[Source]:
        owned = set(self.owned)
        committed: dict[Source, int] = {}
        ends: dict[Source, tuple[int, int]] = {}
        if owned:
            tps = [TopicPartition(t, p) for t, p in sorted(owned)]
            for tp in self._consumer.committed(tps, timeout=10):
                committed[(tp.topic, tp.partition)] = tp.offset
            for tp in tps:
                ends[(tp.topic, tp.partition)] = self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        stalled = self.detector.observe(owned, committed, ends, now())
        self._report(stalled, committed, ends)
        return stalled

    def _report(self, stalled: set[Source], committed: dict[Source, int],
                ends: dict[Source, tuple[int, int]]) -> None:
        if stalled and stalled != self.stalled:
            log.warning("no progress: the committed position of these partitions has not moved for "
                        f"{self.detector.stall_after_s:g}s while input waits (an open transaction of a dead "
                        "worker, or a failing commit)",
                        extra={"job": self.job, "partitions": {f"{t}:{p}": {"committed": committed.get((t, p)),
                                                                            "end": ends.get((t, p), (0, 0))[1]}
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
        self._thread.join(10)
        self._consumer.close()
