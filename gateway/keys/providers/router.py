"""The gateway's KMS as its callers see it: wraps with the active provider, unwraps with whichever
provider owns each wrapped key's KEK id (so ciphertexts made before a move between providers still
open). Built only by the registry (`gateway.keys.providers`) and `gateway.local`."""

from __future__ import annotations

from gateway.errors import DecryptError
from gateway.keys.errors import KmsConfigError
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider, WrappedKey, provider_of
from gateway.settings import env_name


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
        if self.active is keyring and isinstance(keyring, Keyring):  # the keyring is the KMS
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
