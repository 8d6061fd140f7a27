"""The local KMS: the keyring file (gateway.keys.keyring) is both the key file and the local KMS.

Its KEKs and role keys are versioned entries of the same file as the token, quarantine and audit keys,
written under the same lock and the same atomic replace; `Keyring.wrap`/`unwrap` are a few lines over
those entries. Splitting the KMS part into a class of its own would split one file's locking and
versioning in two for no gain in what either can do, so the keyring stays the provider and this module
is its entry in the registry: the router that puts the keyring in front (wrapping with its active KEK,
its role keys for role-scoped fields, routing remote KEK ids to a clear error).
"""

from __future__ import annotations

from gateway.keys.errors import KmsConfigError
from gateway.keys.keyring import Keyring
from gateway.keys.providers.router import KmsRouter
from gateway.settings import KmsSettings, env_name


def build(keyring: Keyring | None) -> KmsRouter:
    """The local KMS over the keyring given (opened by the caller): no client, no probe."""
    if keyring is None:
        raise KmsConfigError(f"KMS provider 'local' needs the keyring: set keyring ({env_name('keyring')})")
    return KmsRouter(keyring, {"local": keyring})


def keyring_kms(settings: KmsSettings, keyring: Keyring) -> KmsRouter:
    """The KMS a pipeline or a job uses when its caller gives none: the keyring, when the settings make it
    the KMS. A remote KMS is never built here: `gateway.app.build_kms` builds and checks it at start-up and
    the caller passes it in."""
    if not settings.local:
        raise KmsConfigError(f"kms_provider={settings.provider.value}: the KMS is built and checked at start-up "
                             "(gateway.app.build_kms) and given to the pipeline and the jobs")
    return build(keyring)
