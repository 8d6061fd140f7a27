"""`gateway run`: the sanitize worker (a consumer-group member), or --processes N of them."""

from __future__ import annotations

import argparse
import logging

from gateway import app
from gateway.cli.options import (
    RUN_GROUPS,
    add_settings,
    config_of,
    require_kafka,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the sanitize worker (a consumer-group member)")
    add_settings(p, *RUN_GROUPS)
    sub.choices["run"].set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.core.policy.lint import load_plans
    from gateway.runtime.registry import resolve_ids

    config = config_of(args)
    plans = resolve_ids(load_plans(config.require_schemas_dir()), config.schema_registry_url,
                        config.sanitized_compatibility)
    processes, why = config.process_choice()
    log.info("worker processes", extra={"processes": processes, "setting": config.processes, "rule": why})
    if processes > 1:  # every check below runs in each child, with its errors and exit code 2
        from gateway.runtime.supervisor import Supervisor, child_arguments

        return Supervisor(child_arguments(args.argv[1:]), processes, config.metrics_port, config.metrics_host,
                          config.instance_id).run()
    for plan in plans:
        for warning in plan.warnings:
            log.warning("policy", extra={"problem": str(warning)})
    keyring, kms = app.worker_keys(config)  # fail fast, before Kafka, on a wrong or unreachable KMS
    require_kafka(config)
    return app.worker(config, plans, keyring, kms).run()
