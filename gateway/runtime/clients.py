"""The one place that makes Kafka clients: every consumer, producer and admin gets the security
settings from GatewayConfig.kafka_client_config() and the same defaults for its role."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from gateway.config import GatewayConfig


def _kafka(config_or_kafka: GatewayConfig | Mapping[str, str]) -> dict[str, str]:
    """The client settings: from the config (security included), or a mapping already built by it."""
    if isinstance(config_or_kafka, GatewayConfig):
        return config_or_kafka.kafka_client_config()
    return dict(config_or_kafka)


def admin(config_or_kafka: GatewayConfig | Mapping[str, str]) -> AdminClient:
    return AdminClient({**_kafka(config_or_kafka)})


def group_consumer(config: GatewayConfig, group_id: str, client_id: str, **overrides: Any) -> Consumer:
    """A consumer-group member of a transactional job: offsets are committed only inside the
    producer's transactions, only committed records are read, and rebalances are cooperative
    (a member joining or leaving moves only the partitions that change owner)."""
    return Consumer({
        **config.kafka_client_config(),
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


def transactional_producer(config: GatewayConfig, transactional_id: str, **overrides: Any) -> Producer:
    return Producer({
        **config.kafka_client_config(),
        "transactional.id": transactional_id,
        "enable.idempotence": True,
        "linger.ms": 5,
        "transaction.timeout.ms": config.transaction_timeout_ms,
        **overrides,
    })


def offsets_probe(config: GatewayConfig, group_id: str) -> Consumer:
    """A consumer that only asks for a group's committed offsets and the partition ends. It reads
    read_uncommitted: its offset fetch then answers at once with the last committed offset, where a
    read_committed one waits while a transaction holds pending offsets (the stall it looks for)."""
    return Consumer({**config.kafka_client_config(), "group.id": group_id, "enable.auto.commit": False,
                     "isolation.level": "read_uncommitted"})


def reader(config_or_kafka: GatewayConfig | Mapping[str, str], group_id: str, **overrides: Any) -> Consumer:
    """A consumer that reads assigned partitions (no subscription, no commits) up to their end,
    committed records only unless `overrides` says otherwise."""
    return Consumer({**_kafka(config_or_kafka), "group.id": group_id, "enable.auto.commit": False,
                     "isolation.level": "read_committed", "enable.partition.eof": True,
                     "auto.offset.reset": "earliest", **overrides})


def plain_producer(config_or_kafka: GatewayConfig | Mapping[str, str], **overrides: Any) -> Producer:
    """An idempotent producer that waits for every replica (key records, forget)."""
    return Producer({**_kafka(config_or_kafka), "enable.idempotence": True, "acks": "all", **overrides})
