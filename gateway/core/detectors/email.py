"""EMAIL: a conservative address regex plus the structural limits of RFC 5321."""

from __future__ import annotations

import re
from collections.abc import Iterator

from gateway.core.detectors.base import Match

# Local part: dot-atom characters, letters and digits of any script (RFC 6531: "josé.garcía@..."),
# not starting or ending with a dot; domain: labels of letters or digits of any script and inner
# hyphens (IDNs as people write them: "bücher.de", "例え.jp"), then a TLD of letters (or an "xn--"
# label). The full-width at sign and the ideographic full stops of East Asian input methods count as
# '@' and '.'. The lookarounds keep a match from starting inside a longer local part or ending
# inside a longer domain.
_M = "\u0300-\u036f"  # combining marks (a decomposed "é"): part of the word they follow
_ATEXT = rf"[\w{_M}!#$%&'*+/=?^`{{|}}~-]"
_LABEL = rf"[^\W_](?:[\w{_M}-]{{0,61}}[\w{_M}])?"
_DOT = "[.\u3002\uff0e\uff61]"
_AT = "[@\uff20]"
_EMAIL = re.compile(
    rf"(?<![\w{_M}.!#$%&'*+/=?^`{{|}}~-])"
    rf"{_ATEXT}(?:(?:{_ATEXT}|\.){{0,62}}{_ATEXT})?"
    rf"{_AT}(?:{_LABEL}{_DOT})+(?:xn--[A-Za-z0-9-]{{1,59}}|[^\W\d_][^\W\d_{_M}]{{1,62}})"
    rf"(?![\w{_M}-]|{_DOT}\w)"
)
_AT_SIGN = re.compile(_AT)
_MAX_LOCAL = 64
_MAX_ADDRESS = 254


def _valid(value: str) -> bool:
    local = value[: _AT_SIGN.search(value).start()]  # type: ignore[union-attr] # the regex matched one
    return len(value) <= _MAX_ADDRESS and len(local) <= _MAX_LOCAL and ".." not in local


def is_email(text: str) -> bool:
    """The whole of `text` is one address (the quality rule `format: EMAIL`): one regex match, no scan."""
    return _AT_SIGN.search(text) is not None and _EMAIL.fullmatch(text) is not None and _valid(text)


class EmailFinder:
    """Addresses with one '@', a dotted domain and a TLD-shaped last label ("jane@localhost" is not one)."""

    entity = "EMAIL"

    def find(self, text: str) -> Iterator[Match]:
        if "@" not in text and "\uff20" not in text:
            return
        for m in _EMAIL.finditer(text):
            if not _valid(m.group()):
                continue
            yield Match(self.entity, m.start(), m.end())
