"""PII discovery over a sample of decoded events (`gateway scan`): pure, no Kafka, no network.

A `Scanner` is compiled once from a raw schema: a walk of the schema that yields one visitor per
field path, in the policy's path syntax (``billing.city``, ``items[].sku``, ``tags{}``; a union's
branches share their field's path). Each decoded event is then walked by those visitors. Every
string value goes to the `FieldStats` of its path, which keeps counts only:

- a keyed 64-bit hash of the value (Python's ``hash``: SipHash under a per-process random key) as
  the cardinality estimate, and as the key of a memo of what the detectors found in that value, so
  a repeated value (countries, categories, codes) is inspected once. The value itself is never
  kept, printed, logged or put into an error message;
- per distinct value: the entity types found, whether one entity is the whole value, the number of
  words and whether it has a digit (the identifier heuristics). The detectors see the first
  MAX_INSPECTED distinct values of each field (with all their repeats); later new values count for
  cardinality and the heuristics only, which bounds a large sample's cost by its fields, not its size.

`Scanner.fields()` turns the statistics into one `FieldReport` per path: match rates per entity,
identifier and free-text heuristics, the suggested action (rules in `suggest`) and what
``--write-policy`` writes on the field that owns the path (rules in `Scanner.fields`).
`Scanner.report()` is the JSON form (its docstring documents the shape) and
`Scanner.annotated_schema()` the schema with the suggestions written in.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core.avro import PRIMITIVES, fullname, lookup
from gateway.core.codec.raw import SchemaFile
from gateway.errors import PolicyError

REPORT_VERSION = 1
MOSTLY = 0.8  # a whole-value entity in at least this share of the values decides the action
IDENTIFIER_DISTINCT = 0.9  # distinct ratio of identifier-like fields (uuids, event ids)
MIN_VALUES = 10  # fewer non-null values than this: no identifier verdict
FREE_TEXT_WORDS = 3.0  # mean words per value at which a field is free text
FREE_TEXT_CHARS = 40.0  # ... or mean length, when most values have several words
MAX_IDENTIFIER_CHARS = 64.0
MAX_DISTINCT = 200_000  # distinct hashes kept per field; beyond, `distinct` is a lower bound
MAX_INSPECTED = 2_000  # distinct values per field the detectors see; the rates are over their occurrences

# the annotation per entity when the entity is (mostly) the whole value
ENTITY_ACTIONS: dict[str, Any] = {
    "EMAIL": {"tokenize": {"domain": "email", "normalizer": "email"}},
    "PHONE": {"tokenize": {"domain": "phone", "normalizer": "phone"}},
    "CARD": {"mask": {"keep_last": 4}},
    "IBAN": "encrypt",
    "NATIONAL_ID": "encrypt",
    "IP": {"tokenize": {"domain": "ip"}},
    "URL_CREDENTIALS": {"redact": {}},
}
REDACT: dict[str, Any] = {"redact": {}}
KEEP = "keep"
ENCRYPT = "encrypt"

_WORDS = re.compile(r"\S+")
_DIGIT = re.compile(r"\d")
_DOMAIN_CHARS = re.compile(r"[^a-z0-9_-]+")
_ID_SUFFIX = re.compile(r"(?:[_-]?(?:id|uuid|key|ref|number|no))$")
_ID_NAME = re.compile(r"(?:^|[_-])(?:id|uuid|guid|key|ref)$|(?:Id|ID|Uuid|Key)$")


class DetectorLike(Protocol):
    """What the scanner needs of `gateway.core.detectors.Detector`: matches with entity, start and end."""

    def find(self, text: str) -> list[Any]: ...


# ---- per-field statistics (the hot path) -------------------------------------------------------
# What the detectors and heuristics found in one distinct value: (entities, or None when the
# detectors did not see it, whole-value entity or None, words, has a digit). Interned in
# `_OUTCOMES`, so counting them is a dict increment.
Outcome = tuple[tuple[str, ...] | None, str | None, int, bool]
_OUTCOMES: dict[Outcome, Outcome] = {}


def _outcome(detector: DetectorLike, value: str) -> Outcome:
    matches = detector.find(value)
    entities = tuple(sorted({m.entity for m in matches})) if matches else ()
    whole = None
    if len(matches) == 1:
        m = matches[0]
        lead = len(value) - len(value.lstrip())
        trail = len(value) - len(value.rstrip())
        if m.start <= lead and m.end >= len(value) - trail:
            whole = m.entity
    return _intern(entities, whole, value)


def _shape(value: str) -> Outcome:
    """The heuristics' part only: for distinct values past MAX_INSPECTED."""
    return _intern(None, None, value)


def _intern(entities: tuple[str, ...] | None, whole: str | None, value: str) -> Outcome:
    words = len(_WORDS.findall(value)) if len(value) < 4096 else value.count(" ") + 1
    key = (entities, whole, words, _DIGIT.search(value) is not None)
    return _OUTCOMES.setdefault(key, key)


@dataclass
class FieldStats:
    """Counts for one field path. String values go to `add`, other non-null values to `other`."""

    path: str
    type: str  # the leaf's Avro type label ("string", "long", "[null, string]", "enum", ...)
    owner: str  # path of the schema field whose annotation covers this path
    string: bool  # some branch of the type is a string
    detector: DetectorLike | None = None
    values: int = 0  # non-null string values
    others: int = 0  # non-null values that are not strings
    nulls: int = 0
    chars: int = 0
    capped: bool = False
    max_inspected: int = MAX_INSPECTED
    inspected_distinct: int = 0
    memo: dict[int, Outcome] = field(default_factory=dict)  # value hash -> outcome
    counts: dict[Outcome, int] = field(default_factory=dict)

    def add(self, value: str) -> None:
        self.values += 1
        self.chars += len(value)
        key = hash(value)
        outcome = self.memo.get(key)
        if outcome is None:
            if self.inspected_distinct < self.max_inspected:
                assert self.detector is not None
                outcome = _outcome(self.detector, value)
                self.inspected_distinct += 1
            else:
                outcome = _shape(value)
            if len(self.memo) < MAX_DISTINCT:
                self.memo[key] = outcome
            else:
                self.capped = True
        counts = self.counts
        counts[outcome] = counts.get(outcome, 0) + 1

    def visitor(self) -> Callable[[Any], None]:
        add = self.add

        def visit(value: Any) -> None:
            if value is None:
                self.nulls += 1
            elif type(value) is str:
                add(value)
            else:
                self.others += 1
        return visit


# ---- the report per path -----------------------------------------------------------------------
@dataclass(frozen=True)
class FieldReport:
    path: str
    field: str  # the schema field that carries the annotation (differs for tags[], m{}, ...)
    type: str
    values: int  # non-null values (strings and others)
    nulls: int
    inspected: int  # string values the detectors saw (repeats included); the rates' denominator
    entities: dict[str, dict[str, float]]  # entity -> {"rate": r, "whole": w}
    distinct: int | None  # strings only
    distinct_capped: bool
    distinct_ratio: float | None
    mean_length: float | None
    identifier_like: bool
    free_text: bool
    pii: bool
    current: Any  # the field's annotation in the input schema (None: unannotated)
    suggested: Any  # the suggestion for this path by the rules
    policy: Any  # what --write-policy writes on `field` (None: inside a container not kept)
    change: str  # added | replaced | kept | covered
    covered_by: str | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "field": self.field, "type": self.type, "values": self.values,
            "nulls": self.nulls, "inspected": self.inspected, "entities": self.entities, "distinct": self.distinct,
            "distinct_capped": self.distinct_capped, "distinct_ratio": self.distinct_ratio,
            "mean_length": self.mean_length, "identifier_like": self.identifier_like,
            "free_text": self.free_text, "pii": self.pii, "current": self.current,
            "suggested": self.suggested, "policy": self.policy, "change": self.change,
            "covered_by": self.covered_by, "reason": self.reason,
        }


@dataclass(frozen=True)
class Verdict:
    inspected: int
    entities: dict[str, dict[str, float]]
    distinct_ratio: float | None
    mean_length: float | None
    identifier_like: bool
    free_text: bool
    suggested: Any
    reason: str


def token_domain(path: str) -> str:
    """A token domain from a field path: its last name, lowercased, without an id suffix
    (``user_id`` -> ``user``, ``items[].orderId`` -> ``order``), valid for the policy."""
    name = re.split(r"[.\[\]{}]+", path.strip(".[]{}"))[-1] if path.strip(".[]{}") else ""
    name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    base = _ID_SUFFIX.sub("", name) or name
    domain = _DOMAIN_CHARS.sub("_", base).strip("_-")[:64]
    return domain if domain and domain[0].isalnum() else "id"


def judge(stats: FieldStats) -> Verdict:
    """Rates, heuristics and the suggestion for one path (see `suggest` for the rules)."""
    n = stats.values
    if not stats.string:
        return Verdict(0, {}, None, None, False, False, KEEP, "not a string: no detection")
    if n == 0:
        return Verdict(0, {}, None, None, False, False, KEEP if stats.others else "drop",
                       "no string values in the sample" + ("" if stats.others else ": nothing to judge, drop"))
    hits: dict[str, int] = {}
    whole: dict[str, int] = {}
    words = single = digits = inspected = 0
    for (entities, whole_entity, n_words, has_digit), count in stats.counts.items():
        if entities is not None:
            inspected += count
            for entity in entities:
                hits[entity] = hits.get(entity, 0) + count
        if whole_entity is not None:
            whole[whole_entity] = whole.get(whole_entity, 0) + count
        words += n_words * count
        if n_words <= 1:
            single += count
        if has_digit:
            digits += count
    seen = inspected or 1
    rates = {e: {"rate": round(hits[e] / seen, 4), "whole": round(whole.get(e, 0) / seen, 4)} for e in sorted(hits)}
    distinct = len(stats.memo)
    ratio = distinct / n
    mean_len = stats.chars / n
    mean_words = words / n
    free_text = mean_words >= FREE_TEXT_WORDS or (mean_len >= FREE_TEXT_CHARS and single / n <= 0.5)
    short_token = single / n >= 0.95 and 1.0 <= mean_len <= MAX_IDENTIFIER_CHARS
    named_id = bool(_ID_NAME.search(stats.path.rstrip("[]{}").rsplit(".", 1)[-1]))
    identifier = n >= MIN_VALUES and short_token and not free_text and (
        ratio >= IDENTIFIER_DISTINCT
        or (named_id and distinct >= MIN_VALUES)
        or (distinct >= 50 and ratio >= 0.05 and digits / n >= 0.9 and mean_len >= 4))
    suggested, reason = suggest(rates, free_text, identifier, stats.path, mean_words, ratio, mean_len)
    return Verdict(inspected, rates, round(ratio, 4), round(mean_len, 1), identifier, free_text, suggested, reason)


def suggest(rates: dict[str, dict[str, float]], free_text: bool, identifier: bool, path: str,
            mean_words: float = 0.0, ratio: float = 0.0, mean_len: float = 0.0) -> tuple[Any, str]:
    """The suggested annotation for a string path, and why (never a value):

    1. one entity is the whole value in at least MOSTLY of the values: that entity's action
       (EMAIL, PHONE: tokenize with the normalizer; CARD: mask keep_last 4; IBAN, NATIONAL_ID:
       encrypt; IP: tokenize domain ip; URL_CREDENTIALS: redact);
    2. free text (several words per value, or long values) with any entity found: redact;
    3. identifier-like (short, one token, high distinct ratio or an id-like name): tokenize under a
       domain named after the field (a token hides any entity inside too);
    4. any entity found (short strings holding one among other text): redact;
    5. otherwise keep.
    """
    dominant = max(rates, key=lambda e: (rates[e]["whole"], rates[e]["rate"]), default=None)
    if dominant is not None and rates[dominant]["whole"] >= MOSTLY:
        return (copy.deepcopy(ENTITY_ACTIONS.get(dominant, ENCRYPT)),
                f"{dominant} is the whole value in {rates[dominant]['whole']:.0%} of values")
    found = ", ".join(f"{e} in {r['rate']:.0%}" for e, r in rates.items())
    if free_text and rates:
        return copy.deepcopy(REDACT), f"free text (mean {mean_words:.1f} words) with {found} of values"
    if identifier:
        extra = f"; {found} of values" if rates else ""
        return ({"tokenize": {"domain": token_domain(path)}},
                f"identifier-like ({ratio:.0%} distinct, one token, mean {mean_len:.0f} chars){extra}")
    if rates:
        return copy.deepcopy(REDACT), f"{found} of values (not the whole value)"
    return KEEP, "no PII found, not identifier-like"


def is_keep(annotation: Any) -> bool:
    return annotation == KEEP or (isinstance(annotation, dict) and list(annotation) == [KEEP])


def merge(a: Any, b: Any) -> Any:
    """One annotation for a field that two paths (or two uses of a named type) suggest for."""
    if a == b or is_keep(b):
        return a
    if is_keep(a):
        return b
    return ENCRYPT


# ---- the schema walk ---------------------------------------------------------------------------
@dataclass
class _Owner:
    """A schema field (a dict of the schema copy) and the paths it covers."""

    path: str
    node: dict[str, Any]  # the field's dict in the schema copy (annotations are written here)
    string_only: bool  # the type without null is exactly string: string actions apply
    container: bool  # its type holds records (a kept container descends into them)
    covered_by: str | None  # an enclosing field annotated other than keep
    stats: list[FieldStats] = field(default_factory=list)


class Scanner:
    """Per-field statistics over decoded events of one schema, and what to annotate."""

    def __init__(self, schema: SchemaFile, detector: DetectorLike | None = None) -> None:
        if detector is None:
            from gateway.core.detectors import detector as make_detector

            detector = make_detector()
        self.schema = schema
        self.detector = detector
        self.raw = copy.deepcopy(schema.raw)  # annotated in place by annotated_schema()
        self.events = 0
        self.undecodable: dict[str, int] = {}
        self._named: dict[str, dict[str, Any]] = {}
        self._stack: set[str] = set()
        self._owners: list[_Owner] = []
        self._stats: dict[str, FieldStats] = {}
        self._visit = self._record(self.raw, "", None, self._namespace(self.raw, None))

    # -- feeding
    def add(self, record: dict[str, Any]) -> None:
        """Walk one decoded event (as `gateway.core.codec.raw.EventDecoder.decode` returns it)."""
        self.events += 1
        self._visit(record)

    def add_all(self, records: Iterable[dict[str, Any]]) -> None:
        visit = self._visit
        n = 0
        for record in records:
            visit(record)
            n += 1
        self.events += n

    def failed(self, reason: str) -> None:
        """Count an event that did not decode, by its reason code (never its content)."""
        self.undecodable[reason] = self.undecodable.get(reason, 0) + 1

    # -- compile: one visitor per node
    @staticmethod
    def _namespace(node: dict[str, Any], enclosing: str | None) -> str | None:
        name = node.get("name", "")
        if "." in name:
            return name.rsplit(".", 1)[0]
        return node.get("namespace", enclosing)

    def _define(self, node: dict[str, Any], namespace: str | None) -> str:
        name = node["name"]
        full = fullname(name, node.get("namespace", namespace))
        self._named.setdefault(full, node)
        return full

    def _stats_for(self, path: str, label: str, owner: _Owner, string: bool) -> FieldStats:
        stats = self._stats.get(path)
        if stats is None:
            stats = FieldStats(path, label, owner.path, string, self.detector)
            self._stats[path] = stats
            owner.stats.append(stats)
        else:
            stats.string = stats.string or string
        return stats

    def _record(self, node: dict[str, Any], prefix: str, covered_by: str | None,
                namespace: str | None) -> Callable[[Any], None]:
        full = self._define(node, namespace)
        if full in self._stack:
            raise PolicyError(f"{self.schema.path}: recursive record type '{full}' cannot be scanned")
        self._stack.add(full)
        inner_ns = self._namespace(node, namespace)
        visitors: list[tuple[str, Callable[[Any], None]]] = []
        for f in node["fields"]:
            path = prefix + f["name"]
            ftype = f["type"]
            non_null = [t for t in ftype if t != "null"] if isinstance(ftype, list) else [ftype]
            owner = _Owner(path, f, len(non_null) == 1 and self._base(non_null[0], inner_ns) == "string",
                           self._holds_record(ftype, inner_ns), covered_by)
            self._owners.append(owner)
            inner_cover = covered_by
            if inner_cover is None and f.get("privacy") is not None and not is_keep(f.get("privacy")):
                inner_cover = path
            visitors.append((f["name"], self._type(ftype, path, owner, inner_cover, inner_ns)))
        self._stack.discard(full)

        def visit(record: Any) -> None:
            if type(record) is not dict:
                return
            get = record.get
            for name, fn in visitors:
                fn(get(name))
        return visit

    def _resolve(self, t: Any, namespace: str | None) -> Any:
        if isinstance(t, str) and t not in PRIMITIVES:
            named = lookup(t, self._named, namespace)
            if named is None:
                raise PolicyError(f"{self.schema.path}: unknown type '{t}'")
            return named
        return t

    def _base(self, t: Any, namespace: str | None) -> str:
        t = self._resolve(t, namespace)
        if isinstance(t, dict):
            return str(t.get("type"))
        if isinstance(t, list):
            return "union"
        return str(t)

    def _holds_record(self, t: Any, namespace: str | None, depth: int = 0) -> bool:
        if depth > 32:
            return False
        if isinstance(t, list):
            return any(self._holds_record(b, namespace, depth + 1) for b in t)
        if isinstance(t, str) and t not in PRIMITIVES:
            try:
                t = self._resolve(t, namespace)
            except PolicyError:
                return False
        if isinstance(t, dict):
            kind = t.get("type")
            if kind == "record":
                return True
            if kind == "array":
                return self._holds_record(t["items"], namespace, depth + 1)
            if kind == "map":
                return self._holds_record(t["values"], namespace, depth + 1)
        return False

    def _type(self, t: Any, path: str, owner: _Owner, covered_by: str | None,
              namespace: str | None) -> Callable[[Any], None]:
        if isinstance(t, list):
            return self._union(t, path, owner, covered_by, namespace)
        resolved = self._resolve(t, namespace)
        if isinstance(resolved, str):
            return self._stats_for(path, resolved, owner, resolved == "string").visitor()
        kind = resolved.get("type")
        if kind == "record":
            return self._record(resolved, path + ".", covered_by, namespace)
        if kind in ("enum", "fixed"):
            if resolved is t:
                self._define(resolved, namespace)
            return self._stats_for(path, str(kind), owner, False).visitor()
        if kind == "array":
            items = self._type(resolved["items"], path + "[]", owner, covered_by, namespace)

            def visit_array(value: Any) -> None:
                if type(value) is list:
                    for item in value:
                        items(item)
            return visit_array
        if kind == "map":
            values = self._type(resolved["values"], path + "{}", owner, covered_by, namespace)

            def visit_map(value: Any) -> None:
                if type(value) is dict:
                    for item in value.values():
                        values(item)
            return visit_map
        if isinstance(kind, str | list | dict) and kind != resolved:  # {"type": "string", "logicalType": ...}
            return self._type(kind, path, owner, covered_by, namespace)
        raise PolicyError(f"{self.schema.path}: field '{path}' has a type the scanner does not know")

    def _union(self, branches: list[Any], path: str, owner: _Owner, covered_by: str | None,
               namespace: str | None) -> Callable[[Any], None]:
        by_type: dict[type, Callable[[Any], None]] = {}
        leaf: FieldStats | None = None
        label = "[" + ", ".join(b if isinstance(b, str) else str(b.get("type")) for b in branches) + "]"
        for branch in branches:
            if branch == "null":
                continue
            base = self._base(branch, namespace)
            if base in PRIMITIVES or base in ("enum", "fixed"):
                if isinstance(branch, dict) and base in ("enum", "fixed"):
                    self._define(branch, namespace)
                leaf = self._stats_for(path, label, owner, base == "string" or leaf is not None and leaf.string)
                continue
            fn = self._type(branch, path, owner, covered_by, namespace)
            if base in ("record", "map"):
                by_type.setdefault(dict, fn)
            elif base == "array":
                by_type.setdefault(list, fn)
        leaf_visit = leaf.visitor() if leaf is not None else None
        stats = leaf

        def visit(value: Any) -> None:
            if value is None:
                if stats is not None:
                    stats.nulls += 1
                return
            fn = by_type.get(type(value))
            if fn is not None:
                fn(value)
            elif leaf_visit is not None:
                leaf_visit(value)
        return visit

    # -- results
    def fields(self) -> list[FieldReport]:
        """One report per path, in schema order. What --write-policy writes on each owner field:

        - inside a field annotated other than keep (encrypt, drop, ...): nothing ("covered");
        - a field holding records (record, array or map of records): its annotation if it has
          one, else "keep" so the gateway descends into the nested fields, which get their own;
        - an unannotated field: the suggestion ("added"); a string action (tokenize, mask,
          redact) on a field that is not exactly a string (array or map of strings, a union with
          other types) becomes "encrypt", which takes any type;
        - a field annotated "keep" in which the scan found PII: the suggestion ("replaced");
        - any other annotated field: its annotation ("kept").
        """
        verdicts = {path: judge(stats) for path, stats in self._stats.items()}
        settings = self.raw.get("privacy") if isinstance(self.raw.get("privacy"), dict) else {}
        pinned = {settings.get("subject"), settings.get("event_id")} - {None}
        written: dict[str, Any] = {}
        why: dict[str, str] = {}
        for owner in self._owners:
            current = owner.node.get("privacy")
            if owner.covered_by is not None:
                continue
            suggestion: Any = None
            for stats in owner.stats:
                v = verdicts[stats.path]
                suggestion = v.suggested if suggestion is None else merge(suggestion, v.suggested)
            pii = any(verdicts[s.path].entities for s in owner.stats)
            if suggestion is None:
                suggestion = KEEP  # a container of records only: descend
            if not is_keep(suggestion) and not owner.string_only and suggestion != "drop":
                suggestion, why[owner.path] = ENCRYPT, "; string actions need a plain string field: encrypt"
            if owner.path in pinned and not (is_keep(suggestion) or _is_tokenize(suggestion)):
                suggestion = {"tokenize": {"domain": token_domain(owner.path)}}
                why[owner.path] = "; the subject/event_id field must be kept or tokenized"
            if current is None:
                written[owner.path] = suggestion
            elif is_keep(current) and pii and not owner.container:
                written[owner.path] = suggestion
            else:
                written[owner.path] = current
        # a named type used at several places: its fields are annotated once, for all uses
        by_node: dict[int, Any] = {}
        for owner in self._owners:
            if owner.path in written:
                key = id(owner.node)
                by_node[key] = written[owner.path] if key not in by_node else merge(by_node[key],
                                                                                  written[owner.path])
        reports: list[FieldReport] = []
        for owner in self._owners:
            current = owner.node.get("privacy")
            policy = by_node.get(id(owner.node)) if owner.covered_by is None else None
            if owner.covered_by is not None:
                change = "covered"
            elif current is None:
                change = "added"
            elif policy != current:
                change = "replaced"
            else:
                change = "kept"
            for stats in owner.stats:
                v = verdicts[stats.path]
                reason = v.reason + why.get(owner.path, "")
                if change == "replaced":
                    reason += "; annotated keep, but PII was found: replaced"
                elif change == "covered":
                    reason += f"; inside '{owner.covered_by}', annotated {_label(self._current(owner.covered_by))}"
                reports.append(FieldReport(
                    path=stats.path, field=owner.path, type=stats.type, values=stats.values + stats.others,
                    nulls=stats.nulls, inspected=v.inspected, entities=v.entities,
                    distinct=len(stats.memo) if stats.string else None,
                    distinct_capped=stats.capped, distinct_ratio=v.distinct_ratio, mean_length=v.mean_length,
                    identifier_like=v.identifier_like, free_text=v.free_text, pii=bool(v.entities),
                    current=copy.deepcopy(current), suggested=v.suggested, policy=copy.deepcopy(policy),
                    change=change, covered_by=owner.covered_by, reason=reason))
        self._written = by_node
        return reports

    def _current(self, path: str) -> Any:
        return next((o.node.get("privacy") for o in self._owners if o.path == path), None)

    def annotated_schema(self, topic: str) -> dict[str, Any]:
        """The input schema with every field annotated as `fields` decides; the record-level
        "privacy" block kept (or a minimal one for `topic`). The subject is never invented."""
        self.fields()
        out = copy.deepcopy(self.raw)
        # the copy shares no dicts with self.raw: map the owners' nodes through a parallel walk
        originals = {id(o.node): o for o in self._owners}
        _annotate(self.raw, out, originals, self._written)
        settings = out.get("privacy")
        if not isinstance(settings, dict):
            out["privacy"] = {"sanitized_topic": f"{topic}.sanitized", "source_topic": topic}
        elif "source_topic" not in settings and self.schema.fullname != topic:
            settings["source_topic"] = topic
        return out

    def report(self, topic: str, sample: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON report. Keys are stable; no value of any event appears in it.

        ``{"version": 1, "topic": T, "schema": FULLNAME, "schema_file": PATH,
           "sample": {"events": decoded events, "undecodable": n, "undecodable_reasons": {code: n},
                      ...the caller's keys: "from", "requested", "read", "partitions"},
           "summary": {"fields": n, "pii_fields": n, "added": n, "replaced": n, "kept": n, "covered": n},
           "fields": [{"path": "billing.city", "field": "billing.city", "type": "string",
                       "values": non-null values, "nulls": n,
                       "inspected": string values the detectors saw (the first MAX_INSPECTED
                                    distinct values of the field, with their repeats),
                       "entities": {"EMAIL": {"rate": share of inspected values with a match,
                                    "whole": share where the match is the whole value}},
                       "distinct": distinct values (strings; null otherwise), "distinct_capped": bool,
                       "distinct_ratio": distinct / values, "mean_length": chars,
                       "identifier_like": bool, "free_text": bool, "pii": bool,
                       "current": annotation in the input schema or null,
                       "suggested": annotation the rules suggest for this path,
                       "policy": annotation --write-policy writes on "field" (null when covered),
                       "change": "added" | "replaced" | "kept" | "covered",
                       "covered_by": enclosing field annotated other than keep, or null,
                       "reason": why (counts and rates only)}, ...]}``
        """
        rows = self.fields()
        undecodable = sum(self.undecodable.values())
        summary = {"fields": len(rows), "pii_fields": sum(r.pii for r in rows)}
        for change in ("added", "replaced", "kept", "covered"):
            summary[change] = len({r.field for r in rows if r.change == change})
        return {
            "version": REPORT_VERSION,
            "topic": topic,
            "schema": self.schema.fullname,
            "schema_file": str(self.schema.path),
            "sample": {**(sample or {}), "events": self.events, "undecodable": undecodable,
                       "undecodable_reasons": dict(sorted(self.undecodable.items()))},
            "summary": summary,
            "fields": [r.as_json() for r in rows],
        }


def _is_tokenize(annotation: Any) -> bool:
    return isinstance(annotation, dict) and list(annotation) == ["tokenize"]


def _label(annotation: Any) -> str:
    if annotation is None:
        return "(none)"
    if isinstance(annotation, str):
        return annotation
    import json

    return json.dumps(annotation, sort_keys=True, separators=(",", ":"))


def annotation_label(annotation: Any) -> str:
    """Compact one-line form of an annotation for the table: keep, encrypt, tokenize:email/email, ..."""
    if annotation is None:
        return "-"
    if isinstance(annotation, str):
        return annotation
    if isinstance(annotation, dict) and len(annotation) == 1:
        (action, options), = annotation.items()
        if not options:
            return str(action)
        if action == "tokenize" and isinstance(options, dict):
            norm = options.get("normalizer")
            return f"tokenize:{options.get('domain')}" + (f" ({norm})" if norm else "")
        return f"{action} {_label(options)}"
    return _label(annotation)


def _annotate(original: Any, copy_: Any, owners: dict[int, _Owner], written: dict[int, Any]) -> None:
    """Walk `original` and its deep copy together; set "privacy" on the copy's field dicts."""
    if isinstance(original, dict):
        if id(original) in owners and id(original) in written:
            copy_["privacy"] = copy.deepcopy(written[id(original)])
        for key, value in original.items():
            if key != "privacy" and isinstance(value, dict | list):
                _annotate(value, copy_[key], owners, written)
    elif isinstance(original, list):
        for a, b in zip(original, copy_, strict=True):
            if isinstance(a, dict | list):
                _annotate(a, b, owners, written)
