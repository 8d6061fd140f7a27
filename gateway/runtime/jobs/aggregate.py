"""`gateway aggregate`: the two DP stages on Kafka, with confluent-kafka and explicit per-partition state.

Stage 1 (consumer group ``<group_id>.dp-bound``) reads the *sanitized* topics of every schema that
declares aggregates. They are keyed by the subject token, so a subject's events share a partition
and one ContributionBounder per partition enforces the bounds. Accepted contributions go to the
internal topic ``<group_id>.dp-contributions``, keyed by (aggregate, window, group); the bounders'
state changes go to the compacted ``<group_id>.dp-bound-state``; contributions, state changes and
input offsets commit in one Kafka transaction, and a worker taking over a partition restores its
bounder from that changelog first (so moving a partition mid-window does not reset anyone's bound).

Stage 2 (consumer group ``<group_id>.dp-release``) reads the contributions, sums per group and
window, and at window close adds noise (OpenDP, once per group), selects keys, and publishes in one
transaction: the releases (``<source_topic>.aggregates``), the ledger entry, an audit event, and the
input offsets. It commits only up to the first contribution of a window still open, so after a crash
or rebalance the new owner re-reads what it needs; contributions of windows the ledger shows released
are skipped.

Why not faust: the state here is small and explicit, the exactly-once plumbing (transactions with
offsets) is the same as the sanitize worker's, and faust's per-event agent costs ~200 us per event.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from collections.abc import Sequence
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from gateway import metrics
from gateway.audit import ChainHeads, audit_partition, seal_audit_event
from gateway.config import GatewayConfig
from gateway.consume import SanitizedDecoder, StoredRecord
from gateway.dp.bound_store import STATE_CONFIG, load_state, state_records
from gateway.dp.bounding import ACCEPTED, LATE, Contribution, ContributionBounder
from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import Charge, Ledger, LedgerEntry
from gateway.dp.ledger_store import LedgerFollower, ensure_ledger_topic, read_ledger
from gateway.dp.mechanisms import AggregateMechanism
from gateway.dp.testmode import NoNoise
from gateway.dp.windows import GroupWindows, WindowKey, WindowState
from gateway.errors import ConfigError
from gateway.pipeline import OutRecord
from gateway.policy import Plan
from gateway.topics import admin_client, create_topics, ensure_topics, partition_counts
from gateway.worker import ChainRecovery

log = logging.getLogger("gateway.aggregate")
COMMIT_EVERY_S = 1.0


def contributions_topic(config: GatewayConfig) -> str:
    return f"{config.group_id}.dp-contributions"


def bound_state_topic(config: GatewayConfig) -> str:
    return f"{config.group_id}.dp-bound-state"


class Releaser:
    """Stage 2's release step for one closed window: ledger check, noise, records. No Kafka I/O."""

    def __init__(self, config: GatewayConfig, mechanisms: dict[str, AggregateMechanism], ledger: Ledger,
                 audit_partitions: int, chains: ChainHeads) -> None:
        self.config = config
        self.mechanisms = mechanisms
        self.ledger = ledger
        self.audit_partitions = audit_partitions
        self.chains = chains

    def release(self, key: WindowKey, state: WindowState, now_ms: int
                ) -> tuple[list[OutRecord], LedgerEntry | None, str]:
        """Records to publish for a closed window, the ledger entry they charge, and the outcome."""
        aggregate, window_start, partition = key
        mech = self.mechanisms[aggregate]
        spec = mech.spec
        out: list[OutRecord] = []
        refusal = None if mech.no_noise else self.ledger.check(spec, window_start, partition)
        entry = None
        groups = []
        if refusal is None:
            groups = mech.release(state.counts, state.sums if spec.metric != "count" else None)
            for g in groups:
                record = mech.record(g, window_start, now_ms)
                record["instance"] = self.config.instance_id
                out.append(OutRecord(spec.output_topic, f"{spec.id}|{window_start}|{g.group}".encode(),
                                     orjson.dumps(record), [("gateway-aggregate", spec.id.encode())]))
            if not mech.no_noise:
                entry = LedgerEntry.for_release(spec, window_start, partition, len(groups), now_ms,
                                                self.config.instance_id)
                out.append(OutRecord(self.config.ledger_topic, entry.key, entry.to_json(), None, 0))
        outcome = "released" if refusal is None else f"refused:{refusal}"
        audit = {
            "type": "dp_release", "chain": f"dp-release:{aggregate}:{partition}", "aggregate": spec.id,
            "window": {"start": window_start, "end": window_start + spec.window_ms}, "partition": partition,
            "outcome": outcome, "groups_released": len(groups), "mechanism": mech.mechanism,
            "epsilon": None if mech.no_noise or refusal else spec.epsilon,
            "delta": None if mech.no_noise or refusal else spec.delta,
            "output": {"topic": spec.output_topic}, "ledger": {"topic": self.config.ledger_topic},
            "instance": self.config.instance_id, "time": now_ms,
        }
        out.append(self.audit_record(audit))
        return out, entry, outcome

    def audit_record(self, body: dict[str, Any], chains: ChainHeads | None = None) -> OutRecord:
        chains = chains or self.chains
        key = body["chain"]
        prev, restart = chains.next_prev(key)
        if restart:
            body["chain_restart"] = True
            chains.restarted.discard(key)
        sealed = seal_audit_event(body, prev)
        chains.heads[key] = sealed["hash"]
        return OutRecord(self.config.audit_topic, key.encode(), orjson.dumps(sealed), None,
                         audit_partition(key, self.audit_partitions))


class AggregateWorker:
    def __init__(self, config: GatewayConfig, plans: Sequence[Plan], no_noise: NoNoise | None = None) -> None:
        self.config = config
        self.plans = [p for p in plans if p.aggregates]
        if not self.plans:
            raise ConfigError(f"no schema in '{config.schemas}' declares aggregates (record-level "
                              "\"privacy\": {\"aggregates\": [...]})")
        self.specs: dict[str, AggregateSpec] = {a.id: a for p in self.plans for a in p.aggregates}
        # measurements built once, here; releasing only applies them
        self.mechanisms = {sid: AggregateMechanism(spec, no_noise) for sid, spec in self.specs.items()}
        self.by_sanitized = {p.sanitized_topic: p for p in self.plans}
        self.decoder = SanitizedDecoder(self.plans)
        self.contrib_topic = contributions_topic(config)
        self.state_topic = bound_state_topic(config)
        self.state_partitions = 1
        self.bounders: dict[tuple[str, int], ContributionBounder] = {}
        self.windows = GroupWindows(self.specs, int(config.dp_idle_close_s * 1000))
        self.next_offsets: dict[int, int] = {}
        self.counts: Counter[str] = Counter()
        self.bound_chains = ChainHeads()
        self.release_chains = ChainHeads()
        self.pending_audit: list[OutRecord] = []
        self._stop = False
        self._dirty = False
        self.health = metrics.Health(checks=("kafka", "assignment"))
        for mech in self.mechanisms.values():
            log.info("aggregate compiled", extra=mech.describe())

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        self._stop = True

    # ---- set-up ----------------------------------------------------------------------------------
    def _ensure_topics(self) -> int:
        counts = ensure_topics(self.plans, self.config)
        admin = admin_client(self.config.kafka_client_config())
        wanted = {self.contrib_topic: self.config.partitions}
        for spec in self.specs.values():
            wanted.setdefault(spec.output_topic, self.config.partitions)
        # one changelog partition per input partition number (of the widest sanitized topic)
        wanted[self.state_topic] = max(counts.get(t, self.config.partitions) for t in self.by_sanitized)
        existing = partition_counts(admin)
        missing = {t: n for t, n in wanted.items() if t not in existing}
        if missing and not self.config.create_topics:
            raise ConfigError(f"setting 'create_topics' is off and these topics do not exist: "
                              f"{', '.join(sorted(missing))}")
        if missing:
            create_topics(admin, missing, configs={self.state_topic: STATE_CONFIG})
        self.state_partitions = partition_counts(admin)[self.state_topic]
        ensure_ledger_topic(self.config.kafka_client_config(), self.config.ledger_topic)
        return counts[self.config.audit_topic]

    def _producer(self, role: str) -> Producer:
        producer = Producer({**self.config.kafka_client_config(),
                             "transactional.id": f"{self.config.group_id}-dp-{role}-{self.config.instance_id}",
                             "enable.idempotence": True, "linger.ms": 5, "transaction.timeout.ms": 60_000})
        producer.init_transactions(30)
        return producer

    def _consumer(self, role: str) -> Consumer:
        return Consumer({
            **self.config.kafka_client_config(), "group.id": f"{self.config.group_id}.dp-{role}",
            "client.id": f"{self.config.instance_id}-{role}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
            "session.timeout.ms": self.config.session_timeout_ms,
            "heartbeat.interval.ms": max(500, self.config.session_timeout_ms // 5),
        })

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if self.config.metrics_port:
            metrics.serve(self.config.metrics_port, self.health, self.config.metrics_host)
        audit_partitions = self._ensure_topics()
        admin = admin_client(self.config.kafka_client_config())
        probe = metrics.HealthProbe(self.health, {"kafka": lambda: bool(partition_counts(admin, timeout=5))}).start()
        self.ledger, follow_from = read_ledger(self.config.kafka_client_config(), self.config.ledger_topic)
        self.follower = LedgerFollower(self.config.kafka_client_config(), self.config.ledger_topic, self.ledger,
                                       follow_from)
        self.releaser = Releaser(self.config, self.mechanisms, self.ledger, audit_partitions, self.release_chains)
        self.audit_partitions = audit_partitions
        self.recovery = ChainRecovery(self.config, audit_partitions)
        self.bound_producer = self._producer("bound")
        self.release_producer = self._producer("release")
        self.bound = self._consumer("bound")
        self.release = self._consumer("release")
        self.bound.subscribe(sorted(self.by_sanitized), on_assign=self._on_assign_bound,
                             on_revoke=self._on_revoke_bound, on_lost=self._on_revoke_bound)
        self.release.subscribe([self.contrib_topic], on_assign=self._on_assign_release,
                               on_revoke=self._on_revoke_release, on_lost=self._on_revoke_release)
        log.info("aggregate worker started", extra={"group_id": self.config.group_id,
                                                    "instance": self.config.instance_id,
                                                    "aggregates": sorted(self.specs),
                                                    "ledger_entries": len(self.ledger.entries)})
        next_commit = time.monotonic() + COMMIT_EVERY_S
        try:
            while not self._stop:
                self.health.beat()
                self._stage1(self.bound.consume(self.config.batch_max_events, 0.05))
                self._stage2(self.release.consume(self.config.batch_max_events, 0.05))
                self.follower.poll()
                due = self.windows.due(_now_ms())
                if due or self.pending_audit or (self._dirty and time.monotonic() >= next_commit):
                    self._release(due)
                    next_commit = time.monotonic() + COMMIT_EVERY_S
        finally:
            probe.stop()
            self.health.stop()
            self.bound.close()
            self.release.close()
            self.follower.close()
            log.info("aggregate worker stopped", extra={"counts": dict(self.counts)})
        return 0

    # ---- stage 1 ---------------------------------------------------------------------------------
    def _stage1(self, messages: list[Any]) -> None:
        out: list[OutRecord] = []
        last: dict[tuple[str, int], int] = {}
        decisions: Counter[tuple[str, str]] = Counter()  # (aggregate, outcome): metrics once per batch
        for m in messages:
            if m.error() is not None:
                if m.error().fatal():
                    raise KafkaException(m.error())
                continue
            last[(m.topic(), m.partition())] = m.offset()
            plan = self.by_sanitized[m.topic()]
            if m.key() is None:
                self.counts["no_subject"] += 1
                continue
            try:
                _, record = self.decoder.decode(StoredRecord(m.topic(), m.partition(), m.offset(), m.key(),
                                                             m.value(), dict(m.headers() or [])))
            except Exception as exc:  # never log the value
                log.warning("cannot decode a sanitized record", extra={"topic": m.topic(), "error": type(exc).__name__})
                self.counts["undecodable"] += 1
                continue
            bounder = self.bounders.setdefault((m.topic(), m.partition()), ContributionBounder(plan.aggregates))
            for spec, outcome, contribution in bounder.offer(m.key().decode(), record, m.timestamp()[1]):
                decisions[(spec.id, outcome)] += 1
                if outcome == ACCEPTED and contribution is not None:
                    out.append(OutRecord(self.contrib_topic, contribution.partition_key, contribution.to_json()))
                elif outcome == LATE:
                    out.append(self._late_audit(self.bound_chains, f"dp-bound:{m.topic()}:{m.partition()}", spec,
                                                "bound", m.topic(), m.partition(), m.offset(), record,
                                                m.timestamp()[1]))
        for (aggregate, outcome), n in decisions.items():
            self.counts[f"stage1:{outcome}"] += n
            metrics.DP_CONTRIBUTIONS.labels(aggregate, outcome).inc(n)
        if not last:
            return
        for source, bounder in self.bounders.items():
            out += state_records(self.state_topic, self.state_partitions, source, bounder.drain_changes())
        self._transact(self.bound_producer, self.bound, out,
                       [TopicPartition(t, p, o + 1) for (t, p), o in last.items()])

    def _late_audit(self, chains: ChainHeads, chain: str, spec: AggregateSpec, stage: str, topic: str,
                    partition: int, offset: int, record: dict[str, Any] | None, timestamp: int,
                    window_start: int | None = None) -> OutRecord:
        if window_start is None:
            t = record.get(spec.time_field) if (record is not None and spec.time_field) else timestamp
            window_start = spec.window_start(int(t)) if isinstance(t, int) else None
        body = {"type": "dp_late", "chain": chain, "aggregate": spec.id, "stage": stage, "outcome": "late",
                "event": {"topic": topic, "partition": partition, "offset": offset},
                "window": None if window_start is None else {"start": window_start,
                                                             "end": window_start + spec.window_ms},
                "instance": self.config.instance_id, "time": _now_ms()}
        return self.releaser.audit_record(body, chains)

    # ---- stage 2 ---------------------------------------------------------------------------------
    def _stage2(self, messages: list[Any]) -> None:
        now = _now_ms()
        for m in messages:
            if m.error() is not None:
                if m.error().fatal():
                    raise KafkaException(m.error())
                continue
            p = m.partition()
            self.next_offsets[p] = m.offset() + 1
            self._dirty = True
            c = Contribution.from_json(m.value())
            spec = self.specs.get(c.aggregate)
            if spec is None:
                self.counts["stage2:unknown_aggregate"] += 1
                continue
            if (c.aggregate, c.window_start, p) not in self.windows.closed and \
                    self.ledger.released(c.aggregate, c.window_start, p):
                self.counts["stage2:already_released"] += 1  # re-read after a restart: released already
                self.windows.last_input_ms = now
                continue
            if self.windows.add(c, p, m.offset(), now):
                self.counts["stage2:added"] += 1
            else:
                self.counts["stage2:late"] += 1
                self.pending_audit.append(self._late_audit(
                    self.release_chains, f"dp-release:{c.aggregate}:{p}", spec, "release", m.topic(), p,
                    m.offset(), None, c.event_time, c.window_start))

    def _charge(self, due: list[WindowKey], now: int) -> None:
        """Commit a charge for each due window not yet charged and read them back: the ledger log's
        order, the same for every worker, decides which windows fit the period cap."""
        charges = []
        for aggregate, window_start, partition in due:
            mech = self.mechanisms[aggregate]
            if mech.no_noise or self.ledger.charged(aggregate, window_start, partition) or \
                    self.ledger.released(aggregate, window_start, partition):
                continue
            charges.append(Charge.for_release(mech.spec, window_start, partition, now, self.config.instance_id))
        if not charges:
            return
        self._transact(self.release_producer, self.release,
                       [OutRecord(self.config.ledger_topic, c.key, c.to_json(), None, 0) for c in charges], [])
        self.follower.wait_for({c.key for c in charges})

    def _release(self, due: list[WindowKey]) -> None:
        now = _now_ms()
        self._charge(due, now)
        out = list(self.pending_audit)
        entries: list[LedgerEntry] = []
        outcomes: Counter[str] = Counter()
        released: list[tuple[str, str, int]] = []
        for key in due:
            records, entry, outcome = self.releaser.release(key, self.windows.close(key), now)
            out += records
            outcomes[outcome] += 1
            released.append((key[0], outcome, sum(r.topic == self.specs[key[0]].output_topic for r in records)))
            if entry is not None:
                entries.append(entry)
        offsets = [TopicPartition(self.contrib_topic, p, self.windows.commit_offset(p, nxt))
                   for p, nxt in self.next_offsets.items()]
        self._transact(self.release_producer, self.release, out, offsets)
        for entry in entries:  # only once the transaction committed
            self.ledger.apply(entry)
            metrics.DP_EPSILON.labels(entry.aggregate).inc(entry.epsilon)
        for aggregate, outcome, groups in released:
            metrics.DP_RELEASES.labels(aggregate, outcome).inc()
            metrics.DP_GROUPS.labels(aggregate).inc(groups)
        self.pending_audit = []
        self._dirty = False
        self.windows.prune_closed()
        for outcome, n in outcomes.items():
            self.counts[f"windows:{outcome}"] += n
        if due:
            log.info("windows closed", extra={"outcomes": dict(outcomes), "ledger_entries": len(entries)})

    # ---- Kafka plumbing ------------------------------------------------------------------------
    def _transact(self, producer: Producer, consumer: Consumer, records: list[OutRecord],
                  offsets: list[TopicPartition]) -> None:
        """Publish and commit offsets atomically. Any failure exits the worker: the next owner of
        the partitions re-reads from the last committed offsets (state is rebuilt from them)."""
        try:
            producer.begin_transaction()
            for r in records:
                while True:
                    try:
                        producer.produce(r.topic, r.value, r.key, partition=-1 if r.partition is None
                                         else r.partition, headers=r.headers)
                        break
                    except BufferError:
                        producer.poll(0.05)
            if offsets:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        except KafkaException as exc:
            log.error("transaction failed: exiting so the partitions are re-read", extra={"code": exc.args[0].name()})
            raise

    def _recover(self, chains: ChainHeads, keys: list[str]) -> None:
        """Resume audit chains this worker takes over from the audit topic's tail."""
        heads, lost = self.recovery.recover(keys)
        chains.heads.update(heads)
        chains.restarted |= lost

    def _on_assign_bound(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.health.set("assignment", True)
        self._recover(self.bound_chains, [f"dp-bound:{tp.topic}:{tp.partition}" for tp in partitions])
        self._restore_bounders([(tp.topic, tp.partition) for tp in partitions])
        log.info("partitions assigned", extra={"stage": "bound", "partitions": [
            f"{tp.topic}:{tp.partition}" for tp in partitions]})

    def _restore_bounders(self, sources: list[tuple[str, int]]) -> None:
        """Rebuild the bounders of partitions this worker takes over, before it reads them."""
        started = time.monotonic()
        entries = load_state(self.config.kafka_client_config(), self.state_topic, self.state_partitions, sources)
        restored = 0
        for source, changes in entries.items():
            bounder = ContributionBounder(self.by_sanitized[source[0]].aggregates)
            restored += bounder.restore(changes)
            self.bounders[source] = bounder
        log.info("bounding state restored", extra={"partitions": len(sources), "entries": restored,
                                                    "seconds": round(time.monotonic() - started, 3)})

    def _on_revoke_bound(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.bounders.pop((tp.topic, tp.partition), None)
            self.bound_chains.heads.pop(f"dp-bound:{tp.topic}:{tp.partition}", None)

    def _on_assign_release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._recover(self.release_chains, [f"dp-release:{a}:{tp.partition}" for a in self.specs for tp in partitions])
        log.info("partitions assigned", extra={"stage": "release", "partitions": [tp.partition for tp in partitions]})

    def _on_revoke_release(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.windows.forget_partition(tp.partition)
            self.next_offsets.pop(tp.partition, None)


def _now_ms() -> int:
    return int(time.time() * 1000)


def describe_ledger(ledger: Ledger, specs: dict[str, AggregateSpec]) -> str:
    rows = ledger.summary(specs=specs)
    if not rows:
        return "ledger is empty"
    lines = []
    for r in rows:
        line = (f"{r['aggregate']}: {r['windows']} window(s), {r['releases']} release(s), "
                f"epsilon spent {r['epsilon_total']:g} (delta {r['delta_total']:g})")
        if "epsilon_cap" in r:
            line += (f"; latest {r['period_s']} s period: {r['epsilon_in_period']:g} of cap {r['epsilon_cap']:g}, "
                     f"remaining {r['epsilon_remaining']:g}")
        lines.append(line)
    return "\n".join(lines)


