"""A bounded sample of a topic (`gateway scan`): the last N events (N/partitions per partition) or
the first N, committed records only, without a consumer group's offsets or commits."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from gateway.core.codec.formats import codec_for
from gateway.core.policy.plan import Plan
from gateway.core.scan import Scanner
from gateway.errors import GatewayError, RejectedEvent
from gateway.runtime import clients

FROM = ("end", "beginning")
_QUIET = logging.getLogger("gateway.sample.librdkafka")  # connection noise: the error says what failed


@dataclass
class TopicSample:
    """Iterate to read the sample: yields each record's value (None for a tombstone).

    `planned` (events the plan expects, at most `limit`) and `partitions` are known once `open`
    returned. Under read_committed a partition also ends at its end-of-partition event (the last
    stable offset), so transaction markers and open transactions do not hold the sample back."""

    kafka: Mapping[str, str]
    topic: str
    limit: int = 1000
    start: str = "end"
    timeout_s: float = 60.0
    progress: Callable[[int], None] | None = None  # called with the number of events read so far
    planned: int = 0
    partitions: int = 0
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (first, end)
    _last_error: str = ""

    def _error_cb(self, err: KafkaError) -> None:
        self._last_error = err.str()

    def _metadata_error(self, exc: KafkaException) -> GatewayError:
        detail = self._last_error or exc.args[0].str()
        return GatewayError(f"cannot read metadata of topic '{self.topic}' from {self.kafka['bootstrap.servers']}: "
                            f"{detail}")

    def __iter__(self) -> Iterator[bytes | None]:
        if self.limit < 1:
            raise GatewayError("the sample size must be at least 1")
        if self.start not in FROM:
            raise GatewayError(f"--from must be one of {', '.join(FROM)}, not '{self.start}'")
        _QUIET.setLevel(logging.DEBUG if logging.getLogger().isEnabledFor(logging.DEBUG) else logging.CRITICAL)
        consumer = clients.reader(self.kafka, "privacy-gateway.scan", logger=_QUIET, error_cb=self._error_cb,
                                  **clients.READ_TO_END)
        deadline = time.monotonic() + self.timeout_s
        try:
            try:
                info = consumer.list_topics(self.topic, timeout=min(15.0, self.timeout_s)).topics.get(self.topic)
            except KafkaException as exc:
                raise self._metadata_error(exc) from None
            if info is None or info.error is not None or not info.partitions:
                raise GatewayError(f"topic '{self.topic}' does not exist on {self.kafka['bootstrap.servers']}")
            self.partitions = len(info.partitions)
            per_partition = math.ceil(self.limit / self.partitions)
            assignment = []
            for p in sorted(info.partitions):
                try:
                    low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p),
                                                               timeout=max(1.0, deadline - time.monotonic()))
                except KafkaException as exc:
                    raise GatewayError(f"cannot read the offsets of '{self.topic}' partition {p}: "
                                       f"{exc.args[0].str()}") from None
                first = max(low, high - per_partition) if self.start == "end" else low
                if high > first:
                    self.ranges[p] = (first, high)
                    assignment.append(TopicPartition(self.topic, p, first))
            self.planned = min(self.limit, sum(end - first for first, end in self.ranges.values()))
            if not assignment:
                return
            consumer.assign(assignment)
            pending = set(self.ranges)
            read = 0
            while pending and read < self.limit:
                if time.monotonic() > deadline:
                    raise GatewayError(f"sampling topic '{self.topic}' did not finish within {self.timeout_s:.0f}s "
                                       f"({read} of {self.planned} events read)")
                for msg in clients.take(consumer, 500, 0.5):
                    err = msg.error()
                    partition = msg.partition()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            pending.discard(partition)
                        elif err.fatal():
                            raise GatewayError(f"reading topic '{self.topic}' failed: {err.str()}")
                        continue
                    if partition not in pending:
                        continue
                    offset = msg.offset()
                    if offset >= self.ranges[partition][1]:
                        pending.discard(partition)
                        continue
                    if offset == self.ranges[partition][1] - 1:
                        pending.discard(partition)
                    read += 1
                    yield msg.value()
                    if read >= self.limit:
                        break
                if self.progress is not None:
                    self.progress(read)
        finally:
            consumer.close()


def sample_topic(kafka: Mapping[str, str], topic: str, limit: int = 1000, start: str = "end",
                 timeout_s: float = 60.0, progress: Callable[[int], None] | None = None) -> TopicSample:
    """A `TopicSample` of `topic`. `kafka`: GatewayConfig.kafka_client_config() (security included)."""
    return TopicSample(kafka, topic, limit, start, timeout_s, progress)


def scan_plan_source(kafka: Mapping[str, str], plan: Plan, limit: int, timeout_s: float,
                     max_record_bytes: int) -> Scanner:
    """`gateway scan` over the last `limit` events of `plan`'s source topic, decoded as the worker
    decodes them (its input mode, schema id and writer schemas): the scanner holds counts only."""
    decoder = codec_for(plan.schema.format).decoder(plan.schema, plan.input_mode, plan.schema_id, max_record_bytes,
                                                    dict(plan.writers_by_id), dict(plan.writers_by_fingerprint))
    scanner = Scanner(plan.schema)
    for value in sample_topic(kafka, plan.source_topic, limit, "end", timeout_s):
        try:
            record, _encoding = decoder.decode(value)
        except RejectedEvent as exc:
            scanner.failed(exc.reason)
            continue
        scanner.add(record)
    return scanner
