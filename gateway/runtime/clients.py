"""The one place that makes Kafka clients: every consumer, producer and admin gets the security
settings from GatewayConfig.kafka_client_config() and the same defaults for its role.

librdkafka's own log lines (`%3|...|FAIL|...` on stderr, one per reconnect attempt) are silenced
for every client: `log_level` 0, or, when the root logger is at DEBUG, routed through the
`gateway.librdkafka` logger (JSON, redaction filter). What librdkafka reports as an error reaches
the client's `error_cb`, a `ClientErrors`: it keeps the most telling recent error, which
`require_metadata` names when the cluster cannot be reached, and (for long-running clients) logs
each kind of error at most once a minute through `gateway.kafka`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, ClusterMetadata

from gateway.errors import GatewayError
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.kafka")
_LIBRDKAFKA = logging.getLogger("gateway.librdkafka")  # librdkafka's log lines, at DEBUG only
CONNECT_TIMEOUT_S = 10.0  # how long a command waits for the cluster's first metadata answer
# errors that waiting does not cure: give up at once instead of at the deadline
_HOPELESS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED})
_NOISE = re.compile(r"^\S+/(?:bootstrap|\d+): |\s*\(after \d+ms in state \w+(?:, \d+ identical error\(s\) "
                    r"suppressed)?\)$")


class ClientErrors:
    """A client's `error_cb`: remembers the most telling recent error (a broker's own reason, say
    "Connect to ipv4#10.0.0.1:9092 failed: Connection refused", over the summary "1/1 brokers are
    down") and, with `log_every_s`, logs each error code at most that often through `gateway.kafka`
    (with how many were folded into it). Called from poll/consume/flush, in the polling thread."""

    def __init__(self, client: str, log_every_s: float | None = 60.0) -> None:
        self.client = client
        self.log_every_s = log_every_s
        self.last: KafkaError | None = None
        self._logged: dict[int, tuple[float, int]] = {}  # code -> (last logged at, folded since)

    def __call__(self, err: KafkaError) -> None:
        if err.code() != KafkaError._ALL_BROKERS_DOWN or self.last is None:
            self.last = err
        if self.log_every_s is None:
            return
        now = time.monotonic()
        at, folded = self._logged.get(err.code(), (-1e18, 0))
        if now - at < self.log_every_s:
            self._logged[err.code()] = (at, folded + 1)
            return
        self._logged[err.code()] = (now, 0)
        log.warning("kafka client error", extra={"client": self.client, "code": err.name(),
                                                 "reason": self.reason(err), "fatal": err.fatal(),
                                                 "repeated": folded})

    @staticmethod
    def reason(err: KafkaError) -> str:
        """The error's text without librdkafka's "host:port/bootstrap: " prefix and "(after 0ms in state
        CONNECT)" tail."""
        return _NOISE.sub("", err.str())

    @property
    def hopeless(self) -> bool:
        return self.last is not None and (self.last.code() in _HOPELESS or self.last.fatal())

    @property
    def cause(self) -> str | None:
        return self.reason(self.last) if self.last is not None else None


def _quiet(errors: ClientErrors | None) -> dict[str, Any]:
    """Settings that keep librdkafka off stderr and hand its errors to `errors`. Without `errors`
    librdkafka logs its errors, silenced as well: a client nobody polls (an admin) would otherwise
    queue every error event of an outage until it is closed."""
    quiet: dict[str, Any] = {"error_cb": errors} if errors is not None else {}
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        _LIBRDKAFKA.setLevel(logging.DEBUG)
        return {**quiet, "logger": _LIBRDKAFKA}
    return {**quiet, "log_level": 0}


def require_metadata(client: Consumer | Producer | AdminClient, errors: ClientErrors, bootstrap: str,
                     topic: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S) -> ClusterMetadata:
    """The cluster's metadata (of `topic` only, if given), asked for in one-second slices until
    `timeout_s`, or a GatewayError naming the bootstrap servers and what librdkafka said went wrong
    (refused, unresolvable, TLS or SASL failure: the last two without waiting for the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.list_topics(topic, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            client.poll(0)  # serves error_cb: the reason behind "Failed to get metadata"
            if time.monotonic() < deadline and not errors.hopeless:
                continue
            cause = errors.cause or exc.args[0].str()
            waited = "" if errors.hopeless else f"; no answer within {timeout_s:.0f}s"
            raise GatewayError(f"cannot reach Kafka at {bootstrap}: {cause}{waited} (check --bootstrap "
                               "and the security settings)") from None


def _kafka(config_or_kafka: GatewayConfig | Mapping[str, str]) -> dict[str, str]:
    """The client settings: from the config (security included), or a mapping already built by it."""
    if isinstance(config_or_kafka, GatewayConfig):
        return config_or_kafka.kafka_client_config()
    return dict(config_or_kafka)


def admin(config_or_kafka: GatewayConfig | Mapping[str, str], errors: ClientErrors | None = None) -> AdminClient:
    """An admin client; pass `errors` (and poll it, as require_metadata does) to learn why a request failed."""
    return AdminClient({**_kafka(config_or_kafka), **_quiet(errors)})


def group_consumer(config: GatewayConfig, group_id: str, client_id: str, errors: ClientErrors | None = None,
                   **overrides: Any) -> Consumer:
    """A consumer-group member of a transactional job: offsets are committed only inside the
    producer's transactions, only committed records are read, and rebalances are cooperative
    (a member joining or leaving moves only the partitions that change owner)."""
    return Consumer({
        **config.kafka_client_config(),
        **_quiet(errors or ClientErrors(f"consumer {client_id}")),
        "group.id": group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": config.session_timeout_ms,
        "heartbeat.interval.ms": max(500, config.session_timeout_ms // 5),
        **overrides,
    })


# How soon a transactional producer asks again when the coordinator answers CONCURRENT_TRANSACTIONS.
# commit_transaction returns once the coordinator logged the commit, and it then writes the markers to
# every partition of the transaction; a transaction begun meanwhile (the loop begins the next batch's at
# once) has its AddPartitionsToTxn and AddOffsetsToTxn refused until the markers are written, and
# librdkafka retries them after retry.backoff.ms (100 ms by default). That wait was the sanitize p99's
# constant extra ~100 ms: its transactions span more partitions (audit topic) than passthrough's, so
# their markers took longer and most next transactions met them (benchmarks/bench.py traced send_offsets
# at 110 ms mean; librdkafka's "eos" debug showed the retries 115 ms apart at 100 ms, 12 ms at 10). The
# Java producer retries this error after 20 ms for the same reason (KAFKA-5477). librdkafka doubles the
# backoff on each refusal in a row (seen: 10, 22, 39 ms) up to retry.backoff.max.ms (1 s by default): capped
# at 50 ms, a transaction waits at most 50 ms past the markers' end, and a broker in trouble still sees no
# more than 20 requests a second from a producer (produce retries share the cap, as before librdkafka 2.2
# they all waited a flat 100 ms).
TRANSACTION_RETRY_BACKOFF_MS = 10
TRANSACTION_RETRY_BACKOFF_MAX_MS = 50


def transactional_producer(config: GatewayConfig, transactional_id: str, errors: ClientErrors | None = None,
                           **overrides: Any) -> Producer:
    return Producer({
        **config.kafka_client_config(),
        **_quiet(errors or ClientErrors(f"producer {transactional_id}")),
        "transactional.id": transactional_id,
        "enable.idempotence": True,
        "linger.ms": 5,
        "retry.backoff.ms": TRANSACTION_RETRY_BACKOFF_MS,
        "retry.backoff.max.ms": TRANSACTION_RETRY_BACKOFF_MAX_MS,
        "transaction.timeout.ms": config.transaction_timeout_ms,
        **overrides,
    })


def offsets_probe(config: GatewayConfig, group_id: str) -> Consumer:
    """A consumer that only asks for a group's committed offsets and the partition ends. It reads
    read_uncommitted: its offset fetch then answers at once with the last committed offset, where a
    read_committed one waits while a transaction holds pending offsets (the stall it looks for)."""
    return Consumer({**config.kafka_client_config(), **_quiet(None), "group.id": group_id,
                     "enable.auto.commit": False, "isolation.level": "read_uncommitted"})


# for a reader that reads to the partition ends and closes: the end of a partition is known only from a
# fetch answer, and the broker holds a fetch that finds nothing for up to fetch.wait.max.ms (500 ms by
# default), so every read paid that at its end. A follower that lives on keeps the default: short
# waits cost the broker CPU in fetch requests for as long as it runs.
READ_TO_END = {"fetch.wait.max.ms": 20}


def reader(config_or_kafka: GatewayConfig | Mapping[str, str], group_id: str, errors: ClientErrors | None = None,
           **overrides: Any) -> Consumer:
    """A consumer that reads assigned partitions (no subscription, no commits) up to their end,
    committed records only unless `overrides` says otherwise."""
    return Consumer({**_kafka(config_or_kafka), **_quiet(errors or ClientErrors(f"reader {group_id}")),
                     "group.id": group_id, "enable.auto.commit": False, "isolation.level": "read_committed",
                     "enable.partition.eof": True, "auto.offset.reset": "earliest", **overrides})


def plain_producer(config_or_kafka: GatewayConfig | Mapping[str, str], errors: ClientErrors | None = None,
                   **overrides: Any) -> Producer:
    """An idempotent producer that waits for every replica (key records, forget)."""
    return Producer({**_kafka(config_or_kafka), **_quiet(errors or ClientErrors("producer")),
                     "enable.idempotence": True, "acks": "all", **overrides})


def produce_when_room(producer: Producer, topic: str, value: bytes | None, key: bytes | None = None,
                      **options: Any) -> None:
    """`producer.produce`, waiting while librdkafka's local queue is full (100,000 records by default)
    for deliveries to make room, where produce itself raises BufferError at once."""
    while True:
        try:
            producer.produce(topic, value, key, **options)
            return
        except BufferError:
            producer.poll(0.05)


def take(consumer: Consumer, max_messages: int, timeout_s: float) -> list[Message]:
    """Up to `max_messages`: waits up to `timeout_s` for the first, then takes what is queued.

    librdkafka's batch consume waits out its whole timeout unless the batch fills, so a read of a
    small topic lasted at least that timeout per turn (about a second per `read_topic`), and a
    reader timing arrivals saw them up to the timeout late."""
    first = consumer.poll(timeout_s)
    if first is None:
        return []
    if max_messages <= 1:
        return [first]
    return [first, *consumer.consume(max_messages - 1, 0)]
