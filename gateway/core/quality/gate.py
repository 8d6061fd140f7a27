"""The quality gate of one source topic: rules on each decoded event, windows per partition.

The pipeline asks `check` before it sanitizes an event (a rule whose action is reject dead-letters
it; flag and measure failures go with it), tells `published` what reached the sanitized topic
(its event id joins the duplicate filter, its quasi-identifiers the risk window), and rolls every
window that has ended into a quality record. Pure: the runtime feeds it and publishes its records.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.quality.codegen import FunctionSource
from gateway.core.quality.dedup import DuplicateFilter, Fingerprinter
from gateway.core.quality.risk import RiskWindow
from gateway.core.quality.rules import CheckerState
from gateway.core.quality.spec import QualitySpec
from gateway.core.quality.window import QualityWindow

PASSED: tuple[int, ...] = ()  # the failures of an event that passed every rule (shared: never appended to)
# check(partition, record, timestamp_ms, now_ms) -> (failed, first reject, fingerprint)
Check = Callable[[int, dict[str, Any], int, int], tuple[Sequence[int], "int | None", "int | None"]]


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
        self.partitions: dict[int, PartitionQuality] = {}
        self.rule_names = [r.name for r in spec.rules]
        self.flag_rules = frozenset(i for i, r in enumerate(spec.rules) if r.action == "flag")
        self.reject_rules = frozenset(i for i, r in enumerate(spec.rules) if r.action == "reject")
        self._dup = spec.duplicate_index
        self._fresh = spec.freshness_index
        self._fresh_ms = spec.freshness.max_lag_ms if spec.freshness is not None else 0
        self.risk_measured = spec.risk is not None
        if self.dedup is not None and self.fingerprinter is None:
            raise ValueError("duplicate detection needs its fingerprint key")
        self.check: Check = self._compile_check()

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
    def _compile_check(self) -> Check:
        """check(partition, record, timestamp_ms, now_ms): every rule on one decoded event, counted in its
        partition's window: (failed rule indexes, the first failed rule whose action is reject, the event id's
        fingerprint). Generated once for the plan (gateway/core/quality/codegen.py): the checker's rules
        inline, then duplicate (the id's fingerprint in the filter: earlier batches and this batch's earlier
        slices; an id published earlier in the same slice is `in_batch_duplicate`'s),
        freshness (lag past the limit), the lag and the null counters; failures ascend, as the rules' indexes
        do. The common case (no rule failed) allocates nothing but the result: its failures are PASSED."""
        spec = self.spec
        source = FunctionSource("check(partition, record, timestamp_ms, now_ms)")
        source.add(1, f"state = {source.const(self.partitions.get)}(partition)")
        source.add(1, "if state is None:")
        source.add(2, f"state = {source.const(self._opened)}(partition, now_ms)")
        for line in ("window = state.window", "window.events += 1",
                     "window.sanitized += 1",  # until a rejection says otherwise (not_published)
                     "failed = None", "get = record.get"):
            source.add(1, line)
        if spec.checker is not None:
            source.add(1, "baselines = state.checker_state.baselines")
            spec.checker.emit(source)
        source.add(1, "fp = None")
        if self.dedup is not None and self.event_id_field is not None:
            event_id = source.value_of(self.event_id_field)
            source.add(1, f"if {event_id} is not None:")
            self.fingerprinter.emit(source, 2, event_id, "fp")  # type: ignore[union-attr]
            source.add(2, f"if {self.dedup.emit_seen(source, 'fp')}:")
            source.fail(3, int(self._dup))  # type: ignore[arg-type]
        source.add(1, "lag = now_ms - timestamp_ms")
        source.add(1, "if lag > 0:")
        source.add(2, "window.lag_sum_ms += lag")
        source.add(2, "if lag > window.lag_max_ms:")
        source.add(3, "window.lag_max_ms = lag")
        if self._fresh is not None:
            source.add(2, f"if lag > {source.const(self._fresh_ms)}:")
            source.fail(3, self._fresh)
        if spec.completeness_fields:
            source.add(1, "nulls = window.nulls")
            for i, name in enumerate(spec.completeness_fields):
                source.add(1, f"if {source.value_of(name)} is None:")
                source.add(2, f"nulls[{i}] += 1")
        source.add(1, "if failed is None:")
        source.add(2, f"return {source.const(PASSED)}, None, fp")
        for line in ("counts = window.failed", "reject = None", "for i in failed:", "    counts[i] += 1",
                     f"    if reject is None and i in {source.const(self.reject_rules)}:", "        reject = i",
                     "return failed, reject, fp"):
            source.add(1, line)
        return source.build("check", f"<quality gate {self.schema}>")  # type: ignore[return-value]

    def _opened(self, partition: int, now_ms: int) -> PartitionQuality:
        """A partition's first event without an open window (no resume): a fresh one."""
        self.open(partition, None, now_ms)
        return self.partitions[partition]

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

    def in_batch_duplicate(self, partition: int, failed: Sequence[int], reject: int | None
                           ) -> tuple[list[int], int | None]:
        """A checked event whose id an event published earlier in the same slice carried: the duplicate
        rule fails too, counted in the window; (failures, ascending; the first failed rule whose action is
        reject). `check` cannot see it: a slice's events are all checked before the first is published,
        and only what is published joins the filter."""
        dup = self._dup
        assert dup is not None  # only a gate with duplicate detection gives fingerprints
        failed = sorted([*failed, dup])
        self.partitions[partition].window.failed[dup] += 1
        if reject is None or dup < reject:
            reject = dup if dup in self.reject_rules else reject
        return failed, reject

    def is_duplicate(self, failed: Sequence[int] | None) -> bool:
        return bool(failed) and self._dup in failed  # type: ignore[operator]

    def names(self, failed: Sequence[int]) -> list[str]:
        return [self.rule_names[i] for i in failed]

    # ---- windows ---------------------------------------------------------------------------------
    def due(self, now_ms: int) -> list[int]:
        """Partitions whose window has ended with events in it (an empty one rolls over with the next event)."""
        end = self.spec.window_ms
        return [p for p, s in self.partitions.items() if s.window.events and now_ms >= s.window.start_ms + end]

    def ended(self, now_ms: int) -> list[int]:
        """Partitions whose window has ended, with events in it or not (a batch that touched one rolls it)."""
        end = self.spec.window_ms
        return [p for p, s in self.partitions.items() if now_ms >= s.window.start_ms + end]

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
