"""Choosing, checking and routing KMS providers.

`build_kms` turns the configuration into a `KmsRouter`: the configured provider wraps new DEKs
(decorated with metrics and retries), and every provider the gateway can reach unwraps the DEKs
whose KEK id it owns. The local keyring always takes part, decrypt-capable, so ciphertexts made
before a move from the local keyring to AWS or Vault still open. A wrong or unreachable KMS fails
here, at start-up, with an error naming the provider and the setting; there is no fallback.
"""

from __future__ import annotations

from gateway.config import GatewayConfig, env_name, reveal
from gateway.errors import DecryptError
from gateway.keys.decorators import InstrumentedKms, ResilientKms
from gateway.keys.errors import KmsConfigError, KmsError
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider, WrappedKey, provider_of


class KmsRouter:
    """Wraps with the active provider; unwraps with whichever provider owns the KEK id."""

    def __init__(self, active: KmsProvider, providers: dict[str, KmsProvider]) -> None:
        self.active = active
        self.name = active.name
        self.providers = dict(providers)
        self.providers.setdefault(active.name, active)

    def __repr__(self) -> str:
        return f"<KmsRouter active={self.name!r} providers={sorted(self.providers)}>"

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
    provider: KmsProvider
    if config.kms_provider == "aws":
        from gateway.keys.aws import AwsKms

        aws = AwsKms(config.aws_kms_key_id, config.aws_region, config.aws_endpoint_url, config.kms_timeout_s)
        aws.check()
        _round_trip(aws, f"KMS provider 'aws': key '{config.aws_kms_key_id}'", "aws_kms_key_id")
        provider = aws
    elif config.kms_provider == "vault":
        from gateway.keys.vault import VaultTransitKms

        vault = VaultTransitKms(config.vault_addr, reveal(config.vault_token), config.vault_transit_key,
                                config.vault_mount, config.kms_timeout_s)
        vault.check()
        _round_trip(vault, f"KMS provider 'vault' at {config.vault_addr}: transit key "
                           f"'{config.vault_mount}/{config.vault_transit_key}'", "vault_transit_key")
        provider = vault
    else:
        raise KmsConfigError(f"setting 'kms_provider' ({env_name('kms_provider')}): '{config.kms_provider}' is not "
                             "a remote KMS provider (aws, vault)")
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
    return KmsRouter(active, providers)
