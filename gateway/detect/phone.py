"""PHONE: telephone numbers, validated against libphonenumber's numbering plans (Leniency.VALID)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import phonenumbers

from gateway.detect.base import Match
from gateway.detect.iban import inside_iban_shape

# PhoneNumberMatcher is exact but slow on long text (its candidate regex is large and pure-Python
# work follows each hit), so it only sees short slices that can hold a number: an optional '+' or
# '(' then digits and the usual separators, at least 7 digits in all. One character of context on
# each side lets the matcher apply its own rules about what may touch a number.
_CANDIDATE = re.compile(r"[+(]?\d[\d \u00a0().\-/]{5,24}\d")
_MIN_DIGITS = 7
_VALID = phonenumbers.Leniency.VALID
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_OTHER_LABEL = re.compile(
    r"(?<!\w)(?:id|idnr|steuer-?id|tax id|tin|bsn|ssn|nir|iban|account|acct|order|invoice|ref|ticket)\.?\s*[:#=]?\s*$",
    re.IGNORECASE,
)


def _is_part_of_something_else(text: str, start: int, end: int) -> bool:
    """Numbers that libphonenumber accepts but the text says are not phones.

    A number glued to a word by '-', '/' or '#' or '_' is an identifier ("ORD-5615-172110"), and so is
    one right after the label of another kind of number ("Steuer-ID 15708964339", "order: ..."); a
    dotted quad is an address or a version, even when its octets are out of range; digits inside an
    IBAN-shaped token are account digits, even when the IBAN's checksum fails.
    """
    before = text[start - 1] if start else " "  # not "": `"" in "#_"` holds
    if before in "#_" or (before in "-/" and start > 1 and text[start - 2].isalnum()):
        return True
    if _OTHER_LABEL.search(text, max(0, start - 24), start):
        return True
    if _DOTTED_QUAD.fullmatch(text, start, end):
        return True
    return inside_iban_shape(text, start, end)


class PhoneFinder:
    """Numbers valid in their numbering plan: national format for `region`, international ("+44 ...") for any."""

    entity = "PHONE"

    def __init__(self, region: str = "US") -> None:
        region = region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {region!r}: use an ISO 3166 code libphonenumber knows, e.g. 'US'")
        self.region = region
        lengths = phonenumbers.PhoneMetadata.metadata_for_region(region).general_desc.possible_length
        self._min_national = max(_MIN_DIGITS, min(lengths, default=_MIN_DIGITS))

    def find(self, text: str, covered: Sequence[Match] = ()) -> Iterator[Match]:
        """Phone matches; candidates inside a `covered` span (a card, an IBAN, an IP already found) are skipped.

        Such a phone is no longer than the span covering it and ranks below it, so it would lose the
        overlap; the skip saves the costliest work for the texts that hold the most numbers.
        """
        for m in _CANDIDATE.finditer(text):
            value = m.group()
            # without a '+' the number is in national format: at least the plan's shortest national number
            if sum(c.isdigit() for c in value) < (_MIN_DIGITS if value[0] == "+" else self._min_national):
                continue
            if any(c.start <= m.start() and m.end() <= c.end for c in covered):
                continue
            lo, hi = max(0, m.start() - 1), min(len(text), m.end() + 1)
            for found in phonenumbers.PhoneNumberMatcher(text[lo:hi], self.region, leniency=_VALID):
                start, end = lo + found.start, lo + found.end
                if not _is_part_of_something_else(text, start, end):
                    yield Match(self.entity, start, end)
