"""The quality gate of one source topic: rules on each decoded event, windows per partition.

The pipeline asks `check` before it sanitizes an event (a rule whose action is reject dead-letters
it; flag and measure failures go with it), tells `published` what reached the sanitized topic
(its event id joins the duplicate filter, its quasi-identifiers the risk window), and rolls every
window that has ended into a quality record. Pure: the runtime feeds it and publishes its records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.quality.dedup import DuplicateFilter, Fingerprinter
from gateway.core.quality.risk import RiskWindow
from gateway.core.quality.rules import CheckerState
from gateway.core.quality.spec import QualitySpec
from gateway.core.quality.window import QualityWindow

PASSED: tuple[int, ...] = ()  # the failures of an event that passed every rule (shared: never appended to)


@dataclass
class PartitionQuality:
    window: QualityWindow
    checker_state: CheckerState | None
    risk: RiskWindow | None
    risk_complete: bool  # the risk window saw every event the counters did (not after a restart mid-window)


class QualityGate:
    def __init__(self, spec: QualitySpec, schema: str, policy: str, source_topic: str, event_id_field: str | None,
                 dedup: DuplicateFilter | None = None, dedup_key: bytes | None = None) -> None:
        self.spec = spec
        self.schema = schema
        self.policy = policy
        self.source_topic = source_topic
        self.event_id_field = event_id_field
        self.dedup = dedup if spec.duplicates is not None else None
        self.fingerprinter = Fingerprinter(dedup_key, schema) if self.dedup is not None and dedup_key else None
        # per event: the checker's generated function, and the id to fingerprint (None: no duplicate detection)
        self._failures = spec.checker.failures if spec.checker is not None else None
        self._id_field = event_id_field if self.dedup is not None else None
        self._fingerprint = self.fingerprinter.of if self.fingerprinter is not None else None
        self.partitions: dict[int, PartitionQuality] = {}
        self.rule_names = [r.name for r in spec.rules]
        self.flag_rules = frozenset(i for i, r in enumerate(spec.rules) if r.action == "flag")
        self.reject_rules = frozenset(i for i, r in enumerate(spec.rules) if r.action == "reject")
        self._dup = spec.duplicate_index
        self._fresh = spec.freshness_index
        self._fresh_ms = spec.freshness.max_lag_ms if spec.freshness is not None else 0
        self.risk_measured = spec.risk is not None
        self._null_fields = tuple(enumerate(spec.completeness_fields))
        if self.dedup is not None and self.fingerprinter is None:
            raise ValueError("duplicate detection needs its fingerprint key")

    # ---- partitions ------------------------------------------------------------------------------
    def open(self, partition: int, committed: Any, now_ms: int) -> None:
        """Resume the partition's window from the counters committed with its offset (or a fresh one)."""
        spec = self.spec
        window = QualityWindow.from_metadata(committed, len(spec.rules), len(spec.completeness_fields))
        if window is None:
            window = QualityWindow(self._window_start(now_ms), len(spec.rules), len(spec.completeness_fields))
        self.partitions[partition] = PartitionQuality(
            window, spec.checker.new_state() if spec.checker is not None else None, self._risk_window(),
            risk_complete=window.sanitized == 0)

    def close(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def metadata(self, partition: int) -> list[Any] | None:
        state = self.partitions.get(partition)
        return state.window.to_metadata() if state is not None else None

    def _window_start(self, now_ms: int) -> int:
        return now_ms - now_ms % self.spec.window_ms

    def _risk_window(self) -> RiskWindow | None:
        risk = self.spec.risk
        if risk is None:
            return None
        return RiskWindow(risk.quasi_identifiers, risk.k, risk.sensitive, risk.l_target, risk.timestamp)

    # ---- events ----------------------------------------------------------------------------------
    def check(self, partition: int, record: dict[str, Any], timestamp_ms: int, now_ms: int,
              batch_fingerprints: set[int]) -> tuple[Sequence[int], int | None, int | None]:
        """Every rule on one decoded event, counted in its partition's window: (failed rule indexes,
        the first failed rule whose action is reject, the event id's fingerprint). The common case (no
        rule failed) allocates nothing but the result: the failures are then the shared empty PASSED."""
        state = self.partitions.get(partition)
        if state is None:
            self.open(partition, None, now_ms)
            state = self.partitions[partition]
        window = state.window
        window.events += 1
        window.sanitized += 1  # until a rejection says otherwise (not_published): the common case costs nothing
        failures = self._failures
        failed = failures(record, state.checker_state.baselines) if failures is not None else None  # type: ignore[union-attr]
        fp = None
        if self._id_field is not None:
            event_id = record.get(self._id_field)
            if event_id is not None:
                fp = self._fingerprint(event_id)
                if fp in batch_fingerprints or self.dedup.seen(fp):  # type: ignore[union-attr]
                    if failed is None:
                        failed = [self._dup]  # type: ignore[list-item]
                    else:
                        failed.append(self._dup)  # type: ignore[arg-type]
        lag = now_ms - timestamp_ms
        if lag > 0:
            window.lag_sum_ms += lag
            if lag > window.lag_max_ms:
                window.lag_max_ms = lag
            if lag > self._fresh_ms and self._fresh is not None:
                if failed is None:
                    failed = [self._fresh]
                else:
                    failed.append(self._fresh)
        if self._null_fields:
            nulls = window.nulls
            get = record.get
            for i, name in self._null_fields:
                if get(name) is None:
                    nulls[i] += 1
        if failed is None:
            return PASSED, None, fp
        counts = window.failed
        reject = None
        for i in failed:
            counts[i] += 1
            if reject is None and i in self.reject_rules:
                reject = i
        return failed, reject, fp

    def risk_class(self, partition: int, sanitized: dict[str, Any], subject: str = "",
                   timestamp_ms: int | None = None) -> int | None:
        """A published record joins its partition's risk window: its class (None: no risk measure).
        `subject`: as published (k counts people); `timestamp_ms`: the published record timestamp."""
        risk = self.partitions[partition].risk
        return risk.add(sanitized, subject, timestamp_ms) if risk is not None else None

    def not_published(self, partition: int) -> None:
        """A checked event was rejected after all (by a rule, the leak sentinel or its size)."""
        self.partitions[partition].window.sanitized -= 1

    def start_window(self, partition: int, start_ms: int) -> None:
        """An enforced window (held by the runtime) began when its first event was held."""
        if partition not in self.partitions:
            self.open(partition, None, start_ms)
        self.partitions[partition].window.start_ms = start_ms

    def withheld_classes(self, partition: int) -> dict[int, str]:
        """Risk classes of the partition's window to withhold, with the reason (k_anonymity, l_diversity)."""
        risk = self.partitions[partition].risk
        if risk is None:
            return {}
        sizes = risk.class_subjects()
        k = self.spec.risk.k  # type: ignore[union-attr]
        return {c: ("k_anonymity" if sizes[c] < k else "l_diversity") for c in risk.small_classes()}

    def withheld(self, partition: int) -> None:
        window = self.partitions[partition].window
        window.sanitized -= 1
        window.withheld += 1

    def flags(self, failed: Sequence[int]) -> list[str]:
        """Names of the failed rules whose action is flag: the `gateway-quality` header."""
        return [self.rule_names[i] for i in failed if i in self.flag_rules]

    def is_duplicate(self, failed: Sequence[int] | None) -> bool:
        return bool(failed) and self._dup in failed  # type: ignore[operator]

    def names(self, failed: Sequence[int]) -> list[str]:
        return [self.rule_names[i] for i in failed]

    # ---- windows ---------------------------------------------------------------------------------
    def due(self, now_ms: int) -> list[int]:
        """Partitions whose window has ended with events in it (an empty one rolls over with the next event)."""
        end = self.spec.window_ms
        return [p for p, s in self.partitions.items() if s.window.events and now_ms >= s.window.start_ms + end]

    def roll(self, partition: int, now_ms: int, instance: str) -> dict[str, Any] | None:
        """Close the partition's window: its record (None if it saw no event), and a fresh window."""
        state = self.partitions[partition]
        window = state.window
        record = None
        if window.events:
            figures = state.risk.figures() if state.risk is not None else None
            record = window.record(self.spec, self.schema, self.policy, self.source_topic, partition, now_ms,
                                   instance, figures, state.risk_complete)
        spec = self.spec
        state.window = QualityWindow(self._window_start(now_ms), len(spec.rules), len(spec.completeness_fields))
        if state.risk is not None:
            state.risk.clear()
        state.risk_complete = True
        return record
