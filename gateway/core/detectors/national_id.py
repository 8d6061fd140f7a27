"""NATIONAL_ID: personal identification numbers of several countries, each with its own structure rules.

Where an id has a strong check (a check letter over the whole number, a mod-97 key) its usual
written form is enough. Where the check is weak or absent and the bare form is a plain digit run
that order ids and amounts also produce, the usual punctuation or a nearby context word is
required as well:

- US SSN: NNN-NN-NNNN or NNN NN NNNN (the 3-2-4 grouping is the SSN's own), with the SSA's rules (no
  area 000, 666 or 9xx, no group 00, no serial 0000); the bare nine digits only after a context word
  ("SSN", "social security").
- UK NINO: two prefix letters from the allowed set, six digits, suffix A-D (no checksum exists; the
  letter rules and upper case carry it).
- German Steuer-IdNr: 11 digits, ISO 7064 mod 11,10 and the digit-repetition rule, plus a context
  word ("Steuer-ID", "IdNr", "tax id", ...) in the 40 characters before it.
- French NIR: mod-97 key; spaced form anywhere, the bare 15 digits only after a context word.
- Spanish DNI (8 digits + check letter) and NIE (X/Y/Z + 7 digits + check letter).
- Dutch BSN: 9 digits and the 11-proof, plus a context word ("BSN", "burgerservicenummer", "sofinummer").
- Italian codice fiscale: 16 characters with its check letter (omocodia substitutions accepted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import ssn

from gateway.core.detectors.base import Match

_CONTEXT_WINDOW = 40
_DIGIT = re.compile(r"\d")


def _nino_valid(value: str) -> bool:
    # HMRC: prefixes BG, GB, KN, NK, NT, TN and ZZ are never issued (the letter classes are in the regex)
    return value[:2] not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}


def _ssn_valid(value: str) -> bool:
    return ssn.is_valid(value.replace(" ", "-").replace("\u00a0", "-"))


class _Rule:
    """One id type: a candidate pattern, a validator, and optionally a context word that must precede it."""

    def __init__(
        self, name: str, pattern: str, is_valid: Callable[[str], bool], context: str | None = None
    ) -> None:
        self.name = name
        self.pattern = re.compile(pattern)
        self.is_valid = is_valid
        self.context = re.compile(context, re.IGNORECASE) if context else None

    def find(self, text: str) -> Iterator[tuple[int, int]]:
        for m in self.pattern.finditer(text):
            if self.context and not self.context.search(text, max(0, m.start() - _CONTEXT_WINDOW), m.start()):
                continue
            if self.is_valid(m.group()):
                yield m.start(), m.end()


# the bare nine digits are most numbers' shape: the SSN label must come right before them ("SSN 536904399",
# "social security no.: 536904399"), not merely within the context window
_US_CONTEXT = (r"(?<!\w)(?:ssn|ss|social[ -]security|soc\.? ?sec\.?)(?:[ -]?(?:number|no\.?|nr\.?|#))?"
               r"(?:\s+is)?\s*[:#=]?\s*$")
_DE_CONTEXT = r"(?<!\w)(?:steuer[\w-]*|idnr|identifikationsnummer|tin|tax[ -]?id)(?!\w)"
_FR_CONTEXT = r"(?<!\w)(?:nir|insee|s[ée]curit[ée] sociale|s[ée]cu|social security)(?!\w)"
_NL_CONTEXT = r"(?<!\w)(?:bsn|burgerservicenummer|sofi(?:nummer)?)(?!\w)"
_CF_DIGIT = r"[0-9LMNPQRSTUV]"  # omocodia: a digit may be replaced by one of these letters

def _lead(not_after: str, first: str, rest: str) -> str:
    """`(?<!not_after)first rest`, written `first(?<!not_after first)rest`: the same matches, but a pattern
    that starts with a character class lets the regex engine skip ahead to candidates (a third faster
    over text, where a leading lookbehind is tried at every position)."""
    return f"{first}(?<!{not_after}{first}){rest}"


_RULES: tuple[_Rule, ...] = (
    _Rule("us_ssn", _lead(r"[\w-]", r"\d", r"\d{2}(?:-\d{2}-|[ \u00a0]\d{2}[ \u00a0])\d{4}(?![\w-])"), _ssn_valid),
    _Rule("us_ssn_bare", _lead(r"[\w.,-]", r"\d", r"\d{8}(?![\w-]|[.,]\d)"), ssn.is_valid, _US_CONTEXT),
    _Rule("gb_nino", _lead(r"\w", r"[A-CEGHJ-PR-TW-Z]", r"[A-CEGHJ-NPR-TW-Z](?:\d{6}|(?: \d{2}){3} ?)[A-D](?!\w)"),
          _nino_valid),
    _Rule("de_idnr", _lead(r"[\w.,-]", r"[1-9]", r"\d(?:\d{9}| \d{3} \d{3} \d{3})(?![\w-]|[.,]\d)"), idnr.is_valid,
          _DE_CONTEXT),
    _Rule("fr_nir", _lead(r"[\w-]", r"[12]", r" \d{2} \d{2} (?:\d{2}|2[AB]) \d{3} \d{3} \d{2}(?![\w-])"), nir.is_valid),
    _Rule("fr_nir_bare", _lead(r"[\w-]", r"[12]", r"\d{4}(?:\d{2}|2[AB])\d{8}(?![\w-])"), nir.is_valid, _FR_CONTEXT),
    _Rule("es_dni", _lead(r"[\w-]", r"\d", r"\d{7}-?[A-Z](?![\w-])"), dni.is_valid),
    _Rule("es_nie", _lead(r"[\w-]", r"[XYZ]", r"-?\d{7}-?[A-Z](?![\w-])"), nie.is_valid),
    _Rule("nl_bsn", _lead(r"[\w.,-]", r"\d", r"(?:\d{8}|\d{3}\.\d{2}\.\d{3})(?![\w-]|[.,]\d)"), bsn.is_valid,
          _NL_CONTEXT),
    _Rule(
        "it_cf",
        _lead(r"\w", r"[A-Z]",
              rf"[A-Z]{{5}}{_CF_DIGIT}{{2}}[A-EHLMPR-T]{_CF_DIGIT}{{2}}[A-Z]{_CF_DIGIT}{{3}}[A-Z](?!\w)"),
        codicefiscale.is_valid,
    ),
)


class NationalIdFinder:
    """All the supported national id rules, reported as one entity type."""

    entity = "NATIONAL_ID"

    def find(self, text: str) -> Iterator[Match]:
        if not _DIGIT.search(text):  # every supported id holds digits
            return
        for rule in _RULES:
            for start, end in rule.find(text):
                yield Match(self.entity, start, end)
