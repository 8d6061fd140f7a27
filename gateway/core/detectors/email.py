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
# The same addresses as a whole ASCII string (is_email's common case), in a form the regex engine runs in
# two thirds of the time. On ASCII text \w is [A-Za-z0-9_] under either flag, combining marks and the East
# Asian separators cannot occur, and the lookarounds of a match spanning the whole string look past its ends,
# where they always hold. Then each part says the same in fewer steps: a local part of 1 to 64 characters
# of atext and dots, not starting or ending with a dot; labels of 1 to 63 word characters and hyphens,
# starting alphanumeric and not ending with a hyphen; the same TLDs. The runs are possessive: what follows
# each (an at sign or a dot) is not in its class, so giving characters back could never lead to a match;
# so is the run of labels: a TLD holds no dot, so it can only start after the last one.
_ASCII_EMAIL = re.compile(
    r"[\w!#$%&'*+/=?^`{|}~-][\w!#$%&'*+/=?^`{|}~.-]{0,63}+(?<!\.)"
    r"@(?:[^\W_][\w-]{0,62}+(?<!-)\.)++(?:xn--[A-Za-z0-9-]{1,59}|[^\W\d_]{2,63})",
    re.ASCII,
)
_MAX_LOCAL = 64
_MAX_ADDRESS = 254


def _first_at(value: str) -> int:
    """Where the first at sign ('@' or the full-width one) is, -1 if none: two `str.find`s, which cost a
    tenth of a character-class regex search on an address-length string."""
    at, wide = value.find("@"), value.find("\uff20")
    return at if wide < 0 or 0 <= at < wide else wide


def _valid(value: str) -> bool:
    at = _first_at(value)  # the regex matched, so there is one
    return len(value) <= _MAX_ADDRESS and at <= _MAX_LOCAL and ".." not in value[:at]


def is_email(text: str) -> bool:
    """The whole of `text` is one address (the quality rule `format: EMAIL`): one regex match, no scan.
    The cheap structural limits first (most values that fail, fail them); ASCII text (`isascii` is O(1))
    has one kind of at sign and its own regex (the same addresses)."""
    if text.isascii():
        # the regex bounds the local part (64) and matches no '..' after the at sign: one test of the whole
        return ".." not in text and len(text) <= _MAX_ADDRESS and _ASCII_EMAIL.fullmatch(text) is not None
    at = _first_at(text)
    return (0 <= at <= _MAX_LOCAL and len(text) <= _MAX_ADDRESS and ".." not in text[:at]
            and _EMAIL.fullmatch(text) is not None)


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
