"""IBAN: international bank account numbers, validated by python-stdnum (country length and format, mod-97)."""

from __future__ import annotations

import re
import string
from collections.abc import Iterator

from stdnum import iban, numdb

from gateway.core.detectors.base import Match

# The countries that issue IBANs (python-stdnum's registry): a candidate must start with one, so
# "CC4111111111111111" (a card glued to a label) or "ab12 ..." in prose is not IBAN-shaped.
_IBAN_DB = numdb.get("iban")
_LENGTHS: dict[str, int] = {  # country -> IBAN length: 4 + the BBAN's ("8!n10!n" is 18)
    a + b: 4 + sum(int(n) for n in re.findall(r"(\d+)!?[nace]", info["bban"]))
    for a in string.ascii_uppercase for b in string.ascii_uppercase
    if (info := _IBAN_DB.info(a + b)[0][1]) and "bban" in info
}
COUNTRIES: frozenset[str] = frozenset(_LENGTHS)

# Country code, two check digits, then 11-30 letters or digits, compact or in groups separated by one
# space, no-break space or dash ("DE89 3704 0044 0532 0130 00", "DE89-3704-...", "de89 3704 ...").
# Any case: people type IBANs in lower case, and the country check, the per-country length and BBAN
# format and mod-97 keep prose out.
_CANDIDATE = re.compile(
    r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ \u00a0-]?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])"
)
_SEPARATORS = re.compile(r"[ \u00a0-]")
_MIN = 15  # the shortest IBAN (Norway)


def _shaped(value: str) -> bool:
    return value[:2].upper() in COUNTRIES


def inside_iban_shape(text: str, start: int, end: int) -> bool:
    """True when text[start:end] lies inside an IBAN-shaped token (a known IBAN country), valid or not.

    The digits of a mistyped IBAN are account digits: other finders (card, phone) must not claim them.
    """
    return any(
        m.start() <= start and end <= m.end() and _shaped(m.group())
        for m in _CANDIDATE.finditer(text, max(0, start - 48), end + 48)
    )


def is_iban(value: str) -> bool:
    """`value` (as written: any case, separators) is a valid IBAN of a known country."""
    return _shaped(value) and iban.is_valid(_SEPARATORS.sub("", value))


class IbanFinder:
    """IBANs compact or in groups; when the greedy candidate fails, trailing groups are dropped one by one."""

    entity = "IBAN"

    def find(self, text: str) -> Iterator[Match]:
        pos = 0
        while (m := _CANDIDATE.search(text, pos)) is not None:
            # the next search starts after the IBAN found, or past this candidate's head: a candidate
            # can swallow the words after an IBAN, and another IBAN with them ("at62... my iban is fr32 ...")
            pos = m.start() + 4
            value = m.group()
            if not _shaped(value):
                continue
            # a candidate can swallow a following word ("... 32 THX"): retry without it
            length = _LENGTHS[value[:2].upper()]
            while len(value) >= _MIN:
                size = len(value) - value.count(" ") - value.count("\u00a0") - value.count("-")
                if size < length:  # dropping groups only shortens it
                    break
                if size == length and iban.is_valid(_SEPARATORS.sub("", value)):  # the length first: it is cheap
                    yield Match(self.entity, m.start(), m.start() + len(value))
                    pos = m.start() + len(value)
                    break
                cut = max(value.rfind(" "), value.rfind("\u00a0"), value.rfind("-"))
                if cut < 0:
                    break
                value = value[:cut]
