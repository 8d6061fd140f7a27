"""`gateway consent grant|revoke|show`: a subject's consent to a purpose."""

from __future__ import annotations

import argparse
import datetime
import logging
import time

import orjson

from gateway.cli.options import (
    add_settings,
    config_of,
    identifier_options,
    normalized_subject,
    read_identifier,
)
from gateway.errors import ConfigError
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.cli")


def add_parser(sub: argparse._SubParsersAction) -> None:
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
        identifier_options(p)
        add_settings(p, "bootstrap", "schemas", "consent_input_topic", "security")
    p = consent.add_parser("show", help="a subject's consent history per purpose (read from the consent topic)",
                           description="The identifier is read from stdin (or --file); the subject is shown as its "
                                       "token.")
    identifier_options(p)
    add_settings(p, "bootstrap", "keyring", "schemas", "consent_topic", "security")
    sub.choices["consent"].set_defaults(func=cmd_consent)


def cmd_consent(args: argparse.Namespace) -> int:
    from gateway.core.policy.lint import load_plans

    config = config_of(args)
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
    queue_raw_consent(config, {"subject": read_identifier(args), "domain": args.domain, "purpose": args.purpose,
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
    subject = normalized_subject(args, config, read_identifier(args))
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
