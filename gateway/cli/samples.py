"""`gateway produce-samples`: synthetic raw events (and a few broken ones) for a broker."""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from gateway.cli.options import (
    add_settings,
    config_of,
)
from gateway.errors import GatewayError

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("produce-samples", help="publish synthetic raw events (and a few broken ones) to a broker")
    p.add_argument("--count", type=int, default=1000, help="valid events per schema (default 1000)")
    p.add_argument("--rate", type=float, default=0.0, help="events/s per schema; 0 = as fast as possible")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated values (default 7)")
    add_settings(p, "bootstrap", "schemas", "security")
    sub.choices["produce-samples"].set_defaults(func=cmd_produce_samples)


def cmd_produce_samples(args: argparse.Namespace) -> int:
    from gateway.core.policy.lint import load_plans
    from gateway.embedded.demo import produce_samples

    if args.count < 0 or args.rate < 0:
        raise GatewayError("--count and --rate must not be negative")
    config = config_of(args)
    plans = load_plans(config.require_schemas_dir())
    stop = {"now": False}

    def _stop(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("producing samples", extra={"topics": [p.source_topic for p in plans], "per_schema": args.count,
                                         "rate": args.rate})
    sent = produce_samples(config.kafka_client_config(), plans, args.count, args.rate, args.seed,
                           stop=lambda: stop["now"],
                           progress=lambda s: log.info("progress", extra={"sent": dict(s)}))
    log.info("samples produced", extra={"sent": dict(sent), "stopped_early": stop["now"]})
    return 0
