"""The test-only no-noise mode, and the guard that keeps it out of production.

Switching noise off releases true sums, which is only useful to check that scale-out does not
change the pre-noise result. It is NOT a setting: no schema attribute, GatewayConfig field or
GATEWAY_* variable turns it on. It takes all of:

1. the hidden command-line flag ``--dp-test-no-noise`` (or ``allow_no_noise(...)`` in-process),
2. the environment variable ``GATEWAY_DP_TEST_NO_NOISE`` set to ``NO_NOISE_ACK`` below,
3. a running pytest: ``PYTEST_CURRENT_TEST`` is set (pytest sets it for the test in progress; the
   integration tests pass it on to the worker process they start), and
4. a broker on the loopback interface only (every bootstrap host 127.0.0.1, ::1 or localhost).

Anything less raises ConfigError at start-up. Every release made in this mode says so in its
``mechanism`` (``none:test-mode``) and carries ``epsilon: null``, and it is never charged to or
checked against the ledger, so it cannot be mistaken for a private release.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from gateway.errors import ConfigError

ENV_VAR = "GATEWAY_DP_TEST_NO_NOISE"
NO_NOISE_ACK = "i-understand-this-releases-true-values"
_LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


class NoNoise:
    """Proof that the guard passed; the mechanisms accept no-noise mode only with one of these."""

    def __init__(self, _key: object) -> None:
        if _key is not _KEY:
            raise ConfigError("the no-noise test mode is only granted by gateway.dp.testmode.allow_no_noise")


_KEY = object()


def allow_no_noise(bootstrap: str, environ: Mapping[str, str] | None = None) -> NoNoise:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_VAR) != NO_NOISE_ACK:
        raise ConfigError(f"the no-noise test mode needs {ENV_VAR}={NO_NOISE_ACK}; it is for tests only")
    if not environ.get("PYTEST_CURRENT_TEST"):
        raise ConfigError("the no-noise test mode is refused outside a pytest run")
    hosts = {part.strip().rpartition(":")[0] for part in bootstrap.split(",")}
    if not hosts or not hosts <= _LOOPBACK:
        raise ConfigError("the no-noise test mode is refused with a non-loopback broker")
    return NoNoise(_KEY)
