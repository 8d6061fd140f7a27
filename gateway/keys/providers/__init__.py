"""The KMS provider registry: the provider decided once, at start-up, from the typed `KmsSettings`.

`REMOTE` maps each remote `KmsProvider` (gateway.settings) to its module's builder; the local
provider is the keyring (`providers.local`). `build_kms` turns the settings into a `KmsRouter`: the
configured provider wraps new DEKs (decorated with metrics and retries), and every provider the
gateway can reach unwraps the DEKs whose KEK id it owns. The local keyring always takes part,
decrypt-capable, so ciphertexts made before a move from the local keyring to AWS or Vault still
open. A wrong or unreachable KMS fails here, at start-up, with an error naming the provider and the
setting; there is no fallback. `gateway.app` is the one caller outside this package.

Role keys (role-scoped fields, format v3: gateway.keys.roles) come from the same place as the KEK:
the keyring's role section with the local provider, else one AWS or Vault key per role named by
``role_kms_keys``, each checked at start-up like the main key. `build_role_decrypt_kms` is the
consumer's side of a role: unwrap only, with no start-up probe, since a role's consumer may only
decrypt with its key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.errors import DecryptError
from gateway.keys.decorators import InstrumentedKms, ResilientKms
from gateway.keys.errors import KmsConfigError, KmsError
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider as Kms
from gateway.keys.providers import aws, local, vault
from gateway.keys.providers.router import KmsRouter
from gateway.settings import GatewayConfig, KmsProvider, KmsSettings, env_name

__all__ = ["REMOTE", "KmsRouter", "RemoteBuilder", "build_kms", "build_role_decrypt_kms", "remote_provider",
           "remote_role_provider"]


@dataclass(frozen=True)
class RemoteBuilder:
    """A remote provider's entry: how to build one key's client, and how errors describe that key."""

    build: Callable[[KmsSettings, str, str], Any]  # (settings, key, the setting naming the key) -> provider
    describe: Callable[[KmsSettings, str], str]


REMOTE: Mapping[KmsProvider, RemoteBuilder] = MappingProxyType({
    KmsProvider.AWS: RemoteBuilder(aws.build, aws.describe),
    KmsProvider.VAULT: RemoteBuilder(vault.build, vault.describe),
})


def _remote_entry(settings: KmsSettings, setting: str) -> RemoteBuilder:
    entry = REMOTE.get(settings.provider)
    if entry is None:
        raise KmsConfigError(f"setting '{setting}' ({env_name(setting)}) needs kms_provider aws or vault"
                             if setting == "role_kms_keys" else
                             f"setting 'kms_provider' ({env_name('kms_provider')}): '{settings.provider.value}' is "
                             "not a remote KMS provider (aws, vault)")
    return entry


def remote_provider(config: GatewayConfig) -> Any:
    """The configured AWS or Vault provider, checked (raises KmsConfigError), without decorators."""
    settings = config.kms_settings()
    entry = _remote_entry(settings, "kms_provider")
    setting = settings.key_setting
    assert setting is not None  # every remote provider names its key's setting
    key = settings.key
    if not key:  # allowed by the settings for `gateway decrypt --role`, which needs only role_kms_keys
        raise KmsConfigError(f"setting '{setting}' ({env_name(setting)}): is required with "
                             f"kms_provider={settings.provider.value} to wrap and unwrap data keys (only gateway "
                             "decrypt --role R does without it)")
    return _checked(entry.build(settings, key, setting), entry.describe(settings, key), setting)


def remote_role_provider(config: GatewayConfig, role: str, check: bool = True) -> Any:
    """The AWS or Vault key of `role` (setting role_kms_keys), without decorators; checked (describe,
    wrap and unwrap a probe) unless `check` is off: a role's consumer may only decrypt."""
    settings = config.kms_settings()
    key = settings.role_keys.get(role)
    if key is None:
        raise KmsConfigError(f"setting 'role_kms_keys' ({env_name('role_kms_keys')}) names no KMS key for role "
                             f"'{role}': add {role}=KEY")
    entry = _remote_entry(settings, "role_kms_keys")
    provider = entry.build(settings, key, "role_kms_keys")
    return _checked(provider, f"{entry.describe(settings, key)} of role '{role}'", "role_kms_keys") if check \
        else provider


def _checked(provider: Any, what: str, setting: str) -> Any:
    """Metadata check (names the setting), then the wrap/unwrap proof."""
    provider.check()
    _round_trip(provider, what, setting)
    return provider


def _round_trip(provider: Kms, what: str, setting: str) -> None:
    """The real proof a remote key works: wrap and unwrap a test key (metadata may lie, emulators omit it)."""
    probe = b"\x00" * 32
    try:
        if provider.unwrap(provider.wrap(probe, b"startup-check"), b"startup-check") != probe:
            raise KmsConfigError(f"{what} did not round-trip a test key")
    except (KmsError, DecryptError) as exc:
        raise KmsConfigError(f"{what} (setting {setting}, {env_name(setting)}) cannot wrap and unwrap: {exc}") \
            from None


def _decorated(provider: Kms) -> Kms:
    """The concerns every remote provider wears: metrics inside, retries and the circuit outside."""
    return ResilientKms(InstrumentedKms(provider))


def build_kms(config: GatewayConfig, keyring: Keyring | None) -> KmsRouter:
    """The gateway's KMS: the configured provider (checked now) plus the local keyring for unwrapping."""
    settings = config.kms_settings()
    if settings.local:
        return local.build(keyring)
    providers: dict[str, Kms] = {"local": keyring} if keyring is not None else {}
    active = _decorated(remote_provider(config))
    roles = {role: _decorated(remote_role_provider(config, role)) for role in settings.role_keys}
    return KmsRouter(active, providers, roles)


def build_role_decrypt_kms(config: GatewayConfig, keyring: Keyring | None, role: str) -> KmsRouter:
    """`gateway decrypt --role R`'s KMS: unwrap only. With the local keyring, the keyring given (a role
    export will do); with AWS or Vault, the role's key of role_kms_keys, not probed (its consumer may
    only decrypt), plus the keyring when present (fields made before a move to the KMS)."""
    if config.kms_settings().local:
        return build_kms(config, keyring)
    role_kms = _decorated(remote_role_provider(config, role, check=False))
    return KmsRouter(role_kms, {"local": keyring} if keyring is not None else {}, {role: role_kms})
