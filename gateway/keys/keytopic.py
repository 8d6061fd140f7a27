"""The key topic's I/O: a compacted topic of wrapped per-subject DEKs (see subject_keys.py).

`KeyTopic` keeps a `SubjectKeys` in step with the topic: at start it reads the topic to its end,
then a background consumer thread applies every new record within a poll interval, so a tombstone
written by `gateway forget` evicts the key from every running worker within seconds. New keys are
produced (idempotent, acks=all) and flushed before the batch that uses them is published.

`forget_subject` is the erasure: tombstones for every key of a subject under every version of its
token domain, and one `subject_forgotten` event on the audit topic that names only the token(s).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from gateway.audit import GENESIS, audit_partition, seal_audit_event
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys.subject_keys import KeyRecord, SubjectKeys
from gateway.keys.tokens import DomainTokenizer

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


def ensure_key_topic(kafka: Mapping[str, str], topic: str, partitions: int) -> int:
    from gateway.topics import admin_client, create_topics, partition_counts

    admin = admin_client(kafka)
    create_topics(admin, {topic: partitions}, configs={topic: KEY_TOPIC_CONFIG})
    count = partition_counts(admin).get(topic)
    if not count:
        raise GatewayError(f"key topic '{topic}' (setting key_topic) could not be created or read")
    return count


class KeyTopic:
    """A running worker's link to the key topic: loads it, follows it, and stores new keys."""

    def __init__(self, config: GatewayConfig, keys: SubjectKeys, load_timeout_s: float = 60.0) -> None:
        self.topic = config.key_topic
        self.keys = keys
        self._stop = threading.Event()
        self._loaded = threading.Event()
        kafka = config.kafka_client_config()
        self.partitions = ensure_key_topic(kafka, self.topic, config.partitions)
        self._producer = Producer({**kafka, "enable.idempotence": True, "acks": "all", "linger.ms": 0})
        self._consumer = Consumer({**kafka,
                                   "group.id": f"{config.group_id}.keys.{uuid.uuid4().hex[:8]}",
                                   "enable.auto.commit": False, "enable.partition.eof": True,
                                   "auto.offset.reset": "earliest"})
        self._thread = threading.Thread(target=self._follow, name="key-topic", daemon=True)
        self._thread.start()
        if not self._loaded.wait(load_timeout_s):
            raise GatewayError(f"key topic '{self.topic}' could not be read to its end within {load_timeout_s}s")
        keys.publisher = self.publish
        log.info("key topic loaded", extra={"topic": self.topic, "subject_keys": len(keys)})

    def _follow(self) -> None:
        self._consumer.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])
        at_end: set[int] = set()
        while not self._stop.is_set():
            msg = self._consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    if len(at_end) == self.partitions:
                        self._loaded.set()
                continue
            if msg.key() is not None:
                self.keys.apply(msg.key(), msg.value())
                if msg.value() is None:
                    log.info("subject key erased", extra={"topic": self.topic})
        self._consumer.close()

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
    from gateway.consume import read_topic

    for record in read_topic(kafka, topic):
        if record.key is not None:
            keys.apply(record.key, record.value)
    return keys


def forget_subject(config: GatewayConfig, subject: str, domain: str, token_keys: dict[str, bytes],
                   keys: SubjectKeys) -> dict[str, Any]:
    """Tombstone every key of `subject` (under each token version of `domain`); audit it; return the event."""
    tokens = [DomainTokenizer(domain, version, key).token(subject) for version, key in sorted(token_keys.items())]
    names = [n for token in tokens for n in keys.keys_of(domain, token)]
    producer = Producer({**config.kafka_client_config(), "enable.idempotence": True, "acks": "all"})
    produce_records(producer, config.key_topic, [(n.encode(), None) for n in names])
    for name in names:
        keys.apply(name.encode(), None)
    return _audit_forget(config, producer, domain, tokens, names)


def _audit_forget(config: GatewayConfig, producer: Producer, domain: str, tokens: list[str],
                  names: list[str]) -> dict[str, Any]:
    from gateway.topics import admin_client, create_topics, partition_counts
    from gateway.worker import ChainRecovery

    admin = admin_client(config.kafka_client_config())
    create_topics(admin, {config.audit_topic: config.partitions})
    partitions = partition_counts(admin)[config.audit_topic]
    heads, _lost = ChainRecovery(config, partitions).recover([FORGET_CHAIN])
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
    sealed = seal_audit_event(body, heads.get(FORGET_CHAIN, GENESIS))
    producer.produce(config.audit_topic, orjson.dumps(sealed), FORGET_CHAIN.encode(),
                     partition=audit_partition(FORGET_CHAIN, partitions))
    if producer.flush(30):
        raise GatewayError(f"the keys were erased but the audit event could not be written to '{config.audit_topic}'")
    return sealed

