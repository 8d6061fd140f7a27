"""Normalizers applied before tokenizing, so one person's spellings of an identifier give one token.

Without them `A@x.org`, `a@x.org` and `" a@x.org"` are three tokens: three DP subjects, and
`gateway forget` needs the producer's exact spelling. The same normalizer runs when a field is
tokenized, when redaction tokenizes an entity it found in text, and when `gateway forget` turns an
identifier into the token to erase.

A value a normalizer cannot read (a phone number that does not parse) is tokenized as NFKC and
trimmed: it still gets a stable token, and the producer's bad value is not rejected.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

import phonenumbers

Normalizer = Callable[[str], str]


def trim(value: str) -> str:
    return value.strip()


def casefold(value: str) -> str:
    return unicodedata.normalize("NFKC", value).strip().casefold()


def email(value: str) -> str:
    """Trim, NFKC and case-fold the whole address (RFC 5321 lets a host treat the local part as
    case-sensitive; no mail system in use does, and one token per person matters more here)."""
    return unicodedata.normalize("NFKC", value).strip().casefold()


def phone(default_region: str) -> Normalizer:
    """E.164 (`+14155552671`) via Google's libphonenumber port; numbers without a country code are
    read in `default_region`."""

    def normalize_phone(value: str) -> str:
        text = unicodedata.normalize("NFKC", value).strip()
        try:
            number = phonenumbers.parse(text, default_region)
        except phonenumbers.NumberParseException:
            return text
        if not phonenumbers.is_possible_number(number):
            return text
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    return normalize_phone


NAMES = ("email", "phone", "trim", "casefold")


def normalizer(name: str, region: str = "US") -> Normalizer:
    """The normalizer called `name` (one of NAMES); `region` is the phone normalizer's default."""
    if name == "email":
        return email
    if name == "phone":
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"region '{region}' is not a region libphonenumber knows (e.g. US, GB, DE)")
        return phone(region)
    if name == "trim":
        return trim
    if name == "casefold":
        return casefold
    raise ValueError(f"unknown normalizer '{name}' (known: {', '.join(NAMES)})")


def spec(name: str | None, region: str = "US") -> str | None:
    """A normalizer as one string ("email", "phone:GB"), or None: how plans record a domain's normalizer."""
    if name is None:
        return None
    return f"phone:{region}" if name == "phone" else name


def from_spec(value: str | None) -> Normalizer | None:
    if value is None:
        return None
    name, _, region = value.partition(":")
    return normalizer(name, region or "US")
