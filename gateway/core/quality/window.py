"""One source partition's quality window: counters committed with its offsets, then one record.

The counters (events checked, failures per rule, nulls per nullable field, event lag) ride in the
offset-commit metadata of the partition, beside its audit chain head. A worker that takes the
partition over, restarts, or rewinds after an abort reads them back with the committed offset, so
every event is counted exactly once in exactly one window, with no state topic. When the window
ends, its record goes to the quality topic in the same transaction that resets the counters.

A quality record holds counts and rates only, never a field value.
"""

from __future__ import annotations

from typing import Any

from gateway.core.quality.risk import RiskFigures
from gateway.core.quality.spec import QualitySpec


class QualityWindow:
    __slots__ = ("start_ms", "events", "sanitized", "withheld", "failed", "nulls", "lag_sum_ms", "lag_max_ms")

    def __init__(self, start_ms: int, rules: int, fields: int) -> None:
        self.start_ms = start_ms
        self.events = 0  # events decoded and checked
        self.sanitized = 0  # of those, published to the sanitized topic
        self.withheld = 0  # of those, withheld: in a class smaller than k (the risk measure enforced)
        self.failed = [0] * rules
        self.nulls = [0] * fields
        self.lag_sum_ms = 0
        self.lag_max_ms = 0

    def to_metadata(self) -> list[Any]:
        return [self.start_ms, self.events, self.sanitized, self.withheld, self.lag_sum_ms, self.lag_max_ms,
                self.failed, self.nulls]

    @classmethod
    def from_metadata(cls, data: Any, rules: int, fields: int) -> QualityWindow | None:
        """The committed counters, or None if absent or not of this policy's shape (then a fresh window)."""
        if not (isinstance(data, list) and len(data) == 8 and all(isinstance(v, int) for v in data[:6])
                and isinstance(data[6], list) and len(data[6]) == rules
                and isinstance(data[7], list) and len(data[7]) == fields
                and all(isinstance(v, int) for v in (*data[6], *data[7]))):
            return None
        window = cls(data[0], rules, fields)
        window.events, window.sanitized, window.withheld, window.lag_sum_ms, window.lag_max_ms = data[1:6]
        window.failed = list(data[6])
        window.nulls = list(data[7])
        return window

    def record(self, spec: QualitySpec, schema: str, policy: str, source: str, partition: int, closed_ms: int,
               instance: str, risk: RiskFigures | None, risk_complete: bool) -> dict[str, Any]:
        """The quality topic's record for this window (rates rounded; no value of any field)."""
        n = self.events
        rules = [{"name": r.name, "kind": r.kind, "action": r.action, "failed": failed,
                  "rate": _rate(failed, n)} for r, failed in zip(spec.rules, self.failed, strict=True)]
        completeness: dict[str, Any] = {}
        for name, nulls in zip(spec.completeness_fields, self.nulls, strict=True):
            entry: dict[str, Any] = {"present": n - nulls, "rate": _rate(n - nulls, n)}
            target = spec.completeness_targets.get(name)
            if target is not None:
                entry["target"] = target
                entry["met"] = n == 0 or (n - nulls) / n >= target
            completeness[name] = entry
        body: dict[str, Any] = {
            "type": "quality_window", "source": source, "partition": partition, "schema": schema, "policy": policy,
            "window": {"start": self.start_ms, "end": self.start_ms + spec.window_ms}, "closed_at": closed_ms,
            "instance": instance, "events": n, "sanitized": self.sanitized, "withheld": self.withheld,
            "rules": rules,
            "completeness": completeness,
            "lag_ms": {"mean": round(self.lag_sum_ms / n) if n else 0, "max": self.lag_max_ms},
        }
        if risk is not None:
            body["risk"] = dict(risk.to_json(), complete=risk_complete)
        return body


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0
