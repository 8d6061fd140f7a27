"""IBAN: international bank account numbers, validated by python-stdnum (country length and format, mod-97)."""

from __future__ import annotations

import re
from collections.abc import Iterator

from stdnum import iban

from gateway.detect.base import Match

# Country code, two check digits, then 11-30 letters or digits, optionally in space-separated groups
# (the print format "DE89 3704 0044 0532 0130 00"). Upper case only: the country code of a real IBAN
# is written in capitals, and that keeps "de 12 ..." in prose out.
_CANDIDATE = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
_MIN = 15  # the shortest IBAN (Norway)


def inside_iban_shape(text: str, start: int, end: int) -> bool:
    """True when text[start:end] lies inside an IBAN-shaped token, valid or not.

    The digits of a mistyped IBAN are account digits: other finders (card, phone) must not claim them.
    """
    return any(m.start() <= start and end <= m.end() for m in _CANDIDATE.finditer(text, max(0, start - 48), end + 48))


class IbanFinder:
    """IBANs compact or in groups; when the greedy candidate fails, trailing groups are dropped one by one."""

    entity = "IBAN"

    def find(self, text: str) -> Iterator[Match]:
        for m in _CANDIDATE.finditer(text):
            value = m.group()
            # a candidate can swallow a following upper-case word ("... 32 THX"): retry without it
            while len(value) >= _MIN:
                if iban.is_valid(value):
                    yield Match(self.entity, m.start(), m.start() + len(value))
                    break
                cut = value.rfind(" ")
                if cut < 0:
                    break
                value = value[:cut]
