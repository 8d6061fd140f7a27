"""What the commands share: the settings options each command group shows (from their declarations in
gateway/settings.py), settings from parsed arguments, and argument types."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.keys.roles import ROLE_NAME_RULE, valid_role
from gateway.settings import GROUPS, GatewayConfig, declared, env_name, shown_default

log = logging.getLogger("gateway.cli")


# The settings groups (gateway/settings.py) each command reads: `--help` shows exactly these.
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


def config_of(args: argparse.Namespace) -> GatewayConfig:
    names = GatewayConfig.__dataclass_fields__
    config = GatewayConfig.load({k: v for k, v in vars(args).items() if k in names})
    for warning in config.security_warnings():
        log.warning("kafka security", extra={"problem": warning})
    return config


KMS = ("kms_provider", "kms_timeout_s", "aws_kms_key_id", "aws_region", "aws_endpoint_url", "vault_addr",
       "vault_token", "vault_transit_key", "vault_mount")


def role_name(value: str) -> str:
    if not valid_role(value):
        raise argparse.ArgumentTypeError(f"'{value}' is not a role name ({ROLE_NAME_RULE})")
    return value


def schemas_dir(value: Path | None) -> Path:
    config = GatewayConfig.load({"schemas": value})
    return config.require_schemas_dir()


def require_kafka(config: GatewayConfig) -> None:
    """One bounded metadata request: an unreachable cluster, a TLS or SASL failure is one error line
    (exit 2) naming the bootstrap servers and librdkafka's reason, instead of a wait in the worker."""
    from gateway.runtime import clients

    errors = clients.ClientErrors("admin", log_every_s=None)
    clients.require_metadata(clients.admin(config, errors), errors, config.bootstrap)


def identifier_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--domain", required=True, help="token domain of the subject field")
    p.add_argument("--file", type=Path, default=None, help="read the identifier from this file (default: stdin)")
    p.add_argument("--normalizer", default=None,
                   help="normalizer of the domain (email, phone:GB, trim, casefold, or none), instead of reading "
                        "the schemas")


def read_identifier(args: argparse.Namespace) -> str:
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


def normalized_subject(args: argparse.Namespace, config: GatewayConfig, identifier: str) -> str:
    """The identifier as the gateway tokenized it: through the domain's normalizer (gateway/keys/normalize.py),
    named by --normalizer or found in the policies, so any spelling of it erases the same keys."""
    from gateway.core.policy.lint import load_plans
    from gateway.keys import normalize

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
