"""The key topic's I/O: a compacted topic of wrapped per-subject and period DEKs (see subject_keys.py
and period_keys.py).

`KeyTopic` keeps a `SubjectKeys` in step with the topic: at start it reads the topic to its end,
then a background consumer thread applies every new record within a poll interval, so a tombstone
written by `gateway forget` evicts the key from every running worker within seconds. New keys are
produced (idempotent, acks=all) and flushed before the batch that uses them is published.

`forget_subject` is the erasure: tombstones for every key of a subject under every version of its
token domain, and one `subject_forgotten` event on the audit topic that names only the token(s).

The forget events form the audit chain ``keys:forget``. Its head (the last event's hash) is kept in
the key topic itself, as the record ``_audit-head/<audit topic>/keys:forget`` in partition 0 (a
bookkeeping record, not a key: see subject_keys.is_subject_key; compaction keeps its latest value).
One forget is one Kafka transaction under the stable transactional.id
``<group_id>-forget:<key topic>``:

1. init_transactions fences any earlier forget under that id (a concurrent one fails at its commit,
   a crashed one's open transaction is aborted) and waits until the previous one is complete;
2. the head is read from the key topic, read_committed (no head record: the chain starts at
   GENESIS, the event marked ``chain_restart``, which verify ignores for a new chain and reports
   as a restart, not a break, when earlier forget events exist, e.g. after an upgrade);
3. tombstones, the new head record and the sealed audit event are produced and committed together,
   so readers (read_committed) see all of them or none.

`enforce_retention` is the other erasure: tombstones for every period key whose period ended more
than its retention ago (period_keys.due_keys), audited by one ``retention_enforced`` event per run
(periods and key ids, never a subject's token) on its own chain ``keys:retention``, the same way:
head ``_audit-head/<audit topic>/keys:retention``, transactional.id
``<group_id>-retention:<key topic>`` (the CLI and the worker's schedule share it, so they fence
each other and the chain has one writer at a time). A run erasing more than
MAX_KEYS_PER_TRANSACTION keys commits several such transactions, one event each, so no audit event
outgrows a Kafka record. A run with nothing due writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from gateway.audit import GENESIS, AuditKeys, audit_partition, seal_audit_event
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys.keyring import Keyring
from gateway.keys.period_keys import (
    PeriodKeyName,
    PeriodKeys,
    day_label,
    due_keys,
    erase_at_ms,
    is_period_key,
    parse_period_key,
)
from gateway.keys.subject_keys import RESERVED_PREFIX, KeyRecord, SubjectKeys, is_key_record
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime import changelog, clients
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import AUDIT_TOPIC_CONFIG, admin_client, create_topics, partition_counts

log = logging.getLogger("gateway.keys")
KEY_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    # compact soon after a tombstone, so an erased key's old value leaves the log quickly
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": "3600000",
    "segment.ms": "600000",
    "delete.retention.ms": "86400000",
    "min.cleanable.dirty.ratio": "0.01",
}
FORGET_CHAIN = "keys:forget"
RETENTION_CHAIN = "keys:retention"
MAX_KEYS_PER_TRANSACTION = 2_000  # about 200 KB of key ids in one audit event, far below a record's limit
HEAD_PREFIX = f"{RESERVED_PREFIX}audit-head/"
HEAD_FORMAT = 1
HEAD_PARTITION = 0  # stable when partitions are added (a key's hash partition would move)
FORGET_TRANSACTION_TIMEOUT_MS = 30_000  # bounds how long a crashed forget can hold the topics' stable end
_HASH_RE = re.compile(r"[0-9a-f]{64}")
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def ensure_key_topic(kafka: Mapping[str, str], topic: str, partitions: int) -> int:
    admin = admin_client(kafka)
    create_topics(admin, {topic: partitions}, configs={topic: KEY_TOPIC_CONFIG})
    count = partition_counts(admin).get(topic)
    if not count:
        raise GatewayError(f"key topic '{topic}' (setting key_topic) could not be created or read")
    return count


class KeyTopic:
    """A running worker's link to the key topic: restores it (gateway.runtime.changelog), follows
    it on a thread so a tombstone evicts its key within a poll, and stores new keys."""

    def __init__(self, config: GatewayConfig, keys: SubjectKeys, load_timeout_s: float = 60.0) -> None:
        self.topic = config.key_topic
        self.keys = keys
        self._stop = threading.Event()
        kafka = config.kafka_client_config()
        self.partitions = ensure_key_topic(kafka, self.topic, config.partitions)
        self._producer = clients.plain_producer(kafka, **{"linger.ms": 0})
        # read_committed, as every changelog read: an aborted forget's tombstones never evict a key
        records, follow_from = changelog.restore(kafka, self.topic, timeout_s=load_timeout_s)
        for record in records:
            self._apply(record.key, record.value)
        self._follower = changelog.ChangelogFollower(kafka, self.topic, follow_from,
                                                     group_id=f"{config.group_id}.keys.{uuid.uuid4().hex[:8]}")
        self._thread = threading.Thread(target=self._follow, name="key-topic", daemon=True)
        self._thread.start()
        keys.publisher = self.publish
        log.info("key topic loaded", extra={"topic": self.topic, "subject_keys": len(keys)})

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or not is_key_record(key):  # not an audit chain's head
            return
        self.keys.apply(key, value)
        if value is None:
            kind = "period key erased" if is_period_key(key) else "subject key erased"
            log.info(kind, extra={"topic": self.topic})

    def _follow(self) -> None:
        while not self._stop.is_set():
            for key, value in self._follower.poll(500, 0.5):
                self._apply(key, value)
        self._follower.close()

    def publish(self, records: list[KeyRecord]) -> None:
        """Produce and wait: a key must be durable before any ciphertext under it leaves the gateway."""
        produce_records(self._producer, self.topic, records)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def produce_records(producer: Producer, topic: str, records: list[KeyRecord], timeout_s: float = 30.0) -> None:
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err.name())

    for key, value in records:
        producer.produce(topic, value, key, on_delivery=on_delivery)
    if producer.flush(timeout_s) or errors:
        raise GatewayError(f"could not store {len(records)} key record(s) on '{topic}' "
                           f"({', '.join(sorted(set(errors))) or 'timeout'}): nothing under them is published")


def load_subject_keys(kafka: Mapping[str, str], topic: str, keys: SubjectKeys) -> SubjectKeys:
    """Read the whole key topic into `keys`, period keys included (for decrypt, forget and rewrap).

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config())."""

    for record in read_topic(kafka, topic):
        if record.key is not None and is_key_record(record.key):  # not an audit chain's head
            keys.apply(record.key, record.value)
    return keys


def load_period_keys(kafka: Mapping[str, str], topic: str) -> PeriodKeys:
    """The key topic's period keys only, without a KMS (to list or erase them: `gateway retention`)."""
    keys = PeriodKeys(None)
    for record in read_topic(kafka, topic):
        if record.key is not None and is_period_key(record.key):
            keys.apply(record.key, record.value)
    return keys


def chain_head_key(audit_topic: str, chain: str) -> bytes:
    """Key of the key-topic record that holds the head of `audit_topic`'s chain `chain` (forget, retention)."""
    return f"{HEAD_PREFIX}{audit_topic}/{chain}".encode()


def chain_head_value(audit_topic: str, chain: str, last_hash: str) -> bytes:
    return orjson.dumps({"format": HEAD_FORMAT, "chain": chain, "audit_topic": audit_topic,
                         "hash": last_hash, "time": int(time.time() * 1000)})


def parse_chain_head(value: bytes | None, chain: str) -> str | None:
    """The last hash a head record holds; None for none (a tombstone) or an unreadable one."""
    if value is None:
        return None
    try:
        data = orjson.loads(value)
        last = data["hash"] if data.get("format") == HEAD_FORMAT else None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        last = None
    if isinstance(last, str) and _HASH_RE.fullmatch(last):
        return last
    log.warning("an audit chain's head record is unreadable: the chain restarts from genesis", extra={"chain": chain})
    return None


def read_chain_head(kafka: Mapping[str, str], key_topic: str, audit_topic: str, chain: str) -> str | None:
    """The chain's last hash as the key topic holds it (committed records only), or None."""
    wanted = chain_head_key(audit_topic, chain)
    value: bytes | None = None
    for record in read_topic(kafka, key_topic, partitions={HEAD_PARTITION}):
        if record.key == wanted:
            value = record.value
    return parse_chain_head(value, chain)


def forget_head_key(audit_topic: str) -> bytes:
    """Key of the key-topic record that holds the head of `audit_topic`'s forget chain."""
    return chain_head_key(audit_topic, FORGET_CHAIN)


def forget_head_value(audit_topic: str, last_hash: str) -> bytes:
    return chain_head_value(audit_topic, FORGET_CHAIN, last_hash)


def parse_forget_head(value: bytes | None) -> str | None:
    """The last hash a forget head record holds; None for none (a tombstone) or an unreadable one."""
    return parse_chain_head(value, FORGET_CHAIN)


def read_forget_head(kafka: Mapping[str, str], key_topic: str, audit_topic: str) -> str | None:
    """The forget chain's last hash as the key topic holds it (committed records only), or None."""
    return read_chain_head(kafka, key_topic, audit_topic, FORGET_CHAIN)


def forget_transactional_id(config: GatewayConfig) -> str:
    """One id per key topic, so forgets of one chain fence each other. The ':' keeps it apart from every
    worker's ``<group>-<instance>`` (an instance id has no ':'); the group prefix matches their ACLs."""
    return f"{config.group_id}-forget:{config.key_topic}"


def retention_transactional_id(config: GatewayConfig) -> str:
    """One id per key topic for every retention run, the CLI's and the workers' (see forget_transactional_id)."""
    return f"{config.group_id}-retention:{config.key_topic}"


def forget_subject(config: GatewayConfig, subject: str, domain: str, token_keys: dict[str, bytes],
                   keys: SubjectKeys) -> dict[str, Any]:
    """Tombstone every key of `subject` (under each token version of `domain`), its per-subject period keys
    included, and audit it, in one transaction with the forget chain's new head (see the module's
    docstring); return the event."""
    tokens = [DomainTokenizer(domain, version, key).token(subject) for version, key in sorted(token_keys.items())]
    names = [n for token in tokens for n in (*keys.keys_of(domain, token), *keys.periods.keys_of(domain, token))]
    kafka = config.kafka_client_config()
    audit_partitions = _audit_partitions(config)
    transactional_id = forget_transactional_id(config)
    producer = _chain_producer(config, transactional_id, "forget")  # from here on this one owns the chain
    prev = read_forget_head(kafka, config.key_topic, config.audit_topic)
    sealed = seal_audit_event(_forget_body(config, domain, tokens, names, restart=prev is None), prev or GENESIS,
                              audit_keys(config))
    _erase_and_audit(producer, config, FORGET_CHAIN, names, sealed, audit_partitions, transactional_id, "forget")
    for name in names:
        keys.apply(name.encode(), None)
    return sealed


def enforce_retention(config: GatewayConfig, periods: PeriodKeys, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Tombstone every period key of `periods` whose period ended more than its retention ago, and audit it
    on the retention chain (see the module's docstring); return the audit events (none: nothing was due).

    Running it twice is harmless: a key already erased is no longer in `periods` (a running worker's
    follower, or the key topic read again), so a second run finds nothing and writes nothing."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    due = due_keys(periods.names(), now_ms)
    if not due:
        return []
    kafka = config.kafka_client_config()
    audit_partitions = _audit_partitions(config)
    transactional_id = retention_transactional_id(config)
    producer = _chain_producer(config, transactional_id, "retention run")
    prev = read_chain_head(kafka, config.key_topic, config.audit_topic, RETENTION_CHAIN)
    restart = prev is None
    keys = audit_keys(config)
    events: list[dict[str, Any]] = []
    for start in range(0, len(due), MAX_KEYS_PER_TRANSACTION):
        chunk = due[start:start + MAX_KEYS_PER_TRANSACTION]
        names = [p.name for p in chunk]
        sealed = seal_audit_event(_retention_body(config, chunk, now_ms, restart), prev or GENESIS, keys)
        _erase_and_audit(producer, config, RETENTION_CHAIN, names, sealed, audit_partitions, transactional_id,
                         "retention run")
        for name in names:
            periods.apply(name.encode(), None)
        events.append(sealed)
        prev, restart = sealed["hash"], False  # this producer still owns the chain: a rival would have fenced it
    return events


def audit_keys(config: GatewayConfig) -> AuditKeys:
    """The audit MAC keys of the keyring at config.keyring (the workers'): forget and retention events
    are authenticated like the workers' records."""
    return AuditKeys(*Keyring.open(config.keyring, create=False).audit_keys())


def _chain_producer(config: GatewayConfig, transactional_id: str, what: str) -> Producer:
    """A transactional producer whose init_transactions fenced every earlier writer of its chain."""
    producer = clients.transactional_producer(config, transactional_id, **{
        "acks": "all", "linger.ms": 0, "transaction.timeout.ms": FORGET_TRANSACTION_TIMEOUT_MS})
    try:
        producer.init_transactions(60)
    except KafkaException as exc:
        raise GatewayError(f"cannot start the {what}'s transaction (transactional.id '{transactional_id}'): "
                           f"{exc.args[0].str()}; nothing was erased") from None
    return producer


def _erase_and_audit(producer: Producer, config: GatewayConfig, chain: str, names: list[str],
                     sealed: dict[str, Any], audit_partitions: int, transactional_id: str, what: str) -> None:
    """One transaction: the tombstones, the chain's new head in the key topic and the sealed audit event."""
    try:
        producer.begin_transaction()
        for name in names:
            producer.produce(config.key_topic, None, name.encode())
        producer.produce(config.key_topic, chain_head_value(config.audit_topic, chain, sealed["hash"]),
                         chain_head_key(config.audit_topic, chain), partition=HEAD_PARTITION)
        producer.produce(config.audit_topic, orjson.dumps(sealed), chain.encode(),
                         partition=audit_partition(chain, audit_partitions))
        _commit(producer, 60)
    except KafkaException as exc:
        raise _transaction_failed(producer, exc.args[0], transactional_id, what) from None


def _audit_partitions(config: GatewayConfig) -> int:
    admin = admin_client(config.kafka_client_config())
    create_topics(admin, {config.audit_topic: config.partitions}, configs={config.audit_topic: AUDIT_TOPIC_CONFIG})
    return partition_counts(admin)[config.audit_topic]


def _forget_body(config: GatewayConfig, domain: str, tokens: list[str], names: list[str],
                 restart: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "subject_forgotten",
        "chain": FORGET_CHAIN,
        "outcome": "subject_forgotten",
        "domain": domain,
        "subject_tokens": tokens,  # the subject's tokens, never the subject
        "keys_erased": len(names),
        "key_ids": [_forgotten_key_id(n) for n in names],
        "key_topic": config.key_topic,
        "instance": config.instance_id,
        "time": int(time.time() * 1000),
    }
    if restart:  # no head in the key topic: a new chain, or one whose head was lost
        body["chain_restart"] = True
    return body


def _forgotten_key_id(name: str) -> str:
    """The audit's id of an erased subject key ('subject:<domain>/<dek id>') or per-subject period key
    ('period:<days>/<day>/subject:<domain>/<dek id>'): never the token."""
    period = parse_period_key(name)
    if period is not None:
        return period.key_id
    return f"subject:{name.split('/', 1)[0]}/{name.rsplit('/', 1)[1]}"


def _retention_body(config: GatewayConfig, erased: list[PeriodKeyName], now_ms: int, restart: bool) -> dict[str, Any]:
    """The audit event of one retention transaction: per period (retention, day, scope) its key ids."""
    periods: dict[tuple[int, int, str], list[str]] = {}
    for key in erased:
        periods.setdefault((key.days, key.day, key.domain), []).append(key.key_id)
    body: dict[str, Any] = {
        "type": "retention_enforced",
        "chain": RETENTION_CHAIN,
        "outcome": "keys_erased",
        "periods": [{"retention_days": days, "period": day_label(day),
                     "scope": f"subject:{domain}" if domain else "shared",
                     "due_since": _iso_ms(erase_at_ms(days, day)),
                     "keys_erased": len(ids), "key_ids": sorted(ids)}
                    for (days, day, domain), ids in sorted(periods.items(), key=lambda p: (p[0][1], p[0][0], p[0][2]))],
        "keys_erased": len(erased),
        "key_topic": config.key_topic,
        "instance": config.instance_id,
        "time": now_ms,
    }
    if restart:  # no head in the key topic: a new chain, or one whose head was lost
        body["chain_restart"] = True
    return body


def _iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _commit(producer: Producer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.commit_transaction(max(1.0, deadline - time.monotonic()))
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() >= deadline:
                raise


def _transaction_failed(producer: Producer, err: KafkaError, transactional_id: str,
                        what: str = "forget") -> GatewayError:
    if err.txn_requires_abort():
        with contextlib.suppress(KafkaException):
            producer.abort_transaction(30)
    if err.code() in _FENCED:
        other = "'gateway forget'" if what == "forget" else "retention run (a worker's or 'gateway retention enforce')"
        return GatewayError(f"another {other} (transactional.id '{transactional_id}') started while this "
                            "one ran and fenced it: nothing of this one was written; run it again")
    if err.retriable():
        return GatewayError(f"the {what}'s commit did not complete ({err.str()}): it is all or nothing (tombstones, "
                            "chain head and audit event in one transaction); running it again is harmless")
    return GatewayError(f"the {what} could not be written ({err.str()}): nothing of it is visible to readers "
                        "(one transaction: tombstones, chain head and audit event); run it again")


def cmd_rewrap(args: argparse.Namespace, config: GatewayConfig) -> int:
    """Re-store per-subject keys wrapped under an older KEK, under the active one (same DEK, same id)."""
    from gateway.keys.keyring import Keyring
    from gateway.keys.providers import build_kms

    keyring = Keyring.open(config.keyring, create=False) if config.keyring.exists() else None
    kms = build_kms(config, keyring)
    keys = load_subject_keys(config.kafka_client_config(), config.key_topic, SubjectKeys(kms))
    records = keys.rewrap() + keys.periods.rewrap()
    if records:
        produce_records(clients.plain_producer(config), config.key_topic, records)
    print(f"rewrapped {len(records)} of {len(keys) + len(keys.periods)} subject and period key(s) on "
          f"'{config.key_topic}' under "
          f"{kms.active_key_id()}. Field ciphertexts of format v1 carry their own wrapped DEK and are not "
          "rewrapped: keep their KEK (decrypt-only) until their topics' retention has passed")
    return 0
