"""The leak sentinel: PII found in a field the policy keeps in clear.

A policy keeps a field because it held no PII when it was written; producers change. The sentinel
runs the detectors (gateway/core/detectors/) over the sanitized record's kept string values, nested
records, arrays and maps included, and over the headers and key the policy keeps (read as UTF-8). A
hit is counted (`gateway_leak_suspected_total{topic,field,entity}`) and recorded in the event's audit
event (`leak_suspected`: field paths and entity types, never the value).

- `"leak_sentinel": "enforce"` checks EVERY event, whatever `leak_sample_rate` says, and dead-letters
  each one with a hit (`pii_in_kept_field`) instead of publishing it. Enforcing on a sample would
  publish (1 - rate) of the leaking events: a promise "no PII in kept fields" cannot be sampled.
- `"observe"` (the default) checks a sampled fraction of events (`leak_sample_rate`) and publishes
  them: it measures, it does not withhold. Sampling is random per event, not per key: every event has
  the same chance, so a leak that affects a share p of events is seen after about 1 / (p * rate) events.
- `"off"` checks nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from gateway.core import detectors as detect
from gateway.core.operators.base import RecordPlan, SanitizeResult, Shape
from gateway.core.policy.key_headers import KEY_HEADER, KEY_PATH
from gateway.core.policy.plan import Plan

Walker = Callable[[dict[str, Any]], Iterator[tuple[str, str]]]  # record -> (path, kept string)
_STRING_KINDS = ("string", "union", "array", "map")  # kinds that can hold free-text strings


class LeakSentinel:
    """Checks sanitized records of one plan (every one when enforced, else a sample); `check` returns
    [(field path, entity)]."""

    def __init__(self, plan: Plan, sample_rate: float, rng: random.Random | None = None) -> None:
        self.enforce = plan.leak_sentinel == "enforce"
        # enforce is a promise about every event, so the configured sample rate does not apply to it
        self.sample_rate = 1.0 if self.enforce else sample_rate if plan.leak_sentinel != "off" else 0.0
        self._random = (rng or random.Random()).random  # noqa: S311 - sampling, not secrecy
        self._walk = _record_walker(plan.record)
        self._contains = detect.detector().contains
        # kept headers and a kept key pass in clear too (core/policy/key_headers.py): output header -> path
        kh = plan.key_headers
        self._kept_headers = {rule.name: rule.path for rule in kh.published_headers
                              if rule.plan is not None and rule.plan.operator.in_clear}
        kept_key = kh.key is not None and kh.key.operator.in_clear
        if kept_key and not kh.replaces_key:
            self._kept_headers[KEY_HEADER] = KEY_PATH
        self._kept_record_key = kept_key and kh.replaces_key
        self.watched = bool(_watched_paths(plan.record) or self._kept_headers or self._kept_record_key)

    @property
    def active(self) -> bool:
        return self.sample_rate > 0 and self.watched

    def sampled(self) -> bool:
        """Whether this event is checked: always when enforced, else with probability `sample_rate`."""
        return self.enforce or self._random() < self.sample_rate

    def check(self, record: dict[str, Any], result: SanitizeResult | None = None) -> list[tuple[str, str]]:
        """`result`: the event's sanitize result, whose kept headers and key are checked too."""
        hits: dict[str, str] = {}
        for path, text in self._walk(record):
            if path not in hits:
                entity = self._contains(text)
                if entity is not None:
                    hits[path] = entity
        if result is not None:
            for path, text in self._kept_key_headers(result):
                if path not in hits:
                    entity = self._contains(text)
                    if entity is not None:
                        hits[path] = entity
        return sorted(hits.items())

    def _kept_key_headers(self, result: SanitizeResult) -> Iterator[tuple[str, str]]:
        if self._kept_record_key and result.out_key:
            yield KEY_PATH, result.out_key.decode("utf-8", "replace")
        kept = self._kept_headers
        if kept:
            for name, value in result.out_headers or ():
                path = kept.get(name)
                if path is not None and value:
                    yield path, value.decode("utf-8", "replace")


def _watched_paths(plan: RecordPlan) -> list[str]:
    paths: list[str] = []
    for fp in plan.fields:
        if not fp.operator.in_clear:
            continue
        shape = fp.shape
        if shape is None and getattr(fp.operator, "kind", "") in _STRING_KINDS:
            paths.append(fp.path)
        while shape is not None:
            if shape.record is not None:
                paths += _watched_paths(shape.record)
            shape = shape.inner
    return paths


def _record_walker(plan: RecordPlan) -> Walker:
    fields = [(fp, _shape_walker(fp.path, fp.shape)) for fp in plan.fields if fp.operator.in_clear]

    def walk(record: dict[str, Any]) -> Iterator[tuple[str, str]]:
        for fp, value_walk in fields:
            value = record.get(fp.name)
            if value is not None:
                yield from value_walk(value)

    return walk


def _shape_walker(path: str, level: Shape | None) -> Callable[[Any], Iterator[tuple[str, str]]]:
    """The strings under one level of a field's shape. The walkers of the levels below (and of nested
    records) are built here, once, at start-up: building them per value made a self-referencing
    closure per nested record of every event, a reference cycle only the garbage collector frees
    (one per 25 events of the shipped mix), which kept its young generation growing."""
    nested_record = None
    if level is not None and level.kind == "record" and level.record is not None:
        nested_record = _record_walker(level.record)
    below = _shape_walker(path, level.inner) if level is not None else None  # None: this level again

    def strings(value: Any) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            if nested_record is not None:
                yield from nested_record(value)
            else:  # a map (of strings, or of records one level down)
                for item in value.values():
                    yield from (below or strings)(item)
        elif isinstance(value, list):
            for item in value:
                yield from (below or strings)(item)

    return strings
