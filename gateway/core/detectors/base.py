"""The types every detector shares: the entity names, a match, and the finder interface."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

ENTITIES: tuple[str, ...] = ("EMAIL", "PHONE", "CARD", "IBAN", "NATIONAL_ID", "IP", "URL_CREDENTIALS")


@dataclass(frozen=True, slots=True)
class Match:
    """One validated entity: `text[start:end]` is the value (str indices, end exclusive)."""

    entity: str
    start: int
    end: int


class Finder(Protocol):
    """One entity type's detector. Stateless after construction, so one instance serves every thread."""

    entity: str

    def find(self, text: str) -> Iterator[Match]:
        """Validated matches in any order; they may overlap (the Detector resolves overlaps)."""
        ...
