"""The figures of `gateway report`, from the records of the gateway's topics (pure: no Kafka here).

`collect` takes what `gateway report` read, already decoded:

* the audit topic's events (dicts): ``type`` ``event`` (one per input event: ``outcome`` sanitized,
  ``rejected:<reason>`` or ``withheld:<reason>``, ``quality``, ``leak_suspected``, ``redacted``,
  ``key_ids``), ``subject_forgotten`` (`gateway forget`), ``dp_release`` and ``dp_late`` (the DP
  stages); a period is selected by their ``time`` (processing time, ms);
* the privacy ledger (a `gateway.dp.ledger.Ledger`);
* the key topic's records as (key, value) with the value parsed (None: a tombstone);
* the quality topic's records (dicts, ``type`` ``quality_window``);
* the compiled plans (fields by action per schema, aggregate caps) and, optionally, the audit
  chains' verification (`gateway.core.audit.verify_chains` over the whole audit topic).

and returns one `PrivacyReport`. Nothing of a record's content reaches it but counts, names of
topics, schemas, fields, rules, reasons, aggregates and token domains, and key ids: never a field
value, a subject, a subject token or key material. A forget event's tokens and per-subject key
ids, and the subject tokens inside key-topic record keys, are read past, never copied.
"""

from __future__ import annotations

import datetime
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.core.audit import ChainReport
from gateway.core.pipeline.outcome import Outcome, OutcomeKind
from gateway.core.policy.plan import Plan
from gateway.core.quality.report import finish_rates, merge_windows
from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import Ledger
from gateway.errors import GatewayError

REPORT_FORMAT = 1
OUTCOMES = (OutcomeKind.SANITIZED.value, OutcomeKind.REJECTED.value, OutcomeKind.WITHHELD.value)
UNKNOWN_OUTCOME = "unknown"  # an entry whose outcome this version does not write
TARGET_BUCKETS = 60  # the time series get about this many buckets (at most 2x), of a round duration
_SECOND, _MINUTE, _HOUR, _DAY = 1000, 60_000, 3_600_000, 86_400_000
_NICE_BUCKETS = (_SECOND, 2 * _SECOND, 5 * _SECOND, 10 * _SECOND, 15 * _SECOND, 30 * _SECOND, _MINUTE,
                 2 * _MINUTE, 5 * _MINUTE, 10 * _MINUTE, 15 * _MINUTE, 30 * _MINUTE, _HOUR, 2 * _HOUR, 3 * _HOUR,
                 6 * _HOUR, 12 * _HOUR, _DAY, 2 * _DAY, 7 * _DAY)
_UNITS = {"s": _SECOND, "m": _MINUTE, "h": _HOUR, "d": _DAY, "w": 7 * _DAY}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
MAX_LISTED_BREAKS = 20


# ---- time ---------------------------------------------------------------------------------------
def parse_when(text: str, now_ms: int, option: str) -> int:
    """An instant (ms since the epoch) from `--since`/`--until`: ISO-8601 (a time without a zone is
    UTC), a relative duration before now (``30m``, ``24h``, ``7d``, ``2w``), or ``now``."""
    value = text.strip()
    if value.lower() == "now":
        return now_ms
    relative = _RELATIVE.match(value)
    if relative:
        return now_ms - int(float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise GatewayError(f"{option} '{text}' is neither an ISO-8601 time (e.g. 2025-01-31T12:00:00Z) nor a "
                           "duration before now (e.g. 30m, 24h, 7d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    when = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def bucket_ms(since_ms: int, until_ms: int) -> int:
    """A round bucket duration giving about TARGET_BUCKETS buckets over the period."""
    wanted = max(1, until_ms - since_ms) / TARGET_BUCKETS
    for size in _NICE_BUCKETS:
        if size >= wanted:
            return size
    return math.ceil(wanted / _DAY) * _DAY


@dataclass(frozen=True)
class Buckets:
    first_ms: int
    size_ms: int
    count: int

    @classmethod
    def over(cls, since_ms: int, until_ms: int) -> Buckets:
        size = bucket_ms(since_ms, until_ms)
        first = since_ms - since_ms % size
        return cls(first, size, max(1, math.ceil((until_ms - first) / size)))

    def index(self, t_ms: int) -> int:
        return min(self.count - 1, max(0, (t_ms - self.first_ms) // self.size_ms))

    def starts(self) -> list[int]:
        return [self.first_ms + i * self.size_ms for i in range(self.count)]


# ---- decoding helpers (for the command) ---------------------------------------------------------
def decode_json(value: bytes | None) -> dict[str, Any] | None:
    """A topic record's JSON object, or None (a tombstone, or not JSON of ours)."""
    if not value:
        return None
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def key_record(key: bytes | None, value: bytes | None) -> tuple[str, dict[str, Any] | None] | None:
    """A key-topic record as (key, parsed value or None for a tombstone); None for a record without
    a key. The gateway's bookkeeping records (keys starting with '_') are kept: collect skips them."""
    if key is None:
        return None
    return key.decode("utf-8", "replace"), decode_json(value)


# ---- the report ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrivacyReport:
    """Every figure of one report; `to_json()` is the `--json` output and the HTML's input."""

    generated_ms: int
    since_ms: int
    until_ms: int
    bucket_ms: int
    topics: dict[str, str]
    events: dict[str, Any]
    policies: list[dict[str, Any]]
    keys: dict[str, Any]
    forgotten: dict[str, Any]
    dp: dict[str, Any]
    quality: dict[str, Any]
    leaks: dict[str, Any]
    redactions: dict[str, Any]
    audit: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    # consent and purposes: changes per purpose (from the consent audit events) and each purpose
    # view's published / withheld events; retention runs (keys erased by period)
    consent: dict[str, Any] = field(default_factory=dict)
    retention: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (no infinities: an absent cap is null)."""
        body = {
            "format": REPORT_FORMAT,
            "generated_at": self.generated_ms, "generated_at_iso": iso(self.generated_ms),
            "period": {"since": self.since_ms, "until": self.until_ms, "since_iso": iso(self.since_ms),
                       "until_iso": iso(self.until_ms), "bucket_ms": self.bucket_ms},
            "topics": self.topics,
            "events": self.events,
            "policies": self.policies,
            "keys": self.keys,
            "forgotten": self.forgotten,
            "dp": self.dp,
            "quality": self.quality,
            "leaks": self.leaks,
            "redactions": self.redactions,
            "audit": self.audit,
            "consent": self.consent,
            "retention": self.retention,
            "notes": self.notes,
        }
        return _finite(body)

    def dumps(self, indent: bool = False) -> bytes:
        return orjson.dumps(self.to_json(), option=orjson.OPT_INDENT_2 if indent else 0)

    def summary_lines(self) -> list[str]:
        """The few lines `gateway report` prints without --html or --json."""
        e = self.events
        o = e["by_outcome"]
        reasons = ", ".join(f"{r} {n}" for r, n in list(e["dead_letter_reasons"].items())[:5])
        where = f" (audit topic '{self.topics['audit']}')" if "audit" in self.topics else ""
        lines = [f"privacy report {iso(self.since_ms)} .. {iso(self.until_ms)}{where}",
                 f"  events      {e['total']}: {o['sanitized']} sanitized, {o['rejected']} rejected, "
                 f"{o['withheld']} withheld" + (f" (dead letters: {reasons})" if reasons else "")]
        sk = self.keys["subject_keys"]
        lines.append(f"  keys        {sk['created']} subject key(s) created, {sk['erased']} erased, "
                     f"{self.keys['rotations']['kek']} KEK rotation(s) seen; {self.forgotten['subjects']} "
                     "subject(s) forgotten")
        dp = self.dp
        spent = sum(a["epsilon_report_period"] for a in dp["aggregates"])
        used = max((a["cap_used"] for a in dp["aggregates"] if a.get("cap_used") is not None), default=None)
        lines.append(f"  dp          {dp['releases']['released']} release(s), {dp['releases']['refused']} refused; "
                     f"epsilon spent {spent:g} over {len(dp['aggregates'])} aggregate(s)"
                     + (f", at most {used:.1%} of a cap" if used is not None else ""))
        failures = sum(sum(r.values()) for r in self.quality["failures_from_audit"].values())
        lines.append(f"  quality     {failures} rule failure(s), {self.quality['windows']} window(s); leak "
                     f"sentinel: {self.leaks['events']} event(s) with suspected PII in kept fields")
        chains = self.audit["chains"]
        if chains is not None:
            status = "verified" if chains["verified"] else f"BROKEN ({chains['breaks_total']} break(s))"
            lines.append(f"  audit       {chains['events']} events in {chains['chains']} chains: {status}")
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def collect(*, since_ms: int, until_ms: int, audit: Iterable[Mapping[str, Any] | None], ledger: Ledger,
            keys: Iterable[tuple[str, Mapping[str, Any] | None] | None], quality: Iterable[Mapping[str, Any] | None],
            plans: Sequence[Plan], chains: ChainReport | None = None, topics: Mapping[str, str] | None = None,
            generated_ms: int | None = None, notes: Sequence[str] = ()) -> PrivacyReport:
    """The report over [since_ms, until_ms] (see the module's docstring for the inputs)."""
    if until_ms <= since_ms:
        raise GatewayError(f"the period is empty: --since ({iso(since_ms)}) is not before --until ({iso(until_ms)})")
    buckets = Buckets.over(since_ms, until_ms)
    in_period: list[Mapping[str, Any]] = []
    types: Counter[str] = Counter()
    for body in audit:
        if not isinstance(body, Mapping):
            continue
        t = body.get("time")
        if isinstance(t, int) and since_ms <= t <= until_ms:
            in_period.append(body)
            types[str(body.get("type"))] += 1
    events = [b for b in in_period if b.get("type") == "event"]
    forgets = [b for b in in_period if b.get("type") == "subject_forgotten"]
    dp_audit = [b for b in in_period if b.get("type") in ("dp_release", "dp_late")]
    specs = {a.id: a for p in plans for a in p.aggregates}
    forgotten = _forgotten(forgets)
    consent = _consent(events, [b for b in in_period if b.get("type") == "consent"])
    retention = _retention([b for b in in_period if b.get("type") == "retention_enforced"])
    return PrivacyReport(
        generated_ms=generated_ms if generated_ms is not None else until_ms,
        since_ms=since_ms, until_ms=until_ms, bucket_ms=buckets.size_ms,
        topics=dict(topics or {}),
        events=_events(events, buckets),
        policies=[_policy(p) for p in sorted(plans, key=lambda p: p.name)],
        keys=_keys(events, keys, forgotten, since_ms, until_ms),
        forgotten=forgotten,
        consent=consent,
        retention=retention,
        dp=_dp(ledger, specs, dp_audit, since_ms, until_ms),
        quality=_quality(events, quality, since_ms, until_ms),
        leaks=_leaks(events),
        redactions=_redactions(events),
        audit={"records": len(in_period), "by_type": dict(sorted(types.items())), "chains": _chains(chains)},
        notes=list(notes),
    )


# ---- sections -----------------------------------------------------------------------------------
def _split_outcome(text: Any) -> tuple[str, str | None]:
    """(kind, reason or None) of an entry's outcome; an outcome this version does not write: 'unknown'."""
    outcome = Outcome.parse(text)
    if outcome is None:
        return UNKNOWN_OUTCOME, None
    return outcome.kind.value, outcome.reason or None


def _outcomes() -> dict[str, int]:
    return dict.fromkeys(OUTCOMES, 0)


def _events(events: list[Mapping[str, Any]], buckets: Buckets) -> dict[str, Any]:
    by_outcome = _outcomes()
    dead: Counter[str] = Counter()
    withheld: Counter[str] = Counter()
    sources: dict[str, dict[str, Any]] = {}
    series = {kind: [0] * buckets.count for kind in OUTCOMES}
    reason_series: dict[str, list[int]] = {}
    times = [b["time"] for b in events]
    for body in events:
        kind, reason = _split_outcome(body.get("outcome"))
        ref = body.get("event") if isinstance(body.get("event"), Mapping) else {}
        topic = str(ref.get("topic", "(unknown)"))
        src = sources.get(topic)
        if src is None:
            src = sources[topic] = {"schema": body.get("schema"), "total": 0, "by_outcome": _outcomes(),
                                    "dead_letter_reasons": Counter(), "withheld_reasons": Counter(),
                                    "policies": set(), "partitions": set()}
        src["total"] += 1
        src["by_outcome"][kind] = src["by_outcome"].get(kind, 0) + 1
        by_outcome[kind] = by_outcome.get(kind, 0) + 1
        if isinstance(body.get("policy"), str):
            src["policies"].add(body["policy"])
        if isinstance(ref.get("partition"), int):
            src["partitions"].add(ref["partition"])
        i = buckets.index(body["time"])
        if kind not in series:
            series[kind] = [0] * buckets.count
        series[kind][i] += 1
        if kind == OutcomeKind.REJECTED and reason:
            dead[reason] += 1
            src["dead_letter_reasons"][reason] += 1
            reason_series.setdefault(reason, [0] * buckets.count)[i] += 1
        elif kind == OutcomeKind.WITHHELD and reason:
            withheld[reason] += 1
            src["withheld_reasons"][reason] += 1
    for src in sources.values():
        src["dead_letter_reasons"] = _ranked(src["dead_letter_reasons"])
        src["withheld_reasons"] = _ranked(src["withheld_reasons"])
        src["policies"] = sorted(src["policies"])
        src["partitions"] = sorted(src["partitions"])
    return {
        "total": len(events),
        "by_outcome": by_outcome,
        "dead_letter_reasons": _ranked(dead),
        "withheld_reasons": _ranked(withheld),
        "by_source": dict(sorted(sources.items())),
        "first_time": min(times, default=None), "last_time": max(times, default=None),
        "series": {"bucket_ms": buckets.size_ms, "starts": buckets.starts(), "by_outcome": series,
                   "by_reason": dict(sorted(reason_series.items()))},
    }


def _policy(plan: Plan) -> dict[str, Any]:
    by_action: dict[str, list[str]] = {}
    for path, action in plan.field_actions.items():
        by_action.setdefault(action.split(":", 1)[0], []).append(path)
    return {
        "schema": plan.name, "policy": plan.policy_hash, "source_topic": plan.source_topic,
        "sanitized_topic": plan.sanitized_topic, "dlq_topic": plan.dlq_topic,
        "subject_field": plan.subject_field, "leak_sentinel": plan.leak_sentinel,
        "fields": dict(plan.field_actions),
        "by_action": dict(sorted(by_action.items())),
        "counts": {kind: len(paths) for kind, paths in sorted(by_action.items())},
        "aggregates": [a.id for a in plan.aggregates],
        "quality_rules": [r.name for r in plan.quality.rules] if plan.quality is not None else [],
    }


def _keys(events: list[Mapping[str, Any]], records: Iterable[tuple[str, Mapping[str, Any] | None] | None],
          forgotten: dict[str, Any], since_ms: int, until_ms: int) -> dict[str, Any]:
    # the key topic: "<domain>/<subject token>/<dek id>" -> {"kek_id", "wrapped", "created"} | tombstone.
    # Only the domain (before the first '/') and the KEK id are read; the token never leaves this loop.
    # The topic is compacted: these are what it still holds (a key created and erased long enough ago
    # may be gone, value and tombstone; the forget audit events count every erasure).
    created: Counter[str] = Counter()
    live: dict[str, tuple[str, str]] = {}  # key name -> (domain, kek id); names stay inside this function
    seen: dict[str, str] = {}  # key name -> kek id of its last stored value
    counted: set[str] = set()  # a rewrap re-stores a key with its old "created": count its creation once
    rewrapped = tombstones = 0
    periods: dict[str, set[str]] = {}  # date -> period key names still held (retention)
    for record in records:
        if record is None:
            continue
        name, value = record
        if name.startswith("_"):  # the gateway's bookkeeping (the forget chain's head), not a key
            continue
        if name.startswith("period:"):  # a period key (retention): "period:<days>/<date>/...", counted apart
            day = name.split("/", 2)[1] if name.count("/") >= 2 else "?"
            if value is None:
                periods.get(day, set()).discard(name)
            else:
                periods.setdefault(day, set()).add(name)
            continue
        domain = name.split("/", 1)[0]
        if value is None:
            tombstones += 1
            live.pop(name, None)
            continue
        kek = str(value.get("kek_id", ""))
        if name in seen and seen[name] != kek:
            rewrapped += 1  # the same key re-stored under another KEK (`gateway keys rewrap`)
        seen[name] = kek
        live[name] = (domain, kek)
        t = value.get("created")
        if isinstance(t, int) and since_ms <= t <= until_ms and name not in counted:
            counted.add(name)
            created[domain] += 1
    live_domains = Counter(d for d, _ in live.values())
    live_keks = Counter(k for _, k in live.values())
    kek_ids: dict[str, dict[str, Any]] = {}
    token_keys: dict[str, dict[str, Any]] = {}
    quarantine: dict[str, dict[str, Any]] = {}
    subject_deks: dict[str, dict[str, Any]] = {}
    period_deks: dict[str, dict[str, Any]] = {}
    role_deks: dict[str, dict[str, Any]] = {}
    deks: dict[str, set[str]] = {}
    for body in events:
        t = body["time"]
        ids = body.get("key_ids")
        for key_id in ids if isinstance(ids, list) else ():
            if not isinstance(key_id, str):
                continue
            if key_id.startswith("token:"):
                _seen(token_keys, key_id, t)
            elif key_id.startswith("subject:"):  # subject:<domain>/<dek id>: a per-subject key, counted only
                domain, _, dek = key_id[len("subject:"):].partition("/")
                entry = _seen(subject_deks, domain, t)
                deks.setdefault("subject:" + domain, set()).add(dek)
                entry["deks"] = len(deks["subject:" + domain])
            elif key_id.startswith("period:"):  # period:<days>/<date>[/subject:<domain>]/<dek id> (retention)
                retention = key_id[len("period:"):].split("/", 1)[0]
                _seen(period_deks, f"{retention} days", t)
            elif key_id.startswith("roles:"):  # roles:<role>,<role>/<dek id>: a role-scoped (v3) data key
                _seen(role_deks, key_id[len("roles:"):].rpartition("/")[0], t)
            elif "/" in key_id:  # <kek id>/<dek id>: a v1 data key wrapped under that KEK
                kek, _, dek = key_id.partition("/")
                entry = _seen(kek_ids, kek, t)
                deks.setdefault(kek, set()).add(dek)
                entry["deks"] = len(deks[kek])
            else:
                _seen(quarantine, key_id, t)
    token_versions = Counter(k.split("/", 1)[0] for k in token_keys)
    return {
        "subject_keys": {
            "created": sum(created.values()), "created_by_domain": dict(sorted(created.items())),
            "erased": forgotten["keys_erased"],
            "rewrapped_in_topic": rewrapped, "tombstones_in_topic": tombstones,
            "live": len(live), "live_by_domain": dict(sorted(live_domains.items())),
            "live_by_kek": dict(sorted(live_keks.items())),
        },
        "kek_ids": _by_first_seen(kek_ids),
        "token_keys": _by_first_seen(token_keys),
        "quarantine_keys": _by_first_seen(quarantine),
        "subject_deks": dict(sorted(subject_deks.items())),
        "period_deks": dict(sorted(period_deks.items())),  # by retention: events encrypted under period keys
        "role_deks": dict(sorted(role_deks.items())),  # by role set
        "period_keys_held": {day: len(names) for day, names in sorted(periods.items()) if names},
        # a rotation shows as a second id in use in the period: KEKs, and token-key versions per domain
        "rotations": {"kek": max(0, len(kek_ids) - 1),
                      "token_keys": sum(n - 1 for n in token_versions.values()),
                      "subject_keys_rewrapped": rewrapped},
    }


def _seen(table: dict[str, dict[str, Any]], key: str, t: int) -> dict[str, Any]:
    entry = table.get(key)
    if entry is None:
        entry = table[key] = {"events": 0, "first_seen": t, "last_seen": t}
    entry["events"] += 1
    entry["first_seen"] = min(entry["first_seen"], t)
    entry["last_seen"] = max(entry["last_seen"], t)
    return entry


def _by_first_seen(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return dict(sorted(table.items(), key=lambda kv: (kv[1]["first_seen"], kv[0])))


def _consent(events: list[Mapping[str, Any]], changes: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Consent changes per purpose (granted, revoked, rejected) and each purpose view's outcomes:
    counts only, never a subject or its token."""
    by_purpose: dict[str, Counter[str]] = {}
    rejected: Counter[str] = Counter()
    for body in changes:
        outcome = Outcome.parse(body.get("outcome"))
        detail = body.get("consent")
        if outcome is not None and outcome.kind is OutcomeKind.REJECTED:
            rejected[outcome.reason] += 1
        elif isinstance(detail, Mapping):  # consent:granted | consent:revoked
            by_purpose.setdefault(str(detail.get("purpose")), Counter())[outcome.reason if outcome else ""] += 1
    views: dict[str, Counter[str]] = {}
    for body in events:
        decisions = body.get("purposes")
        if isinstance(decisions, Mapping):
            for purpose, decision in decisions.items():
                kind = str(decision).split(":", 1)[0]  # published | withheld
                views.setdefault(str(purpose), Counter())[kind] += 1
    return {"changes": {p: dict(sorted(c.items())) for p, c in sorted(by_purpose.items())},
            "rejected": dict(sorted(rejected.items())),
            "views": {p: {"published": c["published"], "withheld": c["withheld"]} for p, c in sorted(views.items())}}


def _retention(runs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Retention runs: keys erased per retention (days), the periods they covered."""
    erased: Counter[str] = Counter()
    periods: set[tuple[str, str]] = set()
    for body in runs:
        for period in body.get("periods", ()) if isinstance(body.get("periods"), list) else ():
            if isinstance(period, Mapping):
                days = str(period.get("retention_days"))
                erased[days] += int(period.get("keys_erased", 0) or 0)
                periods.add((days, str(period.get("period"))))
    return {"runs": len(runs), "keys_erased": sum(erased.values()),
            "keys_erased_by_retention_days": dict(sorted(erased.items())), "periods_erased": len(periods)}


def _forgotten(forgets: list[Mapping[str, Any]]) -> dict[str, Any]:
    """`gateway forget` events: counts per token domain only (never the tokens or the key ids)."""
    domains: Counter[str] = Counter()
    erased = without = 0
    for body in forgets:
        domains[str(body.get("domain", "(unknown)"))] += 1
        n = body.get("keys_erased")
        n = n if isinstance(n, int) else 0
        erased += n
        without += n == 0
    return {"subjects": len(forgets), "by_domain": dict(sorted(domains.items())), "keys_erased": erased,
            "without_keys": without}


def _dp(ledger: Ledger, specs: Mapping[str, AggregateSpec], dp_audit: list[Mapping[str, Any]],
        since_ms: int, until_ms: int) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    per_aggregate: dict[str, Counter[str]] = {}
    groups = late = 0
    for body in dp_audit:
        aggregate = str(body.get("aggregate", "(unknown)"))
        outcome = "late" if body.get("type") == "dp_late" else str(body.get("outcome"))
        per_aggregate.setdefault(aggregate, Counter())[outcome] += 1
        if body.get("type") == "dp_late":
            late += 1
            continue
        outcomes[outcome] += 1
        if isinstance(body.get("groups_released"), int):
            groups += body["groups_released"]
    rows = []
    summary = {r["aggregate"]: r for r in ledger.summary(specs=dict(specs))}
    for aggregate in sorted(set(summary) | set(per_aggregate)):
        spec = specs.get(aggregate)
        windows = ledger.windows(aggregate)
        in_period = {s: c for s, c in windows.items() if since_ms <= s <= until_ms}
        releases = [e for e in ledger.entries.values()
                    if e.aggregate == aggregate and since_ms <= e.released_at <= until_ms]
        s = summary.get(aggregate, {})
        row: dict[str, Any] = {
            "aggregate": aggregate,
            "source_topic": spec.source_topic if spec else None,
            "budget": (spec.budget or aggregate) if spec else None,
            "epsilon_per_window": spec.epsilon if spec else None,
            "windows_report_period": len(in_period),
            "releases_report_period": len(releases),
            "groups_report_period": sum(e.groups for e in releases),
            "epsilon_report_period": round(sum(e for e, _ in in_period.values()), 12),
            "delta_report_period": sum(d for _, d in in_period.values()),
            "windows_total": s.get("windows", len(windows)),
            "epsilon_total": s.get("epsilon_total", 0.0),
            "audit": dict(sorted(per_aggregate.get(aggregate, Counter()).items())),
        }
        if spec is not None:
            peak = _peak_period(windows, spec.period_ms, since_ms, until_ms)
            row.update(period_s=spec.period_ms // 1000, epsilon_cap=spec.period_epsilon_cap,
                       delta_cap=spec.period_delta_cap,
                       epsilon_latest_period=s.get("epsilon_in_period", 0.0),
                       epsilon_remaining=s.get("epsilon_remaining", spec.period_epsilon_cap),
                       epsilon_peak_period=round(peak, 12),
                       cap_used=round(peak / spec.period_epsilon_cap, 6) if spec.period_epsilon_cap else None)
        rows.append(row)
    budgets = []
    for b in ledger.budget_summary(dict(specs)) if specs else []:
        members = [specs[a] for a in b["aggregates"] if a in specs]
        period_ms = b["period_s"] * 1000
        spent = ledger.spent(budget=b["budget"])
        by_window: dict[int, float] = {}
        for (_, start), (eps, _) in spent.items():
            by_window[start] = by_window.get(start, 0.0) + eps
        peak = _peak_period({s: (e, 0.0) for s, e in by_window.items()}, period_ms, since_ms, until_ms)
        cap = b["epsilon_cap"]
        budgets.append({
            "budget": b["budget"], "sources": sorted({m.source_topic for m in members}),
            "period_s": b["period_s"], "epsilon_cap": cap, "delta_cap": b["delta_cap"],
            "epsilon_latest_period": b["epsilon_in_period"], "delta_latest_period": b["delta_in_period"],
            "epsilon_remaining": b["epsilon_remaining"], "aggregates_latest_period": b["aggregates"],
            "epsilon_report_period": round(sum(e for s, e in by_window.items() if since_ms <= s <= until_ms), 12),
            "epsilon_peak_period": round(peak, 12),
            "cap_used": round(peak / cap, 6) if cap and math.isfinite(cap) else None,
            "epsilon_total": b["epsilon_total"],
        })
    return {"aggregates": rows, "budgets": budgets,
            "releases": {"released": outcomes.get("released", 0),
                         "refused": sum(n for o, n in outcomes.items() if o.startswith("refused")),
                         "by_outcome": dict(sorted(outcomes.items())), "groups_released": groups,
                         "late_events": late}}


def _peak_period(windows: Mapping[int, tuple[float, float]], period_ms: int, since_ms: int, until_ms: int) -> float:
    """Largest epsilon spent by the windows of any rolling `period_ms` that holds a window of the report
    period (what the cap bounds): the run of windows ending at each report window, one pass."""
    starts = sorted(s for s in windows if since_ms - period_ms < s <= until_ms)
    peak = total = 0.0
    left = 0
    for start in starts:
        total += windows[start][0]
        while starts[left] <= start - period_ms:
            total -= windows[starts[left]][0]
            left += 1
        if start >= since_ms:
            peak = max(peak, total)
    return peak


def _quality(events: list[Mapping[str, Any]], records: Iterable[Mapping[str, Any] | None],
             since_ms: int, until_ms: int) -> dict[str, Any]:
    failures: dict[str, Counter[str]] = {}
    for body in events:
        names = body.get("quality")
        if isinstance(names, list) and names:
            topic = str((body.get("event") or {}).get("topic", "(unknown)"))
            failures.setdefault(topic, Counter()).update(str(n) for n in names)
    windows = [w for w in merge_windows(r for r in records if isinstance(r, Mapping))
               if since_ms <= w["window"]["start"] <= until_ms]
    sources: dict[str, dict[str, Any]] = {}
    for w in windows:
        src = sources.get(w["source"])
        if src is None:
            src = sources[w["source"]] = {"schema": w.get("schema"), "windows": 0, "events": 0, "sanitized": 0,
                                          "rules": {}, "completeness": {}, "lag_ms": {"max": 0, "sum": 0},
                                          "first_window": w["window"]["start"], "last_window": w["window"]["start"]}
        src["windows"] += 1
        src["events"] += w["events"]
        src["sanitized"] += w["sanitized"]
        src["last_window"] = max(src["last_window"], w["window"]["start"])
        src["lag_ms"]["max"] = max(src["lag_ms"]["max"], w["lag_ms"]["max"])
        src["lag_ms"]["sum"] += w["lag_ms"]["mean"] * w["events"]
        for name, rule in w["rules"].items():
            entry = src["rules"].setdefault(name, {"kind": rule["kind"], "action": rule["action"], "failed": 0})
            entry["failed"] += rule["failed"]
        for name, c in w["completeness"].items():
            entry = src["completeness"].setdefault(name, {"present": 0, "windows_below_target": 0,
                                                          **({"target": c["target"]} if "target" in c else {})})
            entry["present"] += c["present"]
            entry["windows_below_target"] += "met" in c and not c["met"]
        if "risk" in w:
            r = w["risk"]
            risk = src.setdefault("risk", {"windows": 0, "k_target": r.get("k_target"), "k_min": None,
                                           "records": 0, "below_k_records": 0, "l_target": r.get("l_target"),
                                           "l_min": None, "windows_incomplete": 0})
            risk["windows"] += 1
            if r.get("records"):
                risk["k_min"] = r["k"] if risk["k_min"] is None else min(risk["k_min"], r["k"])
            if r.get("l") is not None:
                risk["l_min"] = r["l"] if risk["l_min"] is None else min(risk["l_min"], r["l"])
            risk["records"] += r.get("records", 0)
            risk["below_k_records"] += r.get("below_k_records", 0)
            risk["windows_incomplete"] += not r.get("complete", True)
    for src in sources.values():
        finish_rates(src)
    return {"windows": len(windows), "sources": dict(sorted(sources.items())),
            "failures_from_audit": {t: _ranked(c) for t, c in sorted(failures.items())}}


def _leaks(events: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Leak-sentinel hits (field path and entity type, never the value) per source."""
    findings: Counter[tuple[str, str, str]] = Counter()
    hit_events = 0
    for body in events:
        leaks = body.get("leak_suspected")
        if not isinstance(leaks, list) or not leaks:
            continue
        hit_events += 1
        topic = str((body.get("event") or {}).get("topic", "(unknown)"))
        for leak in leaks:
            if isinstance(leak, Mapping):
                findings[(topic, str(leak.get("field")), str(leak.get("entity")))] += 1
    by_entity: Counter[str] = Counter()
    by_field: Counter[str] = Counter()
    for (topic, path, entity), n in findings.items():
        by_entity[entity] += n
        by_field[f"{topic}: {path}"] += n
    return {"events": hit_events,
            "findings": [{"source": t, "field": f, "entity": e, "count": n}
                         for (t, f, e), n in sorted(findings.items(), key=lambda kv: (-kv[1], kv[0]))],
            "by_entity": _ranked(by_entity), "by_field": _ranked(by_field)}


def _redactions(events: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Entities redacted from free text ("redacted": {path: {entity: n}}), counts only."""
    by_source: dict[str, dict[str, Counter[str]]] = {}
    by_entity: Counter[str] = Counter()
    hit_events = 0
    for body in events:
        redacted = body.get("redacted")
        if not isinstance(redacted, Mapping) or not redacted:
            continue
        hit_events += 1
        topic = str((body.get("event") or {}).get("topic", "(unknown)"))
        for path, entities in redacted.items():
            if not isinstance(entities, Mapping):
                continue
            for entity, n in entities.items():
                if isinstance(n, int):
                    by_source.setdefault(topic, {}).setdefault(str(path), Counter())[str(entity)] += n
                    by_entity[str(entity)] += n
    return {"events": hit_events, "by_entity": _ranked(by_entity),
            "by_source": {t: {p: _ranked(c) for p, c in sorted(paths.items())}
                          for t, paths in sorted(by_source.items())}}


def _chains(chains: ChainReport | None) -> dict[str, Any] | None:
    if chains is None:
        return None
    return {"verified": chains.ok, "scope": "whole audit topic", "chains": chains.chains, "events": chains.events,
            "restarts": len(chains.restarts), "breaks": chains.breaks[:MAX_LISTED_BREAKS],
            "breaks_total": len(chains.breaks)}


def _ranked(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
