"""Choosing, checking and routing KMS providers.

`build_kms` turns the configuration into a `KmsRouter`: the configured provider wraps new DEKs
(decorated with metrics and retries), and every provider the gateway can reach unwraps the DEKs
whose KEK id it owns. The local keyring always takes part, decrypt-capable, so ciphertexts made
before a move from the local keyring to AWS or Vault still open. A wrong or unreachable KMS fails
here, at start-up, with an error naming the provider and the setting; there is no fallback.

Role keys (role-scoped fields, format v3: gateway.keys.roles) come from the same place as the KEK:
the keyring's role section with ``kms_provider=local``, else one AWS or Vault key per role named by
``role_kms_keys``, each checked at start-up like the main key. `build_role_decrypt_kms` is the
consumer's side of a role: unwrap only, with no start-up probe, since a role's consumer may only
decrypt with its key.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import DecryptError
from gateway.keys.decorators import InstrumentedKms, ResilientKms
from gateway.keys.errors import KmsConfigError, KmsError
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider, WrappedKey, provider_of
from gateway.settings import GatewayConfig, env_name, reveal


class KmsRouter:
    """Wraps with the active provider; unwraps with whichever provider owns the KEK id.

    `roles`: the remote KMS key of each role (role_kms_keys); local role keys come from the keyring."""

    def __init__(self, active: KmsProvider, providers: dict[str, KmsProvider],
                 roles: dict[str, KmsProvider] | None = None) -> None:
        self.active = active
        self.name = active.name
        self.providers = dict(providers)
        self.providers.setdefault(active.name, active)
        self.roles = dict(roles or {})
        self._role_routers: dict[str, KmsRouter] = {}

    def __repr__(self) -> str:
        return f"<KmsRouter active={self.name!r} providers={sorted(self.providers)} roles={sorted(self.roles)}>"

    def role_wrapping_kms(self, role: str) -> KmsProvider:
        """The KMS that wraps `role`'s data keys (the worker): its role_kms_keys key, or with the local
        keyring its role key (made now when missing). Raises KmsConfigError naming the setting."""
        remote = self.roles.get(role)
        if remote is not None:
            return remote
        keyring = self.providers.get("local")
        if self.name == "local" and isinstance(keyring, Keyring):
            return keyring.role_wrapping_kms(role)
        configured = ", ".join(sorted(self.roles)) or "none"
        raise KmsConfigError(f"setting 'role_kms_keys' ({env_name('role_kms_keys')}) names no KMS key for role "
                             f"'{role}' (kms_provider={self.name}; roles with a key: {configured}): add {role}=KEY")

    def role_unwrapping_kms(self, role: str) -> KmsProvider:
        """What opens `role`'s wraps (the consumer), routed by each wrap's KEK id like `unwrap`: the
        keyring's versions of this role's key only, or a remote KMS (which decides by its permissions)."""
        router = self._role_routers.get(role)
        if router is None:
            providers = {name: p for name, p in self.providers.items() if name != "local"}
            keyring = self.providers.get("local")
            if isinstance(keyring, Keyring):
                providers["local"] = keyring.role_unwrapping_kms(role)
            remote = self.roles.get(role)
            if remote is not None:
                providers[remote.name] = remote
            active = remote or providers.get("local") or providers.get(self.name)
            if active is None:
                raise DecryptError("key_not_held", f"no key for role '{role}' here: pass a keyring holding it "
                                   "(gateway keys export --role R) or the role's KMS key (role_kms_keys)")
            router = self._role_routers[role] = KmsRouter(active, providers)
        return router

    def active_key_id(self) -> str:
        return self.active.active_key_id()

    def healthy(self) -> bool:
        return self.active.healthy()

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        return self.active.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        name = provider_of(wrapped.kek_id)
        provider = self.providers.get(name)
        if provider is None:
            raise DecryptError("key_not_held", f"KEK '{wrapped.kek_id}' belongs to KMS provider '{name}', which is "
                               f"not configured here: set kms_provider={name} ({env_name('kms_provider')}) and its "
                               "settings to decrypt it")
        return provider.unwrap(wrapped, context)


def remote_provider(config: GatewayConfig) -> KmsProvider:
    """The configured AWS or Vault provider, checked (raises KmsConfigError), without decorators."""
    setting = {"aws": "aws_kms_key_id", "vault": "vault_transit_key"}.get(config.kms_provider)
    if setting is None:
        raise KmsConfigError(f"setting 'kms_provider' ({env_name('kms_provider')}): '{config.kms_provider}' is not "
                             "a remote KMS provider (aws, vault)")
    key = getattr(config, setting)
    if not key:  # allowed by the settings for `gateway decrypt --role`, which needs only role_kms_keys
        raise KmsConfigError(f"setting '{setting}' ({env_name(setting)}): is required with "
                             f"kms_provider={config.kms_provider} to wrap and unwrap data keys (only gateway decrypt "
                             "--role R does without it)")
    return _checked(_remote(config, key, setting), _describe(config, key), setting)


def remote_role_provider(config: GatewayConfig, role: str, check: bool = True) -> Any:
    """The AWS or Vault key of `role` (setting role_kms_keys), without decorators; checked (describe,
    wrap and unwrap a probe) unless `check` is off: a role's consumer may only decrypt."""
    key = config.role_kms_key_map().get(role)
    if key is None:
        raise KmsConfigError(f"setting 'role_kms_keys' ({env_name('role_kms_keys')}) names no KMS key for role "
                             f"'{role}': add {role}=KEY")
    if config.kms_provider not in ("aws", "vault"):
        raise KmsConfigError(f"setting 'role_kms_keys' ({env_name('role_kms_keys')}) needs kms_provider aws or "
                             "vault")
    provider = _remote(config, key, "role_kms_keys")
    return _checked(provider, f"{_describe(config, key)} of role '{role}'", "role_kms_keys") if check else provider


def _remote(config: GatewayConfig, key: str, setting: str) -> Any:
    if config.kms_provider == "aws":
        from gateway.keys.providers.aws import AwsKms

        return AwsKms(key, config.aws_region, config.aws_endpoint_url, config.kms_timeout_s, setting=setting)
    from gateway.keys.providers.vault import VaultTransitKms

    return VaultTransitKms(config.vault_addr, reveal(config.vault_token), key, config.vault_mount,
                           config.kms_timeout_s, setting=setting)


def _describe(config: GatewayConfig, key: str) -> str:
    if config.kms_provider == "aws":
        return f"KMS provider 'aws': key '{key}'"
    return f"KMS provider 'vault' at {config.vault_addr}: transit key '{config.vault_mount}/{key}'"


def _checked(provider: Any, what: str, setting: str) -> Any:
    """Metadata check (names the setting), then the wrap/unwrap proof."""
    provider.check()
    _round_trip(provider, what, setting)
    return provider


def _round_trip(provider: KmsProvider, what: str, setting: str) -> None:
    """The real proof a remote key works: wrap and unwrap a test key (metadata may lie, emulators omit it)."""
    probe = b"\x00" * 32
    try:
        if provider.unwrap(provider.wrap(probe, b"startup-check"), b"startup-check") != probe:
            raise KmsConfigError(f"{what} did not round-trip a test key")
    except (KmsError, DecryptError) as exc:
        raise KmsConfigError(f"{what} (setting {setting}, {env_name(setting)}) cannot wrap and unwrap: {exc}") \
            from None


def build_kms(config: GatewayConfig, keyring: Keyring | None) -> KmsRouter:
    """The gateway's KMS: the configured provider (checked now) plus the local keyring for unwrapping."""
    providers: dict[str, KmsProvider] = {}
    if keyring is not None:
        providers["local"] = keyring
    if config.kms_provider == "local":
        if keyring is None:
            raise KmsConfigError(f"KMS provider 'local' needs the keyring: set keyring ({env_name('keyring')})")
        return KmsRouter(keyring, providers)
    active = ResilientKms(InstrumentedKms(remote_provider(config)))
    roles: dict[str, KmsProvider] = {role: ResilientKms(InstrumentedKms(remote_role_provider(config, role)))
                                     for role in config.role_kms_key_map()}
    return KmsRouter(active, providers, roles)


def build_role_decrypt_kms(config: GatewayConfig, keyring: Keyring | None, role: str) -> KmsRouter:
    """`gateway decrypt --role R`'s KMS: unwrap only. With the local keyring, the keyring given (a role
    export will do); with AWS or Vault, the role's key of role_kms_keys, not probed (its consumer may
    only decrypt), plus the keyring when present (fields made before a move to the KMS)."""
    if config.kms_provider == "local":
        return build_kms(config, keyring)
    role_kms = ResilientKms(InstrumentedKms(remote_role_provider(config, role, check=False)))
    return KmsRouter(role_kms, {"local": keyring} if keyring is not None else {}, {role: role_kms})
