"""CARD: payment card numbers (PANs), validated by length, issuer prefix and the Luhn check digit."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from gateway.core.detectors.base import Match
from gateway.core.detectors.iban import inside_iban_shape

# A run of digit groups joined by a separator: one dash or dot, or one or two spaces (no-break, thin and
# figure spaces included: text copied from web pages and PDFs carries them). Inside a run the card is
# the longest window of whole groups that validates, so "qty 2 4111 1111 1111 1111" still finds the
# card and "1234 5678 9012 3456 7890 1234" (too long) finds none. Whatever comes before the run
# (a comma in a CSV line, a label glued to it: "CC-4111...", "CC4111...") does not matter: the
# issuer prefix, length and Luhn digit decide. Digits inside an IBAN-shaped token ("DE28 2250 7550
# 1673 7175 75", checksum or not) are not a card.
_SPACE = "\u00a0\u2007\u2009\u202f"
_RUN = re.compile(rf"\d+(?:(?:[ {_SPACE}]{{1,2}}|[-.])\d+)*")
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


_BY_PREFIX: tuple[tuple[int, int, int, frozenset[int]], ...] = tuple(
    (len(str(low)), low, high, lengths) for low, high, lengths in _IIN
)


def is_card_number(digits: str) -> bool:
    """True when `digits` (digits only) has a known issuer prefix, a length that issuer uses, and a valid Luhn digit."""
    size = len(digits)
    if not _MIN <= size <= _MAX:
        return False
    for width, low, high, lengths in _BY_PREFIX:  # the ranges are disjoint: the first that holds decides
        if low <= int(digits[:width]) <= high:
            return size in lengths and luhn_ok(digits)
    return False


_PLAIN = {str(d): d for d in range(10)}
_DOUBLED = {str(d): d * 2 - 9 if d > 4 else d * 2 for d in range(10)}


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of ASCII digits: the one helper for cards, here and in the log filter.

    From the right, every second digit is doubled (minus 9 above 9); the sum must end in 0.
    """
    return (sum(map(_PLAIN.__getitem__, digits[::-2])) + sum(map(_DOUBLED.__getitem__, digits[-2::-2]))) % 10 == 0


def _digits(text: str, groups: list[tuple[int, int]]) -> str:
    digits = "".join(text[start:end] for start, end in groups)
    return digits if digits.isascii() else _ascii_digits(digits)


def _ascii_digits(group: str) -> str:
    """Digits of any script (full-width "４１１１", Arabic-Indic...) as ASCII: `\\d` finds them, so must the check."""
    return "".join(str(unicodedata.digit(c)) for c in group)


class CardFinder:
    """Card numbers written plain ("4111111111111111") or in groups separated by spaces, dashes or dots."""

    entity = "CARD"

    def find(self, text: str) -> Iterator[Match]:
        for run in _RUN.finditer(text):
            if run.end() - run.start() < _MIN:
                continue
            groups = [(g.start(), g.end()) for g in _GROUP.finditer(text, run.start(), run.end())]
            yield from self._in_run(text, groups)

    def _in_run(self, text: str, groups: list[tuple[int, int]]) -> Iterator[Match]:
        digits = _digits(text, groups)  # the run's digits, separators out: windows are slices of it
        offsets = [0]
        for start, end in groups:
            offsets.append(offsets[-1] + end - start)
        i, n = 0, len(groups)
        while i < n:
            best = None
            first = offsets[i + 1] - offsets[i]
            if _MIN <= first <= _MAX:  # a bare number
                if digits[offsets[i]] in "23456" and is_card_number(digits[offsets[i] : offsets[i + 1]]):
                    best = i
            elif first in (4, 5, 6) and digits[offsets[i]] in "23456":  # every issuer prefix starts 2-6
                # a grouped card is 4-6 digits first, 3-6 in the middle, 1-6 last
                for j in range(i + 1, n):
                    if offsets[j + 1] - offsets[j] > 6 or (j > i + 1 and offsets[j] - offsets[j - 1] < 3):
                        break
                    total = offsets[j + 1] - offsets[i]
                    if total > _MAX:
                        break
                    if total >= _MIN and is_card_number(digits[offsets[i] : offsets[j + 1]]):
                        best = j
            if best is None:
                i += 1
                continue
            if not inside_iban_shape(text, groups[i][0], groups[best][1]):
                yield Match(self.entity, groups[i][0], groups[best][1])
            i = best + 1
