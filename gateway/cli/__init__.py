"""Command line: `gateway <command>`. Each command group is a module of this package with an
`add_parser` that declares its arguments and sets its function (set_defaults(func=...)); a command
parses, calls the layer that owns the work, and renders."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway.cli import (
    aggregate,
    audit,
    broker,
    budget,
    consent,
    decrypt,
    demo,
    dlq,
    dump,
    erasure,
    forget,
    keys,
    policy,
    quality,
    report,
    retention,
    run,
    samples,
    scan,
    subject,
)
from gateway.errors import GatewayError
from gateway.stop_signal import exit_cleanly_on_sigterm

COMMANDS = (broker, run, policy, keys, retention, forget, consent, decrypt, dlq, dump, audit,  # --help's order
            aggregate, budget, quality, report, samples, scan, demo, erasure, subject)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Kafka privacy gateway. Settings also come from "
                                     "the environment as GATEWAY_<NAME>; the command line wins.")
    sub = parser.add_subparsers(dest="command", required=True)

    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    exit_cleanly_on_sigterm()  # the `gateway` command's first line (python -m gateway's came earlier)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `gateway run --processes N` hands its arguments on to the children
    from gateway.ops.logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "INFO")
    try:
        return int(args.func(args))
    except GatewayError as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
