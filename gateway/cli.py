"""Command line: broker, run, policy lint/show, decrypt, dump, audit verify, demo."""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro
import orjson

from gateway.config import GROUPS, GatewayConfig, declared, env_name, shown_default
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger("gateway.cli")


# The settings groups (gateway/config.py) each command reads: `--help` shows exactly these.
RUN_GROUPS = ("kafka", "processes", "worker", "topics", "sanitize", "keys", "ops", "security")
AGGREGATE_GROUPS = ("kafka", "worker", "audit_topic", "partitions", "create_topics", "dp", "ops", "security")


def add_settings(p: argparse.ArgumentParser, *wanted: str) -> None:
    """Options derived from the settings' declarations: each group (or single setting) named in
    `wanted`, `--name-with-dashes` with its type, choices, default and environment variable in the
    help. Secrets get no option: the environment only, said in the group's description."""
    names = {f.name for f in declared()}
    groups = tuple(w for w in wanted if w in GROUPS)
    chosen = [f for f in declared() if f.metadata["group"] in groups or f.name in wanted]
    unknown = [w for w in wanted if w not in GROUPS and w not in names]
    assert not unknown, f"not a settings group or setting: {unknown}"  # a programming error, not a user's
    by_group: dict[str, list[Any]] = {}
    for f in chosen:
        by_group.setdefault(f.metadata["group"], []).append(f)
    for group, group_fields in by_group.items():
        secrets = [env_name(f.name) for f in group_fields if f.metadata["secret"]]
        section = p.add_argument_group(GROUPS[group], "secrets from the environment only: "
                                       + ", ".join(secrets) if secrets else None)
        for f in group_fields:
            if not f.metadata["secret"]:
                _add_setting(section, f)


def _add_setting(section: Any, f: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    help_text = f"{f.metadata['help']} (default {shown_default(f)}; {env_name(f.name)})"
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    if kind == "bool":
        if f.default:
            section.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const", const=False,
                                 help=f"turn off: {help_text}")
        else:
            section.add_argument(flag, dest=f.name, action="store_const", const=True, help=help_text)
        return
    types = {"int": int, "float": float, "Path": Path, "str": str}
    section.add_argument(flag, dest=f.name, type=types[kind], choices=f.metadata["choices"], help=help_text)


def _config(args: argparse.Namespace) -> GatewayConfig:
    names = GatewayConfig.__dataclass_fields__
    config = GatewayConfig.load({k: v for k, v in vars(args).items() if k in names})
    for warning in config.security_warnings():
        log.warning("kafka security", extra={"problem": warning})
    return config


KMS = ("kms_provider", "kms_timeout_s", "aws_kms_key_id", "aws_region", "aws_endpoint_url", "vault_addr",
       "vault_token", "vault_transit_key", "vault_mount")


def _role_name(value: str) -> str:
    from gateway.keys.roles import ROLE_NAME_RULE, valid_role

    if not valid_role(value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a role name ({ROLE_NAME_RULE})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Kafka privacy gateway. Settings also come from "
                                     "the environment as GATEWAY_<NAME>; the command line wins.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Apache Kafka broker (KRaft, one node) on 127.0.0.1")
    p.add_argument("--port", type=int, default=9092, help="the PLAINTEXT listener's port (default 9092)")
    p.add_argument("--data-dir", dest="data_dir", type=Path, default=None,
                   help="keep the storage here across restarts (default: a temporary directory, removed on exit)")

    p = sub.add_parser("run", help="run the sanitize worker (a consumer-group member)")
    add_settings(p, *RUN_GROUPS)

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

    keys = sub.add_parser("keys", help="key management").add_subparsers(dest="keys_cmd", required=True)
    p = keys.add_parser("init", help="create the keyring (mode 0600) with keys for every token domain and, with "
                                     "kms_provider=local, every role the policies name")
    p.add_argument("--role", dest="roles", action="append", type=_role_name, default=None, metavar="ROLE",
                   help="also create a key for this role (repeatable)")
    add_settings(p, "keyring", "schemas")
    p = keys.add_parser("rotate", help="new KEK version (or token-key version with --token-domain, role key version "
                                       "with --role), made active")
    p.add_argument("--token-domain", dest="token_domain", help="rotate this token domain's HMAC key instead")
    p.add_argument("--role", type=_role_name, default=None, help="rotate this role's key instead (the keyring's, or "
                                                                  "its KMS key of role_kms_keys)")
    add_settings(p, "keyring", *KMS, "role_kms_keys")
    p = keys.add_parser("export", help="write a keyring holding only one role's key, for that role's consumers",
                        description="The file (mode 0600) holds every version of the role's key and nothing else: "
                                    "no KEK, token key or quarantine key. Its holder opens the fields readable by "
                                    "that role (gateway decrypt --role ROLE --keyring FILE) and no others. Export "
                                    "again after gateway keys rotate --role ROLE.")
    p.add_argument("--role", required=True, type=_role_name, help="the role whose key to export")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="the keyring file to write")
    add_settings(p, "keyring", "kms_provider")
    p = keys.add_parser("retire", help="delete an old local KEK (ciphertexts wrapped only under it become unreadable)")
    p.add_argument("kek_id", help="the KEK version to delete (gateway keys rotate printed it)")
    p.add_argument("--yes", action="store_true", help="confirm: the deletion cannot be undone")
    add_settings(p, "keyring")
    p = keys.add_parser("rewrap", help="re-store every per-subject key in the key topic under the active KEK")
    add_settings(p, "bootstrap", "keyring", "key_topic", *KMS, "security")
    p = keys.add_parser("rotate-quarantine", help="new quarantine key (seals dead letters), made active; the old ones "
                                                  "still unseal earlier dead letters")
    add_settings(p, "keyring")

    retention = sub.add_parser("retention", help="retention by key expiry: list and erase the period keys of fields "
                                                 "with retention_days").add_subparsers(dest="retention_cmd",
                                                                                       required=True)
    p = retention.add_parser("show", help="list the key topic's periods: retention, period, key ids and when each "
                                          "is erased")
    p.add_argument("--json", action="store_true", help="one JSON object per period, every key id listed")
    add_settings(p, "bootstrap", "key_topic", "security")
    p = retention.add_parser("enforce", help="erase (tombstone) every period key whose period ended more than its "
                                             "retention ago, audited in the same transaction",
                             description="Workers do the same every retention_check_s. Use the workers' group_id "
                                         "(it prefixes the transactional id their runs and this one share, so they "
                                         "fence each other and the audit chain keys:retention has one writer).")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="list what would be erased; write nothing")
    add_settings(p, "bootstrap", "key_topic", "audit_topic", "group_id", "security")

    p = sub.add_parser("forget", help="erase a data subject's keys (crypto-shredding) and consent history, "
                                      "and audit it",
                       description="The identifier is read from stdin (or --file), so it stays out of shell history. "
                                   "Exit 1 when no key and no consent record of the subject was found.")
    p.add_argument("subject", nargs="?", default=None,
                   help="deprecated: the identifier on the command line (it stays in shell history); pipe it on stdin")
    _identifier_options(p)
    add_settings(p, "bootstrap", "keyring", "schemas", "key_topic", "audit_topic", "consent_topic", "security")

    consent = sub.add_parser("consent", help="grant, revoke or show a subject's consent to a purpose").add_subparsers(
        dest="consent_cmd", required=True)
    for name, what in (("grant", "grant"), ("revoke", "revoke")):
        p = consent.add_parser(name, help=f"{what} a subject's consent to a purpose (queued on consent_input_topic; "
                                          "the worker stores it under the subject's token and audits it)",
                               description="The identifier is read from stdin (or --file), never from the command "
                                           "line.")
        p.add_argument("--purpose", required=True, help="a purpose with basis consent in the policies")
        p.add_argument("--at", default=None, help="when the change takes effect: ISO 8601 (2026-12-01T10:00:00Z) or "
                                                  "epoch milliseconds (default: now)")
        _identifier_options(p)
        add_settings(p, "bootstrap", "schemas", "consent_input_topic", "security")
    p = consent.add_parser("show", help="a subject's consent history per purpose (read from the consent topic)",
                           description="The identifier is read from stdin (or --file); the subject is shown as its "
                                       "token.")
    _identifier_options(p)
    add_settings(p, "bootstrap", "keyring", "schemas", "consent_topic", "security")

    p = sub.add_parser("decrypt", help="decrypt sanitized records from stdin (JSON lines or Avro)")
    p.add_argument("--topic", help="sanitized topic the records came from (needed with several policies)")
    p.add_argument("--role", type=_role_name, default=None,
                   help="open the role-scoped fields (format v3) readable by this role, with its key only; others "
                        "are reported not_permitted")
    add_settings(p, "keyring", "schemas", "bootstrap", "key_topic", *KMS, "role_kms_keys", "security")

    dlq = sub.add_parser("dlq", help="dead-letter tools").add_subparsers(dest="dlq_cmd", required=True)
    p = dlq.add_parser("unseal", help="open sealed dead letters from stdin (JSON lines, as `gateway dump` prints a "
                                      "dead-letter topic)",
                       description="Prints each dead letter's original value, key and headers (base64), one JSON "
                                   "line each. Dead letters sealed under a subject's key need the key topic "
                                   "(--bootstrap); after `gateway forget` they fail with key_erased (exit 1).")
    add_settings(p, "keyring", "bootstrap", "key_topic", *KMS, "security")

    p = sub.add_parser("dump", help="print a topic's records as JSON lines (sanitized, dlq or audit)")
    p.add_argument("--topic", required=True, help="the topic to print")
    p.add_argument("--limit", type=int, default=0, help="stop after N records (0 = all)")
    add_settings(p, "bootstrap", "schema_registry_url", "schemas", "security")

    audit = sub.add_parser("audit", help="audit trail tools").add_subparsers(dest="audit_cmd", required=True)
    p = audit.add_parser("verify", help="walk the audit hash chains and report the first break")
    p.add_argument("--topic", default="privacy.audit", help="the audit topic (default privacy.audit)")
    add_settings(p, "bootstrap", "security")

    p = sub.add_parser("aggregate", help="run the differentially private aggregate stages (a consumer-group member)")
    add_settings(p, *AGGREGATE_GROUPS)

    budget = sub.add_parser("budget", help="privacy budget").add_subparsers(dest="budget_cmd", required=True)
    p = budget.add_parser("show", help="print the privacy ledger: budget spent per aggregate and period")
    p.add_argument("--json", action="store_true", help="one JSON object per aggregate")
    add_settings(p, "bootstrap", "ledger_topic", "schemas", "security")

    quality = sub.add_parser("quality", help="data quality and re-identification risk").add_subparsers(
        dest="quality_cmd", required=True)
    p = quality.add_parser("show", help="the latest quality windows per source: rule outcomes, completeness, "
                                        "freshness and risk figures")
    p.add_argument("--source", default=None, help="only this source topic")
    p.add_argument("--windows", type=int, default=5, help="windows per source (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per window")
    add_settings(p, "bootstrap", "quality_topic", "security")

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

    p = sub.add_parser("produce-samples", help="publish synthetic raw events (and a few broken ones) to a broker")
    p.add_argument("--count", type=int, default=1000, help="valid events per schema (default 1000)")
    p.add_argument("--rate", type=float, default=0.0, help="events/s per schema; 0 = as fast as possible")
    p.add_argument("--seed", type=int, default=7, help="seed of the generated values (default 7)")
    add_settings(p, "bootstrap", "schemas", "security")

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

    p = sub.add_parser("demo", help="embedded broker + gateway + sample events, end to end")
    p.add_argument("--events", type=int, default=400, help="valid events per schema (default 400)")
    p.add_argument("--schemas", type=Path, default=Path("schemas"),
                   help="directory of annotated *.avsc schemas (default schemas)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # `gateway run --processes N` hands its arguments on to the children
    from gateway.logs import setup_logging

    setup_logging(getattr(args, "log_level", None) or "INFO")
    try:
        handler = {"broker": cmd_broker, "run": cmd_run, "policy": cmd_policy, "decrypt": cmd_decrypt, "dlq": cmd_dlq,
                   "dump": cmd_dump, "audit": cmd_audit, "demo": cmd_demo, "keys": cmd_keys,
                   "forget": cmd_forget, "retention": cmd_retention, "consent": cmd_consent,
                   "aggregate": cmd_aggregate, "budget": cmd_budget, "quality": cmd_quality,
                   "report": cmd_report,
                   "produce-samples": cmd_produce_samples, "scan": cmd_scan}[args.command]
        return handler(args)
    except GatewayError as exc:
        print(f"gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def cmd_broker(args: argparse.Namespace) -> int:
    from gateway.embedded.broker import EmbeddedBroker

    broker = EmbeddedBroker(args.port, data_dir=args.data_dir)
    stop = {"now": False}

    def _stop(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with broker:
        print(f"broker listening on {broker.bootstrap} (Apache Kafka {broker.version}, KRaft; "
              f"data: {broker.data_dir}; log: {broker.log_path})", flush=True)
        assert broker.process is not None
        while not stop["now"] and broker.process.poll() is None:
            time.sleep(0.2)
        code = broker.process.poll()
    return 0 if code in (None, 0, -15, 143) else int(code)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.policy import load_plans
    from gateway.runtime.jobs.sanitize import Worker
    from gateway.runtime.registry import resolve_ids

    config = _config(args)
    plans = resolve_ids(load_plans(config.require_schemas_dir()), config.schema_registry_url,
                        config.sanitized_compatibility)
    processes = config.process_count()
    if processes > 1:  # every check below runs in each child, with its errors and exit code 2
        from gateway.runtime.supervisor import Supervisor, child_arguments

        return Supervisor(child_arguments(args.argv[1:]), processes, config.metrics_port, config.metrics_host,
                          config.instance_id).run()
    for plan in plans:
        for warning in plan.warnings:
            log.warning("policy", extra={"problem": str(warning)})
    keyring = Keyring.open(config.keyring, create=True)
    from gateway.keys.providers import build_kms

    kms = build_kms(config, keyring)  # fail fast, before Kafka, on a wrong or unreachable KMS
    _require_kafka(config)
    return Worker(config, plans, keyring, kms=kms).run()


def _require_kafka(config: GatewayConfig) -> None:
    """One bounded metadata request: an unreachable cluster, a TLS or SASL failure is one error line
    (exit 2) naming the bootstrap servers and librdkafka's reason, instead of a wait in the worker."""
    from gateway.runtime import clients

    errors = clients.ClientErrors("admin", log_every_s=None)
    clients.require_metadata(clients.admin(config, errors), errors, config.bootstrap)


def cmd_policy(args: argparse.Namespace) -> int:
    from gateway.policy import compile_plan, lint_directory, lint_file
    from gateway.schema import load_schema_file

    if args.policy_cmd == "lint":
        if args.directory.is_file():
            problems = lint_file(args.directory)
        elif args.directory.is_dir():
            problems = lint_directory(args.directory)
        else:
            raise GatewayError(f"'{args.directory}' is neither a schema file nor a directory of *.avsc")
        config = _config(args)
        if config.schema_registry_url and not any(p.severity == "error" for p in problems):
            from gateway.policy import load_plans
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
        from gateway.quality.spec import describe

        for line in describe(plan.quality):
            print(f"  {line}")
    if args.bootstrap and plan.quality is not None and plan.quality.risk is not None:
        _print_risk_warning(args, plan.source_topic)
    print("purposes:" if plan.purposes else "purposes:        (none)")
    for line in _purpose_lines(plan):
        print(f"  {line}")
    print("sanitized schema:")
    print(orjson.dumps(plan.sanitized_schema, option=orjson.OPT_INDENT_2).decode())
    for purpose in plan.purposes:  # each view's own schema: what the purpose topic's consumers read
        print(f"purpose '{purpose.name}' schema:")
        print(orjson.dumps(purpose.plan.sanitized_schema, option=orjson.OPT_INDENT_2).decode())
    return 0


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
    from gateway.quality.report import latest, merge_windows
    from gateway.quality.risk import generalization_warning, risk_figures
    from gateway.runtime.reader import read_topic

    config = _config(args)
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


def _schemas_dir(value: Path | None) -> Path:
    config = GatewayConfig.load({"schemas": value})
    return config.require_schemas_dir()


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.policy import load_plans

    if args.keys_cmd in ("rotate", "export") and getattr(args, "role", None):
        from gateway.keys.roles import cmd_export_role, cmd_rotate_role

        if getattr(args, "token_domain", None):
            raise GatewayError("--role and --token-domain both given: rotate one key at a time")
        return {"rotate": cmd_rotate_role, "export": cmd_export_role}[args.keys_cmd](args, _config(args))
    if args.keys_cmd in ("rotate", "retire", "rewrap"):
        from gateway.keys.rotation import cmd_retire, cmd_rotate
        from gateway.runtime.keytopic import cmd_rewrap

        return {"rotate": cmd_rotate, "retire": cmd_retire, "rewrap": cmd_rewrap}[args.keys_cmd](args, _config(args))
    if args.keys_cmd == "rotate-quarantine":
        from gateway.keys.rotation import cmd_rotate_quarantine

        return cmd_rotate_quarantine(args, _config(args))

    from gateway.keys.roles import policy_roles

    config = GatewayConfig.load({"keyring": args.keyring, "schemas": args.schemas})
    plans = load_plans(config.require_schemas_dir())
    existed = config.keyring.exists()
    keyring = Keyring.open(config.keyring, create=True)
    domains = {d for p in plans for d in p.token_domains}
    keyring.ensure_token_domains(domains)
    # with AWS or Vault the policies' roles have KMS keys (role_kms_keys); --role still makes a local one
    roles = set(args.roles or ()) | (policy_roles(plans) if config.kms_provider == "local" else set())
    keyring.ensure_roles(roles)
    state = "updated" if existed else "created"
    print(f"keyring {config.keyring} {state}: KEK {keyring.active_key_id()}, token domains "
          f"{', '.join(sorted(domains)) or '(none)'}, role keys {', '.join(keyring.roles()) or '(none)'}")
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    from gateway.decrypt import decrypt_record
    from gateway.keys.envelope import FieldDecryptor
    from gateway.keys.keyring import Keyring
    from gateway.policy import load_plans
    from gateway.sanitized import SanitizedDecoder
    from gateway.schema import decoded_for_json

    config = _config(args)
    plans = load_plans(config.require_schemas_dir())
    decoder = SanitizedDecoder(plans)
    from gateway.keys.providers import build_kms, build_role_decrypt_kms

    # with a remote KMS the keyring is optional (it opens ciphertexts made before the move)
    keyring = (Keyring.open(config.keyring, create=False)
               if config.kms_provider == "local" or config.keyring.exists() else None)
    # as a role with AWS or Vault: that role's key only, unwrap only (its consumer may not wrap)
    kms = (build_role_decrypt_kms(config, keyring, args.role) if args.role and config.kms_provider != "local"
           else build_kms(config, keyring))
    subject_keys = None
    if args.bootstrap:
        from gateway.keys.subject_keys import SubjectKeys
        from gateway.runtime.keytopic import load_subject_keys

        subject_keys = load_subject_keys(config.kafka_client_config(), config.key_topic, SubjectKeys(kms))
    decryptor = FieldDecryptor(kms, subject_keys=subject_keys, role=args.role)
    data = sys.stdin.buffer.read()
    failures = 0
    for n, (plan, record) in enumerate(_stdin_records(data, decoder, args.topic), start=1):
        opened, report = decrypt_record(record, plan, decryptor)
        for path, outcome in report.fields.items():
            if outcome != "decrypted":
                failures += 1
                print(f"record {n}: field '{path}': {outcome}", file=sys.stderr)
        sys.stdout.buffer.write(orjson.dumps(decoded_for_json(opened)) + b"\n")
    if failures:
        print(f"gateway decrypt: {failures} field(s) could not be decrypted", file=sys.stderr)
        return 1
    return 0


def _stdin_records(data: bytes, decoder: Any, topic: str | None) -> Any:
    if data.startswith(b"Obj\x01"):
        reader = fastavro.reader(io.BytesIO(data))
        plan = decoder.plan_for(topic, reader.writer_schema.get("name") if reader.writer_schema else None)
        for record in reader:
            yield plan, record
        return
    if data.lstrip()[:1] in (b"{", b""):
        plan = None
        for line in data.splitlines():
            if line.strip():
                plan = plan or decoder.plan_for(topic)
                yield plan, orjson.loads(line)
        return
    plan = decoder.plan_for(topic)
    buffer = io.BytesIO(data)
    while buffer.tell() < len(data):
        yield plan, fastavro.schemaless_reader(buffer, plan.sanitized_parsed, None)


def cmd_dlq(args: argparse.Namespace) -> int:
    """`gateway dlq unseal`: each dead letter's original as {"source", "reason", "value", "key", "headers"}
    (bytes base64, for inspection or replay). One that does not open is reported on stderr with its reason
    (key_erased: its subject was forgotten) and makes the exit code 1; the others are still printed."""
    from gateway.deadletter import QuarantineSealer
    from gateway.errors import DecryptError
    from gateway.keys.errors import KmsUnavailable
    from gateway.keys.keyring import Keyring

    config = _config(args)
    keyring = Keyring.open(config.keyring, create=False)
    subject_keys = None
    if args.bootstrap:  # format-2 dead letters: the subject keys the key topic still holds
        from gateway.keys.providers import build_kms
        from gateway.keys.subject_keys import SubjectKeys
        from gateway.runtime.keytopic import load_subject_keys

        subject_keys = load_subject_keys(config.kafka_client_config(), config.key_topic,
                                         SubjectKeys(build_kms(config, keyring)))
    sealer = QuarantineSealer.of_keyring(keyring, subject_keys)  # opens each quarantine key the keyring holds
    out = sys.stdout.buffer
    failures = 0
    for n, line in enumerate(sys.stdin.buffer, start=1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            letter = orjson.loads(line)
            source = letter["source"]
            where = f"dead letter {source['topic']}/{source['partition']}/{source['offset']}"
            opened = sealer.unseal(letter)
        except DecryptError as exc:
            failures += 1
            print(f"{where}: {exc.reason}: {exc.message}", file=sys.stderr)
            continue
        except KmsUnavailable as exc:
            failures += 1
            print(f"{where}: kms_unavailable: {exc}", file=sys.stderr)
            continue
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            failures += 1
            print(f"{where}: malformed: not a dead letter (JSON with source and sealed)", file=sys.stderr)
            continue
        out.write(orjson.dumps({
            "source": source, "reason": letter.get("reason"), "value": _b64(opened["value"]),
            "key": _b64(opened["key"]), "headers": [[name, _b64(data)] for name, data in opened["headers"]],
        }) + b"\n")
    out.flush()
    if failures:
        print(f"gateway dlq unseal: {failures} dead letter(s) could not be unsealed", file=sys.stderr)
        return 1
    return 0


def _b64(data: bytes | None) -> str | None:
    import base64

    return None if data is None else base64.b64encode(data).decode("ascii")


def cmd_dump(args: argparse.Namespace) -> int:
    """One JSON line per record: sanitized records decoded (JSON ones as they are, Avro ones with the
    schemas: --schemas, GATEWAY_SCHEMAS, or ./schemas when it exists), other JSON values as they are,
    anything else as {"value": ..., "value_encoding": "utf-8" | "base64"}; a tombstone is null."""
    from gateway.runtime.reader import read_topic

    config = _config(args)
    dumper = _Dumper(config, explicit=args.schemas is not None or env_name("schemas") in os.environ)
    out = sys.stdout.buffer
    for record in read_topic(config.kafka_client_config(), args.topic)[: args.limit or None]:
        out.write(orjson.dumps(dumper.line(record)) + b"\n")
    out.flush()
    if dumper.undecoded:
        print(dumper.note(args.topic), file=sys.stderr)
    return 0


class _Dumper:
    """`gateway dump`'s record -> JSON value; remembers the Avro records it could not decode."""

    def __init__(self, config: GatewayConfig, explicit: bool) -> None:
        self.config = config
        self.explicit = explicit  # --schemas or GATEWAY_SCHEMAS: a missing directory is an error
        self._decoder: Any = None
        self.undecoded: list[tuple[int, int, str]] = []  # (partition, offset, schema name)
        self.problem = ""
        self.problem_says_fix = False  # the decoder's message already says what to pass

    def _decoder_or_none(self) -> Any:
        if self._decoder is None:
            from gateway.policy import load_plans
            from gateway.sanitized import SanitizedDecoder

            if self.explicit or self.config.schemas.is_dir():
                writers = None
                if self.config.schema_registry_url:  # records of other sanitized schema versions
                    from gateway.runtime.registry import WriterSchemaLookup

                    writers = WriterSchemaLookup(self.config.schema_registry_url)
                self._decoder = SanitizedDecoder(load_plans(self.config.require_schemas_dir()), writers)
            else:
                self._decoder = False
                self.problem = f"no schemas (no directory '{self.config.schemas}')"
        return self._decoder or None

    def line(self, record: Any) -> Any:
        from gateway.schema import decoded_for_json

        name = record.headers.get("gateway-schema")
        if name is None:
            return _plain_value(record.value)
        encoding = record.headers.get("gateway-encoding", b"").decode()
        value = record.value or b""
        if encoding == "json" or (not encoding and value[:1] == b"{"):
            return _plain_value(record.value)  # a JSON sanitized record needs no schema
        decoder = self._decoder_or_none()
        plan = decoder.by_name.get(name.decode(errors="replace")) if decoder is not None else None
        if plan is not None:
            try:
                return decoded_for_json(decoder.decode(record)[1])
            except GatewayError as exc:  # another sanitized schema version: the message says how to fix
                if not self.problem:
                    self.problem, self.problem_says_fix = str(exc), True
            except Exception:  # noqa: BLE001 - corrupt or foreign bytes: shown encoded, named in the note
                self.problem = self.problem or "a record did not decode with its schema"
        elif decoder is not None:
            self.problem = f"no policy in '{self.config.schemas}' has this sanitized schema"
        self.undecoded.append((record.partition, record.offset, name.decode(errors="replace")))
        return {**_plain_value(value, text=False), "schema": name.decode(errors="replace")}

    def note(self, topic: str) -> str:
        names = ", ".join(sorted({n for _, _, n in self.undecoded}))
        where = ", ".join(f"{p}/{o}" for p, o, _ in self.undecoded[:5])
        more = f" and {len(self.undecoded) - 5} more" if len(self.undecoded) > 5 else ""
        return (f"note: {len(self.undecoded)} Avro record(s) of '{topic}' (schema {names}; partition/offset "
                f"{where}{more}) could not be decoded: {self.problem}. They are printed base64-encoded"
                + ("" if self.problem_says_fix else "; pass --schemas DIR (the annotated *.avsc of the raw "
                   "topics) to decode them"))


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _plain_value(value: bytes | None, text: bool = True) -> Any:
    """A value as JSON: parsed when it is JSON, else its text ("value_encoding": "utf-8") when it is
    UTF-8 without control characters (and `text`), else its bytes base64-encoded ("value_encoding": "base64")."""
    import base64

    if value is None:
        return None
    if text:
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
        try:
            decoded = value.decode("utf-8")
        except UnicodeDecodeError:
            decoded = None
        if decoded is not None and not _CONTROL.search(decoded):
            return {"value": decoded, "value_encoding": "utf-8"}
    return {"value": base64.b64encode(value).decode("ascii"), "value_encoding": "base64"}


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway.audit import verify_chains
    from gateway.runtime.reader import read_topic

    records = read_topic(_config(args).kafka_client_config(), args.topic)
    report = verify_chains((r.partition, r.offset, r.value or b"") for r in records)
    for restart in report.restarts:
        print(f"note: {restart}")
    for problem in report.breaks:
        print(f"BREAK: {problem}")
    status = "OK" if report.ok else "BROKEN"
    print(f"audit chain {status}: {report.events} events in {report.records} records, {report.chains} chains "
          f"on '{args.topic}'")
    return 0 if report.ok else 1


def _identifier_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", required=True, help="token domain of the subject field")
    p.add_argument("--file", type=Path, default=None, help="read the identifier from this file (default: stdin)")
    p.add_argument("--normalizer", default=None,
                   help="normalizer of the domain (email, phone:GB, trim, casefold, or none), instead of reading "
                        "the schemas")


def _read_identifier(args: argparse.Namespace) -> str:
    """The subject's identifier from --file or stdin (one line, surrounding newline dropped); never echoed."""
    if getattr(args, "subject", None):
        print("warning: an identifier on the command line stays in the shell history; pipe it on stdin instead",
              file=sys.stderr)
        return str(args.subject)
    if args.file is not None:
        try:
            text = args.file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--file {args.file}: cannot read it ({exc.strerror})") from None
    else:
        if sys.stdin.isatty():
            print("identifier (not echoed to the log; end with Enter):", file=sys.stderr)
        text = sys.stdin.readline()
    identifier = text.rstrip("\r\n")
    if not identifier:
        raise ConfigError("no identifier: pipe it on stdin or pass --file FILE")
    return identifier


def cmd_consent(args: argparse.Namespace) -> int:
    from gateway.policy import load_plans

    config = _config(args)
    plans = load_plans(config.require_schemas_dir())
    purposes = {name for p in plans if p.subject_domain == args.domain for name in p.consent_purposes}
    if not purposes:
        raise ConfigError(f"no policy in '{config.schemas}' asks consent of subjects in domain '{args.domain}'")
    if args.consent_cmd == "show":
        return _consent_show(args, config)
    if args.purpose not in purposes:
        raise ConfigError(f"purpose '{args.purpose}' is not a consent purpose of domain '{args.domain}' "
                          f"(known: {', '.join(sorted(purposes))})")
    if not config.consent_input_topic:
        raise ConfigError("setting 'consent_input_topic' (GATEWAY_CONSENT_INPUT_TOPIC): the topic the worker reads "
                          "consent events from; set it as the worker has it")
    from gateway.runtime.consent import queue_raw_consent

    at_ms = _epoch_ms(args.at) if args.at else int(time.time() * 1000)
    # the raw identifier goes where producers put it: the worker tokenizes it before storing
    queue_raw_consent(config, {"subject": _read_identifier(args), "domain": args.domain, "purpose": args.purpose,
                               "granted": args.consent_cmd == "grant", "at": at_ms})
    print(f"consent {args.consent_cmd} for '{args.purpose}' (domain '{args.domain}', effective "
          f"{_iso(at_ms)}) queued on '{config.consent_input_topic}': the worker stores it under the subject's "
          "token and audits it")
    return 0


def _consent_show(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.keys.tokens import DomainTokenizer
    from gateway.runtime.consent import restore_table

    keyring = Keyring.open(config.keyring, create=False)
    version, token_keys = keyring.token_keys(args.domain)
    subject = _normalized_subject(args, config, _read_identifier(args))
    token = DomainTokenizer(args.domain, version, token_keys[version]).token(subject)
    table, _ = restore_table(config, create=False)
    history = table.history(args.domain, token)
    print(orjson.dumps({"domain": args.domain, "subject": token, "purposes": {
        purpose: [{"at": _iso(at), "granted": granted} for at, granted in changes]
        for purpose, changes in history.items()}}, option=orjson.OPT_INDENT_2).decode())
    return 0


def _epoch_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--at '{text}' is neither ISO 8601 nor epoch milliseconds") from None
    if moment.tzinfo is None:
        raise ConfigError(f"--at '{text}' has no time zone: add Z or an offset")
    return int(moment.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC).isoformat(timespec="milliseconds")


def cmd_retention(args: argparse.Namespace) -> int:
    from gateway.runtime.retention import cmd_retention as run

    return run(args, _config(args))


def cmd_forget(args: argparse.Namespace) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.keys.subject_keys import SubjectKeys
    from gateway.runtime.keytopic import NothingToForget, forget_subject, snapshot_subject_keys

    config = _config(args)
    keyring = Keyring.open(config.keyring, create=False)
    _, token_keys = keyring.token_keys(args.domain)
    subject = _normalized_subject(args, config, _read_identifier(args))
    keys = SubjectKeys(keyring)
    since = snapshot_subject_keys(config.kafka_client_config(), config.key_topic, keys)
    try:
        event = forget_subject(config, subject, args.domain, token_keys, keys, since)
    except NothingToForget as exc:
        print(f"gateway forget: {exc}", file=sys.stderr)
        return 1
    erased, consent = event["keys_erased"], event["consent_records_erased"]
    what = (f"{erased} key(s) erased on '{config.key_topic}'. Running workers evict them within seconds; the "
            "subject's earlier ciphertexts can no longer be decrypted" if erased else
            f"no key of this subject on '{config.key_topic}' (nothing of theirs was encrypted under a subject key)")
    print(f"subject forgotten in domain '{args.domain}': {what}; {consent} consent record(s) erased on "
          f"'{config.consent_topic}'; audit event on '{config.audit_topic}'")
    return 0


def _normalized_subject(args: argparse.Namespace, config: GatewayConfig, identifier: str) -> str:
    """The identifier as the gateway tokenized it: through the domain's normalizer (gateway/normalize.py),
    named by --normalizer or found in the policies, so any spelling of it erases the same keys."""
    from gateway import normalize
    from gateway.policy import load_plans

    spec = args.normalizer
    if spec is None and config.schemas.is_dir():
        plans = load_plans(config.schemas)
        specs = {p.token_normalizers[args.domain] for p in plans if args.domain in p.token_normalizers}
        if not specs:
            raise ConfigError(f"no policy in '{config.schemas}' tokenizes into domain '{args.domain}'")
        (spec,) = specs  # policy lint allows one normalizer per domain
    elif spec is None:  # guessing "no normalizer" would erase nothing for a domain that has one
        raise ConfigError(f"no schemas at '{config.schemas}' to read domain '{args.domain}''s normalizer from: pass "
                          "--schemas DIR (the policies) or --normalizer NAME (none for a domain without one)")
    try:
        norm = None if spec == "none" else normalize.from_spec(spec)
    except ValueError as exc:
        raise ConfigError(f"setting 'normalizer': {exc}") from None
    return norm(identifier) if norm is not None else identifier


def cmd_aggregate(args: argparse.Namespace) -> int:
    from gateway.policy import load_plans
    from gateway.runtime.jobs.aggregate import AggregateWorker
    from gateway.runtime.registry import resolve_ids

    config = _config(args)
    plans = resolve_ids(load_plans(config.require_schemas_dir()), config.schema_registry_url,
                        config.sanitized_compatibility)
    _require_kafka(config)
    return AggregateWorker(config, plans).run()


def cmd_budget(args: argparse.Namespace) -> int:
    from gateway.dp.ledger import describe
    from gateway.policy import load_plans
    from gateway.runtime.ledger import load_ledger

    config = _config(args)
    specs = {}
    if args.schemas is not None:
        specs = {a.id: a for p in load_plans(_schemas_dir(args.schemas)) for a in p.aggregates}
    ledger = load_ledger(config.kafka_client_config(), config.ledger_topic)
    if args.json:
        for row in [*ledger.summary(specs=specs), *ledger.budget_summary(specs)]:
            sys.stdout.buffer.write(orjson.dumps(row) + b"\n")
        return 0
    print(f"privacy ledger '{config.ledger_topic}' on {config.bootstrap}")
    print(describe(ledger, specs))
    return 0


def cmd_quality(args: argparse.Namespace) -> int:
    from gateway.quality.report import latest, merge_windows
    from gateway.runtime.reader import read_topic

    if args.windows < 1:
        raise GatewayError("--windows must be at least 1")
    config = _config(args)
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


def cmd_report(args: argparse.Namespace) -> int:
    """`gateway report`: read the audit, ledger, key and quality topics, summarize the period
    (gateway.report.collect), and print it (text or --json) and/or write it as HTML (--html)."""
    from gateway.audit import entries, verify_chains
    from gateway.policy import load_plans
    from gateway.report.collect import collect, decode_json, key_record, parse_when
    from gateway.runtime.ledger import load_ledger
    from gateway.runtime.reader import read_topic
    from gateway.runtime.topics import admin_client, partition_counts

    config = _config(args)
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
    _require_kafka(config)
    kafka = config.kafka_client_config()
    existing = partition_counts(admin_client(kafka))
    if config.audit_topic not in existing:
        raise GatewayError(f"audit topic '{config.audit_topic}' does not exist on {config.bootstrap} "
                           "(pass --audit-topic)")
    topics = {"audit": config.audit_topic, "ledger": config.ledger_topic, "keys": config.key_topic,
              "quality": config.quality_topic}  # CONSENT (a later issue): the consent topic is read here too
    for name in ("keys", "quality"):
        if topics[name] not in existing:
            notes.append(f"no {name} topic '{topics[name]}' on {config.bootstrap}: nothing from it in this report")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:  # each read waits for its partitions' ends: the four wait together
        reads = {name: pool.submit(read_topic, kafka, topics[name]) for name in ("audit", "keys", "quality")
                 if topics[name] in existing}
        ledger = pool.submit(load_ledger, kafka, config.ledger_topic)
        records = {name: future.result() for name, future in reads.items()}
        ledger_state = ledger.result()
    audit_records = records["audit"]
    chains = verify_chains((r.partition, r.offset, r.value or b"") for r in audit_records)
    report = collect(
        since_ms=since_ms, until_ms=until_ms, generated_ms=now_ms, plans=plans, chains=chains, topics=topics,
        audit=(e for r in audit_records for e in entries(decode_json(r.value))), ledger=ledger_state,
        keys=(key_record(r.key, r.value) for r in records.get("keys", [])),
        quality=(decode_json(r.value) for r in records.get("quality", [])),
        notes=notes)
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


def cmd_produce_samples(args: argparse.Namespace) -> int:
    from gateway.demo import produce_samples
    from gateway.policy import load_plans

    if args.count < 0 or args.rate < 0:
        raise GatewayError("--count and --rate must not be negative")
    config = _config(args)
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


def _scan_schema(args: argparse.Namespace, config: GatewayConfig) -> Any:
    """The schema of `args.topic`: --schema FILE, or the one of --schemas DIR (GATEWAY_SCHEMAS)
    whose privacy.source_topic (default: the record's full name) is the topic."""
    from gateway.errors import PolicyError
    from gateway.schema import iter_schema_files, load_schema_file

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

    from gateway.errors import RejectedEvent
    from gateway.policy import lint_file
    from gateway.runtime.sample import sample_topic
    from gateway.scan import Scanner
    from gateway.schema import EventDecoder

    if args.sample < 1:
        raise GatewayError("--sample must be at least 1")
    if args.scan_timeout_s <= 0:
        raise GatewayError("--timeout-s must be positive")
    config = _config(args)
    schema = _scan_schema(args, config)
    settings = schema.privacy if isinstance(schema.privacy, dict) else {}
    decoder = EventDecoder(schema, settings.get("input", "auto"), settings.get("schema_id"), config.max_record_bytes)
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

    from gateway.scan import annotation_label

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


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(args.schemas, args.events)
