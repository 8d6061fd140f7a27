"""HashiCorp Vault / OpenBao Transit as a KEK provider, through hvac (imported lazily).

wrap = ``transit/encrypt/<key>`` of the DEK, unwrap = ``transit/decrypt/<key>``, both with the
gateway's wrap context as ``associated_data`` (AES-GCM keys), so a wrapped DEK only unwraps for the
DEK id it was made for. The KEK id is ``vault:<mount>/<key>``; the transit key version travels in
the wrapped blob (``vault:v2:...``), so rotating the key in Vault (``gateway keys rotate`` does it)
keeps old DEKs readable.

The token comes from the environment only (GATEWAY_VAULT_TOKEN) and is never logged or repr'd.

Role keys (``role_kms_keys``) are VaultTransitKms instances too, one transit key per role; `setting`
names the setting their start-up errors point at. A consumer decrypting as a role needs only
``update`` on ``<mount>/decrypt/<its role's key>``: unwrap makes no other call.
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.errors import DecryptError
from gateway.keys.errors import KmsConfigError, KmsError, KmsUnavailable
from gateway.keys.kms import WrappedKey
from gateway.settings import KmsSettings, env_name, reveal
from gateway.values import b64

PREFIX = "vault:"


class VaultTransitKms:
    """One Transit key (AES-GCM) of a Vault or OpenBao server as the active KEK."""

    name = "vault"

    def __init__(self, addr: str, token: str, key: str, mount: str = "transit", timeout_s: float = 5.0,
                 setting: str = "vault_transit_key") -> None:
        try:
            import hvac
        except ImportError:
            raise KmsConfigError("KMS provider 'vault' (setting kms_provider, GATEWAY_KMS_PROVIDER) needs hvac: "
                                 "pip install hvac") from None
        self._addr = addr
        self._key = key
        self._setting = setting  # what start-up errors name: vault_transit_key, or role_kms_keys for a role's key
        self._mount = mount
        self._client: Any = hvac.Client(url=addr, token=token, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"<VaultTransitKms addr={self._addr!r} key={self._mount}/{self._key}>"

    # ---- start-up check ------------------------------------------------------------------
    def check(self) -> None:
        """Prove the server answers and the token may read a usable key (the wrap/unwrap proof runs in
        `providers.remote_provider`)."""
        import requests
        from hvac import exceptions as hv

        where = f"KMS provider 'vault' at {self._addr}"
        try:
            meta = self._client.secrets.transit.read_key(name=self._key, mount_point=self._mount)["data"]
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout, hv.VaultDown):
            raise KmsConfigError(f"{where} is unreachable: check setting vault_addr (GATEWAY_VAULT_ADDR)") from None
        except (hv.Forbidden, hv.Unauthorized):
            raise KmsConfigError(f"{where}: permission denied reading transit key '{self._mount}/{self._key}': "
                                 "check GATEWAY_VAULT_TOKEN (environment only) and its policy") from None
        except hv.InvalidPath:
            raise KmsConfigError(f"{where}: transit key '{self._key}' not found under mount '{self._mount}': check "
                                 f"settings {self._setting} ({env_name(self._setting)}) and vault_mount "
                                 "(GATEWAY_VAULT_MOUNT)") from None
        except hv.VaultError as exc:
            raise KmsConfigError(f"{where}: cannot read transit key '{self._mount}/{self._key}' "
                                 f"({type(exc).__name__}): check settings vault_addr and {self._setting}") from None
        if not meta.get("supports_encryption") or not str(meta.get("type", "")).startswith(("aes", "chacha")):
            raise KmsConfigError(f"{where}: transit key '{self._mount}/{self._key}' (setting {self._setting}) is "
                                 f"of type {meta.get('type')}; create an aes256-gcm96 key")

    # ---- KmsProvider ---------------------------------------------------------------------
    def active_key_id(self) -> str:
        return f"{PREFIX}{self._mount}/{self._key}"

    def healthy(self) -> bool:
        try:
            self._client.secrets.transit.read_key(name=self._key, mount_point=self._mount)
        except Exception:  # any failure means unhealthy
            return False
        return True

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        kek_id = self.active_key_id()
        try:
            result = self._client.secrets.transit.encrypt_data(
                name=self._key, plaintext=b64(dek), associated_data=b64(context), mount_point=self._mount)
        except Exception as exc:
            raise _translate(exc, "wrap", kek_id) from None
        return WrappedKey(kek_id, result["data"]["ciphertext"].encode("ascii"))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        mount, key = _parse(wrapped.kek_id)
        try:
            ciphertext = wrapped.blob.decode("ascii")
            result = self._client.secrets.transit.decrypt_data(
                name=key, ciphertext=ciphertext, associated_data=b64(context), mount_point=mount)
            return base64.b64decode(result["data"]["plaintext"])
        except UnicodeDecodeError:
            raise DecryptError("malformed", "the wrapped DEK is not a Vault transit ciphertext") from None
        except Exception as exc:
            raise _translate(exc, "unwrap", wrapped.kek_id) from None

    # ---- rotation ------------------------------------------------------------------------
    def rotate(self) -> str:
        """Add a new version of the transit key; new wraps use it, old versions still unwrap."""
        try:
            self._client.secrets.transit.rotate_key(name=self._key, mount_point=self._mount)
            meta = self._client.secrets.transit.read_key(name=self._key, mount_point=self._mount)["data"]
        except Exception as exc:
            raise _translate(exc, "rotate", self.active_key_id()) from None
        return f"{self.active_key_id()} v{meta['latest_version']}"


def _parse(kek_id: str) -> tuple[str, str]:
    if not kek_id.startswith(PREFIX) or "/" not in kek_id:
        raise DecryptError("key_not_held", f"KEK '{kek_id}' is not a Vault transit key")
    mount, _, key = kek_id[len(PREFIX):].rpartition("/")
    return mount, key


def _translate(exc: Exception, op: str, kek_id: str) -> Exception:
    import requests
    from hvac import exceptions as hv

    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, hv.VaultDown,
                        hv.InternalServerError, hv.BadGateway, hv.RateLimitExceeded)):
        return KmsUnavailable(f"Vault transit {op} with '{kek_id}' failed: {type(exc).__name__} (unreachable?)")
    if op == "unwrap" and isinstance(exc, hv.InvalidRequest):
        return DecryptError("tampered", f"Vault could not unwrap the DEK under '{kek_id}': the wrapped key or its "
                            "context was altered")
    if op == "unwrap" and isinstance(exc, (hv.Forbidden, hv.Unauthorized, hv.InvalidPath)):
        return DecryptError("not_permitted", f"Vault refused to unwrap under '{kek_id}' ({type(exc).__name__}): "
                            "this token may not decrypt with that key, or the key is gone")
    if isinstance(exc, hv.VaultError):
        return KmsError(f"Vault transit {op} with '{kek_id}' refused ({type(exc).__name__})")
    return exc


def build(settings: KmsSettings, key: str, setting: str) -> VaultTransitKms:
    """The registry's builder (gateway.keys.providers): `key` of the setting named `setting`."""
    return VaultTransitKms(settings.vault_addr, reveal(settings.vault_token), key, settings.vault_mount,
                           settings.timeout_s, setting=setting)


def describe(settings: KmsSettings, key: str) -> str:
    return f"KMS provider 'vault' at {settings.vault_addr}: transit key '{settings.vault_mount}/{key}'"
