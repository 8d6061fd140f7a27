"""`gateway aggregate`: the differentially private aggregate stages (a consumer-group member)."""

from __future__ import annotations

import argparse
import logging

from gateway import app
from gateway.cli.options import (
    AGGREGATE_GROUPS,
    add_settings,
    config_of,
    require_kafka,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("aggregate", help="run the differentially private aggregate stages (a consumer-group member)")
    add_settings(p, *AGGREGATE_GROUPS, "keyring")
    sub.choices["aggregate"].set_defaults(func=cmd_aggregate)


def cmd_aggregate(args: argparse.Namespace) -> int:
    from gateway.core.policy.lint import load_plans
    from gateway.runtime.registry import resolve_ids

    config = config_of(args)
    plans = resolve_ids(load_plans(config.require_schemas_dir()), config.schema_registry_url,
                        config.sanitized_compatibility)
    require_kafka(config)
    return app.aggregate_worker(config, plans).run()
