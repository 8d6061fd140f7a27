"""The key topic's I/O: a compacted topic of wrapped per-subject DEKs (see subject_keys.py).

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

from gateway.audit import GENESIS, audit_partition, seal_audit_event
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys.subject_keys import RESERVED_PREFIX, KeyRecord, SubjectKeys, is_subject_key
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime import changelog, clients
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import admin_client, create_topics, partition_counts

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
        if key is None or not is_subject_key(key):  # not the forget chain's head
            return
        self.keys.apply(key, value)
        if value is None:
            log.info("subject key erased", extra={"topic": self.topic})

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
    """Read the whole key topic into `keys` (for decrypt, forget and rewrap).

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config())."""

    for record in read_topic(kafka, topic):
        if record.key is not None and is_subject_key(record.key):  # not the forget chain's head
            keys.apply(record.key, record.value)
    return keys


def forget_head_key(audit_topic: str) -> bytes:
    """Key of the key-topic record that holds the head of `audit_topic`'s forget chain."""
    return f"{HEAD_PREFIX}{audit_topic}/{FORGET_CHAIN}".encode()


def forget_head_value(audit_topic: str, last_hash: str) -> bytes:
    return orjson.dumps({"format": HEAD_FORMAT, "chain": FORGET_CHAIN, "audit_topic": audit_topic,
                         "hash": last_hash, "time": int(time.time() * 1000)})


def parse_forget_head(value: bytes | None) -> str | None:
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
    log.warning("the forget chain's head record is unreadable: the chain restarts from genesis", extra={})
    return None


def read_forget_head(kafka: Mapping[str, str], key_topic: str, audit_topic: str) -> str | None:
    """The forget chain's last hash as the key topic holds it (committed records only), or None."""

    wanted = forget_head_key(audit_topic)
    value: bytes | None = None
    for record in read_topic(kafka, key_topic, partitions={HEAD_PARTITION}):
        if record.key == wanted:
            value = record.value
    return parse_forget_head(value)


def forget_transactional_id(config: GatewayConfig) -> str:
    """One id per key topic, so forgets of one chain fence each other. The ':' keeps it apart from every
    worker's ``<group>-<instance>`` (an instance id has no ':'); the group prefix matches their ACLs."""
    return f"{config.group_id}-forget:{config.key_topic}"


def forget_subject(config: GatewayConfig, subject: str, domain: str, token_keys: dict[str, bytes],
                   keys: SubjectKeys) -> dict[str, Any]:
    """Tombstone every key of `subject` (under each token version of `domain`) and audit it, in one
    transaction with the forget chain's new head (see the module's docstring); return the event."""
    tokens = [DomainTokenizer(domain, version, key).token(subject) for version, key in sorted(token_keys.items())]
    names = [n for token in tokens for n in keys.keys_of(domain, token)]
    kafka = config.kafka_client_config()
    audit_partitions = _audit_partitions(config)
    transactional_id = forget_transactional_id(config)
    producer = clients.transactional_producer(config, transactional_id, **{
        "acks": "all", "linger.ms": 0, "transaction.timeout.ms": FORGET_TRANSACTION_TIMEOUT_MS})
    try:
        producer.init_transactions(60)  # fences earlier forgets: from here on this one owns the chain
    except KafkaException as exc:
        raise GatewayError(f"cannot start the forget's transaction (transactional.id '{transactional_id}'): "
                           f"{exc.args[0].str()}; nothing was erased") from None
    prev = read_forget_head(kafka, config.key_topic, config.audit_topic)
    sealed = seal_audit_event(_forget_body(config, domain, tokens, names, restart=prev is None), prev or GENESIS)
    try:
        producer.begin_transaction()
        for name in names:
            producer.produce(config.key_topic, None, name.encode())
        producer.produce(config.key_topic, forget_head_value(config.audit_topic, sealed["hash"]),
                         forget_head_key(config.audit_topic), partition=HEAD_PARTITION)
        producer.produce(config.audit_topic, orjson.dumps(sealed), FORGET_CHAIN.encode(),
                         partition=audit_partition(FORGET_CHAIN, audit_partitions))
        _commit(producer, 60)
    except KafkaException as exc:
        raise _transaction_failed(producer, exc.args[0], transactional_id) from None
    for name in names:
        keys.apply(name.encode(), None)
    return sealed


def _audit_partitions(config: GatewayConfig) -> int:
    admin = admin_client(config.kafka_client_config())
    create_topics(admin, {config.audit_topic: config.partitions})
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
        "key_ids": [f"subject:{n.split('/', 1)[0]}/{n.rsplit('/', 1)[1]}" for n in names],
        "key_topic": config.key_topic,
        "instance": config.instance_id,
        "time": int(time.time() * 1000),
    }
    if restart:  # no head in the key topic: a new chain, or one whose head was lost
        body["chain_restart"] = True
    return body


def _commit(producer: Producer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.commit_transaction(max(1.0, deadline - time.monotonic()))
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() >= deadline:
                raise


def _transaction_failed(producer: Producer, err: KafkaError, transactional_id: str) -> GatewayError:
    if err.txn_requires_abort():
        with contextlib.suppress(KafkaException):
            producer.abort_transaction(30)
    if err.code() in _FENCED:
        return GatewayError(f"another 'gateway forget' (transactional.id '{transactional_id}') started while this "
                            "one ran and fenced it: nothing of this one was written; run it again")
    if err.retriable():
        return GatewayError(f"the forget's commit did not complete ({err.str()}): it is all or nothing (tombstones, "
                            "chain head and audit event in one transaction); running it again is harmless")
    return GatewayError(f"the forget could not be written ({err.str()}): nothing of it is visible to readers "
                        "(one transaction: tombstones, chain head and audit event); run it again")


def cmd_rewrap(args: argparse.Namespace, config: GatewayConfig) -> int:
    """Re-store per-subject keys wrapped under an older KEK, under the active one (same DEK, same id)."""
    from gateway.keys.keyring import Keyring
    from gateway.keys.providers import build_kms

    keyring = Keyring.open(config.keyring, create=False) if config.keyring.exists() else None
    kms = build_kms(config, keyring)
    keys = load_subject_keys(config.kafka_client_config(), config.key_topic, SubjectKeys(kms))
    records = keys.rewrap()
    if records:
        produce_records(clients.plain_producer(config), config.key_topic, records)
    print(f"rewrapped {len(records)} of {len(keys)} subject key(s) on '{config.key_topic}' under "
          f"{kms.active_key_id()}. Field ciphertexts of format v1 carry their own wrapped DEK and are not "
          "rewrapped: keep their KEK (decrypt-only) until their topics' retention has passed")
    return 0
