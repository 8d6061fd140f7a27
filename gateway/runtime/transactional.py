"""The one consume -> transform -> produce loop every job uses, exactly once through Kafka transactions.

A batch is consumed, handed to the job's `BatchHandler` (pure work: no Kafka I/O), and what it
returns is produced in one transaction together with the consumer offsets; each offset carries the
handler's metadata for its partition (the sanitize job's audit chain head), so state and progress
commit atomically and a new owner reads both back with the committed offsets.

- A partition is *opened* on its first message after assignment (or after a rewind): its committed
  offset and metadata are fetched then, when the broker serves them stable, and given to the
  handler. Nothing blocks inside a rebalance callback.
- Abortable errors abort the transaction and rewind: the handler closes every partition, each is
  sought back to its committed offset and reopened from the committed metadata. Retriable timeouts
  of commit and abort are retried, as librdkafka documents; fatal errors (a fenced producer) raise.
- With `overlap`, the commit of batch N runs on a thread while batch N + 1 is consumed and
  transformed; N + 1 is produced only after N committed, in its own transaction. If N aborts, N + 1
  is dropped with it and both are read again.
- With `slice_s`, a batch is transformed slice by slice as its events arrive during the fill, so
  only the last slice's work is left when the fill ends; the slices are still one transaction, and
  each slice's records go into it as soon as the batch before has committed (read_committed readers
  see none of them before the commit), so the commit no longer waits for the whole batch to be sent.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from gateway.core.pipeline.outcome import BatchCounts
from gateway.ops import metrics
from gateway.outputs import OutRecord
from gateway.retry import retry_call
from gateway.runtime.clients import produce_when_room

log = logging.getLogger("gateway.runtime")
Source = tuple[str, int]  # (topic, partition)
# How long CPython lets a thread hold the GIL while another waits for it, while a commit runs on the
# commit thread. That thread returns from each broker call needing the GIL while the main thread
# transforms the next slice; at the default 5 ms every hand-off could add 5 ms to the commit (send
# offsets, then commit: up to 10 ms per batch, on the latency of every event in it). Only then: set for
# the whole process, 1 ms cost the worker 3.5% more CPU per event in drains than 5 ms (versus_base, seven
# paired rounds), so the interval goes back to the interpreter's own when the commit is done. And only
# for a batch the fill's deadline ended: a full batch means a backlog, whose events wait for the batches
# ahead of them far longer than a commit's hand-offs, while the main thread is busy with the next full
# batch. There the 1 ms hand-offs still cost 2.9% of the worker's CPU per event (1.2 us: four paired
# 200,000-event drains, the commit thread's own CPU 0.85 -> 1.34 us per event).
COMMIT_SWITCH_INTERVAL_S = 0.001


@dataclass
class Output:
    """What a handler made of one batch: records to publish, and per source partition the metadata
    to commit with its offset (absent: none). `offsets`, when given, are the next offsets to commit
    per partition instead of one past the last message (a job that must re-read part of what it saw
    after a restart, like the DP release stage with its open windows, commits behind)."""

    records: list[OutRecord]
    metadata: dict[Source, str] = field(default_factory=dict)
    offsets: dict[Source, int] | None = None
    counts: BatchCounts = field(default_factory=BatchCounts)  # tallies, reported once committed


class BatchHandler(Protocol):
    def open(self, source: Source, committed_offset: int, metadata: str | None) -> None:
        """A partition's first message is about to be processed; `metadata` as last committed."""

    def close(self, sources: Sequence[Source]) -> None:
        """Forget these partitions (revoked, or rewound and to be reopened)."""

    def process(self, messages: list[Message]) -> Output:
        """Turn one batch, or one slice of it (error-free messages of open partitions, in order), into output."""

    def before_publish(self) -> Output:
        """The batch's last slice was processed: what it adds once per batch rather than per slice
        (the sanitize job's audit records, one per chain, and the partitions' metadata read after
        them), with what must be durable before its transaction commits stored (its new subject keys;
        the slices' records may be in the open transaction already, visible to no read_committed
        reader until the commit). Its `offsets` must be None: the slices' say where each partition's
        offset goes."""


@dataclass
class Batch:
    messages: list[Message]
    output: Output
    last: dict[Source, int]  # last offset per source partition
    started: float  # the fill ended: its last consume returned (monotonic)
    processed: float  # the last slice was processed (started - polled holds the earlier slices' work)
    settled: float = 0.0  # the batch before it committed: this one may be produced
    produced: float = 0.0
    commit: Future[float] | None = None
    polled: float = 0.0  # the consume call that returned it began (started - polled: the batch-fill wait)
    offsets_sent: float = 0.0  # send_offsets_to_transaction returned (the commit's first half)
    process_s: float = 0.0  # the handler's time over all the batch's slices
    slices: int = 0  # how many there were (the handler's process calls)
    streamed: int = 0  # of output.records, how many the slices put into the open transaction before publish


def merge_outputs(outputs: Sequence[Output]) -> Output:
    """One batch's outputs as one: its slices', then what `before_publish` added (last, offsets None).
    A handler gives offsets for all its slices or for none."""
    *slices, final = outputs
    if final.offsets is not None:
        raise ValueError("before_publish gave offsets: the slices say where each partition's offset goes")
    if len({o.offsets is None for o in slices}) > 1:
        raise ValueError("a batch's slices gave offsets for some slices and not for others")
    merged = Output([], {}, None if not slices or slices[0].offsets is None else {})
    for o in outputs:
        merged.records += o.records
        merged.metadata.update(o.metadata)
        if o.offsets is not None:
            merged.offsets.update(o.offsets)  # type: ignore[union-attr]
        merged.counts.update(o.counts)
    return merged


def is_retriable(error: KafkaError) -> bool:
    return bool(error.retriable()) and not error.txn_requires_abort() and not error.fatal()


def retry_retriable(what: str, call: Callable[[], Any], attempts: int = 10) -> Any:
    """Call again while librdkafka says the error is retriable (a timeout waiting on the broker)."""

    def retriable(exc: BaseException) -> bool:
        return isinstance(exc, KafkaException) and is_retriable(exc.args[0])

    def note(attempt: int, exc: BaseException, _delay: float) -> None:
        log.warning(f"{what} timed out: retrying", extra={"code": exc.args[0].name(), "attempt": attempt})

    return retry_call(call, retry_if=retriable, attempts=attempts, on_retry=note)


class AssignmentWait:
    """Says why a new member waits for its first assignment, which can take a session timeout or
    more: "waiting for partition assignment" when it subscribes, then every `every_s` how long it
    has waited, the group's state (asked of the coordinator with `describe_group`, a non-blocking
    admin request) and the likely cause; the first assignment logs the time it took."""

    def __init__(self, loop: str, group_id: str | None, session_timeout_ms: int | None,
                 describe_group: Callable[[], Future[Any]] | None = None, every_s: float = 5.0) -> None:
        self.loop = loop
        self.group_id = group_id
        self.session_timeout_ms = session_timeout_ms
        self.describe_group = describe_group
        self.every_s = every_s
        self.since: float | None = None
        self.done = False
        self._next = 0.0
        self._pending: Future[Any] | None = None

    def started(self) -> None:
        self.since = time.monotonic()
        self._next = self.since + self.every_s
        log.info("waiting for partition assignment", extra={"loop": self.loop, "group_id": self.group_id})
        self._ask()

    def _ask(self) -> None:
        if self.describe_group is not None and self._pending is None:
            try:
                self._pending = self.describe_group()
            except Exception:  # noqa: BLE001 - the group's state is a hint only
                self._pending = None

    def tick(self, member_id: Callable[[], str | None]) -> None:
        """Called every turn until assigned: logs when `every_s` has passed (`member_id`: ours, if joined)."""
        if self.done or self.since is None or time.monotonic() < self._next:
            return
        now = time.monotonic()
        self._next = now + self.every_s
        state, members = None, None
        if self._pending is not None and self._pending.done():
            try:
                description = self._pending.result()
                state = getattr(description.state, "name", str(description.state)).lower()
                members = [m.member_id for m in description.members]
            except Exception:  # noqa: BLE001 - no answer from the coordinator: said in the cause
                state = "no answer from the group coordinator"
            self._pending = None
        self._ask()
        log.info("still waiting for partition assignment",
                 extra={"loop": self.loop, "group_id": self.group_id, "waited_s": round(now - self.since, 1),
                        "group_state": state, "members": None if members is None else len(members),
                        "likely_cause": self.cause(state, members, member_id())})

    def cause(self, state: str | None, members: list[str] | None, member_id: str | None) -> str:
        timeout = (f"session_timeout_ms={self.session_timeout_ms}" if self.session_timeout_ms
                   else "its session timeout")
        others = [m for m in members or [] if m != member_id]
        if state in ("preparing_rebalancing", "completing_rebalancing") or (state == "stable" and others):
            return (f"a group rebalance is in progress ({len(others)} other member(s)): the coordinator waits "
                    "for every member to rejoin, and a member that stopped without leaving the group (killed, "
                    f"or the previous run of this worker) is removed only when its session times out ({timeout})")
        if state in ("empty", "dead"):
            return ("joining an empty group: the coordinator delays the first rebalance by the broker's "
                    "group.initial.rebalance.delay.ms (3 s by default)")
        if state is not None and state.startswith("no answer"):
            return "the group coordinator does not answer (see the kafka client errors logged)"
        return (f"a group rebalance: another member's session must time out ({timeout}) before the partitions "
                "move, or the coordinator is still being found")

    def assigned(self) -> float | None:
        """The first assignment: the seconds waited (None after the first)."""
        if self.done or self.since is None:
            return None
        self.done = True
        return round(time.monotonic() - self.since, 1)


class TransactionalLoop:
    """One consumer-group member and its transactional producer, driven one `step` at a time."""

    def __init__(self, name: str, consumer: Consumer, producer: Producer, handler: BatchHandler,
                 topics: Sequence[str], batch_max_events: int, batch_timeout_s: float,
                 overlap: bool = False, slice_s: float | None = None,
                 on_committed: Callable[[Batch, float], None] | None = None,
                 on_assignment: Callable[[set[Source]], None] | None = None,
                 assignment_wait: AssignmentWait | None = None) -> None:
        self.name = name
        self.consumer = consumer
        self.producer = producer
        self.handler = handler
        self.topics = list(topics)
        self.batch_max_events = batch_max_events
        self.batch_timeout_s = batch_timeout_s
        self.on_committed = on_committed
        self.on_assignment = on_assignment
        self.owned: set[Source] = set()
        self.opened: set[Source] = set()
        self.slice_s = slice_s  # process what arrives during the fill every slice_s (None: once, at its end)
        self.aborts = 0
        self.revocations = 0  # partitions revoked or lost (a batch's processed slices may hold theirs)
        self._in_flight: Batch | None = None
        self._txn_open = False  # the batch being filled has begun its transaction (its slices' records are in it)
        self._offsets_sent = 0.0
        self._last_consumed = time.monotonic()  # when the last consume returned: the next batch's fill counts from it
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-commit") if overlap else None
        self._switch_interval = sys.getswitchinterval()  # the interpreter's, back after each overlapped commit
        self.assignment_wait = assignment_wait or AssignmentWait(name, None, None)

    # ---- life cycle ------------------------------------------------------------------------------
    def start(self, init_timeout_s: float = 60.0) -> TransactionalLoop:
        """Fence any earlier producer of this transactional id, then join the group."""
        started = time.monotonic()
        retry_retriable("init_transactions", lambda: self.producer.init_transactions(init_timeout_s))
        took = time.monotonic() - started
        if took > 2.0:  # the coordinator first aborted (or waited out) the previous producer's transaction
            log.info("transactions initialized", extra={
                "loop": self.name, "waited_s": round(took, 1),
                "likely_cause": "the previous producer of this transactional id (an earlier run of this worker) "
                                "left a transaction open: the coordinator fenced it and aborted the transaction "
                                "first"})
        self.consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self.assignment_wait.started()
        return self

    def close(self) -> None:
        try:
            self.settle()
            self._abort_open()  # a step that raised mid-fill left its slices' transaction open
        finally:
            if self._committer is not None:
                self._committer.shutdown(wait=True)
            self.consumer.close()
            self.producer.flush(10)

    # ---- one turn --------------------------------------------------------------------------------
    def step(self, timeout_s: float | None = None) -> int:
        """Consume one batch and publish what the handler makes of it; returns the messages taken.

        Without `timeout_s`, the batch fills until `batch_timeout_s` after the last batch's start:
        the events that came while that batch was processed and published have waited already (a
        fill counted from this call made each batch cover its processing time plus the timeout, so at
        high rates batches grew, and with them the processing every event in them waits for). With
        `slice_s`, what arrives during the fill is processed as it arrives, slice by slice, so when
        the fill ends only the last slice's processing is left before the batch is published: its
        events no longer wait for the whole batch's transform (issue 35's latency tail); and when the
        fill ends while the last batch is still committing, slicing goes on until that commit is
        done. The slices are one batch, one transaction, as before."""
        aborts, revocations = self.aborts, self.revocations
        polled = time.monotonic()
        sliced = timeout_s is None and self.slice_s is not None
        deadline = polled + timeout_s if timeout_s is not None else self._last_consumed + self.batch_timeout_s
        messages: list[Message] = []
        outputs: list[Output] = []
        streamed = 0  # of `outputs`, how many have their records in the batch's open transaction
        started = processed = polled
        process_s = 0.0
        while True:
            wait = max(0.0, deadline - time.monotonic())
            if sliced:
                wait = min(wait, self.slice_s)  # type: ignore[type-var]
            raw = self.consumer.consume(self.batch_max_events - len(messages), wait)
            self._last_consumed = started = time.monotonic()
            if not self.assignment_wait.done:
                self.assignment_wait.tick(self._member_id)
            if self.aborts != aborts or (outputs and self.revocations != revocations):
                # a rebalance callback inside consume settled the batch in flight, it aborted, and every
                # owned partition was rewound. What consume returned is dropped: part of it was fetched
                # before that rewind (publishing it would publish it twice), and part may have been
                # fetched after it, from the committed offsets, so the positions are past those records.
                # Rewinding again, now outside the callback, reads all of it again from the committed
                # offsets (a CI run lost five records when only the first rewind was made). Slices
                # already processed go too when partitions were revoked meanwhile: they may hold
                # records of partitions another member now owns (and the transaction they went into
                # is aborted).
                self._abort_open()
                self.rewind()
                return 0
            if not outputs:  # nothing processed yet: _usable drops what a revocation took away
                revocations = self.revocations
            usable = self._usable(raw)
            if usable:
                outputs.append(self.handler.process(usable))  # overlaps the last batch's commit
                messages += usable
                processed = time.monotonic()
                process_s += processed - started
                if sliced:
                    streamed = self._stream(outputs, streamed)
                    if streamed < 0:
                        return 0  # the batch before aborted, or producing failed: rewound, read again
            if not sliced or len(messages) >= self.batch_max_events:
                break
            if time.monotonic() >= deadline:
                committing = self._in_flight.commit if self._in_flight is not None else None
                if committing is None or committing.done():
                    break
                # the fill is over but the last batch is still committing: go on transforming what
                # arrives meanwhile, slice by slice, and publish as soon as that commit is done. A slow
                # commit used to leave everything that came during it to one slice after it (350
                # events, 35 ms, in a traced run), and the batches after it paid for that in turn.
                wait_futures([committing], timeout=self.slice_s)
        if messages:
            sealing = time.monotonic()
            outputs.append(self.handler.before_publish())
            processed = time.monotonic()
            process_s += processed - sealing
        batch = self._batch(messages, outputs, started, processed) if messages else None
        if batch is not None:
            batch.polled, batch.process_s, batch.slices = polled, process_s, len(outputs)
            batch.streamed = sum(len(o.records) for o in outputs[:streamed])
        if not self.settle():
            return 0  # the last batch aborted: this one was rewound with it and is read again
        if batch is not None:
            self._publish(batch)
            if self._committer is None:
                self.settle()
        return len(messages)

    def _stream(self, outputs: list[Output], streamed: int) -> int:
        """The slices' records not yet produced go into the batch's transaction, begun as soon as the batch
        before has committed (one transaction at a time; until then they wait). So while the fill lasts
        they are sent, and the commit waits only for the last slice's records and what `before_publish`
        adds: a traced run at half of saturation spent 4 ms a batch (14 ms in the slowest 1%) flushing a
        sanitize batch's records in `commit_transaction`, 1.4 ms a passthrough one. Returns how many
        outputs are produced, or -1 when the batch was rewound (the batch before aborted, or producing
        failed): everything is read again."""
        if not self._txn_open:
            in_flight = self._in_flight
            if in_flight is not None and in_flight.commit is not None and not in_flight.commit.done():
                return streamed
            if not self.settle():
                return -1
            try:
                self.producer.begin_transaction()
            except KafkaException as exc:
                self._abort(exc)
                return -1
            self._txn_open = True
        try:
            for output in outputs[streamed:]:
                self._produce(output.records)
        except KafkaException as exc:
            self._abort(exc)
            return -1
        return len(outputs)

    def _abort_open(self) -> None:
        """Abort the transaction the batch being filled began: its slices' records go with it."""
        if self._txn_open:
            self._abort_transaction()

    def _abort_transaction(self) -> None:
        """Abort the producer's transaction, counted. What was sent is let be delivered (or fail) first:
        an abort purges messages still queued, and on Kafka 4 the sequence gap that leaves made the next
        transaction fail with OUT_OF_ORDER_SEQUENCE_NUMBER and then a fatal INVALID_TXN_STATE (seen in the
        abort test)."""
        self._txn_open = False
        self.producer.flush(30)
        retry_retriable("abort_transaction", lambda: self.producer.abort_transaction(30))
        self.aborts += 1
        metrics.ABORTS.inc()

    def _member_id(self) -> str | None:
        try:
            return self.consumer.memberid()
        except Exception:  # noqa: BLE001 - not joined yet, or a test double
            return None

    def commit_now(self, output: Output) -> bool:
        """Publish a timer's output (no batch consumed) in a transaction of its own; False if it aborted."""
        if not self.settle():
            return False
        output = merge_outputs([output, self.handler.before_publish()])
        batch = Batch([], output, {}, time.monotonic(), time.monotonic())
        self._publish(batch)
        return self.settle()

    def open_owned(self) -> None:
        """Open every owned partition not opened yet, input or not: a timer that publishes for a
        partition (stage 2 closes windows whether or not data arrived) needs its committed state."""
        self._open(sorted(self.owned - self.opened))

    def _usable(self, raw: list[Message]) -> list[Message]:
        messages: list[Message] = []
        for m in raw:
            err = m.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra={"loop": self.name, "code": err.name(), "fatal": err.fatal()})
                    if err.fatal():
                        raise KafkaException(err)
                continue
            messages.append(m)
        new = {(m.topic(), m.partition()) for m in messages} - self.opened
        if new:
            self._open(sorted(new & self.owned))
            if new - self.owned:  # fetched before a revocation: not ours any more
                messages = [m for m in messages if (m.topic(), m.partition()) in self.owned]
        return messages

    def _open(self, sources: list[Source]) -> None:
        if not sources:
            return
        committed = retry_retriable("offset fetch", lambda: self.consumer.committed(
            [TopicPartition(t, p) for t, p in sources], timeout=30))
        for tp in committed:
            if tp.error is not None:
                raise KafkaException(tp.error)
            self.handler.open((tp.topic, tp.partition), tp.offset, tp.metadata)
            self.opened.add((tp.topic, tp.partition))

    @staticmethod
    def _batch(messages: list[Message], outputs: list[Output], started: float, processed: float) -> Batch:
        """One batch of the slices' outputs, in order: a later slice's metadata and offsets for a
        partition replace an earlier one's (they are the handler's state after it)."""
        output = merge_outputs(outputs)
        last: dict[Source, int] = {}
        for m in messages:
            last[(m.topic(), m.partition())] = m.offset()
        return Batch(messages, output, last, started, max(started, processed))

    def _produce(self, records: Sequence[OutRecord]) -> None:
        producer = self.producer
        for r in records:
            produce_when_room(producer, r.topic, r.value, r.key, partition=-1 if r.partition is None else r.partition,
                              headers=r.headers, timestamp=r.timestamp_ms)

    def _publish(self, batch: Batch) -> None:
        """The batch's records (those its slices did not put in already) in its transaction, then its
        offsets and the commit, on the commit thread with `overlap`."""
        batch.settled = time.monotonic()
        try:
            if not self._txn_open:
                self.producer.begin_transaction()
            self._txn_open = False  # from here it is the batch in flight: committing, or aborted below
            self._produce(batch.output.records[batch.streamed:])
        except KafkaException as exc:
            self._abort(exc)
            return
        batch.produced = time.monotonic()
        nexts = batch.output.offsets if batch.output.offsets is not None else {
            source: offset + 1 for source, offset in batch.last.items()}
        metadata = batch.output.metadata
        offsets = [TopicPartition(t, p, o, metadata=metadata[(t, p)]) if (t, p) in metadata else TopicPartition(t, p, o)
                   for (t, p), o in nexts.items() if (t, p) in self.owned]
        group = self.consumer.consumer_group_metadata()
        if self._committer is not None:
            hand_off = len(batch.messages) < self.batch_max_events  # the deadline ended the fill: no backlog
            batch.commit = self._committer.submit(self._commit, offsets, group, hand_off)
        else:
            future: Future[float] = Future()
            try:
                future.set_result(self._commit(offsets, group, False))
            except KafkaException as exc:
                future.set_exception(exc)
            batch.commit = future
        self._in_flight = batch

    def _commit(self, offsets: list[TopicPartition], group: object, hand_off: bool) -> float:
        """Send the offsets and commit. `hand_off` (on the commit thread, for a batch that was not
        full): the GIL is handed over every COMMIT_SWITCH_INTERVAL_S meanwhile."""
        if hand_off:
            sys.setswitchinterval(COMMIT_SWITCH_INTERVAL_S)
        try:
            if offsets:
                retry_retriable("send_offsets_to_transaction",
                                lambda: self.producer.send_offsets_to_transaction(offsets, group, 30))
            self._offsets_sent = time.monotonic()  # one commit runs at a time: settle() hands it to its batch
            retry_retriable("commit_transaction", lambda: self.producer.commit_transaction(60))
            return time.monotonic()
        finally:
            if hand_off:
                sys.setswitchinterval(self._switch_interval)

    def settle(self) -> bool:
        """Wait for the batch in flight to commit. False if it aborted (everything was rewound)."""
        batch, self._in_flight = self._in_flight, None
        if batch is None:
            return True
        assert batch.commit is not None
        try:
            committed = batch.commit.result()
        except KafkaException as exc:
            self._abort(exc)
            return False
        batch.offsets_sent = self._offsets_sent
        if self.on_committed is not None:
            self.on_committed(batch, committed)
        return True

    def _abort(self, exc: KafkaException) -> None:
        """Abort the open transaction and rewind every owned partition to its committed offset."""
        error = exc.args[0]
        # _STATE from produce: the transaction went into an abortable state under the batch (a CI run
        # saw it right after an ILLEGAL_GENERATION abort); aborting recovers it, and an abort that
        # fails in turn is fatal below
        abortable = error.txn_requires_abort() or error.retriable() or error.code() == KafkaError._STATE
        if error.fatal() or not abortable:
            log.error("fatal Kafka error: exiting so the orchestrator restarts the job",
                      extra={"loop": self.name, "code": error.name()})
            raise exc
        log.warning("transaction aborted: rewinding to the committed offsets",
                    extra={"loop": self.name, "code": error.name()})
        self._abort_transaction()
        self.rewind()

    def rewind(self) -> None:
        """Every owned partition back to its committed offset, its state to be reopened from there."""
        self.handler.close(sorted(self.opened))
        self.opened.clear()
        if not self.owned:
            return
        committed = retry_retriable("offset fetch", lambda: self.consumer.committed(
            [TopicPartition(t, p) for t, p in sorted(self.owned)], timeout=30))
        log.info("rewound", extra={"loop": self.name, "offsets": {f"{tp.topic}:{tp.partition}": tp.offset
                                                                 for tp in committed}})
        for tp in committed:
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, offset))
            except KafkaException as seek_error:  # not yet fetching: it starts from the committed offset anyway
                log.info("seek deferred", extra={"loop": self.name, "partition": f"{tp.topic}:{tp.partition}",
                                                 "code": seek_error.args[0].name()})

    # ---- rebalance callbacks (cooperative: only the partitions that move) -------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.owned |= {(tp.topic, tp.partition) for tp in partitions}
        if self.on_assignment is not None:
            self.on_assignment(set(self.owned))
        waited = self.assignment_wait.assigned()
        log.info("partitions assigned", extra={"loop": self.name, "partitions": _names(partitions),
                                               "owned": len(self.owned),
                                               **({"waited_s": waited} if waited is not None else {})})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.settle()  # the batch in flight commits (or aborts) before its partitions go
        self._forget(partitions)
        log.info("partitions revoked", extra={"loop": self.name, "partitions": _names(partitions)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # another member may own them already: the in-flight commit is fenced and aborts
        self.settle()
        self._forget(partitions)
        log.warning("partitions lost", extra={"loop": self.name, "partitions": _names(partitions)})

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = [(tp.topic, tp.partition) for tp in partitions]
        if gone:
            self.revocations += 1
        self.handler.close([s for s in gone if s in self.opened])
        self.opened -= set(gone)
        self.owned -= set(gone)
        if self.on_assignment is not None:
            self.on_assignment(set(self.owned))


def _names(partitions: list[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}:{tp.partition}" for tp in partitions)
