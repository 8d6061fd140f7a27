"""The per-event steps of a batch that need no pipeline state: quality verdicts, flags and risk
class, the leak sentinel. Each returns what it decided (for the audit entry and the counts) and
raises RejectedEvent where its verdict dead-letters the event; `Pipeline.process` runs them in order.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core.operators.base import SanitizeResult
from gateway.core.pipeline.outcome import BatchCounts
from gateway.core.quality.gate import QualityGate
from gateway.core.sentinel import LeakSentinel
from gateway.errors import RejectedEvent

QUALITY_HEADER = "gateway-quality"  # on a published record: the quality rules it failed whose action is flag


def quality_failures(quality: QualityGate, topic: str, failed: Sequence[int], counts: BatchCounts) -> list[str]:
    """The names of the failed rules (for the audit entry), counted per rule and action."""
    names = quality.names(failed)
    for i, name in zip(failed, names, strict=True):
        counts.quality[(topic, name, quality.spec.rules[i].action)] += 1
    return names


def quality_rejection(quality: QualityGate, reject: int, names: list[str]) -> RejectedEvent:
    """The dead letter's reason of an event failing a rule whose action is reject."""
    rule = quality.rule_names[reject]
    return RejectedEvent(f"quality:{rule}", f"failed quality rule(s) {', '.join(names)}; '{rule}' has action reject")


def quality_published(quality: QualityGate, partition: int, result: SanitizeResult, failed: Sequence[int] | None,
                      headers: list[tuple[str, bytes]]) -> int | None:
    """A published event's flags go into its header; its risk class (None: no risk measure), of its
    subject (k counts people) and its published timestamp."""
    if failed:
        flags = quality.flags(failed)
        if flags:
            headers.append((QUALITY_HEADER, ",".join(flags).encode()))
    return quality.risk_class(partition, result.record, result.subject, result.out_timestamp_ms)


def leak_hits(sentinel: LeakSentinel, topic: str, result: SanitizeResult,
              counts: BatchCounts) -> list[tuple[str, str]]:
    """The leak sentinel on one sampled event: (field path, entity) hits, counted."""
    leaks = sentinel.check(result.record, result)
    for path, entity in leaks:
        counts.leaks[(topic, path, entity)] += 1
    return leaks


def leak_rejection(leaks: list[tuple[str, str]]) -> RejectedEvent:
    """The dead letter's reason of an event whose kept fields hold PII under an enforcing sentinel."""
    return RejectedEvent("pii_in_kept_field", "PII detected in kept field(s) "
                         + ", ".join(f"{path} ({entity})" for path, entity in leaks)
                         + "; the policy's leak_sentinel is 'enforce'")
