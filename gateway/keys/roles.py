"""Role keys: who may open a field, enforced by which key-encryption key wraps its data key.

A field annotated ``{"encrypt": {"roles": ["support", "fraud"]}}`` is encrypted under a DEK that is
wrapped once under each listed role's KEK (ciphertext format v3, `gateway.keys.envelope`). A
consumer holding only the ``support`` key opens that field and nothing wrapped for other roles,
whatever code it runs: the check is the KMS's (or the keyring's), not ours. With ``per_subject`` or a
retention too (format v6), the DEK is a key-topic key wrapped per role there instead
(gateway.keys.key_store), so forget and retention erase it.

Where a role's KEK lives:

- ``kms_provider=local``: in the keyring file, section ``roles`` (versioned like KEKs), made by
  ``gateway keys init`` (for every role the policies name, and ``--role R``) or by the worker when a
  policy names a role the keyring lacks; ``gateway keys export --role R --out FILE`` writes a
  keyring holding that role's key versions and nothing else (no KEK, token or quarantine key).
- ``kms_provider=aws`` / ``vault``: one KMS key per role, named by the setting ``role_kms_keys``
  (``support=alias/gw-support,fraud=alias/gw-fraud``; for Vault transit key names), checked at
  start-up like the main key.

This module holds what is shared: role names, the ``role_kms_keys`` syntax, the roles a set of
policies names, and the ``gateway keys`` commands for roles. It imports nothing from the gateway at
module level, so `gateway.config` can use it.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.policy import Plan, RecordPlan

ROLE_NAME = re.compile(r"[a-z0-9_-]{1,64}")
ROLE_NAME_RULE = "1 to 64 characters of a-z, 0-9, '_' and '-'"


def valid_role(role: object) -> bool:
    return isinstance(role, str) and ROLE_NAME.fullmatch(role) is not None


def parse_role_kms_keys(text: str) -> dict[str, str]:
    """``"support=alias/gw-support,fraud=alias/gw-fraud"`` -> {role: key}. Raises ValueError naming the
    problem (the caller names the setting). Keys are KMS key names, never key material."""
    mapping: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        role, sep, key = (s.strip() for s in item.partition("="))
        if not sep or not key:
            raise ValueError(f"'{item}' is not ROLE=KEY")
        if not valid_role(role):
            raise ValueError(f"role '{role}' must be {ROLE_NAME_RULE}")
        if role in mapping:
            raise ValueError(f"role '{role}' is given twice")
        mapping[role] = key
    return mapping


def _record_roles(record: RecordPlan) -> Iterator[str]:
    for fp in record.fields:
        yield from getattr(fp.operator, "roles", ())
        shape = fp.shape
        while shape is not None:
            if shape.record is not None:
                yield from _record_roles(shape.record)
            shape = shape.inner


def policy_roles(plans: Iterable[Plan]) -> set[str]:
    """Every role some encrypted field of these policies names (nested records and purpose views included)."""
    records = [r for plan in plans for r in (plan.record, *(p.plan.record for p in getattr(plan, "purposes", ())))]
    return {role for record in records for role in _record_roles(record)}


# ---- gateway keys, for roles -------------------------------------------------------------------
def cmd_rotate_role(args: argparse.Namespace, config: GatewayConfig) -> int:
    """`gateway keys rotate --role R`: a new version of the role's KEK, made active."""
    from gateway.keys.keyring import Keyring
    from gateway.keys.providers import remote_role_provider

    role = args.role
    if config.kms_provider == "local":
        keyring = Keyring.open(config.keyring, create=False)
        old = keyring.role_key_ids(role)
        new = keyring.rotate_role(role)
        print(f"role '{role}' key rotated in {config.keyring}: {new} (active; {len(old)} older version(s) kept). "
              f"Workers wrap their next data key for role '{role}' with it. Re-export the role's keyring "
              f"(gateway keys export --role {role} --out FILE) for its consumers: an older export opens only "
              "data keys made before this rotation")
        return 0
    provider = remote_role_provider(config, role)
    print(f"role '{role}' key rotated in KMS provider '{config.kms_provider}': {provider.rotate()}. "
          "The key id in ciphertexts stays; older data keys still unwrap")
    return 0


def cmd_export_role(args: argparse.Namespace, config: GatewayConfig) -> int:
    """`gateway keys export --role R --out FILE`: the role's key versions alone, for its consumers."""
    from gateway.errors import GatewayError
    from gateway.keys.keyring import Keyring

    if config.kms_provider != "local":
        raise GatewayError(f"with kms_provider={config.kms_provider} role keys live in the KMS (setting "
                           "role_kms_keys): grant the role's consumers decrypt on their key instead of exporting one "
                           "(docs/tools/decrypt.md, \"Roles and KMS permissions\")")
    out = Path(args.out)
    keyring = Keyring.open(config.keyring, create=False)
    versions = keyring.export_role(args.role, out)
    print(f"keyring {out} written (mode 0600): role '{args.role}' key, {versions} version(s), and nothing else. "
          f"Its holder opens fields readable by '{args.role}': gateway decrypt --role {args.role} --keyring {out}")
    return 0
