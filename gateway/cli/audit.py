"""`gateway audit verify`: walk the audit chains and report findings."""

from __future__ import annotations

import argparse
import logging

from gateway.cli.options import (
    add_settings,
    config_of,
    require_kafka,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="audit trail tools").add_subparsers(dest="audit_cmd", required=True)
    p = audit.add_parser("verify", help="verify the audit: chains, MACs, committed heads and source coverage",
                         description="Checks that every chain links and authenticates under the keyring's audit keys, "
                                     "ends at the head its writer committed (the group's offset metadata, the key "
                                     "topic), and audits each source offset holding a record exactly once up to the "
                                     "committed offset. Exits 1 on any finding.")
    p.add_argument("--topic", default=None, help="the audit topic (default: the audit_topic setting)")
    p.add_argument("--allow-legacy", dest="allow_legacy", action="store_true",
                   help="accept format 1 (unauthenticated) records that precede a chain's first authenticated one, "
                        "as notes (records written before the upgrade)")
    add_settings(p, "bootstrap", "audit_topic", "group_id", "keyring", "key_topic", "security")
    sub.choices["audit"].set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway.runtime.audit_check import verify_audit_topic

    config = config_of(args)
    topic = args.topic or config.audit_topic
    require_kafka(config)
    report = verify_audit_topic(config, topic, config.group_id, args.allow_legacy)
    for note in report.notes:
        print(f"note: {note.message} [{note.kind.value}]")
    for problem in report.problems:
        print(f"BREAK: {problem.message} [{problem.kind.value}]")
    status = "OK" if report.ok else f"BROKEN ({len(report.problems)} finding(s))"
    print(f"audit chain {status}: {report.events} events in {report.records} records, {report.chains} chains on "
          f"'{topic}', anchored in group '{config.group_id}'")
    return 0 if report.ok else 1
