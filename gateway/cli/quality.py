"""`gateway quality show`: the latest quality windows per source."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from typing import Any

import orjson

from gateway.cli.options import (
    add_settings,
    config_of,
)
from gateway.errors import GatewayError

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    quality = sub.add_parser("quality", help="data quality and re-identification risk").add_subparsers(
        dest="quality_cmd", required=True)
    p = quality.add_parser("show", help="the latest quality windows per source: rule outcomes, completeness, "
                                        "freshness and risk figures")
    p.add_argument("--source", default=None, help="only this source topic")
    p.add_argument("--windows", type=int, default=5, help="windows per source (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per window")
    add_settings(p, "bootstrap", "quality_topic", "security")
    sub.choices["quality"].set_defaults(func=cmd_quality)


def cmd_quality(args: argparse.Namespace) -> int:
    from gateway.core.quality.report import latest, merge_windows
    from gateway.runtime.reader import read_topic

    if args.windows < 1:
        raise GatewayError("--windows must be at least 1")
    config = config_of(args)
    records = []
    for r in read_topic(config.kafka_client_config(), config.quality_topic):
        try:
            records.append(orjson.loads(r.value or b""))
        except orjson.JSONDecodeError:
            continue
    rows = latest(merge_windows(records, args.source), args.windows)
    if args.json:
        for row in rows:
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        return 0
    print(f"quality topic '{config.quality_topic}' on {config.bootstrap}: {len(rows)} window(s)")
    if not rows:
        print("no quality windows yet (a schema needs \"quality\" rules, and a window closes after window_s)")
    for row in rows:
        _print_quality_window(row)
    return 0


def _print_quality_window(row: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    start = datetime.datetime.fromtimestamp(row["window"]["start"] / 1000, datetime.UTC)
    seconds = (row["window"]["end"] - row["window"]["start"]) / 1000
    table = Table(title=f"{row['source']}  {start.isoformat().replace('+00:00', 'Z')} (+{seconds:g} s)  "
                        f"{row['events']} events, {row['sanitized']} sanitized, partitions "
                        f"{','.join(map(str, row['partitions']))}", title_justify="left")
    table.add_column("measure")
    table.add_column("kind / action")
    table.add_column("count", justify="right")
    table.add_column("rate", justify="right")
    for name, rule in row["rules"].items():
        table.add_row(name, f"{rule['kind']} / {rule['action']}", f"{rule['failed']} failed", f"{rule['rate']:.2%}")
    for name, c in row["completeness"].items():
        target = f" (target {c['target']:.0%}: {'met' if c['met'] else 'NOT met'})" if "target" in c else ""
        table.add_row(f"{name} present", "completeness" + target, str(c["present"]), f"{c['rate']:.2%}")
    table.add_row("event lag", "freshness", f"max {row['lag_ms']['max']} ms", f"mean {row['lag_ms']['mean']} ms")
    risk = row.get("risk")
    if risk is not None:
        table.add_row("smallest class", f"k-anonymity (target {risk['k_target']})", str(risk["k"]),
                      "" if risk.get("complete", True) else "partial window")
        table.add_row(f"records in classes < {risk['k_target']}", "k-anonymity", str(risk["below_k_records"]),
                      f"{risk['below_k_share']:.2%}")
        if risk.get("l_target"):
            table.add_row("fewest sensitive values", f"l-diversity (target {risk['l_target']})", str(risk["l"]),
                          f"{risk['below_l_classes']} class(es) below")
    Console().print(table)
