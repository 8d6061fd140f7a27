"""`gateway subject report`: what the gateway holds about one data subject (right of access)."""

from __future__ import annotations

import argparse
import logging
import sys

from gateway.cli.options import (
    add_settings,
    config_of,
    identifier_options,
    normalized_subject,
    read_identifier,
    require_kafka,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    subject = sub.add_parser("subject", help="data subject tools").add_subparsers(dest="subject_cmd", required=True)
    p = subject.add_parser(
        "report", help="what the gateway holds about one data subject: tokens, topics, keys, consent, DP, and "
                       "what `gateway forget` would erase",
        description="The identifier is read from stdin (or --file), never from the command line, and normalized "
                    "as the domain's tokenizer does. The report names no value beyond it: its tokens, the topics "
                    "and days its records went to (from the audit), the key ids protecting them and their scopes, "
                    "its consent changes per purpose, the DP aggregates and windows it contributed to, and what "
                    "`gateway forget` would erase.")
    identifier_options(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_settings(p, "bootstrap", "keyring", "schemas", "key_topic", "audit_topic", "consent_topic", "group_id",
                 "security")
    sub.choices["subject"].set_defaults(func=cmd_subject)


def cmd_subject(args: argparse.Namespace) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.runtime.subject import subject_report

    config = config_of(args)
    keyring = Keyring.open(config.keyring, create=False)
    _, token_keys = keyring.token_keys(args.domain)
    subject = normalized_subject(args, config, read_identifier(args))
    require_kafka(config)
    report = subject_report(config, subject, args.domain, token_keys)
    if args.json:
        sys.stdout.buffer.write(report.to_json() + b"\n")
    else:
        print(report.human())
    return 0
