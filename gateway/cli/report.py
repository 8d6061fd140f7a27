"""`gateway report`: a period summarized for privacy impact assessments and access reviews."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from gateway.cli.options import (
    add_settings,
    config_of,
    require_kafka,
)
from gateway.errors import GatewayError
from gateway.settings import env_name

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="summarize a period for privacy impact assessments and access reviews "
                                      "(events, fields, keys, erasures, DP budget, quality, leaks)",
                       description="Reads the audit, ledger, key and quality topics and summarizes the period: "
                                   "counts, names and key ids only, never a value, subject, token or key.")
    p.add_argument("--since", default="7d", help="start of the period: an ISO-8601 time (UTC without a zone) or a "
                                                 "duration before now such as 30m, 24h, 7d (default 7d)")
    p.add_argument("--until", default="now", help="end of the period: an ISO-8601 time or a duration before now "
                                                  "(default now)")
    p.add_argument("--html", dest="html_file", type=Path, default=None, metavar="FILE",
                   help="write the report as one self-contained HTML file with charts (opens offline)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    add_settings(p, "bootstrap", "schemas", "audit_topic", "ledger_topic", "key_topic", "quality_topic", "security")
    sub.choices["report"].set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """`gateway report`: read the audit, ledger, key and quality topics, summarize the period
    (gateway.report.collect), and print it (text or --json) and/or write it as HTML (--html)."""
    from gateway.core.policy.lint import load_plans
    from gateway.report.collect import parse_when
    from gateway.runtime.report_inputs import period_report

    config = config_of(args)
    now_ms = int(time.time() * 1000)
    since_ms = parse_when(args.since, now_ms, "--since")
    until_ms = parse_when(args.until, now_ms, "--until")
    if until_ms <= since_ms:
        raise GatewayError(f"--since ({args.since}) must be before --until ({args.until})")
    notes: list[str] = []
    plans = []
    if args.schemas is not None or env_name("schemas") in os.environ or config.schemas.is_dir():
        plans = load_plans(config.require_schemas_dir())
    else:
        notes.append(f"no schemas at '{config.schemas}': fields by action and DP caps are not reported "
                     "(pass --schemas DIR)")
    require_kafka(config)
    report = period_report(config, plans, since_ms, until_ms, now_ms, notes)
    if args.html_file is not None:
        from gateway.report.html import render

        try:
            args.html_file.write_text(render(report), encoding="utf-8")
        except OSError as exc:
            raise GatewayError(f"cannot write the report to '{args.html_file}': {exc.strerror}") from None
        print(f"report written to {args.html_file}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        sys.stdout.buffer.write(report.dumps() + b"\n")
        sys.stdout.buffer.flush()
    elif args.html_file is None:
        print("\n".join(report.summary_lines()))
    return 0
