"""CARD: payment card numbers (PANs), validated by length, issuer prefix and the Luhn check digit."""

from __future__ import annotations

import re
from collections.abc import Iterator

from stdnum import luhn

from gateway.detect.base import Match
from gateway.detect.iban import inside_iban_shape

# A run of digit groups joined by single spaces or dashes, not glued to letters, digits or decimals.
# Inside a run the card is the longest window of whole groups that validates, so "qty 2 4111 1111
# 1111 1111" still finds the card and "1234 5678 9012 3456 7890 1234" (too long) finds none.
# Digits inside an IBAN-shaped token ("DE28 2250 7550 1673 7175 75", checksum or not) are not a card.
_RUN = re.compile(r"(?<![\w.,-])\d+(?:[ -]\d+)*(?![\w])")
_GROUP = re.compile(r"\d+")

# (lowest prefix, highest prefix, allowed lengths): the issuer identification numbers of the
# networks in common use. A Luhn-valid number outside these ranges is an order id, not a card.
_IIN: tuple[tuple[int, int, frozenset[int]], ...] = (
    (4, 4, frozenset({13, 16, 19})),  # Visa
    (51, 55, frozenset({16})),  # Mastercard
    (2221, 2720, frozenset({16})),  # Mastercard 2-series
    (34, 34, frozenset({15})),  # American Express
    (37, 37, frozenset({15})),
    (6011, 6011, frozenset(range(16, 20))),  # Discover
    (644, 649, frozenset(range(16, 20))),
    (65, 65, frozenset(range(16, 20))),
    (300, 305, frozenset(range(14, 20))),  # Diners Club
    (36, 36, frozenset(range(14, 20))),
    (38, 39, frozenset(range(16, 20))),
    (3528, 3589, frozenset(range(16, 20))),  # JCB
    (62, 62, frozenset(range(16, 20))),  # UnionPay
    (2200, 2204, frozenset(range(16, 20))),  # Mir
    (5018, 5018, frozenset(range(13, 20))),  # Maestro
    (5020, 5020, frozenset(range(13, 20))),
    (5038, 5038, frozenset(range(13, 20))),
    (5893, 5893, frozenset(range(13, 20))),
    (6304, 6304, frozenset(range(13, 20))),
    (6759, 6759, frozenset(range(13, 20))),
    (6761, 6763, frozenset(range(13, 20))),
)
_MIN, _MAX = 13, 19


def is_card_number(digits: str) -> bool:
    """True when `digits` (digits only) has a known issuer prefix, a length that issuer uses, and a valid Luhn digit."""
    if not _MIN <= len(digits) <= _MAX:
        return False
    for low, high, lengths in _IIN:
        prefix = int(digits[: len(str(low))])
        if low <= prefix <= high and len(digits) in lengths:
            return luhn.is_valid(digits)
    return False


class CardFinder:
    """Card numbers written plain ("4111111111111111") or in groups separated by spaces or dashes."""

    entity = "CARD"

    def find(self, text: str) -> Iterator[Match]:
        for run in _RUN.finditer(text):
            if run.end() - run.start() < _MIN:
                continue
            groups = [(g.start(), g.end()) for g in _GROUP.finditer(text, run.start(), run.end())]
            yield from self._in_run(text, groups)

    def _in_run(self, text: str, groups: list[tuple[int, int]]) -> Iterator[Match]:
        i = 0
        while i < len(groups):
            best = None
            digits = ""
            for j in range(i, len(groups)):
                start, end = groups[j]
                size = end - start
                # a grouped card is 4-6 digits first, 3-6 in the middle, 1-6 last; a bare one is one group
                if j > i and (size > 6 or (j == i + 1 and groups[i][1] - groups[i][0] not in (4, 5, 6))):
                    break
                if j > i + 1 and groups[j - 1][1] - groups[j - 1][0] < 3:
                    break
                digits += text[start:end]
                if len(digits) > _MAX:
                    break
                if is_card_number(digits):
                    best = j
            if best is None:
                i += 1
                continue
            if not inside_iban_shape(text, groups[i][0], groups[best][1]):
                yield Match(self.entity, groups[i][0], groups[best][1])
            i = best + 1
