"""An input event's one outcome, typed, and a batch's counts.

The audit entry carries the outcome as a string (`sanitized`, `rejected:<reason>`,
`withheld:<reason>`, `consent:granted|revoked`): `Outcome.wire` writes it, `Outcome.parse` reads it
back, and nothing else builds or splits that string. The reasons are the codes of
docs/reference/reason-codes.md (`quality:<rule>` among them: a policy names its rules, so the
reason stays a string, not an enum).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum


class OutcomeKind(StrEnum):
    SANITIZED = "sanitized"  # published on the sanitized topic
    REJECTED = "rejected"  # dead-lettered, with a reason code
    WITHHELD = "withheld"  # processed, not published (an enforced risk measure's small class)
    CONSENT = "consent"  # a raw consent event stored: reason granted or revoked


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    reason: str = ""  # empty for sanitized; a reason code otherwise
    wire: str = field(init=False, compare=False, repr=False)  # the audit entry's `outcome`, built once

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", f"{self.kind.value}:{self.reason}" if self.reason else self.kind.value)

    @classmethod
    def rejected(cls, reason: str) -> Outcome:
        return cls(OutcomeKind.REJECTED, reason)

    @classmethod
    def withheld(cls, reason: str) -> Outcome:
        return cls(OutcomeKind.WITHHELD, reason)

    @classmethod
    def parse(cls, text: object) -> Outcome | None:
        """The outcome of an audit entry's `outcome` string: the one reader of it (the report, tests).
        None: not a string of a kind this version writes (a reader counts it, never fails on it)."""
        if not isinstance(text, str):
            return None
        kind, _, reason = text.partition(":")
        try:
            return cls(OutcomeKind(kind), reason)
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.wire


SANITIZED = Outcome(OutcomeKind.SANITIZED)
INTERNAL_ERROR = Outcome.rejected("internal_error")
CONSENT_GRANTED = Outcome(OutcomeKind.CONSENT, "granted")
CONSENT_REVOKED = Outcome(OutcomeKind.CONSENT, "revoked")


class PurposeDecision(StrEnum):
    PUBLISHED = "published"
    WITHHELD = "withheld"


@dataclass
class BatchCounts:
    """What a batch did, per source topic; reported once the batch committed (metrics, status)."""

    outcomes: Counter[tuple[str, Outcome]] = field(default_factory=Counter)  # (topic, outcome): one per event
    quality: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (topic, rule, action)
    leaks: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (topic, field path, entity)
    purposes: Counter[tuple[str, str, PurposeDecision]] = field(default_factory=Counter)  # (topic, purpose, ...)
    unannotated: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, field path) dropped

    def update(self, other: BatchCounts) -> None:
        self.outcomes.update(other.outcomes)
        self.quality.update(other.quality)
        self.leaks.update(other.leaks)
        self.purposes.update(other.purposes)
        self.unannotated.update(other.unannotated)

    @property
    def events(self) -> int:
        """Input events counted (each has one outcome and one audit entry)."""
        return sum(self.outcomes.values())
