"""EMAIL: a conservative address regex plus the structural limits of RFC 5321."""

from __future__ import annotations

import re
from collections.abc import Iterator

from gateway.detect.base import Match

# local part: dot-atom characters, not starting or ending with a dot; domain: one or more labels of
# letters, digits and inner hyphens, then a TLD of letters (or an IDN "xn--" label). The lookarounds
# keep a match from starting inside a longer local part or ending inside a longer domain.
_EMAIL = re.compile(
    r"(?<![\w.!#$%&'*+/=?^`{|}~-])"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-](?:[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{0,62}[A-Za-z0-9!#$%&'*+/=?^_`{|}~-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})"
    r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)
_MAX_LOCAL = 64
_MAX_ADDRESS = 254


def _valid(value: str) -> bool:
    local = value[: value.index("@")]
    return len(value) <= _MAX_ADDRESS and len(local) <= _MAX_LOCAL and ".." not in local


def is_email(text: str) -> bool:
    """The whole of `text` is one address (the quality rule `format: EMAIL`): one regex match, no scan."""
    return "@" in text and _EMAIL.fullmatch(text) is not None and _valid(text)


class EmailFinder:
    """Addresses with one '@', a dotted domain and a TLD-shaped last label ("jane@localhost" is not one)."""

    entity = "EMAIL"

    def find(self, text: str) -> Iterator[Match]:
        if "@" not in text:
            return
        for m in _EMAIL.finditer(text):
            if not _valid(m.group()):
                continue
            yield Match(self.entity, m.start(), m.end())
