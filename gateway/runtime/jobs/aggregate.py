"""`gateway aggregate`: the two DP stages, each a consumer group on the shared transactional loop.

Stage 1 (consumer group ``<group_id>.dp-bound``) reads the *sanitized* topics of every schema that
declares aggregates. They are keyed by the subject token, so a subject's events share a partition
and one ContributionBounder per partition enforces the bounds. Accepted contributions go to the
internal topic ``<group_id>.dp-contributions``, keyed by (aggregate, window, group); the bounders'
state changes go to the compacted ``<group_id>.dp-bound-state``; contributions, state changes and
input offsets commit in one Kafka transaction. When the loop opens a partition (after an assignment,
or after an abort rewound it to its committed offset) its bounder is rebuilt from that changelog
before its first event is bounded, and it is dropped when the partition closes: the state always
matches the committed offset it resumes from (so moving a partition mid-window does not reset
anyone's bound, and an aborted batch's state changes are never kept).

Stage 2 (consumer group ``<group_id>.dp-release``) reads the contributions and sums per group and
window. Every window of every aggregate closes on every owned partition on a wall-clock schedule,
whether or not anyone contributed (gateway/dp/windows.py). At close it draws the noise (OpenDP, once
per group) and key selection, commits the drawn values inside the window's ledger charge, reads the
charge back, and then publishes in one transaction what the charge holds: the releases
(``<source_topic>.aggregates``), the ledger entry, an audit event, and the input offsets. A retry
(abort, crash, rebalance) publishes the charge's values again, never a new draw. It commits only up
to the first contribution of a window still open, so after a crash, rebalance or abort the partition
is re-read from there and its windows rebuilt; contributions of windows the ledger shows released are
skipped.

Audit chains: ``dp-bound:<topic>:<partition>`` (stage 1's late events) and
``dp-release:<aggregate>:<partition>`` (stage 2's releases and late contributions). Each chain's
head rides in the offset-commit metadata of its partition, committed in the transaction that
publishes the chain's events, and is read back with the committed offset when the partition
opens: stage 1 as ``{"audit_head": ...}`` (gateway.core.audit.head_metadata), stage 2 as one object
``{"audit_heads": {<aggregate id>: head}}`` per contributions partition.

Both loops run on the job's one thread, stepped alternately; a timer between steps opens every owned
stage-2 partition (input or not), closes due windows and publishes their releases with
`TransactionalLoop.commit_now`.

Why not faust: the state here is small and explicit, the exactly-once plumbing (transactions with
offsets) is the sanitize job's, and faust's per-event agent costs ~200 us per event.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson
from confluent_kafka import Message

from gateway.core.audit import (
    AuditKeys,
    ChainHeads,
    audit_partition,
    head_metadata,
    parse_head_metadata,
    seal_audit_event,
)
from gateway.core.codec.encoding import SOURCE_HEADER
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord
from gateway.core.pipeline import parse_source_ref
from gateway.core.policy.plan import Plan
from gateway.dp.bound_store import STATE_CONFIG, Change, collect_change, state_partition, state_records
from gateway.dp.bounding import ACCEPTED, LATE, OUT_OF_RANGE, Contribution, ContributionBounder
from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import Charge, Ledger, LedgerEntry
from gateway.dp.mechanisms import AggregateMechanism, GroupResult
from gateway.dp.running import RunningRelease, RunningTotals
from gateway.dp.windows import GroupWindows, WindowKey, WindowState, close_time
from gateway.errors import ConfigError, GatewayError
from gateway.keys.keyring import Keyring
from gateway.ops import metrics
from gateway.outputs import OutRecord
from gateway.runtime import changelog, clients
from gateway.runtime.instance import with_instance_id
from gateway.runtime.jobs import settle_heap, start_process
from gateway.runtime.ledger import LedgerFollower, ensure_ledger_topic, read_ledger
from gateway.runtime.stall import StallMonitor
from gateway.runtime.topics import create_topics, ensure_topics, partition_counts
from gateway.runtime.transactional import Output, Source, TransactionalLoop
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.aggregate")
STEP_S = 0.05  # longest wait of each stage's consume: the two loops and the release timer take turns
# stage 2's offset-commit metadata (every aggregate's chain head) must stay well under the broker's
# offset.metadata.max.bytes (4096 by default): the job refuses to start with aggregates needing more
METADATA_LIMIT = 2048
NO_HEAD = orjson.dumps({"audit_head": None}).decode()  # stage 1, a chain without events yet
BOUND_STATE = "dp-bound-state"  # gateway_state_records_skipped_total{state}


def contributions_topic(config: GatewayConfig) -> str:
    return f"{config.group_id}.dp-contributions"


def bound_state_topic(config: GatewayConfig) -> str:
    return f"{config.group_id}.dp-bound-state"


def continual_topic(config: GatewayConfig) -> str:
    """Compacted: each continual aggregate's running-total counters (exact span sums: restricted)."""
    return f"{config.group_id}.dp-continual"


CONTINUAL_PARTITION = 0  # a continual aggregate's contributions all go to one stage-2 partition


def window_cost(spec: AggregateSpec, ledger: Ledger, paid: set[str] | None = None) -> tuple[float, float]:
    """What releasing one more window costs: the spec's (epsilon, delta); for a continual aggregate the
    horizon's epsilon once, charged with its first release, and nothing after (the tree's accounting
    covers every running total of the horizon; see gateway/dp/continual.py)."""
    if not spec.continual:
        return spec.epsilon, spec.delta
    if (paid is not None and spec.id in paid) or ledger.spent(aggregate=spec.id):
        return 0.0, 0.0
    return spec.epsilon, 0.0


def bound_chain(topic: str, partition: int) -> str:
    return f"dp-bound:{topic}:{partition}"


def release_chain(aggregate: str, partition: int) -> str:
    return f"dp-release:{aggregate}:{partition}"


def release_metadata(heads: dict[str, str]) -> str:
    """Stage 2's offset-commit metadata: the chain head of every aggregate on one partition."""
    value = orjson.dumps({"audit_heads": heads}, option=orjson.OPT_SORT_KEYS).decode()
    if len(value.encode()) > METADATA_LIMIT:
        raise GatewayError(f"the audit chain heads of {len(heads)} aggregates need {len(value.encode())} bytes of "
                           f"offset-commit metadata, more than {METADATA_LIMIT}")
    return value


def audit_keys_for(config: GatewayConfig) -> AuditKeys:
    """The audit MAC keys this job seals its records with: the sanitize workers' audit keys, from an
    audit export (gateway keys export --audit) or the keyring itself. This job holds no other key."""
    if not config.keyring.exists():
        raise ConfigError(f"no keyring at '{config.keyring}': the aggregate worker MACs its audit records with the "
                          "gateway's audit key. Give it the audit keys alone (gateway keys export --audit --out FILE, "
                          "then --keyring FILE)")
    return AuditKeys(*Keyring.open(config.keyring, create=False).audit_keys())


def _committed_field(metadata: str | None, name: str) -> tuple[bool, Any]:
    """(metadata is this job's JSON object holding `name`, its value)."""
    if not metadata:
        return False, None
    try:
        data = orjson.loads(metadata)
    except orjson.JSONDecodeError:
        return False, None
    if not isinstance(data, dict) or name not in data:
        return False, None
    return True, data[name]


def _upstream(headers: list[tuple[str, bytes]] | None) -> str:
    """The raw partition a sanitized record came from (its `gateway-source` header): "<topic>/<partition>"."""
    for name, value in headers or ():
        if name == SOURCE_HEADER and value:
            ref = parse_source_ref(value)
            if ref is not None:
                return f"{ref[0]}/{ref[1]}"
    return ""


def _is_head(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64


@dataclass(frozen=True)
class Release:
    """One closed window's outcome: what to publish, the ledger entry, and (continual) the counters."""

    records: list[OutRecord]
    entry: LedgerEntry | None
    outcome: str
    running_state: bytes | None = None  # a continual aggregate's counters once this commits


class Releaser:
    """Stage 2's release step for one closed window: ledger check, noise, records. No Kafka I/O."""

    def __init__(self, config: GatewayConfig, mechanisms: dict[str, AggregateMechanism], ledger: Ledger,
                 audit_partitions: int, chains: ChainHeads,
                 load_running: Callable[[], dict[bytes, bytes]] | None = None, *, audit_keys: AuditKeys) -> None:
        self.config = config
        self.audit_keys = audit_keys  # every audit record MACed (gateway.core.audit)
        self.mechanisms = mechanisms
        self.ledger = ledger
        self.audit_partitions = audit_partitions
        self.chains = chains
        self._load_running = load_running or dict
        self.running: dict[str, RunningTotals] = {}
        self.running_stale = True  # restored from the continual topic before the next release

    def restore_running(self) -> None:
        """Counters of the continual aggregates as last committed (their stage-2 partition just opened,
        or a rewind dropped what this worker had fed since)."""
        stored = self._load_running()
        self.running = {}
        for aggregate, mech in self.mechanisms.items():
            if mech.spec.continual:
                running = RunningTotals(mech.spec, mech.continual_counter)
                if aggregate.encode() in stored:
                    running.restore(stored[aggregate.encode()])
                self.running[aggregate] = running
        self.running_stale = False

    def running_of(self, aggregate: str) -> RunningTotals:
        """A continual aggregate's counters as last released (restored first if stale)."""
        if self.running_stale:
            self.restore_running()
        return self.running[aggregate]

    def adopt_running(self, aggregate: str, state: bytes) -> None:
        """After a release committed: its counters are the state drawn with its charge."""
        mech = self.mechanisms[aggregate]
        running = RunningTotals(mech.spec, mech.continual_counter)
        running.restore(state)
        self.running[aggregate] = running

    def draw(self, key: WindowKey, state: WindowState) -> dict[str, Any]:
        """The window's noisy values, drawn from OpenDP once: committed with its charge, before any
        release, so that every retry publishes these and never a second draw (gateway/dp/ledger.py).
        A continual aggregate's draw continues its last released counters, on a copy."""
        aggregate, window_start, _ = key
        mech = self.mechanisms[aggregate]
        spec = mech.spec
        if spec.continual:
            candidate = RunningTotals(spec, mech.continual_counter)
            candidate.restore(self.running_of(aggregate).state_json())
            releases = candidate.release(window_start, state)
            return {"releases": [[r.window_start, r.t, r.totals] for r in releases],
                    "state": candidate.state_json().decode()}
        groups = mech.release(state.counts, state.sums if spec.metric != "count" else None)
        return {"groups": [[g.group, g.noisy_count, g.noisy_sum] for g in groups]}

    def release(self, key: WindowKey, charge: Charge | None, state: WindowState, now_ms: int) -> Release:
        """Records to publish for a closed window (the values drawn with its charge), the ledger
        entry they pay with, and the outcome. Every field of a published record comes from the
        charge and the spec, so a retry publishes the same bytes."""
        aggregate, window_start, partition = key
        mech = self.mechanisms[aggregate]
        spec = mech.spec
        cost = (charge.epsilon, charge.delta) if charge is not None else window_cost(spec, self.ledger)
        refusal = self.ledger.check(spec, window_start, partition, cost)
        drawn = charge.drawn if charge is not None else None
        instance = charge.instance if charge is not None else self.config.instance_id
        released_at = close_time(spec, window_start)  # the schedule's time, not the data's
        out: list[OutRecord] = []
        entry, state_after, groups, windows_released = None, None, 0, 0
        if refusal is None:
            drawn = drawn if drawn is not None else self.draw(key, state)  # a charge of an older version
            if spec.continual:
                running = self.running_of(aggregate)
                releases = [RunningRelease(int(ws), int(t), {str(g): int(v) for g, v in totals.items()})
                            for ws, t, totals in drawn["releases"]]
                if not releases:
                    refusal = "already_released"
                for release in releases:
                    for group in spec.continual_groups:
                        record = running.record(release, group, released_at)
                        record["instance"] = instance
                        out.append(OutRecord(spec.output_topic, f"{spec.id}|{release.window_start}|{group}".encode(),
                                             orjson.dumps(record), [("gateway-aggregate", spec.id.encode())],
                                             timestamp_ms=released_at))
                windows_released, groups = len(releases), len(releases) * len(spec.continual_groups)
                if releases:
                    state_after = str(drawn["state"]).encode()
                    out.append(OutRecord(continual_topic(self.config), aggregate.encode(), state_after, None, 0))
            else:
                for group, noisy_count, noisy_sum in drawn["groups"]:
                    result = GroupResult(str(group), int(noisy_count), None if noisy_sum is None else int(noisy_sum))
                    record = mech.record(result, window_start, released_at)
                    record["instance"] = instance
                    out.append(OutRecord(spec.output_topic, f"{spec.id}|{window_start}|{group}".encode(),
                                         orjson.dumps(record), [("gateway-aggregate", spec.id.encode())],
                                         timestamp_ms=released_at))
                    groups += 1
            if refusal is None:
                entry = LedgerEntry.for_release(spec, window_start, partition, groups, now_ms,
                                                self.config.instance_id, cost)
                out.append(OutRecord(self.config.ledger_topic, entry.key, entry.to_json(), None, 0))
        outcome = "released" if refusal is None else f"refused:{refusal}"
        audit: dict[str, Any] = {
            "type": "dp_release", "chain": release_chain(aggregate, partition), "aggregate": spec.id,
            "window": {"start": window_start, "end": window_start + spec.window_ms}, "partition": partition,
            "outcome": outcome, "groups_released": groups if refusal is None else 0,
            "mechanism": mech.mechanism if not spec.continual else self.running_of(aggregate).plan.describe()[
                "mechanism"],
            "epsilon": None if refusal else cost[0], "delta": None if refusal else cost[1],
            "output": {"topic": spec.output_topic}, "ledger": {"topic": self.config.ledger_topic},
            "instance": self.config.instance_id, "time": now_ms,
        }
        if spec.continual:
            audit.update(release="running_total", windows_released=windows_released if refusal is None else 0,
                         epsilon_horizon=spec.epsilon)
        out.append(self.audit_record(audit))
        return Release(out, entry, outcome, state_after if refusal is None else None)

    def audit_record(self, body: dict[str, Any], chains: ChainHeads | None = None) -> OutRecord:
        chains = chains or self.chains
        key = body["chain"]
        prev, restart = chains.next_prev(key)
        if restart:
            body["chain_restart"] = True
            chains.restarted.discard(key)
        sealed = seal_audit_event(body, prev, self.audit_keys)
        chains.heads[key] = sealed["hash"]
        return OutRecord(self.config.audit_topic, key.encode(), orjson.dumps(sealed), None,
                         audit_partition(key, self.audit_partitions))

    def late_audit(self, chains: ChainHeads, chain: str, spec: AggregateSpec, stage: str, topic: str,
                   partition: int, offset: int, record: dict[str, Any] | None, timestamp: int,
                   window_start: int | None = None, outcome: str = LATE) -> OutRecord:
        if outcome != LATE:
            window_start = None  # an out-of-range time names no window
        elif window_start is None:
            t = record.get(spec.time_field) if (record is not None and spec.time_field) else timestamp
            window_start = spec.window_start(int(t)) if isinstance(t, int) else None
        body = {"type": "dp_late", "chain": chain, "aggregate": spec.id, "stage": stage, "outcome": outcome,
                "event": {"topic": topic, "partition": partition, "offset": offset},
                "window": None if window_start is None else {"start": window_start,
                                                             "end": window_start + spec.window_ms},
                "instance": self.config.instance_id, "time": _now_ms()}
        return self.audit_record(body, chains)


class BoundHandler:
    """Stage 1 behind the loop: one ContributionBounder per open input partition, restored from the
    changelog when the partition opens; contributions, state changes and late audits out."""

    def __init__(self, kafka: dict[str, str], plans: dict[str, Plan], contrib_topic: str, state_topic: str,
                 state_partitions: int, releaser: Releaser, upstreams: dict[str, frozenset[str]] | None = None,
                 max_skew_ms: int | None = None) -> None:
        self.kafka = kafka
        self.max_skew_ms = max_skew_ms  # event times out of range are dropped, audited, and move no mark
        self.plans = plans  # by sanitized topic
        self.upstreams = upstreams or {}  # by sanitized topic: its raw topic's partitions ("<topic>/<n>")
        self.decoder = SanitizedDecoder(list(plans.values()))
        self.contrib_topic = contrib_topic
        self.state_topic = state_topic
        self.state_partitions = state_partitions
        self.releaser = releaser
        self.chains = ChainHeads()
        self.bounders: dict[Source, ContributionBounder] = {}
        self._unrestored: set[Source] = set()

    def open(self, source: Source, committed_offset: int, metadata: str | None) -> None:
        ours, _ = _committed_field(metadata, "audit_head")
        head = parse_head_metadata(metadata)
        # no head: a fresh partition, or one whose chain has no event yet, starts at genesis; one
        # committed without this job's metadata (lost, or an older version) is marked restarted
        self.chains.resume(bound_chain(*source), head, restarted=head is None and committed_offset >= 0 and not ours)
        self._unrestored.add(source)  # restored with the others opened alongside, before its first event

    def close(self, sources: Sequence[Source]) -> None:
        for source in sources:
            self.bounders.pop(source, None)
            self.chains.forget(bound_chain(*source))
            self._unrestored.discard(source)

    def restore(self) -> None:
        """Rebuild the bounders of the partitions opened since the last batch, in one changelog read."""
        if not self._unrestored:
            return
        sources = sorted(self._unrestored)
        started = time.monotonic()
        records, _ = changelog.restore(self.kafka, self.state_topic,
                                       {state_partition(s, self.state_partitions) for s in sources})
        changes: dict[Source, list[Change]] = {s: [] for s in sources}
        # records it cannot read are skipped and counted (gateway_state_records_skipped_total{dp-bound-state})
        changelog.apply_records(BOUND_STATE, self.state_topic, ((r.key, r.value) for r in records),
                                lambda key, value: collect_change(changes, key, value))
        for source, entries in changes.items():
            bounder = self._bounder(source)
            changelog.apply_records(BOUND_STATE, self.state_topic, entries, bounder.restore_entry)
            bounder.settle_restored()
            self.bounders[source] = bounder
        self._unrestored.clear()
        # how many entries were restored is an exact count of subjects: it stays inside the DP boundary
        log.info("bounding state restored", extra={"partitions": len(sources),
                                                    "seconds": round(time.monotonic() - started, 3)})

    def _bounder(self, source: Source) -> ContributionBounder:
        return ContributionBounder(self.plans[source[0]].aggregates, str(source[1]),
                                   self.upstreams.get(source[0], frozenset()), self.max_skew_ms)

    def before_publish(self) -> Output:
        """Nothing added once per batch: the loop does not slice this stage's batches."""
        return Output([])

    def process(self, messages: list[Message]) -> Output:
        self.restore()
        now = _now_ms()
        out: list[OutRecord] = []
        sources: set[Source] = set()
        for m in messages:
            source = (m.topic(), m.partition())
            sources.add(source)
            if m.key() is None:
                continue
            try:
                _, record = self.decoder.decode(StoredRecord(m.topic(), m.partition(), m.offset(), m.key(),
                                                             m.value(), dict(m.headers() or [])))
            except Exception as exc:  # never log the value
                log.warning("cannot decode a sanitized record", extra={"topic": m.topic(), "error": type(exc).__name__})
                continue
            bounder = self.bounders.get(source) or self.bounders.setdefault(source, self._bounder(source))
            for spec, outcome, contribution in bounder.offer(m.key().decode(), record, m.timestamp()[1],
                                                             _upstream(m.headers()), now):
                if outcome == ACCEPTED and contribution is not None:
                    out.append(OutRecord(self.contrib_topic, contribution.partition_key, contribution.to_json(), None,
                                         CONTINUAL_PARTITION if spec.continual else None))
                elif outcome in (LATE, OUT_OF_RANGE):
                    out.append(self.releaser.late_audit(self.chains, bound_chain(*source), spec, "bound",
                                                        m.topic(), m.partition(), m.offset(), record,
                                                        m.timestamp()[1], outcome=outcome))
        metadata: dict[Source, str] = {}
        for source in sorted(sources):
            bounder = self.bounders.get(source)
            if bounder is not None:
                out += state_records(self.state_topic, self.state_partitions, source, bounder.drain_changes())
            head = self.chains.heads.get(bound_chain(*source))
            metadata[source] = head_metadata(head) if head is not None else NO_HEAD
        return Output(out, metadata)


class ReleaseHandler:
    """Stage 2 behind the loop: windows of the open contributions partitions, late audits out, and
    offsets committed behind the windows still open (the job's timer closes every window on its
    schedule, with or without contributions: gateway/dp/windows.py)."""

    def __init__(self, specs: dict[str, AggregateSpec], contrib_topic: str, releaser: Releaser, ledger: Ledger,
                 settle_ms: int) -> None:
        self.specs = specs
        self.contrib_topic = contrib_topic
        self.releaser = releaser
        self.ledger = ledger
        self.settle_ms = settle_ms
        self.chains = releaser.chains
        self.windows = GroupWindows(specs, settle_ms)
        self.next_offsets: dict[int, int] = {}  # per open partition: one past the last contribution read
        self.opened: set[int] = set()
        # a partition the ledger knows nothing of is scheduled from the windows due when the job
        # started, however often it is reopened (a rewind must not skip the windows due since)
        self.started_ms = _now_ms()

    def open(self, source: Source, committed_offset: int, metadata: str | None) -> None:
        partition = source[1]
        if partition == CONTINUAL_PARTITION:
            self.releaser.running_stale = True  # its counters as committed, read before the next release
        ours, heads = _committed_field(metadata, "audit_heads")
        heads = heads if isinstance(heads, dict) else {}
        for aggregate in self.specs:
            head = heads.get(aggregate)
            head = head if _is_head(head) else None
            self.chains.resume(release_chain(aggregate, partition), head,
                               restarted=head is None and committed_offset >= 0 and not ours)
            # the schedule goes on after the last window the ledger shows done on this partition
            self.windows.schedule(aggregate, partition, self.ledger.last_window(aggregate, partition),
                                  self.started_ms, CONTINUAL_PARTITION)
        # a partition without input still commits (its audit heads ride in the metadata): from where it is
        self.next_offsets.setdefault(partition, max(committed_offset, 0))
        self.opened.add(partition)

    def close(self, sources: Sequence[Source]) -> None:
        for _, partition in sources:
            self.windows.forget_partition(partition)  # its schedule restarts from the ledger when reopened
            self.next_offsets.pop(partition, None)
            for aggregate in self.specs:
                self.chains.forget(release_chain(aggregate, partition))
            self.opened.discard(partition)
        if not self.opened:
            self.windows = GroupWindows(self.specs, self.settle_ms)

    def before_publish(self) -> Output:
        """Nothing added once per batch: the loop does not slice this stage's batches."""
        return Output([])

    def process(self, messages: list[Message]) -> Output:
        out: list[OutRecord] = []
        windows = self.windows
        for m in messages:
            p = m.partition()
            self.next_offsets[p] = m.offset() + 1
            c = Contribution.from_json(m.value())
            spec = self.specs.get(c.aggregate)
            if spec is None:
                continue
            if (c.aggregate, c.window_start, p) not in windows.closed and \
                    self.ledger.released(c.aggregate, c.window_start, p):
                continue  # re-read after a restart: released already
            if not windows.add(c, p, m.offset()):  # late: audited, never folded in
                out.append(self.releaser.late_audit(self.chains, release_chain(c.aggregate, p), spec, "release",
                                                    m.topic(), p, m.offset(), None, c.event_time, c.window_start))
        return Output(out, self.metadata(), self.offsets())

    def offsets(self) -> dict[Source, int]:
        """Per open partition, the earliest offset a window still open needs (else past the last read)."""
        return {(self.contrib_topic, p): self.windows.commit_offset(p, nxt) for p, nxt in self.next_offsets.items()}

    def metadata(self) -> dict[Source, str]:
        out = {}
        for p in self.next_offsets:
            heads = {a: self.chains.heads[release_chain(a, p)] for a in self.specs
                     if release_chain(a, p) in self.chains.heads}
            out[(self.contrib_topic, p)] = release_metadata(heads)
        return out


class AggregateWorker:
    def __init__(self, config: GatewayConfig, plans: Sequence[Plan],
                 mechanism_factory: Callable[[AggregateSpec], AggregateMechanism] = AggregateMechanism) -> None:
        """`mechanism_factory` builds each aggregate's measurements; tests inject a double there
        (tests/dp_doubles.py), the gateway itself always uses AggregateMechanism."""
        self.config = with_instance_id(config, "aggregate")
        self.plans = [p for p in plans if p.aggregates]
        if not self.plans:
            raise ConfigError(f"no schema in '{config.schemas}' declares aggregates (record-level "
                              "\"privacy\": {\"aggregates\": [...]})")
        self.specs: dict[str, AggregateSpec] = {a.id: a for p in self.plans for a in p.aggregates}
        try:
            release_metadata({a: "0" * 64 for a in self.specs})
        except GatewayError as exc:
            raise ConfigError(f"{exc} (Kafka's offset.metadata.max.bytes defaults to 4096): declare fewer "
                              "aggregates or give them shorter names") from None
        # measurements built once, here; releasing only applies them
        self.mechanisms = {sid: mechanism_factory(spec) for sid, spec in self.specs.items()}
        self.by_sanitized = {p.sanitized_topic: p for p in self.plans}
        self.contrib_topic = contributions_topic(self.config)
        self.state_topic = bound_state_topic(self.config)
        self.state_partitions = 1
        self.topic_partitions: dict[str, int] = {}  # partition counts, read when the job starts
        self.audit_keys: AuditKeys | None = None  # given by gateway.app (else read from the keyring at start)
        # windows closed per outcome: the only tally this job reports (exact contribution counts
        # never leave it; see docs/dp.md, "What stays inside the DP boundary")
        self.windows_closed: Counter[str] = Counter()
        self._stop = False
        self.health = metrics.Health(checks=("kafka", "assignment"))
        for mech in self.mechanisms.values():
            log.info("aggregate compiled", extra=mech.describe())

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        self._stop = True

    # ---- set-up ----------------------------------------------------------------------------------
    def _event_time_sources(self) -> dict[str, frozenset[str]]:
        """Whose event times stage 1's lateness rule waits for (gateway/dp/bounding.py): per sanitized
        topic its raw topic's partitions. (Stage 2 closes windows on a schedule: gateway/dp/windows.py.)"""
        counts = self.topic_partitions
        return {topic: frozenset(f"{plan.source_topic}/{p}" for p in range(counts.get(plan.source_topic, 0)))
                for topic, plan in self.by_sanitized.items()}

    def _ensure_topics(self) -> int:
        counts = ensure_topics(self.plans, self.config)
        self.topic_partitions = counts
        admin = clients.admin(self.config)
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
        kafka = self.config.kafka_client_config()
        if missing:
            create_topics(admin, {t: n for t, n in missing.items() if t != self.state_topic})
        self.state_partitions = changelog.ensure_changelog(kafka, self.state_topic, wanted[self.state_topic],
                                                           STATE_CONFIG)
        if any(spec.continual for spec in self.specs.values()):
            changelog.ensure_changelog(kafka, continual_topic(self.config), 1, STATE_CONFIG)
        ensure_ledger_topic(kafka, self.config.ledger_topic)
        return counts[self.config.audit_topic]

    def _loop(self, stage: str, handler: BoundHandler | ReleaseHandler, topics: list[str]) -> TransactionalLoop:
        config = self.config
        group = f"{config.group_id}.dp-{stage}"
        return TransactionalLoop(
            f"dp-{stage}", clients.group_consumer(config, group, f"{config.instance_id}-{stage}"),
            clients.transactional_producer(config, f"{config.group_id}-dp-{stage}-{config.instance_id}"),
            handler, topics, config.batch_max_events, config.batch_timeout_s,
            on_assignment=lambda owned: self._assigned(stage, owned))

    def run(self) -> int:
        config = self.config
        start_process(config, self.health, self.request_stop)
        # before Kafka: a missing keyring fails start-up
        audit_keys = self.audit_keys if self.audit_keys is not None else audit_keys_for(config)
        audit_partitions = self._ensure_topics()
        admin = clients.admin(config)
        probe = metrics.HealthProbe(self.health, {"kafka": lambda: bool(partition_counts(admin, timeout=5))}).start()
        kafka = config.kafka_client_config()
        self.ledger, follow_from = read_ledger(kafka, config.ledger_topic)
        self.follower = LedgerFollower(kafka, config.ledger_topic, self.ledger, follow_from)
        self.releaser = Releaser(config, self.mechanisms, self.ledger, audit_partitions, ChainHeads(),
                                 lambda: changelog.latest(changelog.restore(kafka, continual_topic(config),
                                                                            {CONTINUAL_PARTITION}, missing_ok=True)[0]),
                                 audit_keys=audit_keys)
        upstreams = self._event_time_sources()
        self.bound_handler = BoundHandler(kafka, self.by_sanitized, self.contrib_topic, self.state_topic,
                                          self.state_partitions, self.releaser, upstreams, config.max_skew_s * 1000)
        self.release_handler = ReleaseHandler(self.specs, self.contrib_topic, self.releaser, self.ledger,
                                              int(config.dp_idle_close_s * 1000))
        # stage 1 only: stage 2 commits behind its open windows by design, so its committed offset
        # legitimately stands still while input waits
        self.stall = StallMonitor(config, f"{config.group_id}.dp-bound", "dp-bound", self.health).start()
        self.bound = self._loop("bound", self.bound_handler, sorted(self.by_sanitized))
        self.release = self._loop("release", self.release_handler, [self.contrib_topic])
        self.bound.start()
        self.release.start()
        log.info("aggregate worker started", extra={"group_id": config.group_id, "instance": config.instance_id,
                                                    "aggregates": sorted(self.specs),
                                                    "ledger_entries": len(self.ledger.entries)})
        settle_heap()
        try:
            while not self._stop:
                self.health.beat()
                self.bound.step(STEP_S)
                self.release.step(STEP_S)
                self.follower.poll()
                self._release_due()
        finally:
            probe.stop()
            self.stall.stop()
            self.health.stop()
            self.bound.close()
            self.release.close()
            self.follower.close()
            log.info("aggregate worker stopped", extra={"windows": dict(self.windows_closed)})
        return 0

    def _assigned(self, stage: str, owned: set[Source]) -> None:
        self.health.set("assignment", True)
        if stage == "bound":
            self.stall.set_owned(owned)
        log.info("partitions owned", extra={"stage": stage, "partitions": sorted(f"{t}:{p}" for t, p in owned)})

    # ---- stage 2's timer -------------------------------------------------------------------------
    def _charge(self, due: list[WindowKey], now: int) -> bool:
        """Draw each due window not yet charged, commit its charge with the drawn values, and read the
        charges back: the ledger log's order, the same for every worker, decides which windows fit
        the period cap, and the first charge's values are the ones released. False if the charge's
        transaction aborted (stage 2 was rewound)."""
        charges = []
        paid: set[str] = set()  # continual aggregates whose horizon a charge of this batch pays for
        windows = self.release_handler.windows
        for key in due:
            aggregate, window_start, partition = key
            mech = self.mechanisms[aggregate]
            if self.ledger.charged(*key) or self.ledger.released(*key):
                continue
            cost = window_cost(mech.spec, self.ledger, paid)
            if cost[0] > 0 and mech.spec.continual:
                paid.add(aggregate)
            drawn = self.releaser.draw(key, windows.open.get(key) or WindowState())
            charges.append(Charge.for_release(mech.spec, window_start, partition, now, self.config.instance_id,
                                              cost, drawn))
        if not charges:
            return True
        records = [OutRecord(self.config.ledger_topic, c.key, c.to_json(), None, 0) for c in charges]
        if not self.release.commit_now(Output(records, offsets={})):
            return False
        self.follower.wait_for({c.key for c in charges})
        return True

    def _release_due(self) -> None:
        """Close every window due on the schedule, data or not: charge (with the drawn values), then
        release what the charges hold, with the offsets they no longer hold back, in one transaction."""
        handler = self.release_handler
        self.release.open_owned()  # a partition without input has windows to close too
        due = _one_continual_window(handler.windows.due(_now_ms()), self.specs)
        if not due:
            return
        now = _now_ms()
        if not self._charge(due, now):
            log.warning("window charge aborted: stage 2 re-reads from its committed offsets", extra={})
            return
        out: list[OutRecord] = []
        results: list[tuple[WindowKey, Release]] = []
        outcomes: Counter[str] = Counter()
        for key in due:
            result = self.releaser.release(key, self.ledger.charge_of(*key), handler.windows.close(key), now)
            out += result.records
            outcomes[result.outcome] += 1
            results.append((key, result))
        if not self.release.commit_now(Output(out, handler.metadata(), handler.offsets())):
            log.warning("window release aborted: stage 2 re-reads from its committed offsets",
                        extra={"windows": len(due)})
            return
        for key, result in results:  # only once the transaction committed
            aggregate = key[0]
            if result.entry is not None:
                self.ledger.apply(result.entry)
                # a window costs its epsilon once, reported by the release its deciding charge names
                metrics.DP_EPSILON.labels(aggregate).inc(self.ledger.reported_cost(*key))
            if result.running_state is not None:
                self.releaser.adopt_running(aggregate, result.running_state)
            metrics.DP_RELEASES.labels(aggregate, result.outcome).inc()
            metrics.DP_GROUPS.labels(aggregate).inc(
                sum(r.topic == self.specs[aggregate].output_topic for r in result.records))
        handler.windows.prune_closed()
        self.windows_closed.update(outcomes)
        log.info("windows closed", extra={"outcomes": dict(outcomes)})


def _one_continual_window(due: list[WindowKey], specs: dict[str, AggregateSpec]) -> list[WindowKey]:
    """Due windows, a continual aggregate's first one only: each of its draws continues the counters
    its last release committed, so its next window waits for the next turn."""
    seen: set[str] = set()
    out = []
    for key in due:
        if specs[key[0]].continual:
            if key[0] in seen:
                continue
            seen.add(key[0])
        out.append(key)
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)
