"""`gateway subject report`: what the gateway holds about one data subject (right of access), pure.

Built from what the runtime read (gateway/runtime/subject.py): the subject's tokens, the names of its
live keys, the audit's entries, its consent history and the DP windows it contributed to. It shows
no value beyond what the person supplied: tokens (their pseudonyms), key ids (never a key), topics,
counts per topic and day, purposes with grant/revoke times, aggregate names and windows (never a
group, a count inside the DP boundary or a released value).

"What forget would erase" is the same inventory `gateway forget` puts in its audit event and
receipt (gateway.core.erasure.key_inventory), over the keys that are live now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.core.erasure import InventoryKey, day_of_ms, dek_of, iso_ms, key_inventory, key_uses, token_version


@dataclass(frozen=True)
class ErasedKeys:
    """One forget of this subject, as its audit event says."""

    time_ms: int
    key_ids: tuple[str, ...]
    consent_records: int


@dataclass(frozen=True)
class ConsentState:
    purpose: str
    in_force: bool
    history: tuple[tuple[int, bool], ...]  # (time ms, granted), oldest first


@dataclass(frozen=True)
class SubjectReport:
    domain: str
    tokens: tuple[tuple[str, str], ...]  # (token version, token)
    keys: tuple[InventoryKey, ...]  # live now: what forget would erase
    erased: tuple[ErasedKeys, ...]
    erased_keys: tuple[InventoryKey, ...]  # the inventory of the keys erased, from the audit
    records: tuple[tuple[str, str, int], ...]  # (topic, UTC day, events) from the audit
    consent: tuple[ConsentState, ...]
    consent_records: int  # live consent records on the consent topic: forget would erase them
    dp: tuple[tuple[str, int], ...]  # (aggregate id, window start ms)

    def to_json(self) -> bytes:
        return orjson.dumps({
            "domain": self.domain,
            "tokens": [{"token_version": v, "token": t} for v, t in self.tokens],
            "records": [{"topic": t, "day": d, "events": n} for t, d, n in self.records],
            "keys": [k.to_json() | {"state": "live"} for k in self.keys]
                    + [k.to_json() | {"state": "erased"} for k in self.erased_keys],
            "erasures": [{"time": iso_ms(e.time_ms), "key_ids": list(e.key_ids),
                          "consent_records_erased": e.consent_records} for e in self.erased],
            "consent": [{"purpose": c.purpose, "in_force": c.in_force,
                         "history": [{"time": iso_ms(at), "granted": granted} for at, granted in c.history]}
                        for c in self.consent],
            "dp_contributions": [{"aggregate": a, "window_start": iso_ms(w)} for a, w in self.dp],
            "forget_would_erase": {"keys": [k.to_json() for k in self.keys], "consent_records": self.consent_records},
        }, option=orjson.OPT_INDENT_2)

    def human(self) -> str:
        lines = [f"Subject report, token domain '{self.domain}'",
                 "  tokens: " + ", ".join(f"v{v} {t}" for v, t in self.tokens)]
        lines.append("  records (from the audit, events per topic and UTC day):")
        lines += [f"    {t} {d}: {n}" for t, d, n in self.records] or ["    none found"]
        lines.append("  keys protecting them:")
        lines += [f"    {k.key_id} [live] {', '.join(k.scopes) or 'no use audited'}; "
                  f"{', '.join(k.topics) or '-'}" for k in self.keys]
        lines += [f"    {k.key_id} [erased] {', '.join(k.scopes) or 'no use audited'}; "
                  f"{', '.join(k.topics) or '-'}" for k in self.erased_keys]
        if not self.keys and not self.erased_keys:
            lines.append("    none")
        for e in self.erased:
            lines.append(f"  forgotten {iso_ms(e.time_ms)}: {len(e.key_ids)} key(s), {e.consent_records} consent "
                         "record(s) erased")
        lines.append("  consent:")
        for c in self.consent:
            history = ", ".join(f"{'granted' if g else 'revoked'} {iso_ms(at)}" for at, g in c.history)
            lines.append(f"    {c.purpose}: {'in force' if c.in_force else 'not in force'} ({history})")
        if not self.consent:
            lines.append("    no consent record")
        lines.append("  DP aggregates contributed to (aggregate, window start):")
        lines += [f"    {a} {iso_ms(w)}" for a, w in self.dp] or ["    none found"]
        would = (f"{len(self.keys)} key(s) and {self.consent_records} consent record(s)"
                 if self.keys or self.consent_records else "nothing")
        lines.append(f"  gateway forget would erase: {would}")
        return "\n".join(lines)


@dataclass
class _Counts:
    days: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, topic: Any, stamp: Any) -> None:
        if isinstance(topic, str) and isinstance(stamp, int):
            key = (topic, day_of_ms(stamp))
            self.days[key] = self.days.get(key, 0) + 1


def build_report(domain: str, tokens: Iterable[str], live_key_ids: Iterable[str],
                 entries: Iterable[Mapping[str, Any]], consent: Mapping[str, Iterable[tuple[int, bool]]],
                 consent_in_force: Mapping[str, bool], dp: Iterable[tuple[str, int]]) -> SubjectReport:
    """The report (see the module's docstring). `entries`: the audit's, in order; `consent`: per purpose
    the subject's changes still on the consent topic; `dp`: (aggregate id, window start) pairs."""
    tokens = list(tokens)
    entries = list(entries)
    wanted = set(tokens)
    erased = [ErasedKeys(int(e.get("time") or 0), tuple(str(k) for k in e.get("key_ids") or ()),
                         int(e.get("consent_records_erased") or 0))
              for e in entries if e.get("type") == "subject_forgotten" and e.get("domain") == domain
              and wanted & set(e.get("subject_tokens") or ())]
    live = sorted(set(live_key_ids))
    gone = sorted({k for e in erased for k in e.key_ids} - set(live))
    uses = key_uses(entries, live + gone)
    deks = {dek_of(k) for k in live + gone}
    counts = _Counts()
    for entry in entries:
        named = entry.get("key_ids")
        change = entry.get("consent")
        event = entry.get("event") if isinstance(entry.get("event"), dict) else {}
        output = entry.get("output") if isinstance(entry.get("output"), dict) else {}
        if isinstance(named, list) and any(isinstance(k, str) and dek_of(k) in deks for k in named):
            counts.add(output.get("topic"), event.get("timestamp"))
        elif isinstance(change, dict) and change.get("domain") == domain and change.get("subject") in wanted:
            counts.add(output.get("topic"), event.get("timestamp"))
    states = tuple(ConsentState(p, bool(consent_in_force.get(p)), tuple(h)) for p, h in sorted(consent.items()))
    return SubjectReport(
        domain, tuple((token_version(t), t) for t in tokens), tuple(key_inventory(live, uses)), tuple(erased),
        tuple(key_inventory(gone, uses)), tuple((t, d, n) for (t, d), n in sorted(counts.days.items())), states,
        sum(len(s.history) for s in states), tuple(sorted(set(dp))))
