"""`gateway policy lint|show|test`: every problem of a policy; the compiled plan and derived schemas; the policy's
example cases and a canary fuzz run through the compiled plan."""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from gateway.cli.options import (
    add_settings,
    config_of,
)
from gateway.errors import GatewayError

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="check and explain policies").add_subparsers(dest="policy_cmd",
                                                                                       required=True)
    p = policy.add_parser("lint", help="list every problem in a schema file's policy, or in those of a directory")
    p.add_argument("directory", type=Path, metavar="PATH", help="a *.avsc file or a directory of them")
    p.description = ("With --schema-registry-url, every registered version of each raw subject is checked too (fields "
                     "the policy does not annotate, versions it cannot read), and whether the derived sanitized "
                     "schema may follow the versions registered under its subject.")
    add_settings(p, "schema_registry_url", "sanitized_compatibility")
    p = policy.add_parser("show", help="print the compiled plan and the derived sanitized schema",
                          description="With --bootstrap, the source's latest quality window is read too: a warning "
                                      "says when the quasi-identifiers are too fine for the observed traffic.")
    p.add_argument("file", type=Path, help="the *.avsc schema file")
    add_settings(p, "bootstrap", "quality_topic", "security")
    p = policy.add_parser("test", help="run the example cases beside each schema (and a canary fuzz run) through "
                                       "the compiled plans",
                          description="Each schema's <stem>.cases.json runs through the real pipeline in process "
                                      "(a throwaway local keyring; no broker). Exit 0: all pass; 1: a case failed "
                                      "or a canary survived; 2: a policy or case file is invalid.")
    p.add_argument("directory", type=Path, nargs="?", default=Path("schemas"), metavar="DIR",
                   help="the directory of *.avsc schemas and their *.cases.json (default: schemas)")
    p.add_argument("--fuzz", type=int, default=0, metavar="N",
                   help="also run N generated events per schema with canaries in every field not kept in clear")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated events and canaries (default 7)")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write the results as JUnit XML to FILE")
    sub.choices["policy"].set_defaults(func=cmd_policy)


def cmd_policy(args: argparse.Namespace) -> int:
    from gateway.core.codec.formats import load_schema_file
    from gateway.core.policy.compiler import compile_plan
    from gateway.core.policy.lint import lint_directory, lint_file

    if args.policy_cmd == "test":
        return _cmd_test(args)
    if args.policy_cmd == "lint":
        if args.directory.is_file():
            problems = lint_file(args.directory)
        elif args.directory.is_dir():
            problems = lint_directory(args.directory)
        else:
            raise GatewayError(f"'{args.directory}' is neither a schema file nor a directory of *.avsc")
        config = config_of(args)
        if config.schema_registry_url and not any(p.severity == "error" for p in problems):
            from gateway.core.policy.lint import load_plans
            from gateway.runtime.registry import lint_against_registry

            plans = ([compile_plan(load_schema_file(args.directory))] if args.directory.is_file()
                     else load_plans(args.directory))
            problems += lint_against_registry(plans, config.schema_registry_url, config.sanitized_compatibility)
        for problem in problems:
            print(problem)
        errors = sum(p.severity == "error" for p in problems)
        warnings = len(problems) - errors
        print(f"{errors} error(s), {warnings} warning(s)")
        return 1 if errors else 0
    problems = lint_file(args.file)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        print(problem, file=sys.stderr)
    if errors:
        return 1
    plan = compile_plan(load_schema_file(args.file))
    print(f"schema:          {plan.name}")
    print(f"policy:          {plan.policy_hash}")
    print(f"topics:          {plan.source_topic} -> {plan.sanitized_topic} (dead letters: {plan.dlq_topic})")
    print(f"subject:         {plan.subject_field or '(none)'}")
    print(f"input / output:  {plan.input_mode} / {plan.output}")
    print(f"record timestamp: {plan.timestamp.label}" + ("" if plan.timestamp.declared else " (default)"))
    print("fields:")
    width = max(len(p) for p in plan.field_actions)
    for path, action in plan.field_actions.items():
        print(f"  {path:<{width}}  {action}")
    print("aggregates:" if plan.aggregates else "aggregates:      (none)")
    for line in _aggregate_lines(plan.aggregates):
        print(f"  {line}")
    print("quality:" if plan.quality else "quality:         (none)")
    if plan.quality:
        from gateway.core.quality.spec import describe

        for line in describe(plan.quality):
            print(f"  {line}")
    if args.bootstrap and plan.quality is not None and plan.quality.risk is not None:
        _print_risk_warning(args, plan.source_topic)
    print("purposes:" if plan.purposes else "purposes:        (none)")
    for line in _purpose_lines(plan):
        print(f"  {line}")
    print("sanitized schema:")
    print(_sanitized_text(plan))
    for purpose in plan.purposes:  # each view's own schema: what the purpose topic's consumers read
        print(f"purpose '{purpose.name}' schema:")
        print(orjson.dumps(purpose.plan.sanitized_schema, option=orjson.OPT_INDENT_2).decode())
    return 0


def _sanitized_text(plan: Any) -> str:
    """The sanitized schema as registered, in the schema's own format family (JSON Schema, .proto, Avro)."""
    from gateway.core.codec.formats import codec_for

    text = codec_for(plan.schema.format).sanitized_schema(plan.schema, plan.sanitized_schema)
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:  # not JSON (a .proto): as it is
        return text


def _cmd_test(args: argparse.Namespace) -> int:
    """`policy test`: run, print each failure and a summary (progress on stderr), write the JUnit file."""
    from gateway import app
    from gateway.core.policy.junit import fuzz_summary, junit_xml
    from gateway.embedded.samples import SampleEvents

    if args.fuzz < 0:
        raise GatewayError("--fuzz must not be negative")
    if not args.directory.is_dir():
        raise GatewayError(f"'{args.directory}' is not a directory of *.avsc schemas (and their *.cases.json)")
    samples = SampleEvents(args.seed)  # the one generator, seeded: a run repeats
    report = app.policy_tests(args.directory, args.fuzz, lambda plan: samples.for_schema(plan.schema.raw).event,
                              args.seed, lambda line: print(line, file=sys.stderr, flush=True))
    for case in report.cases:
        for failure in case.failures:
            print(f"FAIL {case.schema}: case '{case.case}': {failure}")
    for run in report.fuzz:
        print(f"{'FAIL' if run.leaks else 'ok  '} {run.schema}: fuzz: {fuzz_summary(run)}")
        for leak in run.leaks:
            print(f"FAIL {run.schema}: fuzz: {leak}")
    failed = sum(not c.ok for c in report.cases)
    print(f"{len(report.cases) - failed} of {len(report.cases)} case(s) passed; "
          f"{sum(f.ok for f in report.fuzz)} of {len(report.fuzz)} fuzz run(s) passed")
    if args.junit is not None:
        args.junit.write_bytes(junit_xml(report))
    return 0 if report.ok else 1


def _purpose_lines(plan: Any) -> list[str]:
    """`policy show`: each purpose view's topic, legal basis, output and fields with their actions."""
    lines = []
    for purpose in plan.purposes:
        basis = (f"basis {purpose.basis}: only while the subject's consent is in force" if purpose.spec.needs_consent
                 else f"basis {purpose.basis}")
        lines.append(f"{purpose.name} -> {purpose.topic} ({basis}; output {purpose.plan.output})")
        width = max(len(path) for path in purpose.plan.field_actions)
        lines += [f"  {path:<{width}}  {action}" for path, action in purpose.plan.field_actions.items()]
    return lines


def _print_risk_warning(args: argparse.Namespace, source: str) -> None:
    """`policy show --bootstrap`: the risk measured in the source's latest quality window."""
    from gateway.core.quality.report import latest, merge_windows
    from gateway.core.quality.risk import generalization_warning, risk_figures
    from gateway.runtime.reader import read_topic

    config = config_of(args)
    records = [orjson.loads(r.value) for r in read_topic(config.kafka_client_config(), config.quality_topic)
               if r.value]
    rows = [row for row in latest(merge_windows(records, source), 1) if "risk" in row]
    if not rows:
        print(f"  observed: no quality window with risk figures yet on '{config.quality_topic}'")
        return
    risk = rows[-1]["risk"]
    print(f"  observed (latest window): k = {risk['k']}, {risk['below_k_share']:.1%} of {risk['records']} "
          f"records in classes smaller than {risk['k_target']}")
    warning = generalization_warning(risk_figures(risk))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)


def _aggregate_lines(aggregates: Sequence[Any]) -> list[str]:
    """`policy show`: each DP aggregate as declared and compiled (bounds, caps, its budget)."""
    lines: list[str] = []
    for a in aggregates:
        of = f"({a.field})" if a.field else ""
        when = a.time_field or "the record timestamp"
        lines.append(f"{a.name}: {a.metric}{of} by {', '.join(a.group_by) or '(no groups)'} -> {a.output_topic}")
        lines.append(f"    window {a.window_ms / 1000:g} s on {when}, grace {a.grace_ms / 1000:g} s; "
                     f"epsilon {a.epsilon:g}, delta {a.delta:g} per window")
        bounds = (f"at most {a.max_groups_per_subject} group(s) per subject and {a.max_records_per_group} "
                  "record(s) per group per window")
        if a.clamp is not None:
            bounds += f", values clamped to [{a.clamp[0]}, {a.clamp[1]}]"
        lines.append(f"    bounds: {bounds}")
        lines.append(f"    caps: epsilon {a.period_epsilon_cap:g}, delta {a.period_delta_cap:g} per "
                     f"{a.period_ms / 1000:g} s" + (f" (share {a.share:g} of the budget)" if a.share is not None
                                                     else ""))
        if a.budget:
            lines.append(f"    budget {a.budget}: epsilon {a.budget_epsilon_cap:g}, delta {a.budget_delta_cap:g} "
                         f"per {a.budget_period_ms / 1000:g} s, shared by every aggregate over these subjects")
        if a.continual:
            groups = ", ".join(a.continual_groups) or "(none)"
            start = datetime.datetime.fromtimestamp(a.continual_start_ms / 1000, datetime.UTC)
            lines.append(f"    continual: running totals over {a.continual_windows} window(s) from "
                         f"{start.isoformat().replace('+00:00', 'Z')}, groups {groups}")
    return lines
