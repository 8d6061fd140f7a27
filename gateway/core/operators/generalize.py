"""generalize: publish a coarser value (a range, a band, a truncated time, a rounded position).

One operator, one form per field, chosen by its options:

==========================================  ==============================  ================================
form                                         applies to                      sanitized value
==========================================  ==============================  ================================
``{"bucket": {"width": W, "offset": O}}``    int, long, float, double        string "20-29" / "20.0-30.0"
``{"edges": [e0, e1, ...], "labels": []}``   int, long, float, double        string "<0", "0-17", ">=65"
``{"truncate": UNIT}``                       timestamp-millis/-micros, date  the same type, truncated
``{"age_band": {"width": W, "max": M}}``     date (date of birth)            string "30-39", "90+"
``{"round": D}``                             float, double                   double, D decimals
``{"geohash": P, "lat": .., "lon": ..}``     record of two doubles           string, geohash of P chars
``{"prefix": N}``                            string                          string, first N characters
==========================================  ==============================  ================================

Decisions (the action table of docs/policy/writing.md follows these):

- bucket on integers: width W (whole, >= 1) and offset O (whole, default 0) give [k*W + O,
  (k+1)*W + O - 1], labelled "lo-hi" ("-10--1" below zero). On floats the bucket is [lo, hi),
  labelled with the decimals W and O are written with (at least one, at most 6), and compared as
  the doubles nearest those decimals, so a value written 0.3 lies in "0.3-0.4" under width 0.1.
  Beyond 2**40 buckets from the offset the bucket is found exactly in decimals instead (there a
  double that cannot be told apart from a bound may be labelled with the bucket below it).
- edges must increase strictly; on an integer field they must be whole numbers and a band is
  [e_i, e_{i+1} - 1] ("0-17"); on a float field [e_i, e_{i+1}) ("0-18"). ``labels`` replaces the
  len(edges) + 1 labels, in order.
- NaN (and, for bucket, infinities) on float fields get the label "unknown"; under edges the
  infinities fall in the two open bands.
- truncate: minute, hour, day, month, year on timestamps (UTC; local-timestamp-* too, on their
  wall clock), month and year on dates. Truncating a date to a day would change nothing, so it is
  refused at compile time. Month and year need the calendar: a value outside the years 1-9999 is
  dead-lettered (``value_out_of_range``), as is a truncation that would leave the long's range.
- age_band: the age in whole years of a date of birth at the event's Kafka timestamp (event time,
  UTC); someone born on 29 February turns a year older on 1 March in other years. A birth after
  the event time gets "unknown"; ``max`` puts every age from it up in one top band "90+". Only event
  time is supported: a step sees its own value and the event, not the record's other fields, so a
  ``reference`` field would need the compiler to hand that field's value to the step. An event
  without a timestamp is dead-lettered (``missing_timestamp``), a date of birth outside the years
  1-9999 too (``value_out_of_range``).
- round: Python's round() to 0-6 decimals (the nearest double to the decimal, ties to even on the
  exact binary value); NaN and infinities pass as they are.
- geohash: the record's two double (or float) fields, "lat" and "lon" unless renamed; pygeohash's C
  encoder (the standard bisection, so the strings match other tools). A latitude outside -90..90
  or a longitude outside -180..180 (or NaN) is dead-lettered (``value_out_of_range``).
- prefix: the first N characters (N >= 1); a value of N characters or fewer is published whole,
  since its first N characters are all of it.

No message here carries a value.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any

from gateway.core.operators.base import (
    CALL,
    BuildEnv,
    FieldContext,
    FieldPlan,
    Operator,
    OperatorError,
    Step,
    type_label,
)
from gateway.errors import RejectedEvent
from gateway.values import is_number

FORMS = ("bucket", "edges", "truncate", "age_band", "round", "geohash", "prefix")
_SIBLINGS = {"edges": {"labels"}, "geohash": {"lat", "lon"}}  # options beside the form's own
UNKNOWN = "unknown"

_INTS = ("int", "long")
_FLOATS = ("float", "double")
_EPOCH = date(1970, 1, 1).toordinal()  # proleptic ordinal of 1970-01-01
MIN_DAY = date.min.toordinal() - _EPOCH  # 0001-01-01, in days since the epoch
MAX_DAY = date.max.toordinal() - _EPOCH  # 9999-12-31
LONG_MIN = -(2**63)
_DAY_MS = 86_400_000

# units per second of each timestamp logical type
_TS_UNITS = {"timestamp-millis": 1_000, "timestamp-micros": 1_000_000,
             "local-timestamp-millis": 1_000, "local-timestamp-micros": 1_000_000}
_SECONDS = {"minute": 60, "hour": 3_600, "day": 86_400}
_TS_TRUNCATE = ("minute", "hour", "day", "month", "year")
_DATE_TRUNCATE = ("month", "year")
_FLOAT_DECIMALS = 6
_LABEL_CACHE = 4_096  # float bucket labels kept per field (cleared when full)


class Generalize(Operator):
    name = "generalize"

    def __init__(self, form: _Form) -> None:
        self.form = form

    @classmethod
    def compile(cls, options: dict[str, Any], ctx: FieldContext) -> Generalize:
        forms = [k for k in FORMS if k in options]
        if len(forms) != 1:
            unknown = sorted(set(options) - set(FORMS))
            found = (f", but the options hold {len(forms)} ({', '.join(forms)})" if forms
                     else f", but the options hold none (unknown: {unknown})" if unknown else "")
            raise OperatorError(f"generalize needs exactly one form of {', '.join(FORMS)}{found}; "
                                "e.g. {\"generalize\": {\"bucket\": {\"width\": 10}}}")
        form = forms[0]
        allowed = {form} | _SIBLINGS.get(form, set())
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise OperatorError(f"unknown generalize option(s) {unknown} for the {form} form (known: "
                                f"{', '.join(sorted(allowed))})")
        compiler: Callable[[dict[str, Any], FieldContext], _Form] = _COMPILERS[form]
        return cls(compiler(options, ctx))

    def output_type(self, ctx: FieldContext) -> Any:
        return self.form.output_type(ctx)

    def doc(self, ctx: FieldContext) -> str | None:
        return self.form.doc

    @property
    def label(self) -> str:
        return f"generalize:{self.form.label}"

    def build(self, fp: FieldPlan, env: BuildEnv) -> Step:
        return CALL, self.form.step(fp.path, env)


# ---- the forms ---------------------------------------------------------------------------------
class _Form:
    label = ""
    doc = ""

    def output_type(self, ctx: FieldContext) -> Any:
        return "string"

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        raise NotImplementedError


def _same_type(ctx: FieldContext) -> Any:
    """The field's own (non-null) type, logical type kept."""
    t = ctx.resolved
    return {k: v for k, v in t.items() if k != "privacy"} if isinstance(t, dict) else t


def _number_kind(ctx: FieldContext, form: str) -> str:
    if ctx.logical is None and ctx.base in _INTS + _FLOATS:
        return ctx.base
    raise OperatorError(f"generalize {form} applies to numbers (int, long, float, double), but the field is "
                        f"{ctx.type_label()}")


def _decimals(x: int | float) -> int:
    if isinstance(x, int):
        return 0
    exponent = Decimal(repr(x)).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _out_of_range(path: str, what: str) -> RejectedEvent:
    return RejectedEvent("value_out_of_range", f"field '{path}' holds {what}, which generalize cannot handle")


class _IntBucket(_Form):
    def __init__(self, width: int, offset: int) -> None:
        self.width, self.offset = width, offset
        self.label = f"bucket:{width}" + (f"+{offset}" if offset else "")
        start = f"k*{width} + {offset % width}" if offset % width else f"k*{width}"
        self.doc = f"range of {width} as \"lo-hi\", both included: lo = {start}"

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        w, off, w1 = self.width, self.offset, self.width - 1

        def bucket_int(value: int, _event: Any) -> str:
            lo = value - (value - off) % w
            return f"{lo}-{lo + w1}"

        return bucket_int


class _FloatBucket(_Form):
    def __init__(self, width: float, offset: float) -> None:
        self.decimals = d = max(1, _decimals(width), _decimals(offset))
        self.scale = 10**d
        self.wi = int(Decimal(repr(width)) * self.scale)  # width and offset in units of 10**-d, exact
        self.oi = int(Decimal(repr(offset)) * self.scale) % self.wi  # the same buckets, offset in [0, width)
        self.label = f"bucket:{width}" + (f"+{offset}" if offset else "")
        self.doc = f"range of {width} as \"lo-hi\", lo included, hi excluded"

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        wi, oi, scale, d = self.wi, self.oi, self.scale, self.decimals
        w, off = wi / scale, oi / scale
        limit = float(2**40)  # below it floor((v - off) / w) is off by at most one bucket
        floor = math.floor
        cache: dict[int, str] = {}
        cache_get = cache.get

        def fmt(n: int) -> str:
            a = -n if n < 0 else n
            return f"{'-' if n < 0 else ''}{a // scale}.{a % scale:0{d}d}"

        def bucket_float(value: float, _event: Any) -> str:
            if value - value != 0:  # NaN or an infinity
                return UNKNOWN
            q = (value - off) / w
            if -limit < q < limit:
                k = floor(q)
                if value < (k * wi + oi) / scale:  # the bounds as the doubles nearest their decimals
                    k -= 1
                elif value >= (k * wi + wi + oi) / scale:
                    k += 1
            else:  # exact: value = num / den
                num, den = value.as_integer_ratio()
                k = (num * scale - oi * den) // (wi * den)
            label = cache_get(k)
            if label is None:
                lo = k * wi + oi
                label = fmt(lo) + "-" + fmt(lo + wi)
                if len(cache) >= _LABEL_CACHE:
                    cache.clear()
                cache[k] = label
            return label

        return bucket_float


def _compile_bucket(options: dict[str, Any], ctx: FieldContext) -> _Form:
    spec = options["bucket"]
    kind = _number_kind(ctx, "bucket")
    if not isinstance(spec, dict) or "width" not in spec:
        raise OperatorError("generalize bucket needs an object with a width: {\"bucket\": {\"width\": 10}}")
    unknown = sorted(set(spec) - {"width", "offset"})
    if unknown:
        raise OperatorError(f"unknown bucket option(s) {unknown} (known: offset, width)")
    width, offset = spec["width"], spec.get("offset", 0)
    for key, x in (("width", width), ("offset", offset)):
        if not is_number(x):
            raise OperatorError(f"bucket {key} must be a number")
    if width <= 0:
        raise OperatorError("bucket width must be greater than 0")
    if kind in _INTS:
        for key, x in (("width", width), ("offset", offset)):
            if not (isinstance(x, int) or float(x).is_integer()):
                raise OperatorError(f"bucket {key} must be a whole number on an integer field ({ctx.base})")
        return _IntBucket(int(width), int(offset))
    for key, x in (("width", width), ("offset", offset)):
        if _decimals(x) > _FLOAT_DECIMALS:
            raise OperatorError(f"bucket {key} takes at most {_FLOAT_DECIMALS} decimal places")
    return _FloatBucket(width, offset)


class _Edges(_Form):
    def __init__(self, edges: tuple[Any, ...], labels: tuple[str, ...], floats: bool, custom: bool) -> None:
        self.edges, self.labels, self.floats = edges, labels, floats
        self.label = "edges:" + ",".join(map(str, edges))
        self.doc = (f"one of {len(labels)} labelled bands between the edges " if custom
                    else "band between edges ") + ", ".join(map(str, edges)) + \
            (" (lo included, hi excluded)" if floats else "")

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        edges, labels, find = self.edges, self.labels, bisect.bisect_right
        if not self.floats:
            def band_int(value: int, _event: Any) -> str:
                return labels[find(edges, value)]

            return band_int

        def band_float(value: float, _event: Any) -> str:
            if value != value:  # NaN: every comparison is false, bisect would say "above the last edge"
                return UNKNOWN
            return labels[find(edges, value)]

        return band_float


def _compile_edges(options: dict[str, Any], ctx: FieldContext) -> _Form:
    kind = _number_kind(ctx, "edges")
    edges = options["edges"]
    if not isinstance(edges, list) or not edges or not all(is_number(e) for e in edges):
        raise OperatorError("generalize edges must be a non-empty list of numbers, e.g. [0, 18, 30, 50, 65]")
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise OperatorError("generalize edges must increase strictly")
    floats = kind in _FLOATS
    if not floats:
        if not all(isinstance(e, int) or float(e).is_integer() for e in edges):
            raise OperatorError(f"generalize edges must be whole numbers on an integer field ({ctx.base})")
        edges = [int(e) for e in edges]
    labels = options.get("labels")
    if labels is None:
        out = [f"<{edges[0]}"]
        for lo, hi in zip(edges, edges[1:], strict=False):
            out.append(f"{lo}-{hi}" if floats else f"{lo}-{hi - 1}")
        out.append(f">={edges[-1]}")
        return _Edges(tuple(edges), tuple(out), floats, custom=False)
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        raise OperatorError("generalize labels must be a list of non-empty strings")
    if len(labels) != len(edges) + 1:
        raise OperatorError(f"generalize labels must name the {len(edges) + 1} bands of {len(edges)} edges "
                            f"(below the first, between each pair, from the last up), but {len(labels)} are given")
    return _Edges(tuple(edges), tuple(labels), floats, custom=True)


class _Truncate(_Form):
    def __init__(self, unit: str, logical: str, type_: Any) -> None:
        self.unit, self.logical, self.type = unit, logical, type_
        self.label = f"truncate:{unit}"
        zone = "" if logical == "date" or logical.startswith("local-") else " (UTC)"
        self.doc = f"{'date' if logical == 'date' else 'time'} truncated to the start of its {unit}{zone}"

    def output_type(self, ctx: FieldContext) -> Any:
        return self.type

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        unit, fromordinal, epoch = self.unit, date.fromordinal, _EPOCH
        if self.logical == "date":
            def truncate_date(value: int, _event: Any) -> int:
                if not MIN_DAY <= value <= MAX_DAY:
                    raise _out_of_range(path, "a date outside the years 1-9999")
                d = fromordinal(value + epoch)
                return value - d.day + 1 if unit == "month" else date(d.year, 1, 1).toordinal() - epoch

            return truncate_date
        per_second = _TS_UNITS[self.logical]
        if unit in _SECONDS:
            step = _SECONDS[unit] * per_second

            def truncate_time(value: int, _event: Any) -> int:
                out = value - value % step
                if out < LONG_MIN:
                    raise _out_of_range(path, "a time too close to the long's minimum to truncate")
                return out

            return truncate_time
        per_day = 86_400 * per_second
        month = unit == "month"

        def truncate_calendar(value: int, _event: Any) -> int:
            day = value // per_day
            if not MIN_DAY <= day <= MAX_DAY:
                raise _out_of_range(path, "a time outside the years 1-9999")
            if month:
                start = day - fromordinal(day + epoch).day + 1
            else:
                start = date(fromordinal(day + epoch).year, 1, 1).toordinal() - epoch
            return start * per_day

        return truncate_calendar


def _compile_truncate(options: dict[str, Any], ctx: FieldContext) -> _Form:
    unit = options["truncate"]
    logical = ctx.logical
    if ctx.base == "int" and logical == "date":
        units = _DATE_TRUNCATE
    elif ctx.base == "long" and logical in _TS_UNITS:
        units = _TS_TRUNCATE
    else:
        raise OperatorError(f"generalize truncate applies to dates and timestamps (date, timestamp-millis, "
                            f"timestamp-micros, local-timestamp-millis, local-timestamp-micros), but the field is "
                            f"{ctx.type_label()}")
    if not isinstance(unit, str) or unit not in units:
        hint = (" (truncating a date to a day changes nothing: keep it, or truncate to month or year)"
                if logical == "date" and unit in _SECONDS else "")
        raise OperatorError(f"generalize truncate on a {logical} takes one of {', '.join(units)}{hint}")
    return _Truncate(unit, logical, _same_type(ctx))


class _AgeBand(_Form):
    def __init__(self, width: int, top: int | None) -> None:
        self.width, self.top = width, top
        self.label = f"age_band:{width}" + (f":{top}+" if top is not None else "")
        self.doc = (f"age in {width}-year bands at event time" + (f", {top}+ on top" if top is not None else "")
                    + "; unknown when born after the event")
        # labels of the ages below the top (or below 200 without one), computed once
        n = top if top is not None else 200
        self.bands = tuple(self.band(age) for age in range(n))

    def band(self, age: int) -> str:
        lo = age // self.width * self.width
        hi = lo + self.width - 1
        if self.top is not None:
            if age >= self.top:
                return f"{self.top}+"
            hi = min(hi, self.top - 1)
        return f"{lo}-{hi}"

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        fromordinal, epoch, bands, band = date.fromordinal, _EPOCH, self.bands, self.band
        n = len(bands)
        top_label = f"{self.top}+" if self.top is not None else None

        def age_band(value: int, event: Any) -> str:
            ts = event.timestamp_ms
            if ts is None or ts < 0:  # Kafka says -1 when a record has no timestamp
                raise RejectedEvent("missing_timestamp", f"field '{path}' is an age at event time, but the event "
                                    "has no timestamp")
            today = ts // _DAY_MS
            if not MIN_DAY <= value <= MAX_DAY:
                raise _out_of_range(path, "a date of birth outside the years 1-9999")
            if value > today:
                return UNKNOWN
            if today > MAX_DAY:
                raise _out_of_range(path, "a date of birth, and the event time lies past the year 9999")
            b = fromordinal(value + epoch)
            t = fromordinal(today + epoch)
            age = t.year - b.year - (t.month * 32 + t.day < b.month * 32 + b.day)
            if age < n:
                return bands[age]
            return top_label or band(age)

        return age_band


def _compile_age_band(options: dict[str, Any], ctx: FieldContext) -> _Form:
    spec = options["age_band"]
    if ctx.base != "int" or ctx.logical != "date":
        raise OperatorError(f"generalize age_band applies to a date of birth (int with logicalType date), but the "
                            f"field is {ctx.type_label()}")
    if not isinstance(spec, dict) or "width" not in spec:
        raise OperatorError("generalize age_band needs an object with a width: {\"age_band\": {\"width\": 10}}")
    if "reference" in spec:
        raise OperatorError("age_band option 'reference' is not supported: ages are computed at the event's "
                            "Kafka timestamp (event time)")
    unknown = sorted(set(spec) - {"width", "max"})
    if unknown:
        raise OperatorError(f"unknown age_band option(s) {unknown} (known: max, width)")
    width, top = spec["width"], spec.get("max")
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 150:
        raise OperatorError("age_band width must be a whole number of years between 1 and 150")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 150):
        raise OperatorError("age_band max must be a whole number of years between 1 and 150")
    return _AgeBand(width, top)


class _Round(_Form):
    def __init__(self, decimals: int) -> None:
        self.decimals = decimals
        self.label = f"round:{decimals}"
        self.doc = f"rounded to {decimals} decimal{'s' if decimals != 1 else ''}"

    def output_type(self, ctx: FieldContext) -> Any:
        return "double"

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        d = self.decimals

        def round_value(value: float, _event: Any) -> float:
            return round(value, d)

        return round_value


def _compile_round(options: dict[str, Any], ctx: FieldContext) -> _Form:
    decimals = options["round"]
    if ctx.base not in _FLOATS or ctx.logical is not None:
        raise OperatorError(f"generalize round applies to float and double fields, but the field is "
                            f"{ctx.type_label()}; use bucket for integers")
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 6:
        raise OperatorError("generalize round takes a whole number of decimals between 0 and 6")
    return _Round(decimals)


class _Geohash(_Form):
    def __init__(self, precision: int, lat: str, lon: str) -> None:
        self.precision, self.lat, self.lon = precision, lat, lon
        self.label = f"geohash:{precision}"
        self.doc = f"geohash of {precision} character{'s' if precision != 1 else ''} of ({lat}, {lon})"

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        from pygeohash import encode  # the C codec; imported when a plan uses it

        p, lat_name, lon_name = self.precision, self.lat, self.lon

        def geohash(value: dict[str, Any], _event: Any) -> str:
            lat = value[lat_name]
            lon = value[lon_name]
            if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # NaN fails too
                raise _out_of_range(path, "a latitude outside -90..90 or a longitude outside -180..180")
            return encode(lat, lon, p)

        return geohash


def _compile_geohash(options: dict[str, Any], ctx: FieldContext) -> _Form:
    precision = options["geohash"]
    if isinstance(precision, bool) or not isinstance(precision, int) or not 1 <= precision <= 12:
        raise OperatorError("generalize geohash takes a precision between 1 and 12 characters")
    names = {}
    for key in ("lat", "lon"):
        name = options.get(key, key)
        if not isinstance(name, str) or not name:
            raise OperatorError(f"generalize geohash option '{key}' must name a field of the record")
        names[key] = name
    if names["lat"] == names["lon"]:
        raise OperatorError("generalize geohash needs two different fields for 'lat' and 'lon'")
    try:
        import pygeohash  # noqa: F401 - the C encoder the step uses
    except ImportError:
        raise OperatorError("generalize geohash needs the pygeohash package (pygeohash==3.5.1)") from None
    if ctx.base != "record":
        raise OperatorError(f"generalize geohash applies to a record holding '{names['lat']}' and '{names['lon']}' "
                            f"(double), but the field is {ctx.type_label()}")
    fields = {f["name"]: f["type"] for f in ctx.resolved["fields"]}
    for key, name in names.items():
        if name not in fields:
            what = "latitude" if key == "lat" else "longitude"
            hint = f" (set \"{key}\" to the field holding the {what})" if key not in options else ""
            raise OperatorError(f"generalize geohash: the record has no field '{name}'{hint}")
        t = fields[name]
        base = t.get("type") if isinstance(t, dict) and not t.get("logicalType") else t
        if base not in _FLOATS:
            raise OperatorError(f"generalize geohash: field '{name}' of the record must be a double (or float), "
                                f"but it is {type_label(t)}")
    return _Geohash(precision, names["lat"], names["lon"])


class _Prefix(_Form):
    def __init__(self, n: int) -> None:
        self.n = n
        self.label = f"prefix:{n}"
        self.doc = f"first {n} character{'s' if n != 1 else ''}"

    def step(self, path: str, env: BuildEnv) -> Callable[[Any, Any], Any]:
        n, chars, check = self.n, env.max_str_chars, env.string_check(path)

        def prefix(value: str, _event: Any) -> str:
            if len(value) > chars:
                check(value)  # an oversized field is refused as a kept one would be
            return value[:n]

        return prefix


def _compile_prefix(options: dict[str, Any], ctx: FieldContext) -> _Form:
    n = options["prefix"]
    if ctx.base != "string":
        raise OperatorError(f"generalize prefix applies to strings, but the field is {ctx.type_label()}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise OperatorError("generalize prefix takes a number of characters of at least 1")
    return _Prefix(n)


_COMPILERS: dict[str, Callable[[dict[str, Any], FieldContext], _Form]] = {
    "bucket": _compile_bucket, "edges": _compile_edges, "truncate": _compile_truncate,
    "age_band": _compile_age_band, "round": _compile_round, "geohash": _compile_geohash,
    "prefix": _compile_prefix,
}
