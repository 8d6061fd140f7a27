"""`gateway erasure verify`: check an erasure receipt against the broker."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gateway import app
from gateway.cli.options import (
    KMS,
    add_settings,
    config_of,
    normalized_subject,
    read_identifier,
    require_kafka,
)
from gateway.errors import ConfigError

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    erasure = sub.add_parser("erasure", help="erasure receipts").add_subparsers(dest="erasure_cmd", required=True)
    p = erasure.add_parser(
        "verify", help="check an erasure receipt (from `gateway forget --receipt`) against the broker",
        description="Checks the receipt's MAC; the audit record at its position (hash, MAC, forget chain, the "
                    "keys and subject it names); that no named key has a live value on the key topic and no old "
                    "value is left in its log (read from the beginning); that the erased-names topic refuses each; "
                    "and that the subject's ciphertexts under those keys answer key_erased. Exit 0: verified; "
                    "1: a check failed; 3: pending compaction (the old values are still in the log: run again "
                    "after the time it prints); 2: usage or connection error.")
    p.add_argument("receipt", type=Path, help="the receipt file (JSON)")
    p.add_argument("--identifier", action="store_true",
                   help="also check the receipt is this subject's: the identifier is read from stdin (or "
                        "--file), normalized like `gateway forget` does")
    p.add_argument("--file", type=Path, default=None, help="with --identifier: read the identifier from this file")
    p.add_argument("--normalizer", default=None, help="with --identifier: the domain's normalizer, instead of "
                                                      "reading the schemas")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    add_settings(p, "bootstrap", "keyring", "schemas", *KMS, "security")
    sub.choices["erasure"].set_defaults(func=cmd_erasure)


def cmd_erasure(args: argparse.Namespace) -> int:
    from gateway.core.erasure import parse_receipt
    from gateway.core.policy.lint import load_plans
    from gateway.runtime.erasure import verify_erasure

    config = config_of(args)
    try:
        receipt = parse_receipt(args.receipt.read_bytes())
    except OSError as exc:
        raise ConfigError(f"receipt {args.receipt}: cannot read it ({exc.strerror})") from None
    subject = None
    if args.identifier:
        args.domain = receipt.domain
        subject = normalized_subject(args, config, read_identifier(args))
    require_kafka(config)
    plans = load_plans(config.schemas) if config.schemas.is_dir() else []
    kms = app.decrypt_kms(config, app.optional_keyring(config), None)
    verdict = verify_erasure(config, receipt, plans, kms, subject)
    if args.json:
        sys.stdout.buffer.write(verdict.to_json() + b"\n")
    else:
        print(verdict.human())
    return int(verdict.exit_code)
