"""shift_date: move a date or timestamp by a secret, per-subject number of whole days.

``{"shift_date": {"domain": "dates", "max_days": 30}}`` (``"min_days"`` defaults to -max_days; the
range holds at least two offsets and lies within -3650..3650). The offset of a subject is

    min_days + int.from_bytes(HMAC-SHA256(domain key, b"shift_date\\0" + subject)[:8], "big") % size

with size = max_days - min_days + 1 and `subject` the event's subject as the sanitized record
holds it (its token when the subject is tokenized). 8 bytes modulo at most 7,301 offsets: the bias
is below size / 2**64 < 4e-16, nothing worth a rejection loop. Every date and timestamp of one
subject moves by the same offset, so intervals within a subject survive (the days between two
visits, a weekday does not); without the domain's key the offsets of two subjects are unrelated.
The key is the domain's active token key: rotating it gives every subject a new offset.

Dates (int days), timestamp-millis, timestamp-micros and their local-timestamp-* forms, shifted
by whole days; the sanitized type is the field's, logical type kept. An event without a subject
is dead-lettered (``missing_subject``), as is a value whose shift would leave its Avro type's range
(``value_out_of_range``). Offsets are cached per subject (up to 100,000, cleared when full): a
dict hit costs about a tenth of the HMAC.
"""

from __future__ import annotations

from typing import Any

from gateway.core.operators.base import (
    CALL,
    BuildEnv,
    FieldContext,
    FieldPlan,
    Operator,
    OperatorError,
    Step,
    reject_unknown,
)
from gateway.core.operators.tokenize import DOMAIN_RE
from gateway.errors import RejectedEvent
from gateway.values import is_int

LIMIT_DAYS = 3650
CACHE_SUBJECTS = 100_000
DIGEST_PREFIX = b"shift_date\0"

# units per day of each logical type this operator shifts, and the range of its Avro base type
_UNITS_PER_DAY = {"date": 1, "timestamp-millis": 86_400_000, "timestamp-micros": 86_400_000_000,
                  "local-timestamp-millis": 86_400_000, "local-timestamp-micros": 86_400_000_000}
_BASE = {"date": "int", "timestamp-millis": "long", "timestamp-micros": "long",
         "local-timestamp-millis": "long", "local-timestamp-micros": "long"}
_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


class ShiftDate(Operator):
    name = "shift_date"
    needs_subject = True

    def __init__(self, domain: str, min_days: int, max_days: int, logical: str, type_: Any) -> None:
        self.domain = domain
        self.min_days = min_days
        self.max_days = max_days
        self.logical = logical
        self.type = type_

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> ShiftDate:
        reject_unknown(options, {"domain", "max_days", "min_days"}, "shift_date")
        domain = options.get("domain")
        if not isinstance(domain, str) or not DOMAIN_RE.match(domain):
            raise OperatorError("shift_date needs a key domain: {\"shift_date\": {\"domain\": \"dates\", "
                                "\"max_days\": 30}} (lowercase letters, digits, '-' and '_')")
        if "max_days" not in options:
            raise OperatorError("shift_date needs max_days (the largest shift, in days, e.g. 30)")
        max_days = options["max_days"]
        min_days = options.get("min_days", -max_days if is_int(max_days) else None)
        for key, value in (("max_days", max_days), ("min_days", min_days)):
            if not is_int(value) or not -LIMIT_DAYS <= value <= LIMIT_DAYS:
                raise OperatorError(f"shift_date {key} must be a whole number of days between -{LIMIT_DAYS} "
                                    f"and {LIMIT_DAYS}")
        if min_days > max_days:
            raise OperatorError("shift_date range is empty: min_days must not exceed max_days "
                                "(min_days defaults to -max_days)")
        if min_days == max_days:
            raise OperatorError("shift_date range holds one offset, which shifts every subject alike and hides "
                                "nothing: widen it (min_days < max_days)")
        logical = ctx.logical
        if logical not in _UNITS_PER_DAY or ctx.base != _BASE[logical]:
            raise OperatorError(f"shift_date applies to dates and timestamps (date, timestamp-millis, "
                                f"timestamp-micros, local-timestamp-millis, local-timestamp-micros), but the field "
                                f"is {ctx.type_label()}")
        t = ctx.resolved
        type_ = {k: v for k, v in t.items() if k != "privacy"}
        return cls(domain, min_days, max_days, logical, type_)

    def output_type(self, ctx: FieldContext) -> Any:
        return self.type

    def doc(self, ctx: FieldContext) -> str | None:
        what = "date" if self.logical == "date" else "time"
        return (f"{what} shifted by a secret per-subject offset of {self.min_days} to {self.max_days} days "
                f"(HMAC-SHA256, domain {self.domain})")

    @property
    def label(self) -> str:
        return f"shift_date:{self.domain}"

    @property
    def token_domains(self) -> frozenset[str]:
        return frozenset({self.domain})

    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        digest = env.tokenizer(self.domain).digest
        lo, size = self.min_days, self.max_days - self.min_days + 1
        unit = _UNITS_PER_DAY[self.logical]
        low, high = _RANGE[_BASE[self.logical]]
        path = fp.path
        from_bytes = int.from_bytes
        prefix = DIGEST_PREFIX
        cache: dict[str, int] = {}
        cached = cache.get

        def shift_date(value: int, event: Any) -> int:
            subject = event.subject
            shift = cached(subject)
            if shift is None:
                if not subject:
                    raise RejectedEvent("missing_subject", f"field '{path}' is shifted by a per-subject offset, "
                                        "but the event has no subject")
                shift = (lo + from_bytes(digest(prefix + subject.encode("utf-8"))[:8], "big") % size) * unit
                if len(cache) >= CACHE_SUBJECTS:
                    cache.clear()
                cache[subject] = shift
            out = value + shift
            if not low <= out <= high:
                raise RejectedEvent("value_out_of_range", f"field '{path}' shifted leaves the range of its "
                                    "Avro type")
            return out

        return CALL, shift_date
