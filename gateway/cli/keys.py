"""`gateway keys ...`: init, KEK, token-key, role-key, quarantine-key and audit-key rotation, role and audit-key
export, retire, rewrap.

The commands parse, call the keyring, the KMS provider or the key topic, and print; the logic stays in
gateway.keys and gateway.runtime.keytopic.

KEK rotation adds a new KEK version and makes it active. With the local keyring that is a new
``kek-<hex>`` entry; running workers notice the changed file when they next make a DEK (at most
``dek_max_age_s`` later) and wrap it under the new KEK. With Vault or AWS the key material rotates
inside the KMS and the KEK id stays the same. Old ciphertexts keep naming the KEK (and, for Vault,
the key version) that wrapped their DEK, so they still decrypt.

Token-key rotation adds version N+1 of a domain's HMAC key: tokens made after the workers restart
carry ``tok_vN+1_``, earlier ones keep their prefix. The same value gets a different token in each
version, so joins across the rotation need the key holder (see docs/operations/keys.md).

Quarantine-key rotation (`gateway keys rotate-quarantine`) adds a new quarantine key and makes it
active: running workers seal their next dead letter under it (gateway.core.deadletter); earlier dead
letters name their key and still unseal while the keyring holds it.

Audit-key rotation (`gateway keys rotate-audit`) adds an ``audit-<hex>`` MAC key and makes it active: records sealed
after the workers restart name it in ``mac_key_id``; older ones keep naming theirs and verify while
the keyring holds it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway import app
from gateway.cli.options import (
    KMS,
    add_settings,
    config_of,
    role_name,
)
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import policy_roles
from gateway.errors import GatewayError
from gateway.keys.keyring import Keyring
from gateway.runtime.keytopic import rewrap_keys
from gateway.settings import GatewayConfig


def cmd_keys(args: argparse.Namespace) -> int:
    if args.keys_cmd in ("rotate", "export") and getattr(args, "role", None):
        if getattr(args, "token_domain", None):
            raise GatewayError("--role and --token-domain both given: rotate one key at a time")
        return {"rotate": cmd_rotate_role, "export": cmd_export_role}[args.keys_cmd](args, config_of(args))
    if args.keys_cmd == "export":
        return cmd_export_audit(args, config_of(args))
    if args.keys_cmd in ("rotate", "retire", "rewrap"):
        return {"rotate": cmd_rotate, "retire": cmd_retire, "rewrap": cmd_rewrap}[args.keys_cmd](args, config_of(args))
    if args.keys_cmd == "rotate-quarantine":
        return cmd_rotate_quarantine(args, config_of(args))
    if args.keys_cmd == "rotate-audit":
        return cmd_rotate_audit(args, config_of(args))

    config = GatewayConfig.load({"keyring": args.keyring, "schemas": args.schemas})
    plans = load_plans(config.require_schemas_dir())
    existed = config.keyring.exists()
    keyring = Keyring.open(config.keyring, create=True)
    domains = {d for p in plans for d in p.token_domains}
    keyring.ensure_token_domains(domains)
    # with AWS or Vault the policies' roles have KMS keys (role_kms_keys); --role still makes a local one
    roles = set(args.roles or ()) | (policy_roles(plans) if config.kms_settings().local else set())
    keyring.ensure_roles(roles)
    audit_key, _ = keyring.audit_keys()
    state = "updated" if existed else "created"
    print(f"keyring {config.keyring} {state}: KEK {keyring.active_key_id()}, token domains "
          f"{', '.join(sorted(domains)) or '(none)'}, role keys {', '.join(keyring.roles()) or '(none)'}, "
          f"audit key {audit_key}")
    return 0


def cmd_rotate(args: argparse.Namespace, config: GatewayConfig) -> int:
    if args.token_domain:
        keyring = Keyring.open(config.keyring, create=False)
        version = keyring.rotate_token_domain(args.token_domain)
        print(f"token domain '{args.token_domain}': version {version} is active in {config.keyring}. Restart the "
              f"workers: new tokens will start tok_v{version}_, earlier tokens keep their version (joins across "
              "versions need the key holder)")
        return 0
    kms = config.kms_settings()
    if kms.local:
        keyring = Keyring.open(config.keyring, create=False)
        old = keyring.active_key_id()
        new = keyring.rotate_kek()
        print(f"KEK rotated in {config.keyring}: {old} -> {new} (active). Workers wrap their next DEK with it; "
              f"ciphertexts under {old} still decrypt while the keyring holds it")
        return 0
    provider = app.remote_kek(config)
    rotate = getattr(provider, "rotate", None)
    if rotate is None:
        raise GatewayError(f"KMS provider '{kms.provider.value}' cannot rotate from the gateway; rotate it in the KMS")
    print(f"KEK rotated in KMS provider '{kms.provider.value}': {rotate()}. The KEK id in ciphertexts stays; "
          "old DEKs still unwrap")
    return 0


def cmd_retire(args: argparse.Namespace, config: GatewayConfig) -> int:
    if not args.yes:
        raise GatewayError(f"retiring KEK '{args.kek_id}' deletes it: every field ciphertext (format v1) whose DEK "
                           "it wrapped becomes unreadable. Run 'gateway keys rewrap' for stored keys first, then "
                           "repeat with --yes")
    keyring = Keyring.open(config.keyring, create=False)
    keyring.retire_kek(args.kek_id)
    print(f"KEK {args.kek_id} deleted from {config.keyring}; active KEK {keyring.active_key_id()}")
    return 0


def cmd_rotate_quarantine(args: argparse.Namespace, config: GatewayConfig) -> int:
    keyring = Keyring.open(config.keyring, create=False)
    old = keyring.quarantine_key()[0]
    new = keyring.rotate_quarantine()
    print(f"quarantine key rotated in {config.keyring}: {old} -> {new} (active). Workers seal their next dead letter "
          f"under it; dead letters sealed under {old} still unseal while the keyring holds it")
    return 0


def cmd_rotate_audit(args: argparse.Namespace, config: GatewayConfig) -> int:
    new = Keyring.open(config.keyring, create=False).rotate_audit_key()
    print(f"audit key {new} is active in {config.keyring}. Restart the workers, and export the audit keys again for "
          "the aggregate worker and auditors (gateway keys export --audit): records carry it from then on; records "
          "under earlier audit keys verify while the keyring holds them")
    return 0


def cmd_export_audit(args: argparse.Namespace, config: GatewayConfig) -> int:
    """`gateway keys export --audit --out FILE`: the audit MAC keys alone (the aggregate worker's keyring)."""
    if getattr(args, "role", None) or not getattr(args, "audit", False):
        raise GatewayError("gateway keys export needs --role ROLE or --audit (one of them)")
    versions = Keyring.open(config.keyring, create=False).export_audit(args.out)
    print(f"keyring {args.out} written (mode 0600): the audit keys, {versions} version(s), and nothing else. Give it "
          "to the aggregate worker (--keyring) and to auditors (gateway audit verify --keyring); export again after "
          "gateway keys rotate-audit")
    return 0


def cmd_rotate_role(args: argparse.Namespace, config: GatewayConfig) -> int:
    """`gateway keys rotate --role R`: a new version of the role's KEK, made active."""
    role = args.role
    kms = config.kms_settings()
    if kms.local:
        keyring = Keyring.open(config.keyring, create=False)
        old = keyring.role_key_ids(role)
        new = keyring.rotate_role(role)
        print(f"role '{role}' key rotated in {config.keyring}: {new} (active; {len(old)} older version(s) kept). "
              f"Workers wrap their next data key for role '{role}' with it. Re-export the role's keyring "
              f"(gateway keys export --role {role} --out FILE) for its consumers: an older export opens only "
              "data keys made before this rotation")
        return 0
    provider = app.remote_role_key(config, role)
    print(f"role '{role}' key rotated in KMS provider '{kms.provider.value}': {provider.rotate()}. "
          "The key id in ciphertexts stays; older data keys still unwrap")
    return 0


def cmd_export_role(args: argparse.Namespace, config: GatewayConfig) -> int:
    """`gateway keys export --role R --out FILE`: the role's key versions alone, for its consumers."""
    kms = config.kms_settings()
    if not kms.local:
        raise GatewayError(f"with kms_provider={kms.provider.value} role keys live in the KMS (setting "
                           "role_kms_keys): grant the role's consumers decrypt on their key instead of exporting one "
                           "(docs/tools/decrypt.md, \"Roles and KMS permissions\")")
    out = Path(args.out)
    keyring = Keyring.open(config.keyring, create=False)
    versions = keyring.export_role(args.role, out)
    print(f"keyring {out} written (mode 0600): role '{args.role}' key, {versions} version(s), and nothing else. "
          f"Its holder opens fields readable by '{args.role}': gateway decrypt --role {args.role} --keyring {out}")
    return 0


def cmd_rewrap(args: argparse.Namespace, config: GatewayConfig) -> int:
    """Re-store per-subject keys wrapped under an older KEK, under the active one (same DEK, same id)."""
    keyring = Keyring.open(config.keyring, create=False) if config.keyring.exists() else None
    kms = app.build_kms(config, keyring)
    rewrapped, live = rewrap_keys(config, kms)
    print(f"rewrapped {rewrapped} of {live} subject and period key(s) on "
          f"'{config.key_topic}' under "
          f"{kms.active_key_id()}. Field ciphertexts of format v1 carry their own wrapped DEK and are not "
          "rewrapped: keep their KEK (decrypt-only) until their topics' retention has passed")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="key management").add_subparsers(dest="keys_cmd", required=True)
    p = keys.add_parser("init", help="create the keyring (mode 0600) with keys for every token domain and, with "
                                     "kms_provider=local, every role the policies name")
    p.add_argument("--role", dest="roles", action="append", type=role_name, default=None, metavar="ROLE",
                   help="also create a key for this role (repeatable)")
    add_settings(p, "keyring", "schemas")
    p = keys.add_parser("rotate", help="new KEK version (or token-key version with --token-domain, role key version "
                                       "with --role), made active")
    p.add_argument("--token-domain", dest="token_domain", help="rotate this token domain's HMAC key instead")
    p.add_argument("--role", type=role_name, default=None, help="rotate this role's key instead (the keyring's, or "
                                                                  "its KMS key of role_kms_keys)")
    add_settings(p, "keyring", *KMS, "role_kms_keys")
    p = keys.add_parser("export", help="write a keyring holding only one role's key, for that role's consumers "
                                       "(or, with --audit, only the audit keys, for the aggregate worker)",
                        description="The file (mode 0600) holds every version of the role's key and nothing else: "
                                    "no KEK, token key or quarantine key. Its holder opens the fields readable by "
                                    "that role (gateway decrypt --role ROLE --keyring FILE) and no others. Export "
                                    "again after gateway keys rotate --role ROLE. With --audit it holds the audit "
                                    "MAC keys alone: the aggregate worker's --keyring (it seals its audit records) "
                                    "and an auditor's (gateway audit verify).")
    p.add_argument("--role", type=role_name, default=None, help="the role whose key to export")
    p.add_argument("--audit", action="store_true", help="export the audit MAC keys instead of a role's key")
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="the keyring file to write")
    add_settings(p, "keyring", "kms_provider")
    p = keys.add_parser("retire", help="delete an old local KEK (ciphertexts wrapped only under it become unreadable)")
    p.add_argument("kek_id", help="the KEK version to delete (gateway keys rotate printed it)")
    p.add_argument("--yes", action="store_true", help="confirm: the deletion cannot be undone")
    add_settings(p, "keyring")
    p = keys.add_parser("rewrap", help="re-store every per-subject key in the key topic under the active KEK")
    add_settings(p, "bootstrap", "keyring", "key_topic", *KMS, "security")
    p = keys.add_parser("rotate-quarantine", help="new quarantine key (seals dead letters), made active; the old ones "
                                                  "still unseal earlier dead letters")
    add_settings(p, "keyring")
    p = keys.add_parser("rotate-audit", help="new audit key (MACs the audit records), made active from the workers' "
                                             "restart; the old ones still verify earlier records")
    add_settings(p, "keyring")
    sub.choices["keys"].set_defaults(func=cmd_keys)
