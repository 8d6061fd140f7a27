"""`gateway report --dpia --html FILE`: the DPIA as ONE self-contained HTML file.

Tables and figure tiles only (no chart, so no script at all): inline CSS, nothing loaded from
anywhere, so the file opens offline and can be filed with the assessment. The markup is
gateway/report/templates/dpia.html.j2 (autoescape on, the report's macros and stylesheet); this module
turns the `Dpia` into tables and tiles."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jinja2

from gateway.report.dpia import Dpia
from gateway.report.html import Table, Tile

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("gateway.report", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)


def render_dpia(dpia: Dpia) -> str:
    """The whole HTML document."""
    d = dpia.to_json()
    title = f"Data protection impact assessment {d['period']['since_iso']} .. {d['period']['until_iso']}"
    return _TEMPLATES.get_template("dpia.html.j2").render(
        title=title, d=d, tiles=_tiles(d), inventory=_inventory(d), outputs=_outputs(d), measures=_measures(d),
        evidence=_evidence(d), audit=d["audit_verification"], risks=_risks(d))


def _table(head: Sequence[str], rows: list[Sequence[Any]], numeric: set[int] | None = None) -> Table | None:
    return Table(head, rows, frozenset(numeric or ())) if rows else None


def _join(values: Sequence[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _tiles(d: dict[str, Any]) -> list[Tile]:
    e = d["evidence"]
    o = e["events"]["by_outcome"]
    audit = d["audit_verification"]
    changes = sum(sum(c.values()) for c in e["consent"]["changes"].values())
    return [Tile("events", e["events"]["total"], "events audited", ""),
            Tile("sanitized", o["sanitized"], "sanitized", "good"),
            Tile("rejected", o["rejected"], "dead letters", "bad" if o["rejected"] else ""),
            Tile("withheld", o["withheld"], "withheld", ""),
            Tile("forgotten", e["forgotten"]["subjects"], "subjects forgotten", ""),
            Tile("consent-changes", changes, "consent changes", ""),
            Tile("retention-runs", e["retention"]["runs"], "retention runs", ""),
            Tile("leaks", e["leaks"]["events"], "leak-sentinel hits", "bad" if e["leaks"]["events"] else ""),
            Tile("audit", "not verified" if not audit["ran"] else "verified" if audit["ok"] else "BROKEN",
                 "audit verification", "good" if audit["ok"] else "bad"),
            Tile("risks", len(d["risks"]), "open risks", "bad" if d["risks"] else "good")]


def _inventory(d: dict[str, Any]) -> dict[str, Table | None]:
    by_source: dict[str, list[Sequence[Any]]] = {}
    for e in d["inventory"]:
        purposes = _join(f"{p['purpose']} ({p['basis']}): {p['action']}" for p in e["purposes"])
        by_source.setdefault(f"{e['source_topic']} ({e['schema']})", []).append(
            [e["path"], e["action"] if e["annotated"] else f"{e['action']} (no annotation)",
             e["basis"] or ("not declared" if e["action"] != "drop" else ""), purposes,
             e["retention_days"], _join(e["roles"]), e["key_scope"]])
    head = ("field", "action", "legal basis (sanitized topic)", "purposes (basis): action", "retention (days)",
            "roles that may open it", "key scope")
    return {source: _table(head, rows, {4}) for source, rows in by_source.items()}


def _outputs(d: dict[str, Any]) -> Table | None:
    return _table(("topic", "kind", "schema", "purpose", "legal basis", "consumer groups with committed offsets",
                   "ACL bindings on reading it"),
                  [[o["topic"], o["kind"], o["schema"], o["purpose"], o["basis"],
                    _join(o["consumer_groups"]) or "none", _join(o["read_acls"])] for o in d["outputs"]])


def _measures(d: dict[str, Any]) -> dict[str, Any]:
    m = d["measures"]
    return {
        "encryption": _table(("schema", "field", "key scope", "roles", "retention (days)"),
                             [[e["schema"], e["field"], e["scope"], _join(e["roles"]), e["retention_days"]]
                              for e in m["encryption"]], {4}),
        "tokens": _table(("token domain", "fields"), [[k, _join(v)] for k, v in m["token_domains"].items()]),
        "dp": _table(("budget", "schema", "period (s)", "epsilon cap", "epsilon per subject per day", "aggregates",
                      "epsilon spent in the period", "peak period", "cap used"),
                     [[b["budget"], b["schema"], b["period_s"], b["epsilon_cap"], b["epsilon_per_day"],
                       _join(b["aggregates"]), b["epsilon_spent_report_period"], b["epsilon_peak_period"],
                       "" if b["cap_used"] is None else f"{b['cap_used']:.1%}"] for b in m["dp_budgets"]],
                     {2, 3, 4, 6, 7, 8}),
        "quality": _table(("schema", "quality rules", "k-anonymity measure", "leak sentinel", "record timestamp"),
                          [[q["schema"], _join(f"{r['name']} ({r['action']})" for r in q["rules"]),
                            "" if q["k_anonymity"] is None else
                            f"k={q['k_anonymity']['k']} over {_join(q['k_anonymity']['quasi_identifiers'])} "
                            f"({q['k_anonymity']['mode']})",
                            m["leak_sentinel"][q["schema"]], m["timestamps"][q["schema"]]] for q in m["quality"]]),
        "key_ids": f"{len(m['kek_ids'])} KEK id(s) and {len(m['token_key_ids'])} token key(s) in use in the period",
    }


def _evidence(d: dict[str, Any]) -> dict[str, Any]:
    e = d["evidence"]
    ev = e["events"]
    consent = e["consent"]
    return {
        "by_source": _table(("source topic", "sanitized", "dead letters", "withheld"),
                            [[t, s["sanitized"], s["rejected"], s["withheld"]] for t, s in ev["by_source"].items()],
                            {1, 2, 3}),
        "reasons": _table(("dead-letter reason", "events"), [[r, n] for r, n in ev["dead_letter_reasons"].items()],
                          {1}),
        "erasure": _table(("measure", "count"), [
            ["subjects forgotten", e["forgotten"]["subjects"]], ["subject keys erased", e["forgotten"]["keys_erased"]],
            ["subject keys created", e["subject_keys"]["created"]], ["subject keys live", e["subject_keys"]["live"]],
            ["retention runs", e["retention"]["runs"]], ["period keys erased", e["retention"]["keys_erased"]]], {1}),
        "consent": _table(("purpose", "consent changes"),
                          [[p, _join(f"{k} {n}" for k, n in c.items())] for p, c in consent["changes"].items()]),
        "views": _table(("purpose view", "published", "withheld"),
                        [[p, v["published"], v["withheld"]] for p, v in consent["views"].items()], {1, 2}),
        "leaks": _table(("source", "field", "entity", "events"),
                        [[f["source"], f["field"], f["entity"], f["count"]] for f in e["leaks"]["findings"]], {3}),
        "k": _table(("source", "windows", "k target", "smallest k", "records", "records below k"),
                    [[s, r["windows"], r["k_target"], r["k_min"], r["records"], r["below_k_records"]]
                     for s, r in e["k_anonymity"].items()], {1, 2, 3, 4, 5}),
    }


def _risks(d: dict[str, Any]) -> Table | None:
    return _table(("severity", "risk", "schema", "where", "what the gateway sees"),
                  [[r["severity"], r["kind"], r["schema"], r["where"], r["message"]] for r in d["risks"]])
