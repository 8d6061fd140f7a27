"""The KMS interface: a KEK never leaves its provider; the gateway only asks it to wrap and unwrap DEKs.

Providers stay tiny (wrap, unwrap, active key id, health); caching, retries and metrics wrap a
provider from outside, as Kroxylicious does with its CachingKms/ResilientKms decorators.

A KEK id names its provider: ``aws:<key ARN>``, ``vault:<mount>/<key>``; the local keyring's ids
(``kek-<hex>``) carry no prefix. The id travels in every ciphertext header, so a decryptor routes
each wrapped DEK to the provider that made it (see `gateway.keys.providers.KmsRouter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

REMOTE_PROVIDERS = ("aws", "vault")


@dataclass(frozen=True)
class WrappedKey:
    """A DEK as stored: the id of the KEK that wrapped it and the opaque wrapped blob."""

    kek_id: str
    blob: bytes

    def __repr__(self) -> str:
        return f"WrappedKey(kek_id={self.kek_id!r}, blob=<{len(self.blob)} bytes>)"


class KmsProvider(Protocol):
    name: str

    def active_key_id(self) -> str: ...

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes: ...

    def healthy(self) -> bool: ...


def provider_of(kek_id: str) -> str:
    """The provider that owns a KEK id: its prefix for remote KMSs, 'local' otherwise."""
    prefix, sep, _ = kek_id.partition(":")
    return prefix if sep and prefix in REMOTE_PROVIDERS else "local"
