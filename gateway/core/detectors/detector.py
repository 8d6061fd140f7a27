"""The Detector: runs the finders of the wanted entity types and resolves their overlaps."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Sequence

from gateway.core.detectors.base import ENTITIES, Finder, Match
from gateway.core.detectors.card import CardFinder
from gateway.core.detectors.email import EmailFinder
from gateway.core.detectors.iban import IbanFinder
from gateway.core.detectors.ip import IpFinder
from gateway.core.detectors.national_id import NationalIdFinder
from gateway.core.detectors.phone import PhoneFinder
from gateway.core.detectors.url import UrlCredentialsFinder

# Run order: cheap, specific finders first (contains() stops at the first hit), phonenumbers last.
# The same order breaks ties between overlapping matches of equal length: the earlier is more specific.
_ORDER: tuple[str, ...] = ("URL_CREDENTIALS", "EMAIL", "IBAN", "CARD", "NATIONAL_ID", "IP", "PHONE")
_RANK = {entity: i for i, entity in enumerate(_ORDER)}


def _finder(entity: str) -> Finder:
    return {
        "EMAIL": EmailFinder,
        "CARD": CardFinder,
        "IBAN": IbanFinder,
        "NATIONAL_ID": NationalIdFinder,
        "IP": IpFinder,
        "URL_CREDENTIALS": UrlCredentialsFinder,
    }[entity]()


def _entities(entities: Iterable[str] | None) -> frozenset[str]:
    if entities is None:
        return frozenset(ENTITIES)
    wanted = frozenset(entities)
    unknown = sorted(wanted - set(ENTITIES))
    if unknown:
        raise ValueError(f"unknown entity {', '.join(map(repr, unknown))}: known entities are {', '.join(ENTITIES)}")
    return wanted


class Detector:
    """Finds validated PII entities in text. Built once (patterns compiled), thread-safe, reused."""

    def __init__(self, entities: Iterable[str] | None = None, phone_region: str = "US") -> None:
        self.entities: frozenset[str] = _entities(entities)
        self.phone_region = phone_region.upper()
        self._finders: tuple[Finder, ...] = tuple(_finder(e) for e in _ORDER if e in self.entities and e != "PHONE")
        # phonenumbers is the costly one: it runs last, and find() tells it what other finders already cover
        self._phone = PhoneFinder(self.phone_region) if "PHONE" in self.entities else None

    def find(self, text: str) -> list[Match]:
        """Matches sorted by start, non-overlapping: of two overlapping ones the longer wins, then the more specific."""
        found = [m for finder in self._finders for m in finder.find(text)]
        if self._phone:
            found += list(self._phone.find(text, tuple(found)))
        if len(found) < 2:
            return found
        # overlaps are resolved within each cluster of chained overlapping matches, so a text with
        # thousands of matches costs a sort, not thousands of list insertions
        found.sort(key=lambda m: (m.start, m.end))
        kept: list[Match] = []
        cluster = [found[0]]
        end = found[0].end
        for m in found[1:]:
            if m.start < end:
                cluster.append(m)
                end = max(end, m.end)
                continue
            kept += _resolve(cluster)
            cluster, end = [m], m.end
        kept += _resolve(cluster)
        return kept

    def contains(self, text: str) -> str | None:
        """The entity of the first match any finder reports, or None; stops there (the leak sentinel's fast path).

        Overlap resolution can only replace a match by another, never remove the last one, so this is
        None exactly when find() is empty (the entity may differ from find()'s winner).
        """
        for finder in self._finders:
            for m in finder.find(text):
                return m.entity
        if self._phone:
            for m in self._phone.find(text):
                return m.entity
        return None

    def __repr__(self) -> str:
        return f"Detector(entities={sorted(self.entities)}, phone_region={self.phone_region!r})"


def _resolve(cluster: list[Match]) -> list[Match]:
    """Non-overlapping matches of one cluster, by start: the longer wins, then the more specific."""
    if len(cluster) == 1:
        return cluster
    kept: list[Match] = []
    starts: list[int] = []
    for m in sorted(cluster, key=lambda m: (m.start - m.end, _RANK[m.entity], m.start)):
        i = bisect.bisect_right(starts, m.start)
        if (i and kept[i - 1].end > m.start) or (i < len(kept) and kept[i].start < m.end):
            continue
        kept.insert(i, m)
        starts.insert(i, m.start)
    return kept


@functools.lru_cache(maxsize=64)
def _cached(entities: frozenset[str], phone_region: str) -> Detector:
    return Detector(entities, phone_region)


def detector(entities: Iterable[str] | None = None, phone_region: str = "US") -> Detector:
    """The shared Detector for these entity types (all when None) and default phone region; built on first use."""
    return _cached(_entities(entities), phone_region.upper())


def redact(text: str, matches: Sequence[Match], replace: Callable[[Match, str], str]) -> str:
    """The text with each match replaced by replace(match, matched_text).

    `matches` as find() returns them; overlapping matches raise ValueError rather than leave a value half-replaced.
    """
    if not matches:
        return text
    parts: list[str] = []
    pos = 0
    for m in sorted(matches, key=lambda m: m.start):
        if m.start < pos:
            raise ValueError(f"overlapping matches at {m.start}: redact() needs non-overlapping matches")
        parts.append(text[pos : m.start])
        parts.append(replace(m, text[m.start : m.end]))
        pos = m.end
    parts.append(text[pos:])
    return "".join(parts)


def placeholder(match: Match, _text: str) -> str:
    """The entity type in angle brackets ("<EMAIL>"): says what was there, keeps nothing of it."""
    return f"<{match.entity}>"
