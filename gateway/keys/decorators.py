"""Concerns that wrap any KMS provider from outside (Kroxylicious' ResilientKms / InstrumentedKms).

`InstrumentedKms` counts every request a provider makes (Prometheus and a local tally);
`ResilientKms` retries transient failures with exponential backoff and jitter, then opens a short
circuit so a KMS outage fails fast instead of stalling every event behind a retry loop. Neither
retries a refusal (tampered wrapped key, missing permission): only `KmsUnavailable`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from gateway.errors import DecryptError
from gateway.keys.errors import KmsUnavailable
from gateway.keys.kms import KmsProvider, WrappedKey
from gateway.ops.metrics import KMS_REQUESTS, KMS_SECONDS
from gateway.retry import exponential, retry_call

T = TypeVar("T")



class InstrumentedKms:
    """Counts each wrap/unwrap by outcome: ok, unavailable, refused (DecryptError) or error."""

    def __init__(self, inner: KmsProvider) -> None:
        self.inner = inner
        self.name = inner.name
        self.counts: Counter[tuple[str, str]] = Counter()

    def __repr__(self) -> str:
        return f"<InstrumentedKms {self.inner!r}>"

    def _call(self, operation: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        outcome = "error"
        try:
            result = fn()
            outcome = "ok"
            return result
        except KmsUnavailable:
            outcome = "unavailable"
            raise
        except DecryptError:
            outcome = "refused"
            raise
        finally:
            self.counts[(operation, outcome)] += 1
            KMS_REQUESTS.labels(self.name, operation, outcome).inc()
            KMS_SECONDS.labels(self.name, operation).observe(time.monotonic() - started)

    def active_key_id(self) -> str:
        return self.inner.active_key_id()

    def healthy(self) -> bool:
        return self._call("health", self.inner.healthy)

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        return self._call("wrap", lambda: self.inner.wrap(dek, context))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        return self._call("unwrap", lambda: self.inner.unwrap(wrapped, context))


class ResilientKms:
    """Retries `KmsUnavailable` up to `attempts` times with backoff, then fails fast for `cooldown_s`."""

    def __init__(self, inner: KmsProvider, attempts: int = 3, base_delay_s: float = 0.05,
                 max_delay_s: float = 1.0, cooldown_s: float = 2.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.name = inner.name
        self._attempts = max(1, attempts)
        self._base = base_delay_s
        self._max = max_delay_s
        self._cooldown = cooldown_s
        self._sleep = sleep
        self._open_until = 0.0

    def __repr__(self) -> str:
        return f"<ResilientKms attempts={self._attempts} {self.inner!r}>"

    @property
    def cooldown_s(self) -> float:
        return self._cooldown

    def circuit_open(self) -> bool:
        """True while calls fail fast (after `attempts` failures, for `cooldown_s`)."""
        return self._open_until > time.monotonic()

    def circuit_tripped(self) -> bool:
        """True from an outage until the next successful call closes the circuit (half-open included)."""
        return self._open_until > 0.0

    def _call(self, fn: Callable[[], T]) -> T:
        remaining = self._open_until - time.monotonic()
        if remaining > 0:
            raise KmsUnavailable(f"KMS provider '{self.name}' is unavailable: failing fast for another "
                                 f"{remaining:.1f}s after repeated failures")
        try:
            result = retry_call(fn, retry_if=lambda exc: isinstance(exc, KmsUnavailable), attempts=self._attempts,
                                delay=exponential(self._base, self._max, jitter=True), sleep=self._sleep)
        except KmsUnavailable:  # every attempt failed: fail fast for a while
            self._open_until = time.monotonic() + self._cooldown
            raise
        self._open_until = 0.0
        return result

    def active_key_id(self) -> str:
        return self.inner.active_key_id()

    def healthy(self) -> bool:
        return self.inner.healthy()

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        return self._call(lambda: self.inner.wrap(dek, context))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        return self._call(lambda: self.inner.unwrap(wrapped, context))
