"""`gateway audit verify`'s Kafka side: the anchors, the audit topic and the source partitions it
judges coverage against (the judging itself is gateway.core.audit_verify's, pure).

The anchors are read before the audit topic: every head committed by then has its records on the
topic by the time it is read (they commit in one transaction), so on a live gateway a chain can
only run past its anchor, never stop short of it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import orjson
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from gateway.core.audit import AuditKeys, ChainReport, Finding, Kind, chain_key, parse_head_metadata
from gateway.core.audit_verify import Anchor, SourceOffsets, verify_audit
from gateway.errors import GatewayError
from gateway.keys.keyring import Keyring
from gateway.runtime import clients
from gateway.runtime.jobs.aggregate import bound_chain, release_chain
from gateway.runtime.keytopic import FORGET_CHAIN, HEAD_PARTITION, RETENTION_CHAIN, chain_head_key, parse_chain_head
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import partition_counts
from gateway.settings import GatewayConfig


class KafkaSource:
    """Source partitions read read_committed: which offsets hold records (gateway.core.audit_verify.SourceView)."""

    def __init__(self, kafka: Mapping[str, str], timeout_s: float = 120.0) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s

    def offsets(self, topic: str, partition: int, first: int, end: int) -> SourceOffsets:
        consumer = clients.reader(self.kafka, "privacy-gateway.audit-verify", **clients.READ_TO_END)
        try:
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=15)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise
                return SourceOffsets(frozenset(), end)  # the source is gone: no offset can be judged
            start, stop = max(first, low), min(end, high)
            present: set[int] = set()
            if start < stop:
                consumer.assign([TopicPartition(topic, partition, start)])
                self._read(consumer, topic, stop, present)
            return SourceOffsets(frozenset(present), low)
        except KafkaException as exc:
            raise GatewayError(f"cannot read source partition {topic}:{partition} to check the audit's coverage: "
                               f"{exc.args[0].str()}") from None
        finally:
            consumer.close()

    def _read(self, consumer: Consumer, topic: str, stop: int, present: set[int]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            for msg in clients.take(consumer, 5000, 0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return  # the last stable offset: nothing committed lies beyond
                    continue
                if msg.offset() >= stop:
                    return
                present.add(msg.offset())
        raise GatewayError(f"reading source topic '{topic}' to offset {stop} took more than {self.timeout_s:.0f}s")


def _group_offsets(admin: AdminClient, group: str) -> list[TopicPartition]:
    """The group's committed offsets with their metadata ([] when it has none)."""
    try:
        future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], require_stable=True,
                                                  request_timeout=15)[group]
        return [tp for tp in future.result().topic_partitions or [] if tp.offset >= 0 and tp.error is None]
    except KafkaException as exc:
        if exc.args[0].code() in (KafkaError.GROUP_ID_NOT_FOUND, KafkaError._UNKNOWN_GROUP):
            return []
        raise GatewayError(f"cannot read the committed offsets of group '{group}': {exc.args[0].str()}") from None


def read_anchors(config: GatewayConfig, group: str, audit_topic: str) -> dict[str, Anchor]:
    """Every chain head committed outside the audit topic: the sanitize group's (with the committed
    offsets), the DP stages' groups', and the forget and retention heads in the key topic."""
    admin = clients.admin(config)
    anchors: dict[str, Anchor] = {}
    for tp in _group_offsets(admin, group):
        anchors[chain_key(tp.topic, tp.partition)] = Anchor(
            parse_head_metadata(tp.metadata), f"group '{group}' at offset {tp.offset}", tp.offset)
    for tp in _group_offsets(admin, f"{group}.dp-bound"):
        if _field(tp.metadata, "audit_head") is not None:  # this job's metadata (head or none yet)
            anchors[bound_chain(tp.topic, tp.partition)] = Anchor(parse_head_metadata(tp.metadata),
                                                                  f"group '{group}.dp-bound' at offset {tp.offset}")
    for tp in _group_offsets(admin, f"{group}.dp-release"):
        heads = _field(tp.metadata, "audit_heads")
        for aggregate, head in (heads.items() if isinstance(heads, dict) else ()):
            anchors[release_chain(aggregate, tp.partition)] = Anchor(
                head if isinstance(head, str) else None, f"group '{group}.dp-release' at offset {tp.offset}")
    if config.key_topic in partition_counts(admin):
        wanted = {chain_head_key(audit_topic, chain): chain for chain in (FORGET_CHAIN, RETENTION_CHAIN)}
        values: dict[str, bytes | None] = {}
        for record in read_topic(config.kafka_client_config(), config.key_topic, partitions={HEAD_PARTITION}):
            if record.key in wanted:
                values[wanted[record.key]] = record.value
        for chain, value in values.items():
            anchors[chain] = Anchor(parse_chain_head(value, chain), f"key topic '{config.key_topic}'")
    return anchors


def _field(metadata: str | None, name: str) -> object:
    """`name` of a committed metadata JSON object ("" when present but null; None when absent)."""
    try:
        data = orjson.loads(metadata or b"")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or name not in data:
        return None
    return "" if data[name] is None else data[name]


def verify_audit_topic(config: GatewayConfig, audit_topic: str, group: str, allow_legacy: bool = False) -> ChainReport:
    """Verify `audit_topic` against the keyring's audit keys, the heads committed by `group` (and its
    DP stages and the key topic), and the source partitions' committed records."""
    keys = AuditKeys(*Keyring.open(config.keyring, create=False).audit_keys(create=False))
    kafka = config.kafka_client_config()
    anchors = read_anchors(config, group, audit_topic)  # first: see the module's docstring
    exists = audit_topic in partition_counts(clients.admin(config))
    if not exists and not anchors:
        raise GatewayError(f"audit topic '{audit_topic}' does not exist on {config.bootstrap} and group '{group}' "
                           "committed no chain head: nothing to verify (pass --topic and --group-id)")
    records = read_topic(kafka, audit_topic) if exists else []
    report = verify_audit(((r.partition, r.offset, r.value or b"") for r in records), keys, anchors,
                          KafkaSource(kafka), allow_legacy)
    if not exists:
        report.findings.insert(0, Finding(Kind.MISSING, f"audit topic '{audit_topic}' does not exist, yet "
                                                        f"{len(anchors)} chain head(s) are committed"))
    if records and not any(a.offset is not None for a in anchors.values()):
        # every sanitize chain would be a mere note: a wrong --group-id must not pass for a verified audit
        report.findings.insert(0, Finding(Kind.NO_ANCHORS, f"group '{group}' has no committed offsets: nothing "
                                                           "anchors the sanitize chains (pass the workers' "
                                                           "--group-id)"))
    return report
