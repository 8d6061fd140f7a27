"""`gateway dump`: a topic's records as JSON lines."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import orjson

from gateway.cli.options import (
    add_settings,
    config_of,
)
from gateway.settings import env_name

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dump", help="print a topic's records as JSON lines (sanitized, dlq or audit)")
    p.add_argument("--topic", required=True, help="the topic to print")
    p.add_argument("--limit", type=int, default=0, help="stop after N records (0 = all)")
    add_settings(p, "bootstrap", "schema_registry_url", "schemas", "security")
    sub.choices["dump"].set_defaults(func=cmd_dump)


def cmd_dump(args: argparse.Namespace) -> int:
    """One JSON line per record: sanitized records decoded (JSON ones as they are, Avro ones with the
    schemas: --schemas, GATEWAY_SCHEMAS, or ./schemas when it exists), other JSON values as they are,
    anything else as {"value": ..., "value_encoding": "utf-8" | "base64"}; a tombstone is null."""
    from gateway.runtime.dump import Dumper
    from gateway.runtime.reader import read_topic

    config = config_of(args)
    dumper = Dumper(config, explicit=args.schemas is not None or env_name("schemas") in os.environ)
    out = sys.stdout.buffer
    for record in read_topic(config.kafka_client_config(), args.topic)[: args.limit or None]:
        out.write(orjson.dumps(dumper.line(record)) + b"\n")
    out.flush()
    if dumper.undecoded:
        print(dumper.note(args.topic), file=sys.stderr)
    return 0
