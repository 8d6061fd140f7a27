"""The one place that makes Kafka clients: every consumer, producer and admin gets the security
settings from GatewayConfig.kafka_client_config() and the same defaults for its role."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from gateway.config import GatewayConfig


def admin(config: GatewayConfig) -> AdminClient:
    return AdminClient(config.kafka_client_config())


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


def reader(config_or_kafka: GatewayConfig | dict[str, str], group_id: str, **overrides: Any) -> Consumer:
    """A consumer that reads assigned partitions (no subscription, no commits) up to their end."""
    kafka = (config_or_kafka.kafka_client_config() if isinstance(config_or_kafka, GatewayConfig)
             else dict(config_or_kafka))
    return Consumer({**kafka, "group.id": group_id, "enable.auto.commit": False,
                     "isolation.level": "read_committed", "enable.partition.eof": True,
                     "auto.offset.reset": "earliest", **overrides})


def plain_producer(config_or_kafka: GatewayConfig | dict[str, str], **overrides: Any) -> Producer:
    """An idempotent producer that waits for every replica (key records, forget)."""
    kafka = (config_or_kafka.kafka_client_config() if isinstance(config_or_kafka, GatewayConfig)
             else dict(config_or_kafka))
    return Producer({**kafka, "enable.idempotence": True, "acks": "all", **overrides})
