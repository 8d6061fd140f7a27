"""Per-record data-quality rules declared beside the privacy annotations, compiled once, checked per event.

Field level, a top-level field's ``"quality"`` object, one key per rule::

    {"name": "amount_minor", "type": "long", "privacy": "keep",
     "quality": {"required": true, "range": {"min": 0, "max": 10000000, "action": "reject"},
                 "outlier": {"threshold": 3.5, "action": "measure"}}}

Kinds: required, range, allowed, format (regex or a gateway.core.detectors entity), max_length, outlier.
Record level, the ``"checks"`` of the schema's ``"quality"`` block compare two fields, or a field and
a literal: ``{"name": "dropoff_after_request", "rule": ["dropoff_at", ">=", "requested_at"]}``.

Every rule has an action (reject | flag | measure, default flag); `RecordChecker.check` only says which
rules a record fails, the caller decides what each action does. Rule names ("<field>.<kind>", or a
check's name) become metric labels and dead-letter reasons, so they hold schema names only; no value
reaches a message or a result, since values can be personal data.
"""

from __future__ import annotations

import bisect
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.core.avro import PRIMITIVES, lookup
from gateway.core.detectors import ENTITIES, detector
from gateway.core.detectors.email import is_email
from gateway.core.quality.codegen import FunctionSource
from gateway.values import is_int, is_number

ACTIONS = ("reject", "flag", "measure")
FIELD_KINDS = ("required", "range", "allowed", "format", "max_length", "outlier")  # also the evaluation order
_OPTIONS: dict[str, tuple[str, ...]] = {
    "required": ("action", "completeness"),
    "range": ("min", "max", "action"),
    "allowed": ("values", "action"),
    "format": ("regex", "detector", "action"),
    "max_length": ("max", "action"),
    "outlier": ("threshold", "min_samples", "window", "action"),
}
CHECK_OPTIONS = ("name", "rule", "action")
OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_ORDERING = frozenset({"<", "<=", ">", ">="})
_CHECK_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
_NUMERIC = frozenset({"int", "long", "float", "double"})
_MAX_WINDOW = 100_000  # an outlier baseline per rule and partition; its refresh sorts it

# modified z-score (Iglewicz & Hoaglin): 0.6745 = the normal's MAD / sigma; 1.253314 = sqrt(pi/2), its mean
# absolute deviation / sigma, for the fallback when more than half of the baseline is one value
_MAD_SCALE = 0.6745
_MEANAD_SCALE = 1.253314


@dataclass(frozen=True)
class RuleSpec:
    name: str  # "amount_minor.range" or a check's name
    kind: str  # one of FIELD_KINDS, or "check"
    action: str  # one of ACTIONS
    field: str | None  # the field (None for checks)


class _Invalid(Exception):
    """One problem with a rule's declaration; reported under the rule's name."""


@dataclass(frozen=True)
class _FieldType:
    """What the rules need of a field's Avro type: the non-null branch's base type, and whether None occurs."""

    base: str  # a primitive, "enum", "record", "array", "map", "fixed", "union" (several branches) or "unknown"
    nullable: bool
    symbols: tuple[str, ...] = ()  # an enum's

    def describe(self) -> str:
        return {"union": "a union of several types", "unknown": "of a type not defined before it"}.get(
            self.base, self.base)


def _base(ftype: Any, named: dict[str, Any], depth: int = 0) -> tuple[str, tuple[str, ...]]:
    if depth > 8:
        return "unknown", ()
    if isinstance(ftype, str):
        if ftype in PRIMITIVES:
            return ftype, ()
        ref = lookup(ftype, named, short=True)  # a raw schema's short name, relative to its namespace
        return ("unknown", ()) if ref is None else _base(ref, named, depth + 1)
    if isinstance(ftype, dict):
        kind = ftype.get("type")
        if kind == "enum":
            return "enum", tuple(s for s in ftype.get("symbols") or () if isinstance(s, str))
        if kind in ("record", "error", "array", "map", "fixed"):
            return ("record" if kind == "error" else kind), ()
        return _base(kind, named, depth + 1)  # {"type": "long", "logicalType": ...} or a named reference
    return ("union" if isinstance(ftype, list) else "unknown"), ()


def _field_type(ftype: Any, named: dict[str, Any]) -> _FieldType:
    nullable = False
    if isinstance(ftype, list):
        branches = [b for b in ftype if b != "null"]
        nullable = len(branches) < len(ftype)
        if len(branches) != 1:
            return _FieldType("union" if branches else "null", nullable)
        ftype = branches[0]
    base, symbols = _base(ftype, named)
    return _FieldType(base, nullable, symbols)


def _options(kind: str, decl: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(decl) - set(_OPTIONS[kind]), key=str)
    if unknown:
        raise _Invalid(f"unknown option {', '.join(map(repr, unknown))} (known: {', '.join(_OPTIONS[kind])})")
    return decl


def _action(decl: dict[str, Any]) -> str:
    action = decl.get("action", "flag")
    if not isinstance(action, str) or action not in ACTIONS:
        raise _Invalid(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    return action


def _need(ft: _FieldType, kinds: frozenset[str] | set[str], kind: str, what: str) -> None:
    if ft.base not in kinds:
        raise _Invalid(f"{kind} needs {what}; this field is {ft.describe()}")


# ---- field rules: each returns (action, test); the test holds when a non-null value passes -------------------
@dataclass(frozen=True)
class PassTest:
    """A field rule's pass test as a Python expression over the value, for the checker's generated function:
    `{v}` stands for the value and `{0}`, `{1}`, ... for `consts`, which the function reads by name, so
    nothing a schema declares is ever parsed as code. The expression is true when a non-null value passes."""

    expr: str
    consts: tuple[Any, ...] = ()


def _required(decl: Any, ft: _FieldType) -> tuple[str, float | None]:
    """A non-nullable field can never fail this (the decoder rejects a missing value): allowed, never an error."""
    if decl is True:
        return "flag", None
    if not isinstance(decl, dict):
        raise _Invalid("required is true or an object {action, completeness}")
    opts = _options("required", decl)
    completeness = opts.get("completeness")
    if completeness is not None and not (is_number(completeness) and 0 < completeness <= 1):
        raise _Invalid("completeness must be a number in (0, 1]: the share of events with a value per window")
    return _action(opts), None if completeness is None else float(completeness)


def _range(decl: Any, ft: _FieldType) -> tuple[str, PassTest]:
    """NaN is outside every range (both comparisons are false, so the pass test `lo <= v <= hi` fails)."""
    _need(ft, _NUMERIC, "range", "a numeric field (int, long, float or double)")
    if isinstance(decl, list):
        if len(decl) != 2 or not all(is_number(b) for b in decl):
            raise _Invalid("range is [min, max] with two finite numbers, or an object {min, max, action}")
        action, lo, hi = "flag", decl[0], decl[1]
    elif isinstance(decl, dict):
        opts = _options("range", decl)
        action, lo, hi = _action(opts), opts.get("min"), opts.get("max")
        if lo is None and hi is None:
            raise _Invalid("range needs min, max or both")
        for key, bound in (("min", lo), ("max", hi)):
            if bound is not None and not is_number(bound):
                raise _Invalid(f"{key} must be a finite number")
    else:
        raise _Invalid("range is [min, max] or an object {min, max, action}")
    if lo is not None and hi is not None and lo > hi:
        raise _Invalid(f"min {lo} is above max {hi}")
    if lo is None:
        return action, PassTest("{v} <= {0}", (hi,))
    if hi is None:
        return action, PassTest("{v} >= {0}", (lo,))
    return action, PassTest("{0} <= {v} <= {1}", (lo, hi))


def _allowed(decl: Any, ft: _FieldType) -> tuple[str, PassTest]:
    _need(ft, {"string", "enum", "int", "long", "boolean"}, "allowed", "a string, enum, int, long or boolean field")
    if isinstance(decl, dict):
        opts = _options("allowed", decl)
        action, values = _action(opts), opts.get("values")
    else:
        action, values = "flag", decl
    if not isinstance(values, list) or not values:
        raise _Invalid("allowed is a non-empty list of values, or an object {values, action}")
    if ft.base == "enum":
        strays = [v for v in values if not isinstance(v, str) or v not in ft.symbols]
        if strays:
            raise _Invalid(f"{', '.join(map(repr, strays))}: not a symbol of the enum "
                           f"(symbols: {', '.join(ft.symbols)})")
    elif ft.base == "string" and not all(isinstance(v, str) for v in values):
        raise _Invalid("the allowed values of a string field must be strings")
    elif ft.base in ("int", "long") and not all(is_int(v) for v in values):
        raise _Invalid(f"the allowed values of an {ft.base} field must be integers")
    elif ft.base == "boolean" and not all(isinstance(v, bool) for v in values):
        raise _Invalid("the allowed values of a boolean field must be true or false")
    return action, PassTest("{v} in {0}", (frozenset(values),))


def _format(decl: Any, ft: _FieldType) -> tuple[str, PassTest]:
    """A regex must match the whole value; a detector must find one match spanning the whole stripped value."""
    _need(ft, {"string"}, "format", "a string field")
    if not isinstance(decl, dict):
        raise _Invalid("format is an object {regex: R} or {detector: ENTITY}, with an optional action")
    opts = _options("format", decl)
    action = _action(opts)
    if ("regex" in opts) == ("detector" in opts):
        raise _Invalid("format needs exactly one of regex and detector")
    if "regex" in opts:
        regex = opts["regex"]
        if not isinstance(regex, str):
            raise _Invalid("regex must be a string")
        try:
            return action, PassTest("{0}({v}) is not None", (re.compile(regex).fullmatch,))
        except re.error as exc:
            raise _Invalid(f"invalid regex: {exc}") from None
    name = opts["detector"]
    entity = name.upper() if isinstance(name, str) else None
    if entity not in ENTITIES:
        raise _Invalid(f"unknown detector {name!r} (known: {', '.join(ENTITIES)})")
    if entity == "EMAIL":  # the common case, without the scan and overlap resolution of find()
        return action, PassTest("{0}({v}.strip())", (is_email,))
    find = detector([entity]).find

    def whole(value: str) -> bool:
        text = value.strip()
        found = find(text)
        return len(found) == 1 and found[0].start == 0 and found[0].end == len(text)

    return action, PassTest("{0}({v})", (whole,))


def _max_length(decl: Any, ft: _FieldType) -> tuple[str, PassTest]:
    """Characters of a string, bytes of bytes, items of an array or a map."""
    _need(ft, {"string", "bytes", "array", "map"}, "max_length", "a string, bytes, array or map field")
    if isinstance(decl, dict):
        opts = _options("max_length", decl)
        action, limit = _action(opts), opts.get("max")
    else:
        action, limit = "flag", decl
    if not is_int(limit) or limit <= 0:
        raise _Invalid("max_length is a positive integer, or an object {max, action}")
    return action, PassTest("len({v}) <= {0}", (limit,))


@dataclass(frozen=True)
class _OutlierSpec:
    threshold: float
    min_samples: int
    window: int
    floats: bool  # float/double: NaN and infinities never enter the baseline


def _outlier(decl: Any, ft: _FieldType) -> tuple[str, _OutlierSpec]:
    _need(ft, _NUMERIC, "outlier", "a numeric field (int, long, float or double)")
    if not isinstance(decl, dict):
        raise _Invalid("outlier is an object {threshold, min_samples, window, action}, every option optional")
    opts = _options("outlier", decl)
    action = _action(opts)
    threshold = opts.get("threshold", 3.5)
    if not is_number(threshold) or threshold <= 0:
        raise _Invalid("threshold must be a positive number (the modified z-score above which a value is an outlier)")
    min_samples = opts.get("min_samples", 30)
    if not is_int(min_samples) or min_samples < 1:
        raise _Invalid("min_samples must be a positive integer")
    window = opts.get("window", 1000)
    if not is_int(window) or not 1 <= window <= _MAX_WINDOW:
        raise _Invalid(f"window must be an integer in [1, {_MAX_WINDOW}]")
    if min_samples > window:
        raise _Invalid(f"min_samples {min_samples} is above window {window}: the baseline would never warm up")
    return action, _OutlierSpec(float(threshold), min_samples, window, ft.base in ("float", "double"))


class _Baseline:
    """One outlier rule's baseline in one partition: the last `window` values, in a ring buffer.

    Speed: nothing is sorted per event. The cached median, MAD (and, when the MAD is 0, the mean absolute
    deviation) are recomputed from one sorted copy of the buffer when warm-up completes and then every
    max(1, window // 8) new values, so a value is judged against a baseline up to that many values stale,
    for O(log window) amortized work per event.
    """

    __slots__ = ("floats", "mad", "meanad", "median", "min_samples", "pos", "ready", "seen", "since", "step",
                 "threshold", "values", "window")

    def __init__(self, spec: _OutlierSpec) -> None:
        self.threshold = spec.threshold
        self.min_samples = spec.min_samples
        self.window = spec.window
        self.floats = spec.floats
        self.step = max(1, spec.window // 8)
        self.values: list[float] = []
        self.pos = 0  # once full: the oldest value's slot, overwritten next
        self.seen = 0
        self.since = 0  # values added since the last refresh
        self.ready = False
        self.median = 0.0
        self.mad = 0.0
        self.meanad = 0.0

    def observe(self, x: float) -> bool:
        """Whether x is an outlier against the values before it; x then joins the baseline (an outlier too).
        (Once warm, the common case, in one branch: this runs per event.)"""
        if self.floats and not math.isfinite(x):
            return self.ready  # NaN and infinities: off the scale once warm, and kept out of the statistics
        values = self.values
        if not self.ready:
            values.append(x)  # warm-up ends (min_samples <= window) before the buffer is full
            self.seen += 1
            if self.seen >= self.min_samples:
                self.ready = True
                self._refresh()
            return False
        d = abs(x - self.median)
        if self.mad:
            outlier = _MAD_SCALE * d / self.mad > self.threshold
        elif self.meanad:
            outlier = d / (_MEANAD_SCALE * self.meanad) > self.threshold
        else:
            outlier = d != 0
        if len(values) < self.window:
            values.append(x)
        else:
            pos = self.pos
            values[pos] = x
            self.pos = pos + 1 if pos + 1 < self.window else 0
        since = self.since + 1
        if since >= self.step:
            self._refresh()  # and since = 0
        else:
            self.since = since
        return outlier

    def _refresh(self) -> None:
        ordered = sorted(self.values)
        n = len(ordered)
        median = _median(ordered)
        split = bisect.bisect_left(ordered, median)
        mad = _deviation(ordered, split, median, n // 2)
        if not n % 2:
            mad = (_deviation(ordered, split, median, n // 2 - 1) + mad) / 2
        self.median = median
        self.mad = mad
        # only the fallback (more than half the baseline equal to its median) needs the mean absolute deviation
        self.meanad = 0.0 if mad else sum(abs(v - median) for v in ordered) / n
        self.since = 0


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _deviation(ordered: list[float], split: int, median: float, rank: int) -> float:
    """The rank-th smallest (from 0) of |v - median| over `ordered`, without sorting the deviations.

    ordered[:split] < median <= ordered[split:], so the deviations are two ascending runs, median - ordered[split-1],
    median - ordered[split-2], ... and ordered[split] - median, ...; a binary search over how many the first run
    gives finds the rank-th of their union in O(log n).
    """
    na, nb = split, len(ordered) - split
    lo, hi = max(0, rank + 1 - nb), min(rank + 1, na)
    while True:
        i = (lo + hi) // 2  # taken from the left run; j from the right one
        j = rank + 1 - i
        if i < na and j > 0 and ordered[split + j - 1] - median > median - ordered[split - 1 - i]:
            lo = i + 1
        elif i > 0 and j < nb and median - ordered[split - i] > ordered[split + j] - median:
            hi = i - 1
        else:
            left = median - ordered[split - i] if i > 0 else -math.inf
            right = ordered[split + j - 1] - median if j > 0 else -math.inf
            return max(left, right)


# ---- record-level checks --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Operand:
    field: str | None  # None: a literal
    literal: Any
    kind: str  # numeric | string | enum | boolean | bytes
    symbols: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"field '{self.field}'" if self.field is not None else "the literal"


_COMPARABLE = {"int": "numeric", "long": "numeric", "float": "numeric", "double": "numeric", "string": "string",
               "enum": "enum", "boolean": "boolean", "bytes": "bytes", "fixed": "bytes"}


def _operand(side: Any, types: dict[str, _FieldType]) -> _Operand:
    if isinstance(side, str):
        ft = types.get(side)
        if ft is None:
            raise _Invalid(f"unknown field '{side}' (a check compares top-level fields)")
        kind = _COMPARABLE.get(ft.base)
        if kind is None:
            raise _Invalid(f"field '{side}' is {ft.describe()}, which a check cannot compare")
        return _Operand(side, None, kind, ft.symbols)
    if isinstance(side, dict) and set(side) == {"value"}:
        value = side["value"]
        if isinstance(value, bool):
            return _Operand(None, value, "boolean")
        if is_number(value):
            return _Operand(None, value, "numeric")
        if isinstance(value, str):
            return _Operand(None, value, "string")
        raise _Invalid("a literal {\"value\": V} holds a finite number, a string or a boolean")
    raise _Invalid("each side of a rule is a field name or a literal {\"value\": V}")


def _check(decl: dict[str, Any], types: dict[str, _FieldType]) -> tuple[str, Comparison]:
    """A check passes when either side is None (the field's own rules cover a missing value)."""
    unknown = sorted(set(decl) - set(CHECK_OPTIONS), key=str)
    if unknown:
        raise _Invalid(f"unknown option {', '.join(map(repr, unknown))} (known: {', '.join(CHECK_OPTIONS)})")
    action = _action(decl)
    rule = decl.get("rule")
    if not isinstance(rule, list) or len(rule) != 3:
        raise _Invalid("rule is [LEFT, OP, RIGHT]: each side a field name or {\"value\": V}")
    op = rule[1]
    if not isinstance(op, str) or op not in OPERATORS:
        raise _Invalid(f"operator {op!r} is not one of {', '.join(OPERATORS)}")
    left, right = _operand(rule[0], types), _operand(rule[2], types)
    if left.field is None and right.field is None:
        raise _Invalid("the rule compares two literals: name a field on at least one side")
    if op in _ORDERING:
        if "enum" in (left.kind, right.kind):
            raise _Invalid(f"{op} does not order enum symbols; compare them with == or !=")
        if left.kind != right.kind or left.kind not in ("numeric", "string"):
            raise _Invalid(f"{op} needs two numbers or two strings; {left.label} is {left.kind}, "
                           f"{right.label} is {right.kind}")
    else:
        kinds = {"enum": "string"}
        if kinds.get(left.kind, left.kind) != kinds.get(right.kind, right.kind):
            raise _Invalid(f"{op} needs two values of the same kind; {left.label} is {left.kind}, "
                           f"{right.label} is {right.kind}")
        for field, literal in ((left, right), (right, left)):
            if field.kind == "enum" and literal.field is None and literal.literal not in field.symbols:
                raise _Invalid(f"the literal is not a symbol of {field.label}'s enum "
                               f"(symbols: {', '.join(field.symbols)})")
    return action, Comparison(left, op, right)


@dataclass(frozen=True)
class Comparison:
    """A record-level check: passes when either side's field is None (the field's own rules cover a missing
    value), else when `left op right` holds."""

    left: _Operand
    op: str  # a key of OPERATORS
    right: _Operand


# ---- the checker ------------------------------------------------------------------------------------------------
class CheckerState:
    """The outlier baselines of one source partition (each partition's stream is judged on its own)."""

    __slots__ = ("baselines",)

    def __init__(self, baselines: list[_Baseline]) -> None:
        self.baselines = baselines


@dataclass(frozen=True)
class FieldRules:
    """The compiled rules of one top-level field, in evaluation order (FIELD_KINDS): indexes into the rules."""

    name: str
    required: int  # its required rule, or -1
    tests: tuple[tuple[int, PassTest], ...]  # the rules a non-null value must pass
    outlier: int  # its outlier rule, or -1
    slot: int  # that rule's baseline in a CheckerState


Failures = Callable[[dict[str, Any], list[_Baseline]], "list[int] | None"]
_OPERATOR_SOURCE = {op: op for op in OPERATORS}  # the generated code's operators: this table's text, not a schema's


class RecordChecker:
    """One schema's compiled rules. Immutable once built; what changes per event lives in a CheckerState.

    The rules run as straight-line code generated for the schema (gateway/core/quality/codegen.py): each
    field read once, the simple tests inline, no list unless a rule fails. `emit` writes that code into a
    function being generated, so the quality gate inlines it into its own per-event function.
    """

    def __init__(self, rules: tuple[RuleSpec, ...], completeness_targets: dict[str, float],
                 fields: tuple[FieldRules, ...], checks: tuple[tuple[int, Comparison], ...],
                 outliers: tuple[_OutlierSpec, ...]) -> None:
        self.rules = rules
        self.completeness_targets = completeness_targets
        self._fields = fields
        self._checks = checks
        self._outliers = outliers
        # failures(record, state.baselines): the ascending indexes of the failed rules, or None when the
        # record passes them all (the common case allocates nothing); a new list every time one fails
        source = FunctionSource("failures(record, baselines)")
        source.add(1, "failed = None")
        source.add(1, "get = record.get")
        self.emit(source)
        source.add(1, "return failed")
        self.failures: Failures = source.build("failures", "<quality rules>")

    def new_state(self) -> CheckerState:
        return CheckerState([_Baseline(spec) for spec in self._outliers])

    def check(self, record: dict[str, Any], state: CheckerState) -> list[int]:
        """Indexes into `rules` of the rules this record fails, ascending ([] when it passes them all).
        A new list every call: the caller may append to it."""
        return self.failures(record, state.baselines) or []

    def emit(self, source: FunctionSource) -> None:
        """The rules as statements of `source`'s function, whose locals `record`'s `get`, `failed` (None or
        a list) and `baselines` (a CheckerState's) are set: the rules in index order, so failures come out
        ascending, each with the test and the order of the rule's definition above (a range stays
        `lo <= v <= hi`, so NaN fails it; a check passes when a side's field is None)."""
        for f in self._fields:
            v = source.value_of(f.name)
            if f.required >= 0:
                source.add(1, f"if {v} is None:")
                source.fail(2, f.required)
                if not f.tests and f.outlier < 0:
                    continue
                source.add(1, "else:")
            else:
                source.add(1, f"if {v} is not None:")
            for rule, test in f.tests:
                expr = test.expr.format(*(source.const(c) for c in test.consts), v=v)
                source.add(2, f"if not ({expr}):")
                source.fail(3, rule)
            if f.outlier >= 0:
                source.add(2, f"if baselines[{int(f.slot)}].observe({v}):")
                source.fail(3, f.outlier)
        for rule, check in self._checks:
            op = _OPERATOR_SOURCE[check.op]
            sides = [source.value_of(side.field) if side.field is not None else source.const(side.literal)
                     for side in (check.left, check.right)]
            present = " and ".join(f"{name} is not None" for name, side in zip(sides, (check.left, check.right),
                                                                                strict=True) if side.field is not None)
            source.add(1, f"if {present} and not ({sides[0]} {op} {sides[1]}):")
            source.fail(2, rule)

    def __repr__(self) -> str:
        return f"RecordChecker({', '.join(r.name for r in self.rules)})"


_COMPILERS: dict[str, Callable[[Any, _FieldType], tuple[str, Any]]] = {
    "required": _required, "range": _range, "allowed": _allowed, "format": _format, "max_length": _max_length,
    "outlier": _outlier,
}


def compile_checker(fields: list[dict[str, Any]], checks: Any, named: dict[str, Any],
                    error: Callable[[str, str], None]) -> RecordChecker | None:
    """`fields`: the schema's raw top-level field dicts (each may hold a "quality" key).
    `checks`: the record-level "checks" value (None when absent). `named`: fastavro's parsed
    schema's "__named_schemas" (name -> definition). Every problem goes to `error(where, message)`
    where `where` is the rule's name ("amount_minor.range", or "(record).checks" / the check's name)
    and message says what is wrong; the caller prefixes the schema. Returns None when no rule is declared
    (the hot path then skips quality entirely) and also None if any error was reported."""
    problems: list[str] = []

    def bad(where: str, message: str) -> None:
        problems.append(where)
        error(where, message)

    rules: list[RuleSpec] = []
    targets: dict[str, float] = {}
    compiled_fields: list[FieldRules] = []
    outliers: list[_OutlierSpec] = []
    types: dict[str, _FieldType] = {}
    for f in fields:
        name = f["name"]
        ft = types[name] = _field_type(f.get("type"), named)
        if "quality" not in f:
            continue
        quality = f["quality"]
        if not isinstance(quality, dict):
            bad(f"{name}.quality", "quality must be an object, one key per rule "
                                   f"({', '.join(FIELD_KINDS)})")
            continue
        for key in sorted(set(quality) - set(FIELD_KINDS), key=str):
            bad(f"{name}.{key}", f"unknown quality rule '{key}' (known: {', '.join(FIELD_KINDS)})")
        required, outlier, slot = -1, -1, -1
        tests: list[tuple[int, PassTest]] = []
        for kind in FIELD_KINDS:
            if kind not in quality:
                continue
            rule_name = f"{name}.{kind}"
            try:
                action, compiled = _COMPILERS[kind](quality[kind], ft)
            except _Invalid as exc:
                bad(rule_name, str(exc))
                continue
            index = len(rules)
            rules.append(RuleSpec(rule_name, kind, action, name))
            if kind == "required":
                required = index
                if compiled is not None:
                    targets[name] = compiled
            elif kind == "outlier":
                outlier, slot = index, len(outliers)
                outliers.append(compiled)
            else:
                tests.append((index, compiled))
        if required >= 0 or tests or outlier >= 0:
            compiled_fields.append(FieldRules(name, required, tuple(tests), outlier, slot))

    compiled_checks: list[tuple[int, Comparison]] = []
    if checks is not None and not isinstance(checks, list):
        bad("(record).checks", "checks must be a list of {name, rule, action}")
    seen: set[str] = set()
    for i, decl in enumerate(checks if isinstance(checks, list) else ()):
        name = decl.get("name") if isinstance(decl, dict) else None
        if not isinstance(name, str) or not _CHECK_NAME_RE.fullmatch(name):
            bad("(record).checks", f"checks[{i}] needs a name matching ^[a-z][a-z0-9_]*$ "
                                   "(it names the rule in metrics and dead letters)")
            continue
        if name in seen:
            bad(name, "duplicate check name")
            continue
        seen.add(name)
        try:
            action, test = _check(decl, types)
        except _Invalid as exc:
            bad(name, str(exc))
            continue
        compiled_checks.append((len(rules), test))
        rules.append(RuleSpec(name, "check", action, None))

    if problems or not rules:
        return None
    return RecordChecker(tuple(rules), targets, tuple(compiled_fields), tuple(compiled_checks), tuple(outliers))
