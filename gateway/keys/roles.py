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

This module holds what is shared: role names and the ``role_kms_keys`` syntax. It imports nothing from
the gateway, so `gateway.settings` can use it. The roles a set of policies names is a walk of the
compiled plan (`gateway.core.policy.compiler.policy_roles`); the ``gateway keys`` commands for roles are
in `gateway.cli.keys`.
"""

from __future__ import annotations

import re

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
