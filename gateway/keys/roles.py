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

Role names and the ``role_kms_keys`` syntax live below the settings (`gateway.role_names`, which
`gateway.settings` validates with); this module re-exports them for the keys. The roles a set of
policies names is a walk of the compiled plan (`gateway.core.policy.compiler.policy_roles`); the
``gateway keys`` commands for roles are in `gateway.cli.keys`.
"""

from __future__ import annotations

from gateway.role_names import ROLE_NAME, ROLE_NAME_RULE, parse_role_kms_keys, valid_role

__all__ = ["ROLE_NAME", "ROLE_NAME_RULE", "parse_role_kms_keys", "valid_role"]
