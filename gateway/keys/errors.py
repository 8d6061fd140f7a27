"""Errors of the key layer. All are GatewayErrors; none carries key material or a field value."""

from __future__ import annotations

from gateway.errors import ConfigError, GatewayError


class KmsError(GatewayError):
    """A KMS refused a request for a reason retrying will not fix (permissions, disabled key)."""


class KmsUnavailable(KmsError):
    """A KMS could not be reached or answered with a transient failure: retrying may help."""


class KmsConfigError(ConfigError):
    """The configured KMS is wrong or unreachable at start-up; the message names provider and setting."""
