"""What the commands share: the settings options each command group shows (from their declarations in
gateway/settings.py), settings from parsed arguments, and argument types."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

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
