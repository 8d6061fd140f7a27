"""DP aggregate declarations: the record-level ``"privacy": {"aggregates": [...]}`` block, parsed,
validated and compiled into frozen specs once, at policy compilation.

```json
"aggregates": [{"name": "spend_by_country", "metric": "sum", "field": "amount_minor",
                "group_by": ["country"], "window_s": 60, "grace_s": 10,
                "epsilon": 1.0, "delta": 1e-6,
                "max_groups_per_subject": 1, "max_records_per_group": 5, "clamp": [0, 100000],
                "time_field": "occurred_at", "output_topic": "payments.raw.aggregates",
                "period_s": 86400, "period_epsilon_cap": 24.0}]
```

Every problem is reported through the policy compiler's ``error`` callback with the aggregate's
name and the setting, so `gateway policy lint` lists them with the schema.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from gateway.values import TOPIC_NAME, is_int, is_number

METRICS = ("count", "sum", "mean")
REQUIRED = ("name", "metric", "group_by", "window_s", "epsilon", "delta", "max_groups_per_subject",
            "max_records_per_group")
OPTIONAL = ("field", "grace_s", "clamp", "time_field", "output_topic", "period_s", "period_epsilon_cap",
            "period_delta_cap", "share", "max_skew_s", "continual")
CONTINUAL_SETTINGS = ("horizon_windows", "start", "groups")
BUDGET_SETTINGS = ("period_s", "epsilon_cap", "delta_cap")
# A source with aggregates and no "budget" block gets this one: a real bound on what one subject can
# lose per day across all of them (before, the default was what every window of every aggregate could
# spend: about 2,160 epsilon a day for the shipped schemas). Lint warns about any budget or aggregate
# cap allowing more than LINT_EPSILON_PER_DAY per subject per day.
DEFAULT_BUDGET = {"period_s": 86_400, "epsilon_cap": 10.0, "delta_cap": 1e-4}
LINT_EPSILON_PER_DAY = 10.0
_DAY_S = 86_400
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_GROUPABLE = {"string", "int", "long", "boolean", "enum"}
_INTEGER = {"int", "long"}
MAX_ABS_VALUE = 2**40  # keeps m * max|clamp| * k well inside i64 for any sane bound


@dataclass(frozen=True)
class AggregateSpec:
    """One compiled aggregate. Sensitivities and noise scales derive from these bounds only."""

    schema: str  # raw schema full name
    name: str
    metric: str  # count | sum | mean
    field: str | None  # summed field (sum, mean)
    group_by: tuple[str, ...]
    window_ms: int
    grace_ms: int
    epsilon: float
    delta: float
    max_groups_per_subject: int  # k
    max_records_per_group: int  # m
    clamp: tuple[int, int] | None  # [lo, hi] for sum and mean
    time_field: str | None  # None: the Kafka record timestamp
    output_topic: str
    source_topic: str
    sanitized_topic: str
    period_ms: int
    period_epsilon_cap: float
    period_delta_cap: float
    # the budget this aggregate spends from, shared by every aggregate over the same subjects (see
    # compile_budget): its key, and its caps per period_ms
    share: float | None = None  # the fraction of the budget's caps this aggregate may spend per period
    # how far (event time) a raw partition may lag the most advanced one before its events count late
    max_skew_ms: int = 300_000
    # continual release (gateway/dp/continual.py): running totals over a horizon of windows from a
    # start, for a declared (public) set of groups; 0 windows: each window released on its own
    continual_windows: int = 0
    continual_start_ms: int = 0
    continual_groups: tuple[str, ...] = ()

    @property
    def continual(self) -> bool:
        return self.continual_windows > 0

    def horizon_index(self, window_start: int) -> int | None:
        """1-based window number in the continual horizon, None outside it."""
        t = (window_start - self.continual_start_ms) // self.window_ms + 1
        return t if 1 <= t <= self.continual_windows else None

    @property
    def per_window_bound(self) -> int:
        """How much one subject can change one window's values, summed over groups (k*m, or k*m*M)."""
        k, m = self.max_groups_per_subject, self.max_records_per_group
        return k * m * (self.max_abs_value if self.metric == "sum" else 1)
    budget: str = ""
    budget_period_ms: int = 0
    budget_epsilon_cap: float = math.inf
    budget_delta_cap: float = math.inf

    @property
    def id(self) -> str:
        """Ledger and audit identity: schema full name + aggregate name."""
        return f"{self.schema}/{self.name}"

    @property
    def max_abs_value(self) -> int:
        return 0 if self.clamp is None else max(abs(self.clamp[0]), abs(self.clamp[1]))

    def window_start(self, t_ms: int) -> int:
        return t_ms - (t_ms % self.window_ms)

    def bounds(self) -> dict[str, Any]:
        return {"max_groups_per_subject": self.max_groups_per_subject,
                "max_records_per_group": self.max_records_per_group,
                "clamp": list(self.clamp) if self.clamp else None}


def _base(ftype: Any) -> str | None:
    """Base type name of a non-null field type (enums as 'enum'), None for unions/containers."""
    if isinstance(ftype, list):  # unions (nullable fields included) are neither grouped nor summed
        return None
    if isinstance(ftype, str):
        return ftype
    if isinstance(ftype, dict):
        return "enum" if ftype.get("type") == "enum" else ftype.get("type")
    return None


def compile_aggregates(block: Any, *, schema: str, source_topic: str, sanitized_topic: str,
                       subject: str | None, kept: dict[str, Any], named: dict[str, Any],
                       error: Callable[[str, str], None]) -> tuple[AggregateSpec, ...]:
    """Compile the ``aggregates`` block. `kept` maps each *kept* top-level field to its raw Avro type
    (only kept values reach the sanitized topic, which the aggregate stage reads); `named` holds the
    schema's named types (enums referenced by name). Errors go to `error(where, message)`."""
    if block is None:
        return ()
    if not isinstance(block, list):
        error("(record)", "aggregates must be a list of aggregate declarations")
        return ()
    specs: list[AggregateSpec] = []
    seen: set[str] = set()
    for i, decl in enumerate(block):
        where = f"aggregates[{i}]"
        if not isinstance(decl, dict):
            error(where, "an aggregate declaration must be an object")
            continue
        name = decl.get("name")
        if isinstance(name, str) and _NAME_RE.match(name):
            where = f"aggregate '{name}'"
            if name in seen:
                error(where, "duplicate aggregate name")
            seen.add(name)
        spec = _compile_one(decl, where, schema=schema, source_topic=source_topic, sanitized_topic=sanitized_topic,
                            subject=subject, kept=kept, named=named, error=error)
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def _compile_one(decl: dict[str, Any], where: str, *, schema: str, source_topic: str, sanitized_topic: str,
                 subject: str | None, kept: dict[str, Any], named: dict[str, Any],
                 error: Callable[[str, str], None]) -> AggregateSpec | None:
    problems: list[str] = []

    def bad(setting: str, message: str) -> None:
        problems.append(setting)
        error(where, f"setting '{setting}': {message}")

    for key in sorted(set(decl) - set(REQUIRED) - set(OPTIONAL)):
        bad(key, f"unknown aggregate setting (known: {', '.join(sorted(REQUIRED + OPTIONAL))})")
    for key in REQUIRED:
        if key not in decl:
            bad(key, "is required")
    if subject is None:
        bad("(subject)", "aggregates need the record-level 'subject': contribution bounds are per subject")
    name = decl.get("name")
    if "name" in decl and not (isinstance(name, str) and _NAME_RE.match(name)):
        bad("name", "must be lowercase letters, digits and '_' (up to 64), starting with a letter")
    metric = decl.get("metric")
    if "metric" in decl and metric not in METRICS:
        bad("metric", f"'{metric}' is not one of {', '.join(METRICS)}")
    field = decl.get("field")
    clamp = decl.get("clamp")
    if metric in ("sum", "mean"):
        if field is None:
            bad("field", f"metric '{metric}' needs the numeric field to {metric}")
        elif field not in kept:
            bad("field", f"'{field}' must be a kept top-level field (aggregates read the sanitized record)")
        elif _resolve(kept[field], named) not in _INTEGER:
            bad("field", f"'{field}' must be an int or long (values are summed as integers; store amounts in "
                         "minor units)")
        if not (isinstance(clamp, list) and len(clamp) == 2 and all(is_int(v) for v in clamp)
                and clamp[0] <= clamp[1] and max(abs(clamp[0]), abs(clamp[1])) <= MAX_ABS_VALUE):
            bad("clamp", f"metric '{metric}' needs integer bounds [lo, hi] with lo <= hi and |bound| <= 2^40; "
                         "sensitivity is derived from them")
    elif metric == "count":
        if field is not None:
            bad("field", "metric 'count' takes no field")
        if clamp is not None:
            bad("clamp", "metric 'count' takes no clamp")
    group_by = decl.get("group_by")
    if "group_by" in decl:
        if not (isinstance(group_by, list) and group_by and all(isinstance(g, str) for g in group_by)
                and len(set(group_by)) == len(group_by)):
            bad("group_by", "must be a non-empty list of distinct field names")
        else:
            for g in group_by:
                if g == subject:
                    bad("group_by", f"'{g}' is the subject: grouping by it would release per-subject values")
                elif g not in kept:
                    bad("group_by", f"'{g}' must be a kept top-level field")
                elif _resolve(kept[g], named) not in _GROUPABLE:
                    bad("group_by", f"'{g}' must be a string, int, long, boolean or enum")
    time_field = decl.get("time_field")
    if time_field is not None and (time_field not in kept or _resolve(kept[time_field], named) != "long"):
        bad("time_field", f"'{time_field}' must be a kept top-level long (timestamp-millis)")
    window_s = decl.get("window_s")
    if "window_s" in decl and not (is_int(window_s) and 1 <= window_s <= 31 * 86400):
        bad("window_s", "must be an integer number of seconds between 1 and 2678400")
    grace_s = decl.get("grace_s", 0)
    if not (is_int(grace_s) and 0 <= grace_s <= 7 * 86400):
        bad("grace_s", "must be an integer number of seconds between 0 and 604800")
    epsilon = decl.get("epsilon")
    if "epsilon" in decl and not (is_number(epsilon) and 0 < epsilon <= 10):
        bad("epsilon", "must be a number in (0, 10]")
    delta = decl.get("delta")
    if "delta" in decl and not (is_number(delta) and 0 < delta < 1e-2):
        bad("delta", "must be a number in (0, 0.01): key selection needs it, and it should be far below "
                     "1/number of subjects")
    for key in ("max_groups_per_subject", "max_records_per_group"):
        value = decl.get(key)
        if key in decl and not (is_int(value) and 1 <= value <= 10_000):
            bad(key, "must be an integer between 1 and 10000")
    output_topic = decl.get("output_topic", f"{source_topic}.aggregates")
    if not (isinstance(output_topic, str) and TOPIC_NAME.match(output_topic)):
        bad("output_topic", f"'{output_topic}' is not a valid Kafka topic name")
    elif output_topic in (source_topic, sanitized_topic):
        bad("output_topic", "must differ from the source and sanitized topics")
    period_s = decl.get("period_s", 86400)
    if not (is_int(period_s) and 1 <= period_s <= 366 * 86400):
        bad("period_s", "must be an integer number of seconds between 1 and 31622400")
    if problems:
        return None
    if metric in ("sum", "mean"):
        bound = max(abs(clamp[0]), abs(clamp[1]))
        k, m = decl["max_groups_per_subject"], decl["max_records_per_group"]
        if bound == 0:
            bad("clamp", "[0, 0] sums nothing; widen the bounds")
        elif k * m * bound > 2**52:
            bad("clamp", "max_groups_per_subject x max_records_per_group x max|clamp| must stay below 2^52 "
                         "(integer noise and sums are 64-bit)")
    windows_per_period = math.ceil(period_s / window_s)
    continual = _compile_continual(decl.get("continual"), metric, decl.get("group_by"), bad)
    if continual[0] and is_int(window_s) and window_s > 0 and continual[1] % (window_s * 1000):
        bad("continual", "'start' must fall on a window boundary (a multiple of window_s since the epoch)")
    max_skew_s = decl.get("max_skew_s", 300)
    if not (is_int(max_skew_s) and 0 <= max_skew_s <= 31 * 86400):
        bad("max_skew_s", "must be an integer number of seconds between 0 and 2678400")
    share = decl.get("share")
    if share is not None and not (is_number(share) and 0 < share <= 1):
        bad("share", "must be a number in (0, 1]: the fraction of the source's budget this aggregate may spend")
    eps_cap = decl.get("period_epsilon_cap", epsilon * windows_per_period)
    delta_cap = decl.get("period_delta_cap", delta * windows_per_period)
    if not (is_number(eps_cap) and eps_cap >= epsilon):
        bad("period_epsilon_cap", "must be a number >= epsilon (one window's release)")
    if not (is_number(delta_cap) and delta_cap >= delta):
        bad("period_delta_cap", "must be a number >= delta (one window's release)")
    if problems:
        return None
    return AggregateSpec(
        schema=schema, name=name, metric=metric, field=field if metric != "count" else None,
        group_by=tuple(group_by), window_ms=window_s * 1000, grace_ms=grace_s * 1000, epsilon=float(epsilon),
        delta=float(delta), max_groups_per_subject=decl["max_groups_per_subject"],
        max_records_per_group=decl["max_records_per_group"],
        clamp=(clamp[0], clamp[1]) if metric != "count" else None, time_field=time_field,
        output_topic=output_topic, source_topic=source_topic, sanitized_topic=sanitized_topic,
        period_ms=period_s * 1000, period_epsilon_cap=float(eps_cap), period_delta_cap=float(delta_cap),
        share=float(share) if share is not None else None, max_skew_ms=max_skew_s * 1000,
        continual_windows=continual[0], continual_start_ms=continual[1], continual_groups=continual[2])


def _compile_continual(block: Any, metric: Any, group_by: Any,
                       bad: Callable[[str, str], None]) -> tuple[int, int, tuple[str, ...]]:
    """``"continual": {"horizon_windows": T, "start": "2026-01-01T00:00:00Z", "groups": [["DE"], ...]}``.
    The groups are declared, not found in the data: every one of them is released at every window
    close (a group appearing only once someone contributed would tell that someone did)."""
    if block is None:
        return 0, 0, ()
    if not isinstance(block, dict):
        bad("continual", "must be an object {\"horizon_windows\": T, \"start\": ISO time, \"groups\": [...]}")
        return 0, 0, ()
    for name in sorted(set(block) - set(CONTINUAL_SETTINGS)):
        bad("continual", f"unknown setting '{name}' (known: {', '.join(CONTINUAL_SETTINGS)})")
    if metric not in ("count", "sum"):
        bad("continual", "running totals are released for metric 'count' or 'sum'")
    horizon = block.get("horizon_windows")
    if not (is_int(horizon) and 1 <= horizon <= 100_000):
        bad("continual", "'horizon_windows' must be an integer between 1 and 100000")
        horizon = 0
    try:
        start = datetime.datetime.fromisoformat(str(block.get("start")))
        if start.tzinfo is None:
            raise ValueError("no time zone")
        start_ms = int(start.timestamp() * 1000)
    except ValueError:
        bad("continual", "'start' must be an ISO 8601 time with a zone, e.g. 2026-12-01T00:00:00Z")
        start_ms = 0
    groups = block.get("groups")
    width = len(group_by) if isinstance(group_by, list) else 0
    if not (isinstance(groups, list) and groups and all(isinstance(g, list) and len(g) == width for g in groups)):
        bad("continual", f"'groups' must list the groups to release, each a list of {width} group-by value(s)")
        return 0, 0, ()
    keys = tuple(orjson.dumps(g).decode() for g in groups)
    if len(set(keys)) != len(keys):
        bad("continual", "'groups' lists a group twice")
    return horizon, start_ms, keys


def budget_key(subject_domain: str | None, source_topic: str) -> str:
    """Whose privacy the budget protects: the subjects of a token domain (shared by every source
    tokenizing its subject into that domain), else the subjects of one source topic."""
    return f"subject:{subject_domain}" if subject_domain else f"source:{source_topic}"


def compile_budget(block: Any, specs: tuple[AggregateSpec, ...], *, key: str,
                   error: Callable[[str, str], None],
                   warn: Callable[[str, str], None] | None = None) -> tuple[AggregateSpec, ...]:
    """The record-level ``"budget": {"period_s", "epsilon_cap", "delta_cap"}``: what everything
    released about one subject may spend per rolling period, summed over all aggregates of the
    budget (basic composition). Absent, it is DEFAULT_BUDGET (10 epsilon per subject per day): a
    real bound, not the sum of what every window could spend. An aggregate with ``"share": f`` may
    spend at most f of the budget's caps per its own period; shares sum to at most 1. `warn` (lint)
    is told of a budget or aggregate cap allowing more than LINT_EPSILON_PER_DAY a day."""
    if not specs:
        if block is not None:
            error("(record)", "budget is set, but the schema declares no aggregates")
        return specs
    if block is not None and not isinstance(block, dict):
        error("(record)", "budget must be an object {\"period_s\": P, \"epsilon_cap\": E, \"delta_cap\": D}")
        return specs
    block = block if block is not None else DEFAULT_BUDGET
    for name in sorted(set(block) - set(BUDGET_SETTINGS)):
        error("(record)", f"unknown budget setting '{name}' (known: {', '.join(BUDGET_SETTINGS)})")
    period_s = block.get("period_s", DEFAULT_BUDGET["period_s"])
    if not (is_int(period_s) and 1 <= period_s <= 366 * 86400):
        error("(record)", "budget setting 'period_s' must be an integer number of seconds between 1 and 31622400")
        return specs
    shares = {s.name: s.share for s in specs if s.share is not None}
    if sum(shares.values()) > 1 + 1e-9:
        error("(record)", f"the aggregates' shares sum to {sum(shares.values()):g}, above 1")
    eps_cap = block.get("epsilon_cap", DEFAULT_BUDGET["epsilon_cap"])
    delta_cap = block.get("delta_cap", DEFAULT_BUDGET["delta_cap"])
    if not (is_number(eps_cap) and eps_cap > 0):
        error("(record)", "budget setting 'epsilon_cap' must be a positive number")
        return specs
    if not (is_number(delta_cap) and 0 <= delta_cap < 1):
        error("(record)", "budget setting 'delta_cap' must be a number in [0, 1)")
        return specs
    if warn is not None and is_int(period_s) and is_number(eps_cap):
        per_day = eps_cap * math.ceil(_DAY_S / period_s)
        if per_day > LINT_EPSILON_PER_DAY:
            warn("(record)", f"the budget allows up to {per_day:g} epsilon per subject per day, above "
                             f"{LINT_EPSILON_PER_DAY:g}: each subject's privacy is barely bounded")
    out = []
    for spec in specs:
        share = shares.get(spec.name)
        own_eps, own_delta = spec.period_epsilon_cap, spec.period_delta_cap
        if share is not None:
            own_eps, own_delta = min(own_eps, share * eps_cap), min(own_delta, share * delta_cap)
        if spec.epsilon > min(own_eps, eps_cap) * (1 + 1e-9):
            error(f"aggregate '{spec.name}'", f"one window's epsilon {spec.epsilon:g} is above what its budget "
                                              f"allows per period ({min(own_eps, eps_cap):g})")
        out.append(replace(spec, budget=key, budget_period_ms=period_s * 1000, budget_epsilon_cap=float(eps_cap),
                           budget_delta_cap=float(delta_cap), period_epsilon_cap=own_eps, period_delta_cap=own_delta))
    return tuple(out)


def _resolve(ftype: Any, named: dict[str, Any]) -> str | None:
    base = _base(ftype)
    if isinstance(ftype, dict) and ftype.get("logicalType") and base != "long":
        return None  # decimals and the like are not summed as plain integers
    if base is not None and base not in _GROUPABLE | {"double", "float", "bytes", "null", "record", "array",
                                                      "map", "fixed"}:
        ref = named.get(base) or next((v for k, v in named.items() if k.rsplit(".", 1)[-1] == base), None)
        if isinstance(ref, dict):
            return "enum" if ref.get("type") == "enum" else ref.get("type")
    return base


def kept_top_level(fields: Sequence[dict[str, Any]], kept_names: set[str]) -> dict[str, Any]:
    """Raw Avro types of the kept top-level fields."""
    return {f["name"]: f["type"] for f in fields if f["name"] in kept_names}
