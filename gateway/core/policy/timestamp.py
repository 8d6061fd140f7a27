"""The output record's timestamp: data the policy decides on, like a field.

A sanitized (or purpose) record carries a Kafka timestamp. Carrying the raw event's to the
millisecond beside a shifted date gives away the subject's secret offset (shifted date − record
timestamp, and with it every other shifted date of that subject), and beside a time truncated to
the hour it publishes the exact time the truncation hides. So the record-level ``"timestamp"``
setting says what the output timestamp is, one of a closed set (`TimestampMode`):

=====================================================  =============================================
``"keep"``                                             the raw event's timestamp, as it is
``{"truncate": UNIT}``                                 truncated to the start of its minute, hour,
                                                       day, month or year (UTC): generalize's truncation
``{"shift_date": {"domain": D, "max_days": N}}``       moved by the subject's shift_date offset under D
 (``"truncate": UNIT`` beside it: then truncated)      (shift_date's own derivation) minus ``max_days``
                                                       days, so never into the future (brokers refuse a
                                                       timestamp ahead of their clock by more than
                                                       ``message.timestamp.after.max.ms``, 1 h by default in Kafka 4.1);
                                                       a shifted field minus the timestamp is then the raw
                                                       interval plus ``max_days`` days, the same for
                                                       every subject
``"processing"``                                       replaced by processing time: the time the gateway
                                                       processed the record's batch, one value per batch
                                                       (per held window, under an enforced risk measure)
=====================================================  =============================================

Unspecified, it follows the fields, so the exact timestamp never undoes their generalization: a
policy that shifts a date or timestamp (anywhere in the record) shifts the record timestamp with the
same domain and range, one that truncates one truncates it to the coarsest unit truncated (both:
shifted, then truncated); a policy that does neither but measures the re-identification risk
publishes processing time (an exact event time would make every record a class of its own; under
``enforce`` the held window is released as one batch, so its records share one time), and any
other policy keeps it.
`gateway policy lint` warns when a written-out treatment undoes a field's (``"keep"`` beside a
shifted date, say) and says what to write.

An event without a timestamp (Kafka's -1) gets processing time whatever the treatment. The plan is
compiled once with the policy; the sanitizer builds the operators' steps (gateway.core.sanitizer).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.operators.base import FieldContext, Operator, OperatorError
from gateway.core.operators.generalize import Generalize
from gateway.core.operators.shift_date import ShiftDate

WHERE = "(record).timestamp"
PATH = "(record timestamp)"  # the path the operators' messages name (never a value)
TIMESTAMP_TYPE = {"type": "long", "logicalType": "timestamp-millis"}  # a Kafka timestamp, as an Avro type
# truncation units from finest to coarsest (generalize's; a date truncates to month or year only)
UNITS = ("minute", "hour", "day", "month", "year")


class TimestampMode(enum.Enum):
    KEEP = "keep"
    TRUNCATE = "truncate"
    SHIFT = "shift_date"
    PROCESSING = "processing"


@dataclass(frozen=True)
class TimestampPlan:
    """The output timestamp's compiled treatment: the mode, and the operators it reuses."""

    mode: TimestampMode
    shift: ShiftDate | None = None  # SHIFT: the subject's offset under its domain
    truncate: Generalize | None = None  # TRUNCATE, or SHIFT then truncated
    declared: bool = False  # written in the policy (False: the default that follows the fields)

    @property
    def unit(self) -> str | None:
        return self.truncate.form.unit if self.truncate is not None else None  # type: ignore[attr-defined]

    @property
    def label(self) -> str:
        """As `policy show` and the audit name it: keep, truncate:hour, shift_date:dates(+truncate:day), processing."""
        if self.mode is TimestampMode.SHIFT:
            assert self.shift is not None
            return f"shift_date:{self.shift.domain}" + (f"+truncate:{self.unit}" if self.unit else "")
        if self.mode is TimestampMode.TRUNCATE:
            return f"truncate:{self.unit}"
        return self.mode.value

    @property
    def quasi_identifier(self) -> bool:
        """The published timestamp follows the event's own time (exact, coarsened, or the batch it was
        processed in, which trails it by the gateway's lag), which a reader may know from elsewhere: the
        re-identification risk measure counts it as a quasi-identifier, at its published granularity. A
        shifted one is not counted: it matches no time a reader knows without the subject's offset."""
        return self.mode is not TimestampMode.SHIFT


KEEP = TimestampPlan(TimestampMode.KEEP)


def _context(schema: str) -> FieldContext:
    field = {"name": PATH, "type": TIMESTAMP_TYPE}

    def no_records(_type: Any, _path: str) -> Any:
        raise OperatorError("the record timestamp holds no records")

    return FieldContext(schema, PATH, field, False, TIMESTAMP_TYPE, TIMESTAMP_TYPE, no_records)


def _coarsest(units: Sequence[str]) -> str | None:
    return max(units, key=UNITS.index) if units else None


def _describe_shift(shift: ShiftDate) -> dict[str, Any]:
    return {"shift_date": {"domain": shift.domain, "min_days": shift.min_days, "max_days": shift.max_days}}


def compile_timestamp(declared: Any, schema: str, operators: Sequence[tuple[str, Operator]], subject: str | None,
                      risk_measured: bool, error: Callable[[str, str], None],
                      warn: Callable[[str, str], None]) -> TimestampPlan | None:
    """The record-level "timestamp" (None: not written) against the fields' compiled operators
    (path, operator), every one of the record's, nested ones too; `risk_measured`: the policy declares
    a re-identification risk measure. None after an error."""
    ctx = _context(schema)
    shifted = [(path, op) for path, op in operators if isinstance(op, ShiftDate)]
    truncated = [(path, op.form.unit) for path, op in operators  # type: ignore[attr-defined]
                 if isinstance(op, Generalize) and op.form.label.startswith("truncate:")]
    specs = {(op.domain, op.min_days, op.max_days): path for path, op in shifted}
    coarsest = _coarsest([unit for _, unit in truncated])
    if declared is None:
        if len(specs) > 1:
            error(WHERE, "fields are shifted under different domains or ranges (" + ", ".join(specs.values())
                  + "): the record timestamp can share one offset only; declare \"timestamp\" in the privacy "
                    "settings: {\"shift_date\": {...}} with one of theirs")
            return None
        shift = _shift(_describe_shift(shifted[0][1])["shift_date"], ctx, error) if shifted else None
        truncate = _truncation(coarsest, ctx, error) if coarsest else None
        if shift is not None:
            return TimestampPlan(TimestampMode.SHIFT, shift, truncate)
        if truncate is not None:
            return TimestampPlan(TimestampMode.TRUNCATE, truncate=truncate)
        return TimestampPlan(TimestampMode.PROCESSING) if risk_measured else KEEP
    plan = _declared(declared, ctx, subject, error)
    if plan is None:
        return None
    suggestion = _suggest(shifted, coarsest)
    exact = {TimestampMode.KEEP: "kept exact", TimestampMode.PROCESSING: "processing time, which trails the "
             "event's own by the gateway's lag only"}.get(plan.mode)
    if exact is not None and (shifted or truncated):
        path = (shifted or truncated)[0][0]
        what = ("shifted by a secret per-subject offset: the field minus the record timestamp gives that offset"
                if shifted else "truncated: a finer record timestamp beside it publishes what the truncation hides")
        warn(WHERE, f"the record timestamp is {exact}, but '{path}' is {what}; write \"timestamp\": {suggestion}, "
                    "or leave \"timestamp\" out to get that default")
    elif plan.mode is TimestampMode.KEEP and risk_measured:
        warn(WHERE, "the record timestamp is kept exact: the re-identification risk measure counts it as a "
                    "quasi-identifier, and to the millisecond nearly every record is a class of its own; write "
                    "\"timestamp\": {\"truncate\": \"hour\"} (or another unit), or \"processing\"")
    if plan.mode in (TimestampMode.TRUNCATE, TimestampMode.SHIFT):
        if shifted and (plan.shift is None or (plan.shift.domain, plan.shift.min_days, plan.shift.max_days)
                        not in specs):
            warn(WHERE, f"'{shifted[0][0]}' is shifted by its subject's offset, the record timestamp "
                        + ("is not" if plan.shift is None else "by another")
                        + f": their difference tells about that offset; write \"timestamp\": {suggestion}")
        if coarsest is not None and (plan.unit is None or UNITS.index(plan.unit) < UNITS.index(coarsest)):
            path = next(p for p, unit in truncated if unit == coarsest)
            warn(WHERE, f"'{path}' is truncated to the {coarsest}, the record timestamp to a finer time: it publishes "
                        f"what that truncation hides; add \"truncate\": \"{coarsest}\"")
    return plan


def _suggest(shifted: Sequence[tuple[str, ShiftDate]], coarsest: str | None) -> str:
    if shifted:
        out = _describe_shift(shifted[0][1])
        if coarsest:
            out["truncate"] = coarsest
    else:
        out = {"truncate": coarsest}
    return json.dumps(out)


def _truncation(unit: Any, ctx: FieldContext, error: Callable[[str, str], None]) -> Generalize | None:
    try:
        return Generalize.compile({"truncate": unit}, ctx)
    except OperatorError as exc:
        error(WHERE, str(exc).replace("generalize truncate on a timestamp-millis", "the record timestamp's truncate"))
        return None


def _declared(declared: Any, ctx: FieldContext, subject: str | None,
              error: Callable[[str, str], None]) -> TimestampPlan | None:
    forms = ("\"keep\", \"processing\", {\"truncate\": UNIT} or {\"shift_date\": {\"domain\": D, \"max_days\": N}} "
             "(with \"truncate\": UNIT beside it to truncate after the shift)")
    if declared in ("keep", "processing"):
        return TimestampPlan(TimestampMode(declared), declared=True)
    if not isinstance(declared, dict) or not declared or set(declared) - {"truncate", "shift_date"}:
        error(WHERE, f"must be one of {forms}")
        return None
    truncate = None
    if "truncate" in declared:
        truncate = _truncation(declared["truncate"], ctx, error)
        if truncate is None:
            return None
    if "shift_date" not in declared:
        return TimestampPlan(TimestampMode.TRUNCATE, truncate=truncate, declared=True)
    options = declared["shift_date"]
    if not isinstance(options, dict):
        error(WHERE, "shift_date's options must be an object: {\"shift_date\": {\"domain\": D, \"max_days\": N}}")
        return None
    if subject is None:
        error(WHERE, "shift_date moves the record timestamp by the subject's offset: name the subject field in the "
                     "record's privacy settings (\"subject\": FIELD)")
        return None
    shift = _shift(options, ctx, error)
    if shift is None:
        return None
    return TimestampPlan(TimestampMode.SHIFT, shift, truncate, declared=True)


def _shift(options: dict[str, Any], ctx: FieldContext, error: Callable[[str, str], None]) -> ShiftDate | None:
    """shift_date compiled for the record timestamp (a timestamp-millis: its offsets in milliseconds)."""
    try:
        return ShiftDate.compile(options, ctx)
    except OperatorError as exc:
        error(WHERE, str(exc))
        return None
