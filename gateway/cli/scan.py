"""`gateway scan`: sample a raw topic and report which fields hold PII."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import orjson

from gateway.cli.options import (
    add_settings,
    config_of,
)
from gateway.errors import GatewayError
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="sample a raw topic and report which fields hold PII, with suggested annotations")
    p.add_argument("--topic", required=True, help="the raw topic to sample")
    p.add_argument("--schema", dest="schema_file", type=Path, default=None,
                   help="the topic's schema file (instead of the one in --schemas whose source_topic is the topic)")
    p.add_argument("--sample", type=int, default=1000, help="events to read (default 1000)")
    p.add_argument("--from", dest="start", choices=("end", "beginning"), default="end",
                   help="the last events of each partition (default) or the first")
    p.add_argument("--timeout-s", dest="scan_timeout_s", type=float, default=60.0,
                   help="give up when the sample is not read within this time (default 60)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (no progress bar)")
    p.add_argument("--write-policy", dest="write_policy", type=Path, default=None,
                   help="write the schema annotated with the suggested actions to this file")
    add_settings(p, "bootstrap", "schemas", "max_record_bytes", "log_level", "security")
    sub.choices["scan"].set_defaults(func=cmd_scan)


def _scan_schema(args: argparse.Namespace, config: GatewayConfig) -> Any:
    """The schema of `args.topic`: --schema FILE, or the one of --schemas DIR (GATEWAY_SCHEMAS)
    whose privacy.source_topic (default: the record's full name) is the topic."""
    from gateway.core.codec.formats import iter_schema_files, load_schema_file
    from gateway.errors import PolicyError

    if args.schema_file is not None:
        if args.schemas is not None:
            raise GatewayError("--schema FILE and --schemas DIR both given: pass one")
        return load_schema_file(args.schema_file)
    directory = config.require_schemas_dir()
    unreadable: list[str] = []
    for path in iter_schema_files(directory):
        try:
            schema = load_schema_file(path)
        except PolicyError:
            unreadable.append(path.name)
            continue
        settings = schema.privacy if isinstance(schema.privacy, dict) else {}
        if settings.get("source_topic", schema.fullname) == args.topic:
            return schema
    extra = f" ({len(unreadable)} file(s) could not be read: {', '.join(unreadable)})" if unreadable else ""
    raise GatewayError(f"no schema in '{directory}' has privacy.source_topic '{args.topic}'{extra}; "
                       "pass the topic's schema with --schema FILE")


def cmd_scan(args: argparse.Namespace) -> int:
    """`gateway scan`: sample a raw topic, decode, detect PII per field, report (table or JSON),
    optionally write the annotated schema. No value of any event is printed, logged or stored."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gateway.core.codec.formats import codec_for
    from gateway.core.policy.lint import lint_file
    from gateway.core.scan import Scanner
    from gateway.errors import RejectedEvent
    from gateway.runtime.sample import sample_topic

    if args.sample < 1:
        raise GatewayError("--sample must be at least 1")
    if args.scan_timeout_s <= 0:
        raise GatewayError("--timeout-s must be positive")
    config = config_of(args)
    schema = _scan_schema(args, config)
    settings = schema.privacy if isinstance(schema.privacy, dict) else {}
    decoder = codec_for(schema.format).decoder(schema, settings.get("input", "auto"), settings.get("schema_id"),
                                               config.max_record_bytes, {}, {})
    scanner = Scanner(schema)
    errors = Console(stderr=True)
    progress = Progress(TextColumn("[bold]scanning[/] {task.fields[topic]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("events"), TimeElapsedColumn(), console=errors, transient=True,
                        disable=args.json or not sys.stderr.isatty())
    sample = sample_topic(config.kafka_client_config(), args.topic, args.sample, args.start, args.scan_timeout_s)
    with progress:
        task = progress.add_task("scan", total=None, topic=args.topic)

        def _progress(read: int) -> None:
            progress.update(task, completed=read, total=sample.planned or None)

        sample.progress = _progress
        decode, add, failed = decoder.decode, scanner.add, scanner.failed
        read = 0
        for value in sample:
            read += 1
            try:
                record, _encoding = decode(value)
            except RejectedEvent as exc:
                failed(exc.reason)
                continue
            add(record)
    report = scanner.report(args.topic, {"from": args.start, "requested": args.sample, "read": read,
                                         "partitions": sample.partitions})
    code = 0
    if args.write_policy is not None:
        annotated = scanner.annotated_schema(args.topic)
        try:
            args.write_policy.write_bytes(orjson.dumps(annotated, option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as exc:
            raise GatewayError(f"cannot write the policy to '{args.write_policy}': {exc.strerror}") from None
        problems = [p for p in lint_file(args.write_policy) if p.severity == "error"]
        for problem in problems:
            errors.print(str(problem), markup=False, highlight=False)
        errors.print(f"policy written to {args.write_policy}"
                     + (f" ({len(problems)} lint error(s): review it)" if problems else " (gateway policy lint: ok)"),
                     markup=False, highlight=False)
        code = 1 if problems else 0
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        _print_scan_table(report)
    return code


def _print_scan_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gateway.core.scan import annotation_label

    sample = report["sample"]
    console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: no wrapping at 80 columns
    reasons = ", ".join(f"{k}: {v}" for k, v in sample["undecodable_reasons"].items())
    console.print(f"topic {report['topic']} (schema {report['schema']}, {report['schema_file']}): "
                  f"{sample['read']} event(s) read from the {sample['from']} of {sample['partitions']} partition(s), "
                  f"{sample['events']} decoded, {sample['undecodable']} undecodable" + (f" ({reasons})" if reasons
                                                                                         else ""),
                  markup=False, highlight=False)
    table = Table(show_lines=False, header_style="bold")
    for column in ("field", "type", "values", "nulls", "entities (rate/whole value)", "distinct", "id-like",
                   "current", "suggested", "written"):
        table.add_column(column, justify="right" if column in ("values", "nulls", "distinct") else "left")
    for row in report["fields"]:
        entities = ", ".join(f"{e} {r['rate']:.0%}/{r['whole']:.0%}" for e, r in row["entities"].items()) or "-"
        distinct = "-" if row["distinct"] is None else f"{row['distinct']}{'+' if row['distinct_capped'] else ''}"
        written = {"added": "+ ", "replaced": "! ", "kept": "", "covered": ""}[row["change"]]
        written += annotation_label(row["policy"]) if row["change"] != "covered" else f"(in {row['covered_by']})"
        style = "bold red" if row["change"] == "replaced" else ("yellow" if row["pii"] else None)
        cells = (row["path"], row["type"], str(row["values"]), str(row["nulls"]), entities, distinct,
                 "yes" if row["identifier_like"] else "", annotation_label(row["current"]),
                 annotation_label(row["suggested"]), written)
        table.add_row(*(Text(cell) for cell in cells), style=style)
    console.print(table)
    s = report["summary"]
    console.print(f"{s['fields']} field path(s), {s['pii_fields']} with PII; written: {s['added']} added (+), "
                  f"{s['replaced']} replaced (!), {s['kept']} kept, {s['covered']} covered by their container",
                  markup=False, highlight=False)
