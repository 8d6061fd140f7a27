"""`gateway report`: a period summarized for privacy impact assessments and access reviews."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from gateway.cli.options import (
    add_settings,
    config_of,
    require_kafka,
)
from gateway.core.policy.plan import Plan
from gateway.errors import GatewayError
from gateway.report.collect import PrivacyReport
from gateway.settings import GatewayConfig, env_name

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
    p.add_argument("--dpia", action="store_true",
                   help="write a data-protection impact assessment instead (GDPR Art. 35): the inventory per "
                        "source and field with purposes, legal basis, retention, roles and the consumer groups "
                        "reading each output; the measures; the period's evidence with the audit verified; "
                        "the open risks (with --html FILE and/or --json, or as text)")
    p.add_argument("--sample", type=int, default=500, metavar="N",
                   help="--dpia: scan the last N events of each source topic for PII in kept fields "
                        "(counts only; 0: no scan; default 500)")
    add_settings(p, "bootstrap", "schemas", "audit_topic", "ledger_topic", "key_topic", "quality_topic", "security",
                 "keyring", "group_id")
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
    plans: list[Plan] = []
    if args.schemas is not None or env_name("schemas") in os.environ or config.schemas.is_dir():
        plans = load_plans(config.require_schemas_dir())
    else:
        notes.append(f"no schemas at '{config.schemas}': fields by action and DP caps are not reported "
                     "(pass --schemas DIR)")
    if args.dpia and not plans:
        raise GatewayError(f"--dpia needs the policies: no schemas at '{config.schemas}' (pass --schemas DIR)")
    if args.sample < 0:
        raise GatewayError("--sample must be 0 (no scan) or more")
    require_kafka(config)
    report = period_report(config, plans, since_ms, until_ms, now_ms, notes)
    if args.dpia:
        return _write_dpia(args, config, report, plans)
    from gateway.report.html import render

    return _emit(args, "report", lambda: render(report), report.dumps, report.summary_lines)


def _emit(args: argparse.Namespace, what: str, html: Callable[[], str], json: Callable[[], bytes],
          summary: Callable[[], list[str]]) -> int:
    """The one way a report leaves the command: --html FILE (its path said on stdout, or on stderr under
    --json), --json on stdout, else the text summary."""
    if args.html_file is not None:
        try:
            args.html_file.write_text(html(), encoding="utf-8")
        except OSError as exc:
            raise GatewayError(f"cannot write the {what} to '{args.html_file}': {exc.strerror}") from None
        print(f"{what} written to {args.html_file}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        sys.stdout.buffer.write(json() + b"\n")
        sys.stdout.buffer.flush()
    elif args.html_file is None:
        print("\n".join(summary()))
    return 0


def _write_dpia(args: argparse.Namespace, config: GatewayConfig, report: PrivacyReport, plans: list[Plan]) -> int:
    """`gateway report --dpia`: the DPIA from the period's report, the broker's groups and ACLs, the audit's
    verification and a scan of the sources (gateway.report.dpia), as text, --json and/or --html."""
    from gateway.report.dpia import AuditCheck, build_dpia
    from gateway.report.dpia_html import render_dpia
    from gateway.runtime.dpia_inputs import read_dpia_inputs

    inputs = read_dpia_inputs(config, plans, config.audit_topic, args.sample)
    check = AuditCheck.of(inputs.audit) if inputs.audit is not None else AuditCheck.not_run(inputs.audit_reason or "")
    dpia = build_dpia(report, plans, inputs.access, check, inputs.scans, inputs.notes)
    return _emit(args, "DPIA", lambda: render_dpia(dpia), dpia.dumps, dpia.summary_lines)
