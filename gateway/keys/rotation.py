"""`gateway keys rotate` and `gateway keys retire`: KEK and token-key rotation.

KEK rotation adds a new KEK version and makes it active. With the local keyring that is a new
``kek-<hex>`` entry; running workers notice the changed file when they next make a DEK (at most
``dek_max_age_s`` later) and wrap it under the new KEK. With Vault or AWS the key material rotates
inside the KMS and the KEK id stays the same. Old ciphertexts keep naming the KEK (and, for Vault,
the key version) that wrapped their DEK, so they still decrypt.

Token-key rotation adds version N+1 of a domain's HMAC key: tokens made after the workers restart
carry ``tok_vN+1_``, earlier ones keep their prefix. The same value gets a different token in each
version, so joins across the rotation need the key holder (see docs/operations/keys.md).

Quarantine-key rotation (`gateway keys rotate-quarantine`) adds a new quarantine key and makes it
active: running workers seal their next dead letter under it (gateway.deadletter); earlier dead
letters name their key and still unseal while the keyring holds it.
"""

from __future__ import annotations

import argparse

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys.keyring import Keyring
from gateway.keys.providers import remote_provider


def cmd_rotate(args: argparse.Namespace, config: GatewayConfig) -> int:
    if args.token_domain:
        keyring = Keyring.open(config.keyring, create=False)
        version = keyring.rotate_token_domain(args.token_domain)
        print(f"token domain '{args.token_domain}': version {version} is active in {config.keyring}. Restart the "
              f"workers: new tokens will start tok_v{version}_, earlier tokens keep their version (joins across "
              "versions need the key holder)")
        return 0
    if config.kms_provider == "local":
        keyring = Keyring.open(config.keyring, create=False)
        old = keyring.active_key_id()
        new = keyring.rotate_kek()
        print(f"KEK rotated in {config.keyring}: {old} -> {new} (active). Workers wrap their next DEK with it; "
              f"ciphertexts under {old} still decrypt while the keyring holds it")
        return 0
    provider = remote_provider(config)
    rotate = getattr(provider, "rotate", None)
    if rotate is None:
        raise GatewayError(f"KMS provider '{config.kms_provider}' cannot rotate from the gateway; rotate it in the KMS")
    print(f"KEK rotated in KMS provider '{config.kms_provider}': {rotate()}. The KEK id in ciphertexts stays; "
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
