"""A read_committed reader of what comes next on some topics, on a thread of its own (the latency
section's probe in bench.py and the DP release's reader in dp_release.py)."""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, Message, TopicPartition

from gateway.runtime import clients


class TailReader:
    """Assigned every partition of `topics` at its current end; each batch it receives goes to
    `received_batch(now_ms, messages)` (error-free messages, `now_ms` the wall clock when they came)."""

    def __init__(self, bootstrap: str, topics: list[str], group_prefix: str) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{group_prefix}-{uuid.uuid4().hex[:6]}",
                                  "isolation.level": "read_committed", "enable.auto.commit": False,
                                  # a fetch returns as soon as data is there; a shorter wait only
                                  # adds idle fetches, which cost the broker CPU (5 ms: 0.35 cores)
                                  "fetch.wait.max.ms": 100})
        assignment = []
        for topic in topics:
            for partition in self.consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
                assignment.append(TopicPartition(topic, partition, high))  # only what comes next
        self.consumer.assign(assignment)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def received_batch(self, now_ms: float, messages: list[Message]) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        # the first record is waited for alone, then what is queued is taken without waiting: a
        # batch consume waits out its whole timeout unless it fills, which added up to 50 ms of the
        # reader's own to every latency measured before (a bare broker hop read p99 ~60 ms)
        while not self._stop.is_set():
            batch = clients.take(self.consumer, 1000, 0.05)
            self.received_batch(time.time() * 1000, [m for m in batch if m.error() is None])

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.consumer.close()
