"""`gateway demo`: embedded broker + gateway + sample events, end to end."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="embedded broker + gateway + sample events: sanitize, consent, DP, forget, audit")
    p.add_argument("--events", type=int, default=400, help="valid events per schema (default 400)")
    p.add_argument("--schemas", type=Path, default=Path("schemas"),
                   help="directory of annotated *.avsc schemas (default schemas)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for what the demo leaves you: the HTML report and its log file (default: a new "
                        "temporary folder, named at the end)")
    sub.choices["demo"].set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.embedded.demo import run_demo

    return run_demo(args.schemas, args.events, args.out)
