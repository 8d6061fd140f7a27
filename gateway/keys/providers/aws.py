"""AWS KMS as a KEK provider, through boto3 (imported lazily: the local default needs no AWS SDK).

wrap = KMS Encrypt of the 32-byte DEK under the configured key, unwrap = KMS Decrypt, both with an
encryption context carrying the gateway's wrap context (base64), so a wrapped DEK only unwraps
for the DEK id it was made for. The KEK id is ``aws:<key ARN>``: aliases are resolved once at
start-up, so ciphertexts name the key itself, not an alias that may later point elsewhere.
Key rotation is AWS's own (automatic or on demand): the ARN stays, old ciphertexts still decrypt.

Credentials come from the standard AWS chain (environment, profile, instance or pod role), never
from gateway settings.

Role keys (``role_kms_keys``) are AwsKms instances too, one per role; `setting` names the setting
their start-up errors point at. A consumer decrypting as a role needs only ``kms:Decrypt`` on its
role's key: unwrap names the key by the ARN in the ciphertext and makes no other call.
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.errors import DecryptError
from gateway.keys.errors import KmsConfigError, KmsError, KmsUnavailable
from gateway.keys.kms import WrappedKey
from gateway.settings import KmsSettings, env_name

PREFIX = "aws:"
_CONTEXT_KEY = "privacy-gateway"
_TRANSIENT_CODES = {"ThrottlingException", "KMSInternalException", "DependencyTimeoutException",
                    "ServiceUnavailable", "ServiceUnavailableException", "InternalFailure",
                    "RequestLimitExceeded", "InternalError"}
_NOT_HELD_CODES = {"NotFoundException", "AccessDeniedException", "IncorrectKeyException",
                   "KMSInvalidStateException", "DisabledException", "UnrecognizedClientException",
                   "InvalidKeyUsageException"}


class AwsKms:
    """One AWS KMS symmetric key (id, ARN or alias) as the active KEK."""

    name = "aws"

    def __init__(self, key_id: str, region: str = "", endpoint_url: str = "", timeout_s: float = 5.0,
                 setting: str = "aws_kms_key_id") -> None:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import NoRegionError
        except ImportError:
            raise KmsConfigError("KMS provider 'aws' (setting kms_provider, GATEWAY_KMS_PROVIDER) needs boto3: "
                                 "pip install boto3") from None
        self._key_id = key_id
        self._setting = setting  # what start-up errors name: aws_kms_key_id, or role_kms_keys for a role's key
        self._endpoint = endpoint_url or "the AWS default endpoint"
        self._arn: str | None = None
        config = Config(connect_timeout=timeout_s, read_timeout=timeout_s,
                        retries={"max_attempts": 1, "mode": "standard"})  # ResilientKms retries
        try:
            self._client: Any = boto3.client("kms", region_name=region or None, endpoint_url=endpoint_url or None,
                                             config=config)
        except NoRegionError:
            raise KmsConfigError("KMS provider 'aws': no region: set aws_region (GATEWAY_AWS_REGION) "
                                 "or AWS_REGION") from None

    def __repr__(self) -> str:
        return f"<AwsKms key={self._key_id!r} endpoint={self._endpoint!r}>"

    # ---- start-up check ------------------------------------------------------------------
    def check(self) -> None:
        """Resolve the key and check its metadata; raise KmsConfigError naming the setting.

        The wrap/unwrap proof runs in `providers.remote_provider`, shared with Vault."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"KMS provider 'aws' at {self._endpoint}"
        try:
            meta = self._client.describe_key(KeyId=self._key_id)["KeyMetadata"]
        except NoCredentialsError:
            raise KmsConfigError(f"{where}: no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                                 "a profile or a role") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code == "NotFoundException":
                raise KmsConfigError(f"{where}: key '{self._key_id}' not found: check setting {self._setting} "
                                     f"({env_name(self._setting)}) and aws_region (GATEWAY_AWS_REGION)") from None
            raise KmsConfigError(f"{where}: cannot use key '{self._key_id}' (setting {self._setting}, "
                                 f"{env_name(self._setting)}): {code}") from None
        except BotoCoreError as exc:
            raise KmsConfigError(f"{where} is unreachable ({type(exc).__name__}): check setting aws_endpoint_url "
                                 "(GATEWAY_AWS_ENDPOINT_URL) and aws_region (GATEWAY_AWS_REGION)") from None
        # (the wrap/unwrap probe in providers.py is the real proof; KeyUsage may be absent from emulators)
        if meta.get("KeyState") != "Enabled" or meta.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT":
            raise KmsConfigError(f"{where}: key '{self._key_id}' (setting {self._setting}) is "
                                 f"{meta.get('KeyState')} with usage {meta.get('KeyUsage')}; it must be an "
                                 "enabled ENCRYPT_DECRYPT key")
        self._arn = meta["Arn"]

    # ---- KmsProvider ---------------------------------------------------------------------
    def active_key_id(self) -> str:
        if self._arn is None:
            self.check()
        return PREFIX + str(self._arn)

    def healthy(self) -> bool:
        try:
            self._client.describe_key(KeyId=self._arn or self._key_id)
        except Exception:  # any failure means unhealthy; the reason is logged by the caller's metrics
            return False
        return True

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        kek_id = self.active_key_id()
        try:
            blob = self._client.encrypt(KeyId=kek_id[len(PREFIX):], Plaintext=dek,
                                        EncryptionContext=_context(context))["CiphertextBlob"]
        except Exception as exc:
            raise _translate(exc, "wrap", kek_id) from None
        return WrappedKey(kek_id, bytes(blob))

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        if not wrapped.kek_id.startswith(PREFIX):
            raise DecryptError("key_not_held", f"KEK '{wrapped.kek_id}' is not an AWS KMS key")
        try:
            return bytes(self._client.decrypt(CiphertextBlob=wrapped.blob, KeyId=wrapped.kek_id[len(PREFIX):],
                                              EncryptionContext=_context(context))["Plaintext"])
        except Exception as exc:
            raise _translate(exc, "unwrap", wrapped.kek_id) from None

    def rotate(self) -> str:
        """Rotate the key material on demand inside AWS KMS; the ARN (our KEK id) and old DEKs stay valid."""
        kek_id = self.active_key_id()
        try:
            self._client.rotate_key_on_demand(KeyId=kek_id[len(PREFIX):])
        except Exception as exc:
            raise _translate(exc, "rotate", kek_id) from None
        return f"{kek_id} (new key material inside AWS KMS)"


def _context(context: bytes) -> dict[str, str]:
    return {_CONTEXT_KEY: base64.b64encode(context).decode("ascii")}


def _translate(exc: Exception, op: str, kek_id: str) -> Exception:
    """Map boto errors to the gateway's: transient -> KmsUnavailable; data/permission -> DecryptError."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or status >= 500:
            return KmsUnavailable(f"AWS KMS {op} with '{kek_id}' failed transiently ({code})")
        if op == "unwrap" and code == "InvalidCiphertextException":
            return DecryptError("tampered", f"AWS KMS could not unwrap the DEK under '{kek_id}': the wrapped key "
                                "or its context was altered")
        if op == "unwrap" and code in _NOT_HELD_CODES:
            return DecryptError("not_permitted", f"AWS KMS refused to unwrap under '{kek_id}' ({code}): this "
                                "identity lacks kms:Decrypt on that key, or the key is disabled or deleted")
        return KmsError(f"AWS KMS {op} with '{kek_id}' refused ({code})")
    if isinstance(exc, BotoCoreError):
        return KmsUnavailable(f"AWS KMS {op} with '{kek_id}' failed: {type(exc).__name__} (unreachable?)")
    return exc


def build(settings: KmsSettings, key: str, setting: str) -> AwsKms:
    """The registry's builder (gateway.keys.providers): `key` of the setting named `setting`."""
    return AwsKms(key, settings.aws_region, settings.aws_endpoint_url, settings.timeout_s, setting=setting)


def describe(settings: KmsSettings, key: str) -> str:
    return f"KMS provider 'aws': key '{key}'"
