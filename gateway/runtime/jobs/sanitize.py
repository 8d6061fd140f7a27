"""The sanitize job (`gateway run`): a consumer-group member that runs the pipeline over batches,
exactly once, on the shared transactional loop.

Why confluent-kafka and not a per-event faust agent on this path: the faust agent costs about
200 us of overhead per event (see docs/architecture.md, "Design choices"), ten times the whole transform. Here a
batch is consumed, transformed and published inside one Kafka transaction together with the
consumer offsets, so sanitized records, dead letters, audit events and progress commit atomically.
Each source partition's audit chain head rides in the metadata of its committed offset: a worker
taking the partition over reads the head back with the offset, before its first event.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import Message

from gateway.core.audit import committed_without_head, parse_head_metadata
from gateway.core.pipeline import Pipeline, RawEvent, dedup_topic, max_message_bytes
from gateway.core.pipeline.outcome import BatchCounts, OutcomeKind
from gateway.core.policy.plan import Plan, plan_retentions
from gateway.errors import GatewayError
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider
from gateway.keys.providers.local import keyring_kms
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.ops import metrics
from gateway.runtime import changelog, clients, consent
from gateway.runtime.changelog import ChangelogFollower
from gateway.runtime.instance import with_instance_id
from gateway.runtime.jobs import settle_heap, start_process
from gateway.runtime.keytopic import KeyTopic
from gateway.runtime.latency_trace import LatencyTrace
from gateway.runtime.registry import NewWriterIds, WriterSchemaLookup
from gateway.runtime.retention import RetentionSchedule, schedule_for
from gateway.runtime.stall import StallMonitor
from gateway.runtime.topics import ensure_topics, partition_counts
from gateway.runtime.transactional import AssignmentWait, Batch, Output, Source, TransactionalLoop
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.worker")
STATUS_EVERY_S = 10.0
LAG_EVERY_S = 5.0
WINDOWS_EVERY_S = 1.0  # how often idle partitions' ended quality windows are closed
FOLLOWER_CHECK = "key-topic"  # the readiness check of the key-topic follower (when the policy needs keys)


class SanitizeHandler:
    """The pipeline behind the loop's handler interface: chain heads and quality counters in with the
    committed offsets, records and the same state out with the next ones.

    A source whose re-identification risk is enforced is held: its events wait, per partition, until
    the partition's window ends (or holds max_held_events), and the offset committed meanwhile stays
    at the first held event, so a restart or rewind reads the window again. Then the window goes
    through the pipeline at once and its small classes are withheld."""

    def __init__(self, pipeline: Pipeline, dedup_log: ChangelogFollower | None = None,
                 new_writers: NewWriterIds | None = None, consent_log: ChangelogFollower | None = None) -> None:
        self.pipeline = pipeline
        self.dedup_log = dedup_log  # the duplicate filters follow what every worker commits
        self.consent_log = consent_log  # the consent table follows the consent topic
        self.new_writers = new_writers  # registry ids first met are looked up before their batch decodes
        self.next_offsets: dict[Source, int] = {}  # per open partition: where its committed offset goes next
        self.enforced: dict[str, tuple[int, int]] = getattr(pipeline, "enforced_windows", {})
        self.held: dict[Source, list[RawEvent]] = {}
        self.held_since: dict[Source, int] = {}  # when the partition's first held event arrived (ms)
        self.touched: set[Source] = set()  # partitions the batch's slices so far touched (their metadata)

    def open(self, source: Source, committed_offset: int, metadata: str | None) -> None:
        self.pipeline.resume_chain(*source, parse_head_metadata(metadata),
                                   fresh=committed_offset < 0 or committed_without_head(metadata))
        self.pipeline.resume_quality(*source, committed_quality(metadata))
        if committed_offset >= 0:
            self.next_offsets[source] = committed_offset

    def close(self, sources: Sequence[Source]) -> None:
        self.pipeline.discard_batch()  # closed mid-batch: the loop rewinds what its slices held
        self.touched.clear()
        for topic, partition in sources:
            self.pipeline.forget_chain(topic, partition)
            self.next_offsets.pop((topic, partition), None)
            self.held.pop((topic, partition), None)  # read again from the committed offset
            self.held_since.pop((topic, partition), None)
        self.pipeline.forget_quality(sources)

    def process(self, messages: list[Message]) -> Output:
        if self.dedup_log is not None:
            self.pipeline.apply_dedup_log(self.dedup_log.poll(10_000))
        if self.consent_log is not None and self.pipeline.consent is not None:  # changes fetched so far decide
            consent.follow(self.pipeline.consent, self.consent_log)
        events = [RawEvent(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(), m.headers())
                  for m in messages]
        if self.new_writers is not None:
            self.new_writers.resolve(events)
        if not self.enforced:
            result = self.pipeline.process(events, finish=False)
            self._advance(events)
            self.touched.update((e.topic, e.partition) for e in events)
            return Output(result.records, counts=result.counts)
        now_ms = int(time.time() * 1000)
        plain = [e for e in events if e.topic not in self.enforced]
        for e in events:
            if e.topic in self.enforced:
                self.held.setdefault((e.topic, e.partition), []).append(e)
                self.held_since.setdefault((e.topic, e.partition), now_ms)
        result = self.pipeline.process(plain, finish=False)
        self._advance(plain)
        records, counts = result.records, result.counts
        released = self._release_due(now_ms, records, counts)
        touched = {(e.topic, e.partition) for e in events} | set(released)
        self.touched |= touched
        return Output(records, offsets=self._offsets(touched), counts=counts)

    def before_publish(self) -> Output:
        """The batch's audit records (one per chain for all its slices), its new subject keys stored and
        read back, and the metadata of every partition it touched, read after them (the chain heads)."""
        records = self.pipeline.finish_batch()
        touched, self.touched = self.touched, set()
        return Output(records, self._metadata(touched))

    def _advance(self, events: Sequence[RawEvent]) -> None:
        for e in events:
            self.next_offsets[(e.topic, e.partition)] = e.offset + 1

    def _metadata(self, sources: Iterable[Source]) -> dict[Source, str]:
        return {s: m for s in sources if (m := self.pipeline.commit_metadata(*s)) is not None}

    def _offsets(self, sources: Iterable[Source]) -> dict[Source, int]:
        """A held partition's offset stays at its first held event; the others move past what was published."""
        return {s: self.held[s][0].offset if s in self.held else self.next_offsets[s]
                for s in sources if s in self.held or s in self.next_offsets}

    def _release_due(self, now_ms: int, records: list[Any], counts: BatchCounts) -> list[Source]:
        """Held windows that ended (or filled up) go through the pipeline, small classes withheld."""
        due = [s for s, since in self.held_since.items()
               if now_ms >= since + self.enforced[s[0]][0] or len(self.held[s]) >= self.enforced[s[0]][1]]
        for source in due:
            events = self.held.pop(source)
            result = self.pipeline.process(events, withhold_since_ms=self.held_since.pop(source), finish=False)
            self._advance(events)
            records += result.records
            counts.update(result.counts)
        return due

    def roll_idle_windows(self, owned: set[Source]) -> Output | None:
        """Quality windows that ended on partitions with no event since, and held windows due: their
        records, committed with the reset counters at the partitions' offsets (a timer's transaction)."""
        records: list[Any] = []
        counts = BatchCounts()
        released = self._release_due(int(time.time() * 1000), records, counts) if self.held else []
        due = [s for s in self.pipeline.windows_due(int(time.time() * 1000))
               if s in owned and s in self.next_offsets and s not in self.held]
        records += self.pipeline.roll_windows(due)
        touched = set(due) | set(released)
        if not touched:
            return None
        self.touched |= touched  # their metadata comes with before_publish, after the audit records
        return Output(records, offsets=self._offsets(touched), counts=counts)


def observe_quality_window(window: dict[str, Any]) -> None:
    """Gauges from a committed quality record: completeness per field, and the risk figures."""
    source, partition = window["source"], str(window["partition"])
    metrics.QUALITY_WINDOWS.labels(source).inc()
    for name, entry in window.get("completeness", {}).items():
        metrics.QUALITY_COMPLETENESS.labels(source, partition, name).set(entry["rate"])
    risk = window.get("risk")
    if risk is not None:
        metrics.RISK_K.labels(source, partition).set(risk["k"])
        metrics.RISK_BELOW_K.labels(source, partition).set(risk["below_k_share"])


def committed_quality(metadata: str | None) -> Any:
    """The quality counters in a partition's committed metadata (None: none, or not ours)."""
    if not metadata:
        return None
    try:
        body = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return None
    return body.get("quality") if isinstance(body, dict) else None


class Worker:
    def __init__(self, config: GatewayConfig, plans: Sequence[Plan], keyring: Keyring,
                 pipeline_factory: Callable[[int], Pipeline] | None = None,
                 kms: KmsProvider | None = None, *, tokenizers: Mapping[str, DomainTokenizer]) -> None:
        """`pipeline_factory(audit_partitions)` replaces the sanitize pipeline (the benchmark's
        passthrough uses it to measure this exact loop with no transform). `tokenizers` are given
        (gateway.app.tokenizers) and passed on to the pipeline, which never builds them."""
        self.config = with_instance_id(config, "sanitize")
        self._pipeline_factory = pipeline_factory
        self._kms = kms  # already checked by the caller: not probed a second time
        self._tokenizers = tokenizers
        self.plans = plans
        self.keyring = keyring
        self.health = metrics.Health()
        self._stop = False
        self._totals: Counter[tuple[str, str]] = Counter()
        self._dek_seen = (0, 0)  # (hits, KMS calls) already added to the metrics
        self._lag_labels: set[tuple[str, str]] = set()
        self.key_topic: KeyTopic | None = None
        self.failed_follower: str | None = None  # set when a state follower died: the worker stops
        self.retention: RetentionSchedule | None = None
        self.trace = LatencyTrace(self.config.latency_trace) if self.config.latency_trace else None

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        if not self._stop:
            log.info("stopping: finishing the batch in flight", extra={"signal": signum})
        self._stop = True

    def _build_pipeline(self, audit_partitions: int) -> Pipeline:
        if self._pipeline_factory is not None:
            return self._pipeline_factory(audit_partitions)
        subject_keys = None
        # per-subject keys: for fields encrypted per subject, and to seal the dead letters whose subject
        # can be read under that subject's key (so `gateway forget` erases them too); period keys for
        # fields with a retention live in the same key topic
        if any(p.per_subject or p.subject_domain is not None or plan_retentions(p) for p in self.plans):
            kms = self._kms if self._kms is not None else keyring_kms(self.config.kms_settings(), self.keyring)
            self._kms = kms
            subject_keys = SubjectKeys(kms, self.config.dek_max_uses)
            self.key_topic = KeyTopic(self.config, subject_keys, on_failure=self._follower_died)
            self.health.set(FOLLOWER_CHECK, True)
        return Pipeline(self.plans, self.keyring, self.config, audit_partitions, self._tokenizers,
                        kms=self._kms, subject_keys=subject_keys)

    def run(self) -> int:
        config = self.config
        start_process(config, self.health, self.request_stop)
        counts = ensure_topics(self.plans, config)
        self.pipeline = self._build_pipeline(counts[config.audit_topic])
        self.retention = schedule_for(config, self.plans, self.key_topic.keys.periods if self.key_topic else None)
        self.handler = SanitizeHandler(self.pipeline, self._follow_dedup_log(), self._new_writer_ids(),
                                       self._follow_consent())
        self.stall = StallMonitor(config, config.group_id, "sanitize", self.health).start()
        consumer = clients.group_consumer(
            config, config.group_id, config.instance_id,
            # backpressure: the fetch queue is bounded, and the loop produces a batch only after the
            # previous one committed (two batches at most in hand), so a slow KMS or broker slows consumption
            **{"queued.max.messages.kbytes": config.fetch_queue_kbytes,
               # a fetch returns as soon as data is there, so this bounds only an idle fetch: 5 ms
               # (as before) cost the broker 0.35 cores per idle worker in fetch requests, with no
               # gain in latency (benchmarks/bench.py)
               "fetch.wait.max.ms": 100})
        producer = clients.transactional_producer(config, f"{config.group_id}-{config.instance_id}",
                                                  **{"message.max.bytes": max_message_bytes(config),
                                                     "compression.type": config.output_compression})
        self.loop = TransactionalLoop("sanitize", consumer, producer, self.handler, self.pipeline.source_topics,
                                      config.batch_max_events, config.batch_timeout_s, overlap=True,
                                      slice_s=config.batch_slice_s,
                                      on_committed=self._observe, on_assignment=self._assigned,
                                      assignment_wait=self._assignment_wait())
        self.probe = self._health_probe().start()
        self.loop.start()
        log.info("worker started", extra={"group_id": config.group_id, "instance": config.instance_id,
                                          "source_topics": self.pipeline.source_topics,
                                          "audit_topic": config.audit_topic})
        settle_heap()
        next_status = time.monotonic() + STATUS_EVERY_S
        next_lag = time.monotonic() + LAG_EVERY_S
        next_windows = time.monotonic() + WINDOWS_EVERY_S
        try:
            while not self._stop:
                self.loop.step()
                self.health.beat()
                now = time.monotonic()
                if now >= next_windows:
                    self._roll_idle_windows()
                    if self.retention is not None:  # erases the period keys past their retention, on its thread
                        self.retention.tick(self.loop.owned)
                    next_windows = now + WINDOWS_EVERY_S
                if now >= next_lag:
                    self._update_lag()
                    next_lag = now + LAG_EVERY_S
                if now >= next_status:
                    self._log_status()
                    next_status = now + STATUS_EVERY_S
        finally:
            self.probe.stop()
            self.stall.stop()
            self.health.stop()
            self.loop.close()
            if self.retention is not None:
                self.retention.close()
            if self.key_topic is not None:
                self.key_topic.close()
            for follower in (self.handler.dedup_log, self.handler.consent_log):
                if follower is not None:
                    follower.close()
            self._log_status()
            if self.trace is not None:
                self.trace.close()
            log.info("worker stopped")
        if self.failed_follower is not None:
            raise GatewayError(f"the key-topic follower died ({self.failed_follower}): the worker stopped, so that "
                               "it does not go on with keys it no longer updates; started again (by `--processes`' "
                               "supervisor or the orchestrator) it restores them from the key topic")
        return 0

    def _follower_died(self, failure: str) -> None:
        """A state follower's thread died: not ready from now on, and stop after the batch in flight."""
        self.failed_follower = failure
        self.health.set(FOLLOWER_CHECK, False)
        self._stop = True

    def _follow_consent(self) -> ChangelogFollower | None:
        """Consent purposes: the consent topic restored into the pipeline's table before the first event
        (read_committed, to its end), then followed before every batch."""
        if not getattr(self.pipeline, "asks_consent", False) and getattr(self.pipeline, "consent_intake", None) is None:
            return None
        started = time.monotonic()
        table, follower = consent.restore_table(self.config)
        self.pipeline.consent = table
        log.info("consent table restored", extra={"subjects": len(table),
                                                  "seconds": round(time.monotonic() - started, 3)})
        return follower

    def _new_writer_ids(self) -> NewWriterIds | None:
        stages = getattr(self.pipeline, "stages", {})
        if not self.config.schema_registry_url or not any(s.plan.schema_id_from_registry for s in stages.values()):
            return None
        return NewWriterIds(list(stages.values()), WriterSchemaLookup(self.config.schema_registry_url).registered)

    def _follow_dedup_log(self) -> ChangelogFollower | None:
        """Duplicate detection: the fingerprint log every worker of the group writes, read to its end
        (read_committed) before the first event, then followed. Kept for twice the longest horizon."""
        if not getattr(self.pipeline, "checks_duplicates", False):
            return None
        kafka = self.config.kafka_client_config()
        horizon_ms = max(p.quality.duplicates.horizon_ms for p in self.plans
                         if p.quality is not None and p.quality.duplicates is not None)
        topic = dedup_topic(self.config)
        changelog.ensure_changelog(kafka, topic, 1, {"cleanup.policy": "delete", "retention.ms": str(2 * horizon_ms),
                                                     "segment.ms": str(max(60_000, horizon_ms // 4))})
        started = time.monotonic()
        records, follow_from = changelog.restore(kafka, topic)
        self.pipeline.apply_dedup_log((r.key, r.value) for r in records)
        log.info("duplicate filter restored", extra={"records": len(records),
                                                     "seconds": round(time.monotonic() - started, 3)})
        return ChangelogFollower(kafka, topic, follow_from, group_id=f"{self.config.group_id}.dedup-follower")

    def _roll_idle_windows(self) -> None:
        """Close the quality windows of partitions that had no event since their window ended."""
        if not getattr(self.pipeline, "has_quality", False) or not self.loop.settle():
            return  # the batch in flight aborted: everything reopens from the committed state
        output = self.handler.roll_idle_windows(self.loop.opened & self.loop.owned)
        if output is not None and not self.loop.commit_now(output):  # committed: _observe reads its records
            log.warning("quality window records aborted: the windows reopen from the committed counters", extra={})

    def _assignment_wait(self) -> AssignmentWait:
        """The first assignment can wait a session timeout (a dead member still in the group) or the
        fencing of the previous run's transactions: logged with the group's state until it comes."""
        admin = clients.admin(self.config)
        group_id = self.config.group_id

        def describe() -> Future[Any]:
            return admin.describe_consumer_groups([group_id], request_timeout=5)[group_id]

        return AssignmentWait("sanitize", group_id, self.config.session_timeout_ms, describe)

    def _assigned(self, owned: set[Source]) -> None:
        metrics.ASSIGNED.set(len(owned))
        self.health.set("assignment", True)
        self.stall.set_owned(owned)

    def _health_probe(self) -> metrics.HealthProbe:
        """Kafka: the cluster answers a metadata request. KMS: the provider's own health call
        (the local keyring is always healthy; AWS and Vault make a cheap request)."""
        admin = clients.admin(self.config)
        kms = self._kms if self._kms is not None else self.keyring
        return metrics.HealthProbe(self.health, {"kafka": lambda: bool(partition_counts(admin, timeout=5)),
                                                 "kms": kms.healthy})

    def _observe(self, batch: Batch, committed: float) -> None:
        """Metrics for one committed batch: outcomes, stage times, event latency, DEK cache."""
        counts = batch.output.counts
        for (topic, path, entity), n in counts.leaks.items():
            metrics.LEAKS.labels(topic, path, entity).inc(n)
        for (topic, purpose, decision), n in counts.purposes.items():
            metrics.PURPOSE_EVENTS.labels(topic, purpose, decision.value).inc(n)
        for (topic, path), n in counts.unannotated.items():  # a writer field the policy lacks
            metrics.UNANNOTATED_FIELDS.labels(topic, path).inc(n)
        for (topic, rule, action), n in counts.quality.items():
            metrics.QUALITY_FAILURES.labels(topic, rule, action).inc(n)
        audited = 0  # every event has one (topic, outcome) count and one audit entry
        for (topic, outcome), n in counts.outcomes.items():
            self._totals[(topic, outcome.wire)] += n
            audited += n
            metrics.EVENTS.labels(topic, outcome.kind.value).inc(n)
            if outcome.kind is OutcomeKind.REJECTED:
                metrics.DEAD_LETTERS.labels(topic, outcome.reason).inc(n)
        metrics.AUDITED.inc(audited)
        quality_topic = self.config.quality_topic
        for r in batch.output.records:
            if r.topic == quality_topic:
                observe_quality_window(orjson.loads(r.value))
        metrics.BATCHES.inc()
        started, processed, settled, produced = batch.started, batch.processed, batch.settled, batch.produced
        metrics.STAGE_SECONDS.labels("process").observe(batch.process_s)  # every slice's, not only the last
        metrics.STAGE_SECONDS.labels("wait").observe(settled - processed)
        metrics.STAGE_SECONDS.labels("produce").observe(produced - settled)
        metrics.STAGE_SECONDS.labels("commit").observe(committed - produced)
        metrics.BATCH_SECONDS.observe(committed - started)
        # the batch's start and its commit on the event timestamps' clock: this runs only once the next
        # batch was consumed and processed (the commits overlap), and measuring from now counted that too
        wall_ms = time.time() * 1000 - time.monotonic() * 1000
        started_ms, committed_ms = started * 1000 + wall_ms, committed * 1000 + wall_ms
        latency, queued = metrics.EVENT_LATENCY, metrics.EVENT_QUEUED
        messages = batch.messages
        for m in messages[::max(1, len(messages) // metrics.LATENCY_SAMPLES_PER_BATCH)]:  # observe() costs ~1.4 us
            stamp = m.timestamp()[1]
            latency.observe(max(0.0, committed_ms - stamp) / 1000)
            queued.observe(max(0.0, started_ms - stamp) / 1000)
        if self.trace is not None and batch.messages:
            self.trace.write(batch, committed, self.key_topic.read_backs if self.key_topic is not None else ())
        cache = self.pipeline.dek_cache
        hits, calls = cache.hits, cache.kms_calls
        metrics.DEK_CACHE.labels("hit").inc(hits - self._dek_seen[0])
        metrics.DEK_CACHE.labels("miss").inc(calls - self._dek_seen[1])
        self._dek_seen = (hits, calls)

    def _update_lag(self) -> None:
        """Consumer lag per assigned partition, from the high watermarks of the last fetches (no request)."""
        consumer = self.loop.consumer
        assignment = consumer.assignment()
        seen = set()
        for tp in consumer.position(assignment) if assignment else []:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset < 0 or high < 0:
                continue
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, high - tp.offset))
            seen.add(labels)
        for labels in self._lag_labels - seen:
            metrics.CONSUMER_LAG.remove(*labels)
        self._lag_labels = seen

    def _log_status(self) -> None:
        totals = {f"{topic}|{outcome}": n for (topic, outcome), n in sorted(self._totals.items())}
        log.info("status", extra={"totals": totals, "kms_calls": self.pipeline.dek_cache.kms_calls
                                  if hasattr(self, "pipeline") else 0})
