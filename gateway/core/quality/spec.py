"""The ``"quality"`` block of a schema's record-level privacy settings, compiled with the field rules.

``"privacy": {..., "quality": {"window_s": 60, "checks": [...], "duplicates": {...}, "freshness": {...},
"risk": {...}}}``; per-field rules sit in each field's ``"quality"`` key
(gateway/core/quality/rules.py). Every problem goes to the policy compiler's `error(where, message)`,
so `gateway policy lint` lists them and start-up fails naming schema, field and rule.

Duplicates and freshness become rules of their own (after the per-field rules and the checks), so
one list of rules, one index space, one set of counters covers every per-event outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.core.quality.rules import ACTIONS, RecordChecker, RuleSpec, compile_checker

QUALITY_SETTINGS = {"window_s", "checks", "duplicates", "freshness", "risk"}
RISK_MODES = ("report", "enforce")
DEFAULT_WINDOW_S = 60
MAX_COUNTERS = 200  # the window's counters ride in the offset-commit metadata (Kafka's limit: 4096 bytes)


@dataclass(frozen=True)
class DuplicateSpec:
    action: str
    horizon_ms: int
    max_ids: int


@dataclass(frozen=True)
class FreshnessSpec:
    max_lag_ms: int
    action: str


@dataclass(frozen=True)
class RiskSpec:
    quasi_identifiers: tuple[str, ...]
    k: int
    sensitive: str | None
    l_target: int | None
    mode: str  # report | enforce
    max_held_events: int  # enforce: a partition's window closes early once it holds this many events
    # the published record timestamp is a quasi-identifier too (unless shifted: gateway/core/policy/timestamp.py)
    timestamp: bool = False


@dataclass(frozen=True)
class QualitySpec:
    window_ms: int
    checker: RecordChecker | None
    rules: tuple[RuleSpec, ...]  # the checker's, then "duplicate", then "freshness" (those declared)
    duplicates: DuplicateSpec | None
    freshness: FreshnessSpec | None
    risk: RiskSpec | None
    completeness_fields: tuple[str, ...]  # nullable top-level fields: their share of non-null values per window
    completeness_targets: dict[str, float] = field(default_factory=dict)

    @property
    def duplicate_index(self) -> int | None:
        return self._index("duplicate")

    @property
    def freshness_index(self) -> int | None:
        return self._index("freshness")

    def _index(self, kind: str) -> int | None:
        return next((i for i, r in enumerate(self.rules) if r.kind == kind), None)


def _action(spec: Mapping[str, Any], where: str, error: Callable[[str, str], None]) -> str:
    action = spec.get("action", "flag")
    if action not in ACTIONS:
        error(where, f"action '{action}' is not one of {', '.join(ACTIONS)}")
    return str(action)


def _positive(spec: Mapping[str, Any], key: str, default: float | None, where: str,
              error: Callable[[str, str], None], integer: bool = True) -> Any:
    value = spec.get(key, default)
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool) and value > 0
    if not ok:
        error(where, f"{key} must be a positive {'integer' if integer else 'number'}")
        return default
    return value


def _known(spec: Any, keys: set[str], where: str, error: Callable[[str, str], None]) -> bool:
    if not isinstance(spec, dict):
        error(where, "must be an object")
        return False
    for key in sorted(set(spec) - keys):
        error(where, f"unknown option '{key}' (known: {', '.join(sorted(keys))})")
    return True


def compile_quality(fields: list[dict[str, Any]], settings: Any, named: dict[str, Any], event_id: str | None,
                    sanitized: Mapping[str, bool], error: Callable[[str, str], None]) -> QualitySpec | None:
    """`fields`: the raw schema's top-level fields; `settings`: "quality" of its privacy settings (or None);
    `sanitized`: top-level sanitized field -> whether its operator is deterministic (the risk measure's
    quasi-identifiers must be). None when nothing is declared."""
    if settings is not None and not _known(settings, QUALITY_SETTINGS, "(record).quality", error):
        return None
    settings = settings or {}
    problems: list[str] = []

    def err(where: str, message: str) -> None:
        problems.append(where)
        error(where, message)

    checker = compile_checker(fields, settings.get("checks"), named, err)
    rules = list(checker.rules) if checker is not None else []
    duplicates = _duplicates(settings.get("duplicates"), event_id, err)
    if duplicates is not None:
        rules.append(RuleSpec("duplicate", "duplicate", duplicates.action, event_id))
    freshness = _freshness(settings.get("freshness"), err)
    if freshness is not None:
        rules.append(RuleSpec("freshness", "freshness", freshness.action, None))
    risk = _risk(settings.get("risk"), sanitized, err)
    window_s = settings.get("window_s", DEFAULT_WINDOW_S)
    if not isinstance(window_s, int) or isinstance(window_s, bool) or not 1 <= window_s <= 86_400:
        err("(record).quality.window_s", "window_s must be an integer number of seconds in [1, 86400]")
    nullable = tuple(f["name"] for f in fields if isinstance(f["type"], list) and "null" in f["type"])
    if len(rules) + len(nullable) > MAX_COUNTERS:
        err("(record).quality", f"{len(rules)} rules and {len(nullable)} nullable fields need more counters "
            f"than the {MAX_COUNTERS} a window can commit with its offsets")
    if problems or not (rules or risk or "window_s" in settings):
        return None
    return QualitySpec(window_ms=int(window_s) * 1000, checker=checker, rules=tuple(rules), duplicates=duplicates,
                       freshness=freshness, risk=risk, completeness_fields=nullable,
                       completeness_targets=dict(checker.completeness_targets) if checker else {})


def _duplicates(spec: Any, event_id: str | None, error: Callable[[str, str], None]) -> DuplicateSpec | None:
    if spec is None:
        return None
    where = "duplicate"
    if spec is True:
        spec = {}
    if not _known(spec, {"action", "horizon_s", "max_ids"}, where, error):
        return None
    if event_id is None:
        error(where, "duplicate detection needs the event id: name it in the privacy settings (\"event_id\": "
                     "FIELD, kept or tokenized) or keep a top-level field named event_id")
    action = _action(spec, where, error)
    horizon_s = _positive(spec, "horizon_s", 3600, where, error)
    max_ids = _positive(spec, "max_ids", 1_000_000, where, error)
    return DuplicateSpec(action, int(horizon_s) * 1000, int(max_ids))


def _freshness(spec: Any, error: Callable[[str, str], None]) -> FreshnessSpec | None:
    if spec is None:
        return None
    where = "freshness"
    if not _known(spec, {"action", "max_lag_s"}, where, error):
        return None
    if "max_lag_s" not in spec:
        error(where, "max_lag_s is required: how far behind processing time an event may be")
        return None
    max_lag_s = _positive(spec, "max_lag_s", None, where, error, integer=False)
    return FreshnessSpec(int((max_lag_s or 0) * 1000), _action(spec, where, error))


def _risk(spec: Any, sanitized: Mapping[str, bool], error: Callable[[str, str], None]) -> RiskSpec | None:
    if spec is None:
        return None
    where = "risk"
    if not _known(spec, {"quasi_identifiers", "k", "sensitive", "l", "mode", "max_held_events"}, where, error):
        return None
    qis = spec.get("quasi_identifiers")
    if not isinstance(qis, list) or not qis or not all(isinstance(q, str) for q in qis) or len(set(qis)) != len(qis):
        error(where, "quasi_identifiers must be a non-empty list of distinct field names")
        return None
    for name in [*qis, *([spec["sensitive"]] if isinstance(spec.get("sensitive"), str) else [])]:
        _check_measurable(name, sanitized, where, error)
    sensitive = spec.get("sensitive")
    if sensitive is not None and (not isinstance(sensitive, str) or sensitive in qis):
        error(where, "sensitive must be a field name that is not a quasi-identifier")
    k = _positive(spec, "k", 5, where, error)
    l_target = spec.get("l")
    if l_target is not None:
        if sensitive is None:
            error(where, "l (l-diversity) needs the sensitive field it counts")
        l_target = _positive(spec, "l", None, where, error)
    mode = spec.get("mode", "report")
    if mode not in RISK_MODES:
        error(where, f"mode '{mode}' is not one of {', '.join(RISK_MODES)}")
    max_held = _positive(spec, "max_held_events", 100_000, where, error)
    return RiskSpec(tuple(qis), int(k or 5), sensitive, l_target, str(mode), int(max_held))


def _check_measurable(name: str, sanitized: Mapping[str, bool], where: str, error: Callable[[str, str], None]) -> None:
    if name not in sanitized:
        error(where, f"field '{name}' is not a top-level field of the sanitized record (dropped or unknown): "
                     "the risk is measured on what consumers receive")
    elif not sanitized[name]:
        error(where, f"field '{name}' is encrypted: every ciphertext differs, so it cannot form equivalence "
                     "classes; measure a kept, generalized, masked or tokenized field")


def describe(spec: QualitySpec) -> list[str]:
    """One line per rule and per window measure, for `gateway policy show`."""
    lines = [f"{r.name}: {r.kind}, {r.action}" for r in spec.rules]
    for name, target in sorted(spec.completeness_targets.items()):
        lines.append(f"{name}: completeness >= {target:g} per window")
    if spec.risk is not None:
        risk = spec.risk
        qis = [*risk.quasi_identifiers, *(["(record timestamp)"] if risk.timestamp else [])]
        lines.append(f"risk ({risk.mode}): k >= {risk.k} distinct subjects over {', '.join(qis)}"
                     + (f", l >= {risk.l_target} of {risk.sensitive}" if risk.l_target else "")
                     + f", per {spec.window_ms // 1000}s window and partition")
    return lines

