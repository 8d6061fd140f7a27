"""URL_CREDENTIALS: URLs that carry a password in their userinfo (scheme://user:password@host/...)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from gateway.core.detectors.base import Match

# The whole URL is the match, not only the userinfo: the host, port and path say which system the
# secret opens, and a redacted URL is more useful whole ("<URL_CREDENTIALS>") than half-masked.
# The password part is greedy up to the last '@' of the authority, so an unescaped '@' in a
# password stays inside the match. A URL without a password (ssh://git@host) is not a credential.
_URL = re.compile(
    r"(?<![\w+.-])[A-Za-z][A-Za-z0-9+.-]{1,31}://"
    r"[^\s:/?#@'\"<>]*:[^\s/?#'\"<>]+@[^\s/?#@'\"<>]+"
    r"(?:[/?#][^\s'\"<>]*)?"
)
_TRAILING = ".,;:!?)]}"


class UrlCredentialsFinder:
    """`scheme://[user]:password@host[...]` with a non-empty password; trailing punctuation is not part of it."""

    entity = "URL_CREDENTIALS"

    def find(self, text: str) -> Iterator[Match]:
        if "://" not in text:
            return
        for m in _URL.finditer(text):
            value = m.group().rstrip(_TRAILING)
            if not value.endswith("@"):  # the host was only punctuation
                yield Match(self.entity, m.start(), m.start() + len(value))
