"""Count sanitized payments per country with FastStream, reading the gateway's records as they are.

    pip install 'privacy-gateway[faststream]'
    GATEWAY_SCHEMAS=schemas EXAMPLE_TOPIC=payments.sanitized python -m examples.faststream_payments_by_country

`GatewayDecoder` decodes each record by its headers (Avro or JSON, one topic may mix them). With
`GATEWAY_KEYRING` set it opens the encrypted fields too (a keyring from `gateway keys export --role R`
with `GATEWAY_ROLE=R` opens that role's fields); without, they stay closed and are reported
`key_not_held`, and fields whose subject was forgotten read `key_erased`. The handler only counts:
nothing it opened is published anywhere. SIGTERM or Ctrl-C stops it cleanly.

Settings (environment): GATEWAY_SCHEMAS (schema directory), GATEWAY_KEYRING and GATEWAY_ROLE (optional),
EXAMPLE_TOPIC, EXAMPLE_BROKER (127.0.0.1:9092), EXAMPLE_GROUP, EXAMPLE_OUT (optional: a JSON file
rewritten after every record with the counts, the outcome tallies per encrypted field and the customer
names opened by event id: keep it as safe as the keyring).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
from faststream import FastStream
from faststream.confluent import KafkaBroker

from gateway.integrations.faststream import GatewayDecoder

SCHEMAS = os.environ.get("GATEWAY_SCHEMAS", "schemas")
KEYRING = os.environ.get("GATEWAY_KEYRING") or None
ROLE = os.environ.get("GATEWAY_ROLE") or None
TOPIC = os.environ.get("EXAMPLE_TOPIC", "payments.sanitized")
GROUP = os.environ.get("EXAMPLE_GROUP", "payments-by-country")
OUT = os.environ.get("EXAMPLE_OUT")

broker = KafkaBroker(os.environ.get("EXAMPLE_BROKER", "127.0.0.1:9092"))
app = FastStream(broker)

counts: Counter[str] = Counter()  # country -> payments
outcomes: defaultdict[str, Counter[str]] = defaultdict(Counter)  # field path -> reason -> n
opened_names: dict[str, str] = {}  # event id -> opened customer_name


@broker.subscriber(TOPIC, group_id=GROUP, auto_offset_reset="earliest",
                   # the gateway writes in transactions: read what committed, never an aborted copy
                   isolation_level="read_committed",
                   decoder=GatewayDecoder(SCHEMAS, KEYRING, role=ROLE))
async def count(event: dict[str, Any]) -> None:
    fields = event["_gateway"]["fields"]
    for path, outcome in fields.items():
        outcomes[path][outcome.split(":", 1)[0]] += 1
    counts[event["country"]] += 1
    if fields.get("customer_name") == "decrypted":
        opened_names[event["event_id"]] = event["customer_name"]
    if OUT:
        _write(Path(OUT))


def _write(path: Path) -> None:
    report = {"counts": counts, "fields": outcomes, "opened": opened_names}
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(report))
    tmp.replace(path)  # readers never see half a file


if __name__ == "__main__":
    asyncio.run(app.run())
