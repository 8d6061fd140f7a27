"""`gateway budget show`: the privacy ledger."""

from __future__ import annotations

import argparse
import logging
import sys

import orjson

from gateway.cli.options import (
    add_settings,
    config_of,
    schemas_dir,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    budget = sub.add_parser("budget", help="privacy budget").add_subparsers(dest="budget_cmd", required=True)
    p = budget.add_parser("show", help="print the privacy ledger: budget spent per aggregate and period")
    p.add_argument("--json", action="store_true", help="one JSON object per aggregate")
    add_settings(p, "bootstrap", "ledger_topic", "schemas", "security")
    sub.choices["budget"].set_defaults(func=cmd_budget)


def cmd_budget(args: argparse.Namespace) -> int:
    from gateway.core.policy.lint import load_plans
    from gateway.dp.ledger import describe
    from gateway.runtime.ledger import load_ledger

    config = config_of(args)
    specs = {}
    if args.schemas is not None:
        specs = {a.id: a for p in load_plans(schemas_dir(args.schemas)) for a in p.aggregates}
    ledger = load_ledger(config.kafka_client_config(), config.ledger_topic)
    if args.json:
        for row in [*ledger.summary(specs=specs), *ledger.budget_summary(specs)]:
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        return 0
    print(f"privacy ledger '{config.ledger_topic}' on {config.bootstrap}")
    print(describe(ledger, specs))
    return 0
