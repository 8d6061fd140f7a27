"""Count sanitized payments per country with faust-streaming, reading the gateway's records as they are.

    pip install 'privacy-gateway[faust]'
    GATEWAY_SCHEMAS=schemas EXAMPLE_TOPIC=payments.sanitized \\
        python -m faust -A examples.faust_payments_by_country worker -l info --without-web

`GatewaySchema` decodes each record by its headers (Avro or JSON, one topic may mix them). With
`GATEWAY_KEYRING` set it opens the encrypted fields too; without, they stay closed and are reported
`key_not_held`. The count is a faust table keyed by country. The sanitized topic is keyed by
subject, so the first agent re-keys each payment by country onto a topic of this app's own,
carrying the country alone (never an opened field), and the second counts what is co-partitioned.

Settings (environment): GATEWAY_SCHEMAS (schema directory), GATEWAY_KEYRING (optional), EXAMPLE_TOPIC,
EXAMPLE_BROKER (kafka://127.0.0.1:9092), EXAMPLE_APP_ID, EXAMPLE_PARTITIONS (those of the sanitized
topic), EXAMPLE_OUT (optional: a JSON file rewritten after every count with the counts, the outcome
tallies per encrypted field and the customer names opened by event id: keep it as safe as the keyring),
EXAMPLE_DATADIR (faust's own state folder; <app id>-data in the working directory by default).
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import faust
import orjson
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.integrations.faust import GatewaySchema

SCHEMAS = os.environ.get("GATEWAY_SCHEMAS", "schemas")
KEYRING = os.environ.get("GATEWAY_KEYRING") or None
TOPIC = os.environ.get("EXAMPLE_TOPIC", "payments.sanitized")
APP_ID = os.environ.get("EXAMPLE_APP_ID", "payments-by-country")
PARTITIONS = int(os.environ.get("EXAMPLE_PARTITIONS", "6"))
OUT = os.environ.get("EXAMPLE_OUT")

BROKER = os.environ.get("EXAMPLE_BROKER", "kafka://127.0.0.1:9092")

# the topics faust creates are created before the worker starts (create_topics); should one still be
# missing from the metadata the group joins with, the next refresh finds it in seconds, not 5 minutes
app = faust.App(APP_ID, broker=BROKER, store="memory://",
                datadir=os.environ.get("EXAMPLE_DATADIR", f"{APP_ID}-data"),
                topic_partitions=PARTITIONS, web_enabled=False, consumer_auto_offset_reset="earliest",
                # exactly once is also what makes faust read read_committed: otherwise it reads the records of
                # the gateway's aborted transactions too (an abort after a failed commit, then the batch again)
                processing_guarantee="exactly_once",
                consumer_metadata_max_age_ms=3_000)
payments = app.topic(TOPIC, schema=GatewaySchema(SCHEMAS, KEYRING))
by_country = app.topic(f"{APP_ID}-by-country", key_type=str, value_type=int, partitions=PARTITIONS, internal=True)
counts = app.Table("payments-by-country", default=int, partitions=PARTITIONS)

# this worker's report, by event id: faust's exactly-once covers its tables and topics, not this process's
# dicts, and a record it processes again after a rebalance (from the last committed offset) then
# overwrites its own entry instead of being counted twice
outcomes: dict[str, dict[str, str]] = {}  # event id -> field path -> reason
opened_names: dict[str, str] = {}  # event id -> opened customer_name


@app.on_worker_init.connect
def create_topics(sender: Any, **_: Any) -> None:
    """faust creates the by-country topic and the table's changelog at start-up, each within ~100 ms
    of the group's join, and the consumer may join before the broker's metadata shows them: the
    group then rebalances once they appear, and faust-streaming 0.15's exactly-once processes the
    records since the last commit again, its transactional producers left mid-transaction ("Invalid
    state transition IN_TRANSACTION -> IN_TRANSACTION" in a CI run's log). Created here, as faust
    would create them, before the worker starts, they are in the metadata of the first join."""
    admin = AdminClient({"bootstrap.servers": BROKER.removeprefix("kafka://")})
    topics = [_new_topic(by_country), _new_topic(counts.changelog_topic)]
    for future in admin.create_topics(topics).values():
        try:
            future.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def _new_topic(topic: Any) -> NewTopic:
    """`topic` as faust's Topic.declare creates it: partitions, replicas, cleanup policy and config
    (this app's topics set no retention)."""
    policies = [name for name, wanted in (("compact", topic.compacting), ("delete", topic.deleting)) if wanted]
    config = {**({"cleanup.policy": ",".join(policies)} if policies else {}),
              **{key: str(value) for key, value in (topic.config or {}).items()}}
    return NewTopic(topic.get_topic_name(), topic.partitions or app.conf.topic_partitions,
                    topic.replicas or app.conf.topic_replication_factor, config=config)


@app.agent(payments)
async def route(events: Any) -> None:
    async for event in events:  # a gateway.integrations.common.Decoded
        outcomes[event.value["event_id"]] = {path: event.reason(path) for path in event.fields}
        if event.reason("customer_name") == "decrypted":
            opened_names[event.value["event_id"]] = event.value["customer_name"]
        await by_country.send(key=event.value["country"], value=1)


@app.agent(by_country)
async def count(countries: Any) -> None:
    async for country, n in countries.items():
        counts[country] += n
        if OUT:
            _write(Path(OUT))


def _write(path: Path) -> None:
    fields: defaultdict[str, Counter[str]] = defaultdict(Counter)  # field path -> reason -> events
    for reasons in outcomes.values():
        for field_path, reason in reasons.items():
            fields[field_path][reason] += 1
    report = {"counts": dict(counts.items()), "fields": fields, "opened": opened_names}
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(report))
    tmp.replace(path)  # readers never see half a file


if __name__ == "__main__":
    app.main()
