"""The consent topics on Kafka: the table restored and followed, raw consent events queued (the CLI)."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.consent.table import ConsentTable
from gateway.errors import GatewayError
from gateway.runtime import changelog, clients
from gateway.runtime.changelog import ChangelogFollower
from gateway.settings import GatewayConfig

STATE = "consent"  # gateway_state_records_skipped_total{state}


def restore_table(config: GatewayConfig, create: bool = True) -> tuple[ConsentTable, ChangelogFollower | None]:
    """The consent topic read to its end (read_committed) into a table, and, with `create`, a follower
    from there (the topic created first if missing: one partition, compacted)."""
    kafka = config.kafka_client_config()
    if create:
        changelog.ensure_changelog(kafka, config.consent_topic, 1)  # one partition: one order of changes
    records, follow_from = changelog.restore(kafka, config.consent_topic, missing_ok=not create)
    table = ConsentTable()
    changelog.apply_records(STATE, config.consent_topic, ((r.key, r.value) for r in records), table.apply)
    follower = ChangelogFollower(kafka, config.consent_topic, follow_from,
                                 group_id=f"{config.group_id}.consent-follower") if create else None
    return table, follower


def follow(table: ConsentTable, follower: ChangelogFollower, max_rounds: int = 100) -> int:
    """Apply what the consent topic committed since the last call (up to `max_rounds` polls); how many."""
    applied = 0
    for _ in range(max_rounds):
        records = follower.poll(10_000)
        changelog.apply_records(STATE, follower.topic, records, table.apply)
        applied += len(records)
        if not records:
            break
    return applied


def queue_raw_consent(config: GatewayConfig, event: dict[str, Any]) -> None:
    """Publish one raw consent event to the consent input topic, where producers put theirs."""
    producer = clients.plain_producer(config)
    failed: list[str] = []
    producer.produce(config.consent_input_topic, orjson.dumps(event),
                     on_delivery=lambda err, _msg: failed.append(err.str()) if err else None)
    if producer.flush(30) != 0 or failed:
        raise GatewayError(f"consent change not delivered to '{config.consent_input_topic}': "
                           f"{failed[0] if failed else 'timed out'}")
