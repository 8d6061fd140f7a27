"""Kafka admin: make sure the topics a worker reads and writes exist, with sensible partitions."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.core.pipeline import max_message_bytes
from gateway.core.policy.plan import Plan
from gateway.errors import ConfigError, GatewayError
from gateway.runtime import clients
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.topics")
# the audit is kept for ever: a chain whose first records expired could no longer be verified from
# genesis (every honest chain would report a break after the broker's default 7 days)
AUDIT_TOPIC_CONFIG = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}


def admin_client(kafka: Mapping[str, str]) -> AdminClient:
    """`kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config())."""
    return clients.admin(kafka)


def partition_counts(admin: AdminClient, timeout: float = 15.0) -> dict[str, int]:
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise GatewayError(f"cannot reach Kafka to read topic metadata: {exc.args[0].str()}") from None
    return {name: len(t.partitions) for name, t in metadata.topics.items() if t.error is None}


def create_topics(admin: AdminClient, wanted: dict[str, int], timeout: float = 30.0,
                  configs: dict[str, dict[str, str]] | None = None) -> list[str]:
    """Create the topics of `wanted` (name -> partitions) that do not exist; return those created."""
    existing = partition_counts(admin)
    missing = [NewTopic(name, num_partitions=n, replication_factor=-1, config=(configs or {}).get(name, {}))
               for name, n in wanted.items() if name not in existing]
    created: list[str] = []
    if not missing:
        return created
    for name, future in admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise GatewayError(f"cannot create topic '{name}': {exc.args[0].str()}") from None
    if created:
        _wait_until_visible(admin, created, timeout)
        log.info("created topics", extra={"topics": sorted(created)})
    return created


def _wait_until_visible(admin: AdminClient, topics: list[str], timeout: float) -> None:
    """Kafka answers CreateTopics before every broker's metadata has the topics and their leaders:
    wait until it does, so what follows (partition counts, produce, assign) sees them."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = admin.list_topics(timeout=timeout).topics
        ready = [t for t in topics if t in metadata and metadata[t].error is None and metadata[t].partitions
                 and all(p.leader >= 0 for p in metadata[t].partitions.values())]
        if len(ready) == len(topics):
            return
        if time.monotonic() > deadline:
            raise GatewayError(f"created topics {sorted(set(topics) - set(ready))} did not show in the metadata "
                               f"within {timeout:.0f}s")
        time.sleep(0.05)


def topics_for(plans: Sequence[Plan], config: GatewayConfig, existing: dict[str, int]) -> dict[str, int]:
    """Every topic the worker needs, with the source topic's partition count for its outputs."""
    wanted: dict[str, int] = {config.audit_topic: existing.get(config.audit_topic, config.partitions)}
    if any(p.quality is not None for p in plans):
        wanted[config.quality_topic] = existing.get(config.quality_topic, config.partitions)
    for plan in plans:
        n = existing.get(plan.source_topic, config.partitions)
        for topic in (plan.source_topic, plan.sanitized_topic, plan.dlq_topic, *(p.topic for p in plan.purposes)):
            wanted.setdefault(topic, existing.get(topic, n))
    if config.consent_input_topic and any(p.consent_purposes for p in plans):
        n = existing.get(config.consent_input_topic, config.partitions)
        for topic in (config.consent_input_topic, f"{config.consent_input_topic}.dlq"):
            wanted.setdefault(topic, existing.get(topic, n))
    return wanted


def ensure_topics(plans: Sequence[Plan], config: GatewayConfig) -> dict[str, int]:
    """Create missing topics (or fail naming them when create_topics is off); return partition counts."""
    admin = admin_client(config.kafka_client_config())
    existing = partition_counts(admin)
    wanted = topics_for(plans, config, existing)
    missing = sorted(t for t in wanted if t not in existing)
    if missing and not config.create_topics:
        raise ConfigError(f"setting 'create_topics' is off and these topics do not exist: {', '.join(missing)}")
    if missing:
        # dead letters carry the sealed original: allow them the producer's limit, and keep them only
        # dlq_retention_days (what bounds the quarantine key's reach: forget cannot erase formats 1 and 3)
        limit = str(max_message_bytes(config))
        retention = str(config.dlq_retention_days * 86_400_000)
        configs = {p.dlq_topic: {"max.message.bytes": limit, "retention.ms": retention} for p in plans}
        configs[config.audit_topic] = AUDIT_TOPIC_CONFIG
        if config.consent_input_topic:
            configs[f"{config.consent_input_topic}.dlq"] = {"max.message.bytes": limit, "retention.ms": retention}
        create_topics(admin, {t: wanted[t] for t in missing}, configs=configs)
    return partition_counts(admin)
