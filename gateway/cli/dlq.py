"""`gateway dlq unseal`: open sealed dead letters from stdin."""

from __future__ import annotations

import argparse
import logging
import sys

import orjson

from gateway import app
from gateway.cli.options import (
    KMS,
    add_settings,
    config_of,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    dlq = sub.add_parser("dlq", help="dead-letter tools").add_subparsers(dest="dlq_cmd", required=True)
    p = dlq.add_parser("unseal", help="open sealed dead letters from stdin (JSON lines, as `gateway dump` prints a "
                                      "dead-letter topic)",
                       description="Prints each dead letter's original value, key and headers (base64), one JSON "
                                   "line each. Dead letters sealed under a subject's key need the key topic "
                                   "(--bootstrap); after `gateway forget` they fail with key_erased (exit 1).")
    add_settings(p, "keyring", "bootstrap", "key_topic", *KMS, "security")
    sub.choices["dlq"].set_defaults(func=cmd_dlq)


def cmd_dlq(args: argparse.Namespace) -> int:
    """`gateway dlq unseal`: each dead letter's original as {"source", "reason", "value", "key", "headers"}
    (bytes base64, for inspection or replay). One that does not open is reported on stderr with its reason
    (key_erased: its subject was forgotten) and makes the exit code 1; the others are still printed."""
    from gateway.core.deadletter import QuarantineSealer, unseal_lines
    from gateway.keys.keyring import Keyring

    config = config_of(args)
    keyring = Keyring.open(config.keyring, create=False)
    subject_keys = None
    if args.bootstrap:  # format-2 dead letters: the subject keys the key topic still holds
        from gateway.runtime.keytopic import load_subject_keys

        subject_keys = load_subject_keys(config.kafka_client_config(), config.key_topic,
                                         app.subject_keys(config, keyring))
    sealer = QuarantineSealer.of_keyring(keyring, subject_keys)  # opens each quarantine key the keyring holds
    out = sys.stdout.buffer
    failures = 0
    for result in unseal_lines(sealer, sys.stdin.buffer):
        if result.original is None:
            failures += 1
            print(f"{result.where}: {result.problem}", file=sys.stderr)
            continue
        out.write(orjson.dumps(result.original) + b"\n")
    out.flush()
    if failures:
        print(f"gateway dlq unseal: {failures} dead letter(s) could not be unsealed", file=sys.stderr)
        return 1
    return 0
