"""Deterministic tokens: keyed HMAC-SHA256 per domain and key version.

`tok_v<version>_<base64url(HMAC-SHA256(domain key, NFC(value)))>`. Same value and domain, same
token (joins work); different domains use different keys, so their tokens are unlinkable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import unicodedata


class DomainTokenizer:
    """Tokenizes with the domain's active key. The HMAC state is built once and copied per token."""

    def __init__(self, domain: str, version: str, key: bytes) -> None:
        self.domain = domain
        self.version = version
        self._prefix = f"tok_v{version}_"
        self._mac = hmac.new(key, digestmod=hashlib.sha256)

    def __repr__(self) -> str:
        return f"<DomainTokenizer domain={self.domain!r} version={self.version!r}>"

    @property
    def key_id(self) -> str:
        return f"token:{self.domain}/v{self.version}"

    def token(self, value: str) -> str:
        mac = self._mac.copy()
        mac.update(unicodedata.normalize("NFC", value).encode("utf-8"))
        return self._prefix + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")
