"""The KMS interface: a KEK never leaves its provider; the gateway only asks it to wrap and unwrap DEKs.

Providers stay tiny (wrap, unwrap, active key id, health); caching, retries and metrics wrap a
provider from outside, as Kroxylicious does with its CachingKms/ResilientKms decorators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WrappedKey:
    """A DEK as stored: the id of the KEK that wrapped it and the opaque wrapped blob."""

    kek_id: str
    blob: bytes


class KmsProvider(Protocol):
    name: str

    def active_key_id(self) -> str: ...

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes: ...

    def healthy(self) -> bool: ...
