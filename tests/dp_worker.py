"""`python -m tests.dp_worker <the arguments of gateway aggregate>`: the aggregate worker with the
noise-free test double (tests/dp_doubles.py) injected, for integration tests that compare true
sums. The configuration and plans are built exactly as `gateway aggregate` builds them."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from gateway.cli import build_parser
from gateway.cli.options import config_of as _config
from gateway.core.policy.lint import load_plans
from gateway.errors import GatewayError
from gateway.ops.logs import setup_logging
from gateway.runtime.jobs.aggregate import AggregateWorker
from tests.dp_doubles import MECHANISM, NoiseFreeMechanism

log = logging.getLogger("tests.dp_worker")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(["aggregate", *(sys.argv[1:] if argv is None else argv)])
    setup_logging(args.log_level or "INFO")
    try:
        config = _config(args)
        worker = AggregateWorker(config, load_plans(config.require_schemas_dir()),
                                 mechanism_factory=NoiseFreeMechanism)
    except GatewayError as exc:
        print(f"tests.dp_worker: {exc}", file=sys.stderr)
        return 2
    log.warning("noise-free test double: releases carry true values", extra={"mechanism": MECHANISM})
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
