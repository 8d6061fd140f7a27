"""The sanitize worker: a consumer-group member that runs the pipeline over batches, exactly once.

Why confluent-kafka and not a per-event faust agent on this path: the faust agent costs about
200 us of overhead per event (see README, "Design choices"), ten times the whole transform. Here a
batch is consumed, transformed and published inside one Kafka transaction together with the
consumer offsets, so sanitized records, dead letters, audit events and progress commit atomically.

The commit of batch N (two broker round trips) runs on a committer thread while the loop consumes
and transforms batch N + 1; batch N + 1 is produced only once N has committed, in its own
transaction. If N aborts, both are rewound: the chain heads to before N, each partition to its
first offset in N (or in N + 1), and both are read again.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from gateway import metrics
from gateway.audit import audit_partition, chain_key
from gateway.config import GatewayConfig
from gateway.consume import read_from
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider
from gateway.pipeline import BatchResult, OutRecord, Pipeline, RawEvent, max_message_bytes
from gateway.policy import Plan
from gateway.replay import OutputScan, ReplayedPartition
from gateway.topics import admin_client, ensure_topics, partition_counts

log = logging.getLogger("gateway.worker")
STATUS_EVERY_S = 10.0
LAG_EVERY_S = 5.0


@dataclass
class Batch:
    """One consumed batch on its way through: transformed, then produced and committed."""

    events: list[RawEvent]
    result: BatchResult
    snapshot: dict[str, str]  # audit chain heads before the batch, to rewind to on abort
    first: dict[tuple[str, int], int]  # (topic, partition) -> first offset in the batch
    last: dict[tuple[str, int], int]  # (topic, partition) -> last offset in the batch
    started: float
    processed: float
    produced: float = 0.0
    commit: Future[float] | None = None  # the committer thread's work: when the commit finished


class ChainRecovery:
    """Finds the last audit hash of chains this worker takes over, by reading the audit topic's tail."""

    def __init__(self, config: GatewayConfig, audit_partitions: int, max_scan: int = 200_000) -> None:
        self._config = config
        self._audit_partitions = audit_partitions
        self._max_scan = max_scan
        # chain key -> source offset of its last audited event (filled by recover)
        self.last_audited: dict[str, int] = {}

    def recover(self, keys: Sequence[str]) -> tuple[dict[str, str], set[str]]:
        """Return ({key: last hash}, keys whose head lies beyond the scan limit)."""
        by_partition: dict[int, set[str]] = {}
        for key in keys:
            by_partition.setdefault(audit_partition(key, self._audit_partitions), set()).add(key)
        heads: dict[str, str] = {}
        lost: set[str] = set()
        consumer = Consumer({
            **self._config.kafka_client_config(), "group.id": f"{self._config.group_id}.audit-recovery",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "enable.partition.eof": True, "auto.offset.reset": "earliest",
        })
        try:
            for partition, wanted in by_partition.items():
                found, complete = self._scan(consumer, partition, wanted)
                heads.update(found)
                if not complete:
                    lost |= wanted - set(found)
        finally:
            consumer.close()
        return heads, lost

    def _scan(self, consumer: Consumer, partition: int, wanted: set[str]) -> tuple[dict[str, str], bool]:
        topic = self._config.audit_topic
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        window = 2_000
        while True:
            start = max(low, high - window)
            found: dict[str, str] = {}
            last_audited: dict[str, int] = {}
            for msg in read_from(consumer, TopicPartition(topic, partition, start)):
                if msg.key() is not None and msg.key().decode() in wanted:
                    key, body = msg.key().decode(), orjson.loads(msg.value())
                    found[key] = body["hash"]
                    source = body.get("event")
                    if body.get("type") == "event" and isinstance(source, dict) and "offset" in source:
                        last_audited[key] = max(last_audited.get(key, -1), int(source["offset"]))
            if set(found) >= wanted or start == low or window >= self._max_scan:
                self.last_audited.update(last_audited)
                return found, set(found) >= wanted or start == low
            window *= 4


class Worker:
    def __init__(self, config: GatewayConfig, plans: Sequence[Plan], keyring: Keyring,
                 pipeline_factory: Callable[[int], Pipeline] | None = None,
                 kms: KmsProvider | None = None) -> None:
        """`pipeline_factory(audit_partitions)` replaces the sanitize pipeline (the benchmark's
        passthrough uses it to measure this exact loop with no transform)."""
        self.config = config
        self._pipeline_factory = pipeline_factory
        self._kms = kms  # already checked by the caller: not probed a second time
        self.plans = plans
        self.keyring = keyring
        self.health = metrics.Health()
        self._stop = False
        self._totals: Counter[tuple[str, str]] = Counter()
        self._dek_seen = (0, 0)  # (hits, KMS calls) already added to the metrics
        self._lag_labels: set[tuple[str, str]] = set()
        # source partition -> what a dead transaction left showing (cleared once processed past it)
        self._replay: dict[tuple[str, int], ReplayedPartition] = {}
        # one thread commits batch N while the loop consumes and transforms batch N + 1
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._in_flight: Batch | None = None

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        if not self._stop:
            log.info("stopping: finishing the batch in flight", extra={"signal": signum})
        self._stop = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if self.config.metrics_port:
            metrics.serve(self.config.metrics_port, self.health, self.config.metrics_host)
        counts = ensure_topics(self.plans, self.config)
        audit_partitions = counts[self.config.audit_topic]
        self.pipeline = (self._pipeline_factory(audit_partitions) if self._pipeline_factory
                         else Pipeline(self.plans, self.keyring, self.config, audit_partitions, kms=self._kms))
        self.recovery = ChainRecovery(self.config, counts[self.config.audit_topic])
        self.output_scan = OutputScan(self.config)
        self.producer = Producer({
            **self.config.kafka_client_config(),
            "transactional.id": f"{self.config.group_id}-{self.config.instance_id}",
            "enable.idempotence": True,
            "linger.ms": 5,
            "transaction.timeout.ms": 60_000,
            "message.max.bytes": max_message_bytes(self.config),
        })
        self.producer.init_transactions(30)
        self.consumer = Consumer({
            **self.config.kafka_client_config(),
            "group.id": self.config.group_id,
            "client.id": self.config.instance_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "session.timeout.ms": self.config.session_timeout_ms,
            "heartbeat.interval.ms": max(500, self.config.session_timeout_ms // 5),
            # backpressure: the fetch queue is bounded, and the loop produces a batch only after the
            # previous one committed (two batches at most in hand), so a slow KMS or broker slows consumption
            "queued.max.messages.kbytes": self.config.fetch_queue_kbytes,
            # latency: a fetch waits at most 5 ms for data (librdkafka's default is 500 ms); measured on
            # the embedded broker, 5 ms against 20 ms cut p50 latency at low rates with no loss at saturation
            "fetch.wait.max.ms": 5,
        })
        self.consumer.subscribe(self.pipeline.source_topics, on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_revoke)
        self.probe = self._health_probe().start()
        log.info("worker started", extra={"group_id": self.config.group_id, "instance": self.config.instance_id,
                                          "source_topics": self.pipeline.source_topics,
                                          "audit_topic": self.config.audit_topic})
        next_status = time.monotonic() + STATUS_EVERY_S
        next_lag = time.monotonic() + LAG_EVERY_S
        try:
            while not self._stop:
                messages = self.consumer.consume(self.config.batch_max_events, self.config.batch_timeout_s)
                self.health.beat()
                events = self._events(messages)
                batch = self._transform(events) if events else None  # while the last batch commits
                if not self._settle(newer=batch):
                    continue  # the last batch aborted: this one was rewound with it and is read again
                if batch is not None:
                    self._publish(batch)
                now = time.monotonic()
                if now >= next_lag:
                    self._update_lag()
                    next_lag = now + LAG_EVERY_S
                if now >= next_status:
                    self._log_status()
                    next_status = now + STATUS_EVERY_S
            self._settle()
        finally:
            self.probe.stop()
            self.health.stop()
            self._committer.shutdown(wait=True)
            self.consumer.close()
            self.producer.flush(10)
            self._log_status()
            log.info("worker stopped")
        return 0

    def _events(self, messages: list) -> list[RawEvent]:  # type: ignore[type-arg]
        events: list[RawEvent] = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra={"code": err.name(), "fatal": err.fatal()})
                    if err.fatal():
                        raise KafkaException(err)
                continue
            events.append(RawEvent(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                                   m.headers()))
        return events

    def _health_probe(self) -> metrics.HealthProbe:
        """Kafka: the cluster answers a metadata request. KMS: the provider's own health call
        (the local keyring is always healthy; AWS and Vault make a cheap request)."""
        admin = admin_client(self.config.kafka_client_config())
        kms = self._kms if self._kms is not None else self.keyring
        return metrics.HealthProbe(self.health, {"kafka": lambda: bool(partition_counts(admin, timeout=5)),
                                                 "kms": kms.healthy})

    def _transform(self, events: list[RawEvent]) -> Batch:
        """Run the pipeline over a batch (pure CPU: overlaps the previous batch's commit)."""
        started = time.monotonic()
        snapshot = self.pipeline.chains.snapshot()
        result = self.pipeline.process(events, self._replay)
        first: dict[tuple[str, int], int] = {}
        last: dict[tuple[str, int], int] = {}
        for e in events:
            first.setdefault((e.topic, e.partition), e.offset)
            last[(e.topic, e.partition)] = e.offset
        return Batch(events, result, snapshot, first, last, started, time.monotonic())

    def _publish(self, batch: Batch) -> None:
        """Open the batch's transaction, queue its records and hand the commit to the committer
        thread; `_settle` waits for it after the next batch has been transformed."""
        try:
            self.producer.begin_transaction()
            for record in batch.result.records:
                self._produce(record)
        except KafkaException as exc:
            self._abort(exc, batch)
            return
        batch.produced = time.monotonic()
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in batch.last.items()]
        batch.commit = self._committer.submit(self._commit, offsets, self.consumer.consumer_group_metadata())
        self._in_flight = batch

    def _commit(self, offsets: list[TopicPartition], group: object) -> float:
        """Runs on the committer thread; librdkafka releases the GIL while it waits on the broker."""
        self.producer.send_offsets_to_transaction(offsets, group, 30)
        self.producer.commit_transaction(60)
        return time.monotonic()

    def _settle(self, newer: Batch | None = None) -> bool:
        """Wait for the batch in flight to commit. False if it aborted: it and `newer` (transformed
        after it, from the offsets that follow) were rewound and will be read again."""
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return True
        assert batch.commit is not None
        try:
            committed = batch.commit.result()
        except KafkaException as exc:
            self._abort(exc, batch, newer)
            return False
        for source, offset in batch.last.items():
            replayed = self._replay.get(source)
            if replayed is not None and offset >= replayed.through:
                del self._replay[source]  # past what showed: processed as usual from here
        self._totals.update(batch.result.counts)
        self._observe(batch, committed)
        return True

    def _abort(self, exc: KafkaException, batch: Batch, newer: Batch | None = None) -> None:
        """Abort the open transaction and rewind: chain heads to before `batch`, and every partition
        to its first offset in `batch` (or in `newer` where `batch` had none)."""
        error = exc.args[0]
        if not error.txn_requires_abort() and not error.retriable():
            log.error("fatal Kafka error: exiting so the orchestrator restarts the worker",
                      extra={"code": error.name()})
            raise exc
        events = len(batch.events) + (len(newer.events) if newer else 0)
        log.warning("transaction aborted: rewinding the batch", extra={"code": error.name(), "events": events})
        self.producer.abort_transaction(30)
        self.pipeline.chains.restore(batch.snapshot)
        rewind = {**(newer.first if newer else {}), **batch.first}
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        rewound = [TopicPartition(topic, partition, offset) for (topic, partition), offset in rewind.items()
                   if (topic, partition) in assigned]  # a revoked partition restarts from the committed offset
        for tp in rewound:
            self.consumer.seek(tp)
        # a broker that shows aborted records (the embedded Tansu) shows part of this batch: take the
        # chain heads from what shows and replay without repeating it (on Kafka nothing shows)
        self._recover(self.consumer, rewound)
        metrics.ABORTS.inc()

    def _observe(self, batch: Batch, committed: float) -> None:
        """Metrics for one committed batch: outcomes, stage times, event latency, DEK cache."""
        for (topic, outcome), n in batch.result.counts.items():
            kind, _, reason = outcome.partition(":")
            metrics.EVENTS.labels(topic, kind).inc(n)
            if reason:
                metrics.DEAD_LETTERS.labels(topic, reason).inc(n)
        metrics.AUDITED.inc(sum(r.topic == self.config.audit_topic for r in batch.result.records))
        metrics.BATCHES.inc()
        started, processed, produced = batch.started, batch.processed, batch.produced
        metrics.STAGE_SECONDS.labels("process").observe(processed - started)
        metrics.STAGE_SECONDS.labels("produce").observe(produced - processed)
        metrics.STAGE_SECONDS.labels("commit").observe(committed - produced)
        metrics.BATCH_SECONDS.observe(committed - started)
        now_ms = time.time() * 1000
        latency = metrics.EVENT_LATENCY
        events = batch.events
        for e in events[::max(1, len(events) // metrics.LATENCY_SAMPLES_PER_BATCH)]:  # observe() costs ~1.4 us
            latency.observe(max(0.0, now_ms - e.timestamp_ms) / 1000)
        cache = self.pipeline.dek_cache
        hits, calls = cache.hits, cache.kms_calls
        metrics.DEK_CACHE.labels("hit").inc(hits - self._dek_seen[0])
        metrics.DEK_CACHE.labels("miss").inc(calls - self._dek_seen[1])
        self._dek_seen = (hits, calls)

    def _update_lag(self) -> None:
        """Consumer lag per assigned partition, from the high watermarks of the last fetches (no request)."""
        assignment = self.consumer.assignment()
        seen = set()
        for tp in self.consumer.position(assignment) if assignment else []:
            _, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset < 0 or high < 0:
                continue
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, high - tp.offset))
            seen.add(labels)
        for labels in self._lag_labels - seen:
            metrics.CONSUMER_LAG.remove(*labels)
        self._lag_labels = seen

    def _produce(self, record: OutRecord) -> None:
        partition = -1 if record.partition is None else record.partition
        while True:
            try:
                self.producer.produce(record.topic, record.value, record.key, partition=partition,
                                      headers=record.headers, timestamp=record.timestamp_ms)
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self.producer.poll(0.05)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [chain_key(tp.topic, tp.partition) for tp in partitions]
        heads, lost = self._recover(consumer, partitions)
        metrics.ASSIGNED.set(len(partitions))
        self.health.set("assignment", True)
        log.info("partitions assigned", extra={"partitions": sorted(keys),
                                               "chains_resumed": len(heads), "chains_restarted": len(lost)})

    def _recover(self, consumer: Consumer, partitions: list[TopicPartition]) -> tuple[dict[str, str], set[str]]:
        """Chain heads from the audit topic's tail, then what to replay (see `_plan_replay`)."""
        heads, lost = self.recovery.recover([chain_key(tp.topic, tp.partition) for tp in partitions])
        self.pipeline.chains.heads.update(heads)
        self.pipeline.chains.restarted |= lost
        self._plan_replay(consumer, partitions)
        return heads, lost

    def _plan_replay(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Find what a dead transaction left showing beyond each committed offset (see gateway.replay).

        Audit records come from the chain recovery's read of the audit topic; outputs from a read of
        the sanitized and dead-letter topics' tails (gateway.replay.OutputScan).
        """
        if not partitions:
            return
        starts: dict[tuple[str, int], int] = {}
        audited_through: dict[tuple[str, int], int] = {}
        fresh: set[tuple[str, int]] = set()
        for tp in consumer.committed(partitions, timeout=30):
            start = tp.offset if tp.offset >= 0 else consumer.get_watermark_offsets(tp, timeout=10)[0]
            source = (tp.topic, tp.partition)
            starts[source] = start
            last_audited = self.recovery.last_audited.get(chain_key(tp.topic, tp.partition), -1)
            if last_audited >= start:
                audited_through[source] = last_audited
            elif chain_key(tp.topic, tp.partition) not in self.pipeline.chains.heads:
                fresh.add(source)
        outputs = [t for p in self.plans if p.source_topic in {s for s, _ in starts}
                   for t in (p.sanitized_topic, p.dlq_topic)]
        published = self.output_scan.published(outputs, starts, fresh)
        for source, start in starts.items():
            self._replay.pop(source, None)
            if source in audited_through or source in published:
                self._replay[source] = ReplayedPartition(start, audited_through.get(source, -1),
                                                         published.get(source, set()))
        replaying = {f"{t}:{p}": {"from": r.start, "audited_through": r.audited_through, "published": len(r.published)}
                     for (t, p), r in sorted(self._replay.items()) if (t, p) in starts}
        if replaying:
            log.warning("a dead transaction's records show beyond the committed offset: replaying "
                        "those events without publishing or auditing them twice", extra={"partitions": replaying})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle()  # the batch in flight commits (or aborts) before its partitions go
        for tp in partitions:
            key = chain_key(tp.topic, tp.partition)
            self.pipeline.chains.heads.pop(key, None)
            self.pipeline.chains.restarted.discard(key)
            self._replay.pop((tp.topic, tp.partition), None)
        metrics.ASSIGNED.set(0)
        log.info("partitions revoked", extra={"partitions": sorted(chain_key(tp.topic, tp.partition)
                                                                   for tp in partitions)})

    def _log_status(self) -> None:
        totals = {f"{topic}|{outcome}": n for (topic, outcome), n in sorted(self._totals.items())}
        log.info("status", extra={"totals": totals, "kms_calls": self.pipeline.dek_cache.kms_calls
                                  if hasattr(self, "pipeline") else 0})

