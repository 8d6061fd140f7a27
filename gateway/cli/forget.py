"""`gateway forget`: erase a data subject's keys and consent history."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gateway.cli.options import (
    add_settings,
    config_of,
    identifier_options,
    normalized_subject,
    read_identifier,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("forget", help="erase a data subject's keys (crypto-shredding) and consent history, "
                                      "and audit it",
                       description="The identifier is read from stdin (or --file), so it stays out of shell history. "
                                   "Exit 1 when no key and no consent record of the subject was found.")
    p.add_argument("subject", nargs="?", default=None,
                   help="deprecated: the identifier on the command line (it stays in shell history); pipe it on stdin")
    identifier_options(p)
    p.add_argument("--receipt", type=Path, default=None,
                   help="write the erasure receipt (JSON: names no value and no token) to this file, for the data "
                        "subject or a regulator to check with `gateway erasure verify`")
    p.add_argument("--json", action="store_true", help="print the receipt as JSON instead of its short form")
    add_settings(p, "bootstrap", "keyring", "schemas", "key_topic", "audit_topic", "consent_topic", "security")
    sub.choices["forget"].set_defaults(func=cmd_forget)


def cmd_forget(args: argparse.Namespace) -> int:
    from gateway.keys.keyring import Keyring
    from gateway.keys.subject_keys import SubjectKeys
    from gateway.runtime.erasure import forget_with_receipt
    from gateway.runtime.keytopic import NothingToForget, snapshot_subject_keys

    config = config_of(args)
    keyring = Keyring.open(config.keyring, create=False)
    _, token_keys = keyring.token_keys(args.domain)
    subject = normalized_subject(args, config, read_identifier(args))
    keys = SubjectKeys(keyring)
    since = snapshot_subject_keys(config.kafka_client_config(), config.key_topic, keys)
    try:
        receipt = forget_with_receipt(config, subject, args.domain, token_keys, keys, since)
    except NothingToForget as exc:
        print(f"gateway forget: {exc}", file=sys.stderr)
        return 1
    if args.receipt is not None:
        args.receipt.write_bytes(receipt.to_json() + b"\n")
    if args.json:
        sys.stdout.buffer.write(receipt.to_json() + b"\n")
        return 0
    erased, consent = len(receipt.keys), receipt.consent_records_erased
    what = (f"{erased} key(s) erased on '{config.key_topic}'. Running workers evict them within seconds; the "
            "subject's earlier ciphertexts can no longer be decrypted" if erased else
            f"no key of this subject on '{config.key_topic}' (nothing of theirs was encrypted under a subject key)")
    print(f"subject forgotten in domain '{args.domain}': {what}; {consent} consent record(s) erased on "
          f"'{config.consent_topic}'; audit event on '{config.audit_topic}'")
    print(receipt.human())
    return 0
