"""Role names and the ``role_kms_keys`` syntax: below `gateway.settings`, which validates that setting,
and `gateway.keys.roles`, which says where each role's key lives. Imports nothing from the gateway."""

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
