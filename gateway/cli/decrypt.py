"""`gateway decrypt`: open sanitized records from stdin with the keys the caller holds."""

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
    role_name,
)

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decrypt", help="decrypt sanitized records from stdin (JSON lines or Avro)")
    p.add_argument("--topic", help="sanitized topic the records came from (needed with several policies)")
    p.add_argument("--role", type=role_name, default=None,
                   help="open the role-scoped fields (format v3) readable by this role, with its key only; others "
                        "are reported not_permitted")
    add_settings(p, "keyring", "schemas", "bootstrap", "key_topic", *KMS, "role_kms_keys", "security")
    sub.choices["decrypt"].set_defaults(func=cmd_decrypt)


def cmd_decrypt(args: argparse.Namespace) -> int:
    from gateway.core.codec.raw import decoded_for_json
    from gateway.core.codec.sanitized import SanitizedDecoder
    from gateway.core.decrypt import decrypt_record
    from gateway.core.policy.lint import load_plans
    from gateway.keys.envelope import FieldDecryptor

    config = config_of(args)
    plans = load_plans(config.require_schemas_dir())
    decoder = SanitizedDecoder(plans)
    # with a remote KMS the keyring is optional (it opens ciphertexts made before the move)
    keyring = app.optional_keyring(config)
    # as a role with AWS or Vault: that role's key only, unwrap only (its consumer may not wrap)
    kms = app.decrypt_kms(config, keyring, args.role)
    subject_keys = None
    if args.bootstrap:
        from gateway.keys.subject_keys import SubjectKeys
        from gateway.runtime.keytopic import load_subject_keys

        subject_keys = load_subject_keys(config.kafka_client_config(), config.key_topic, SubjectKeys(kms))
    decryptor = FieldDecryptor(kms, subject_keys=subject_keys, role=args.role)
    data = sys.stdin.buffer.read()
    failures = 0
    for n, (plan, record) in enumerate(decoder.records(data, args.topic), start=1):
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

