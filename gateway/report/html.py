"""`gateway report --html FILE`: the report as ONE self-contained HTML file.

Inline CSS, the plotly.js bundle inlined once (from the installed plotly package, so the version
pinned in pyproject.toml), each chart a plotly figure drawn by it, and every figure also as text in
a table beside its chart. No element loads anything: no external script, stylesheet, image or font,
so the file opens offline and can be archived with the assessment it documents. Text is escaped;
the figures' JSON is plotly's own (it escapes '</').
"""

from __future__ import annotations

import datetime
import functools
import html
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.report.collect import PrivacyReport, iso

COLORS = {"sanitized": "#2e7d32", "rejected": "#c62828", "withheld": "#ef6c00"}
CHART_CONFIG = {"displaylogo": False, "displayModeBar": False, "responsive": True, "showSendToCloud": False,
                "plotlyServerURL": "", "modeBarButtonsToRemove": ["sendDataToCloud"]}
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2328;
       background: #f6f8fa; }
header { background: #24292f; color: #fff; padding: 1.2em 2em; }
header h1 { margin: 0 0 .3em 0; font-size: 1.5em; }
header p { margin: .15em 0; color: #d0d7de; }
main { padding: 1em 2em 3em 2em; max-width: 1200px; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 1em 1.5em; margin: 1em 0; }
h2 { font-size: 1.2em; margin: .2em 0 .6em 0; }
h3 { font-size: 1em; margin: 1em 0 .4em 0; }
.tiles { display: flex; flex-wrap: wrap; gap: .8em; }
.tile { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: .7em 1em; min-width: 9em; }
.tile .value { font-size: 1.6em; font-weight: 600; }
.tile .label { color: #57606a; font-size: .85em; }
.tile.bad .value { color: #c62828; } .tile.good .value { color: #2e7d32; }
table { border-collapse: collapse; margin: .4em 0 .8em 0; font-size: .9em; }
th, td { border-bottom: 1px solid #d8dee4; padding: .25em .8em; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.chart { width: 100%; margin: .3em 0; }
.none { color: #57606a; font-style: italic; }
.note { color: #57606a; font-size: .9em; }
code { font-size: .9em; }
"""


def render(report: PrivacyReport) -> str:
    """The whole HTML document."""
    r = report.to_json()
    sections = [
        _overview(r),
        _events(r),
        _policies(r),
        _keys(r),
        _dp(r),
        _quality(r),
        _leaks(r),
        _consent(r),
        _audit(r),
    ]
    title = f"Privacy report {r['period']['since_iso']} .. {r['period']['until_iso']}"
    return "".join([
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{_e(title)}</title><style>{CSS}</style>",
        _plotly_js(),
        "</head><body>",
        "<header>", f"<h1>{_e(title)}</h1>",
        f"<p>Generated {_e(r['generated_at_iso'])} by <code>gateway report</code> from the topics "
        + ", ".join(f"{_e(k)} <code>{_e(v)}</code>" for k, v in r["topics"].items()) + ".</p>",
        "<p>Counts, names of topics, fields, rules and reasons, and key ids only: no field value, subject, "
        "token or key is in this report.</p>",
        "</header><main>",
        *sections,
        "</main></body></html>\n",
    ])


# ---- sections -----------------------------------------------------------------------------------
def _overview(r: dict[str, Any]) -> str:
    e = r["events"]
    o = e["by_outcome"]
    chains = r["audit"]["chains"]
    epsilon = sum(a["epsilon_report_period"] for a in r["dp"]["aggregates"])
    tiles = [("events", e["total"], "events audited", ""),
             ("sanitized", o["sanitized"], "sanitized", "good"),
             ("rejected", o["rejected"], "rejected (dead letters)", "bad" if o["rejected"] else ""),
             ("withheld", o["withheld"], "withheld (risk)", ""),
             ("forgotten", r["forgotten"]["subjects"], "subjects forgotten", ""),
             ("keys-created", r["keys"]["subject_keys"]["created"], "subject keys created", ""),
             ("keys-erased", r["keys"]["subject_keys"]["erased"], "subject keys erased", ""),
             ("dp-releases", r["dp"]["releases"]["released"], "DP releases", ""),
             ("epsilon", _num(epsilon), "epsilon spent (all aggregates)", ""),
             ("leaks", r["leaks"]["events"], "leak-sentinel hits", "bad" if r["leaks"]["events"] else "")]
    if chains is not None:
        tiles.append(("chains", "verified" if chains["verified"] else "BROKEN",
                      f"audit chains ({chains['chains']})", "good" if chains["verified"] else "bad"))
    body = "".join(f"<div class=\"tile {cls}\" data-figure=\"{name}\"><div class=\"value\">{_e(value)}</div>"
                   f"<div class=\"label\">{_e(label)}</div></div>" for name, value, label, cls in tiles)
    notes = "".join(f"<p class=\"note\">{_e(n)}</p>" for n in r["notes"])
    return f"<section id=\"overview\"><h2>Overview</h2><div class=\"tiles\">{body}</div>{notes}</section>"


def _events(r: dict[str, Any]) -> str:
    e = r["events"]
    out = ["<section id=\"events\"><h2>Events by outcome and dead-letter reason</h2>"]
    if not e["total"]:
        out.append(_none("No event was audited in this period."))
        return "".join(out) + "</section>"
    series = e["series"]
    x = [_axis_time(t) for t in series["starts"]]
    bucket = _duration(series["bucket_ms"])
    out.append(_chart("events-over-time", [
        {"type": "bar", "name": kind, "x": x, "y": ys, "marker": {"color": COLORS.get(kind)}}
        for kind, ys in series["by_outcome"].items() if any(ys)],
        f"Events per {bucket} (UTC, audit time)", barmode="stack"))
    sources = e["by_source"]
    out.append(_chart("events-by-source", [
        {"type": "bar", "orientation": "h", "name": kind, "y": list(sources),
         "x": [s["by_outcome"].get(kind, 0) for s in sources.values()], "marker": {"color": COLORS.get(kind)}}
        for kind, n in e["by_outcome"].items() if n],
        "Events per source topic", barmode="stack", height=_bars_height(len(sources))))
    rows = [[topic, s["schema"] or "", s["total"], *(s["by_outcome"].get(k, 0) for k in e["by_outcome"]),
             ", ".join(f"{k} {n}" for k, n in s["dead_letter_reasons"].items()),
             ", ".join(f"{k} {n}" for k, n in s["withheld_reasons"].items())] for topic, s in sources.items()]
    rows.append(["all sources", "", e["total"], *e["by_outcome"].values(), "", ""])
    out.append(_table(["source topic", "schema", "events", *e["by_outcome"], "dead-letter reasons",
                       "withheld reasons"], rows, numeric={2, 3, 4, 5}))
    out.append("<h3>Dead-letter reasons</h3>")
    if e["dead_letter_reasons"]:
        reasons = e["dead_letter_reasons"]
        out.append(_chart("dead-letter-reasons", [{"type": "bar", "orientation": "h", "y": list(reasons),
                                                   "x": list(reasons.values()),
                                                   "marker": {"color": COLORS["rejected"]}}],
                          "Dead letters per reason", height=_bars_height(len(reasons))))
        out.append(_chart("dead-letters-over-time", [
            {"type": "bar", "name": reason, "x": x, "y": ys} for reason, ys in series["by_reason"].items()],
            f"Dead letters per reason per {bucket} (UTC)", barmode="stack"))
        out.append(_table(["reason", "dead letters"], [[k, n] for k, n in reasons.items()], numeric={1}))
    else:
        out.append(_none("No event was dead-lettered in this period."))
    if e["withheld_reasons"]:
        out.append("<h3>Withheld (re-identification risk enforced)</h3>")
        out.append(_table(["reason", "withheld"], [[k, n] for k, n in e["withheld_reasons"].items()], numeric={1}))
    return "".join(out) + "</section>"


def _policies(r: dict[str, Any]) -> str:
    out = ["<section id=\"policies\"><h2>Fields by action per schema</h2>"]
    policies = r["policies"]
    if not policies:
        out.append(_none("No schemas were given (--schemas): the policies are not part of this report."))
        return "".join(out) + "</section>"
    kinds = sorted({k for p in policies for k in p["counts"]})
    out.append(_chart("fields-by-action", [
        {"type": "bar", "name": kind, "x": [p["schema"] for p in policies],
         "y": [p["counts"].get(kind, 0) for p in policies]} for kind in kinds],
        "Fields per action (from the compiled policies)", barmode="stack"))
    for p in policies:
        out.append(f"<h3>{_e(p['schema'])} <span class=\"note\">policy {_e(p['policy'][:16])}, "
                   f"{_e(p['source_topic'])} &rarr; {_e(p['sanitized_topic'])}, leak sentinel "
                   f"{_e(p['leak_sentinel'])}</span></h3>")
        rows = [[kind, len(paths), ", ".join(paths)] for kind, paths in p["by_action"].items()]
        out.append(_table(["action", "fields", "field paths"], rows, numeric={1}))
    return "".join(out) + "</section>"


def _keys(r: dict[str, Any]) -> str:
    k = r["keys"]
    sk = k["subject_keys"]
    f = r["forgotten"]
    out = ["<section id=\"keys\"><h2>Keys and erasure</h2>"]
    figures = {"subject keys created": sk["created"], "subject keys erased": sk["erased"],
               "subjects forgotten": f["subjects"], "subject keys rewrapped": sk["rewrapped_in_topic"],
               "KEK ids in use": len(k["kek_ids"]), "token keys in use": len(k["token_keys"])}
    if any(figures.values()):
        out.append(_chart("keys", [{"type": "bar", "x": list(figures), "y": list(figures.values()),
                                    "marker": {"color": "#0969da"}}], "Keys in the period"))
    out.append(_table(["figure", "count"], [[name, n] for name, n in figures.items()]
                      + [["subject keys live (key topic now)", sk["live"]],
                         ["tombstones still in the key topic", sk["tombstones_in_topic"]]], numeric={1}))
    if f["subjects"]:
        out.append("<h3>Subjects forgotten per token domain</h3>")
        out.append(_table(["domain", "forget events"], [[d, n] for d, n in f["by_domain"].items()], numeric={1}))
    if sk["created_by_domain"] or sk["live_by_domain"]:
        domains = sorted(set(sk["created_by_domain"]) | set(sk["live_by_domain"]))
        out.append("<h3>Per-subject keys per token domain</h3>")
        out.append(_table(["domain", "created in the period", "live now"],
                          [[d, sk["created_by_domain"].get(d, 0), sk["live_by_domain"].get(d, 0)] for d in domains],
                          numeric={1, 2}))
    rows = [["KEK", kid, v["events"], v.get("deks", 0), iso(v["first_seen"]), iso(v["last_seen"])]
            for kid, v in k["kek_ids"].items()]
    rows += [["token key", kid, v["events"], "", iso(v["first_seen"]), iso(v["last_seen"])]
             for kid, v in k["token_keys"].items()]
    rows += [["quarantine key", kid, v["events"], "", iso(v["first_seen"]), iso(v["last_seen"])]
             for kid, v in k["quarantine_keys"].items()]
    rows += [["per-subject keys", f"domain {d}", v["events"], v.get("deks", 0), iso(v["first_seen"]),
              iso(v["last_seen"])] for d, v in k["subject_deks"].items()]
    if rows:
        out.append("<h3>Key ids in the audit events of the period</h3>")
        out.append(_table(["kind", "key id", "events", "data keys", "first seen", "last seen"], rows, numeric={2, 3}))
        rot = k["rotations"]
        out.append(f"<p class=\"note\">Rotations seen: {rot['kek']} KEK, {rot['token_keys']} token key, "
                   f"{rot['subject_keys_rewrapped']} subject key(s) rewrapped.</p>")
    return "".join(out) + "</section>"


def _consent(r: dict[str, Any]) -> str:
    c, ret = r["consent"], r["retention"]
    out = ["<section id=\"consent\"><h2>Consent, purposes and retention</h2>"]
    if not (c["changes"] or c["views"] or c["rejected"] or ret["runs"]):
        out.append(_none("No purpose view, consent change or retention run in the period."))
        return "".join(out) + "</section>"
    if c["views"]:
        purposes = list(c["views"])
        out.append(_chart("purposes", [
            {"type": "bar", "name": kind, "x": purposes, "y": [c["views"][p][kind] for p in purposes]}
            for kind in ("published", "withheld")], "Purpose views: published and withheld events", barmode="stack"))
        out.append(_table(["purpose", "published", "withheld (no consent)"],
                          [[p, v["published"], v["withheld"]] for p, v in c["views"].items()], numeric={1, 2}))
    if c["changes"] or c["rejected"]:
        rows = [[p, n.get("granted", 0), n.get("revoked", 0)] for p, n in c["changes"].items()]
        out.append("<h3>Consent changes per purpose</h3>")
        out.append(_table(["purpose", "granted", "revoked"], rows, numeric={1, 2}))
        if c["rejected"]:
            out.append(_table(["rejected consent event reason", "events"], list(map(list, c["rejected"].items())),
                              numeric={1}))
    if ret["runs"]:
        out.append(f"<p>Retention: {ret['runs']} run(s) erased {ret['keys_erased']} period key(s) of "
                   f"{ret['periods_erased']} period(s).</p>")
    return "".join(out) + "</section>"


def _dp(r: dict[str, Any]) -> str:
    dp = r["dp"]
    out = ["<section id=\"dp\"><h2>Differentially private aggregates: budget spent against its cap</h2>"]
    aggregates = dp["aggregates"]
    if not aggregates and not dp["budgets"]:
        out.append(_none("No DP aggregate is declared or in the ledger."))
        return "".join(out) + "</section>"
    names = [a["aggregate"] for a in aggregates]
    traces = [{"type": "bar", "name": "spent in the report period", "x": names,
               "y": [a["epsilon_report_period"] for a in aggregates]},
              {"type": "bar", "name": "peak rolling period", "x": names,
               "y": [a.get("epsilon_peak_period", 0) for a in aggregates]}]
    caps = [a.get("epsilon_cap") for a in aggregates]
    if any(c is not None for c in caps):
        traces.append({"type": "scatter", "mode": "markers", "name": "cap per period", "x": names, "y": caps,
                       "marker": {"symbol": "line-ew-open", "size": 40, "color": "#c62828",
                                  "line": {"width": 3}}})
    out.append(_chart("dp-aggregates", traces, "Epsilon per aggregate", barmode="group", counts=False))
    out.append(_table(
        ["aggregate", "source", "releases", "windows", "epsilon (period)", "peak rolling", "cap", "period",
         "used", "refused", "late"],
        [[a["aggregate"], a["source_topic"] or "", a["releases_report_period"], a["windows_report_period"],
          _num(a["epsilon_report_period"]), _num(a.get("epsilon_peak_period")), _num(a.get("epsilon_cap")),
          _duration(a["period_s"] * 1000) if a.get("period_s") else "", _pct(a.get("cap_used")),
          sum(n for o, n in a["audit"].items() if o.startswith("refused")), a["audit"].get("late", 0)]
         for a in aggregates], numeric={2, 3, 4, 5, 6, 8, 9, 10}))
    if dp["budgets"]:
        budgets = dp["budgets"]
        out.append("<h3>Budgets (every aggregate about the same subjects)</h3>")
        names = [b["budget"] for b in budgets]
        out.append(_chart("dp-budgets", [
            {"type": "bar", "name": "peak rolling period", "x": names,
             "y": [b["epsilon_peak_period"] for b in budgets]},
            {"type": "bar", "name": "latest period", "x": names, "y": [b["epsilon_latest_period"] for b in budgets]},
            {"type": "scatter", "mode": "markers", "name": "cap", "x": names,
             "y": [b["epsilon_cap"] for b in budgets],
             "marker": {"symbol": "line-ew-open", "size": 40, "color": "#c62828", "line": {"width": 3}}}],
            "Epsilon per budget against its cap", barmode="group", counts=False))
        out.append(_table(["budget", "sources", "epsilon (period)", "peak rolling", "latest period", "cap",
                           "remaining", "period", "used"],
                          [[b["budget"], ", ".join(b["sources"]), _num(b["epsilon_report_period"]),
                            _num(b["epsilon_peak_period"]), _num(b["epsilon_latest_period"]), _num(b["epsilon_cap"]),
                            _num(b["epsilon_remaining"]), _duration(b["period_s"] * 1000), _pct(b["cap_used"])]
                           for b in budgets], numeric={2, 3, 4, 5, 6, 8}))
    rel = dp["releases"]
    out.append(f"<p class=\"note\">Release audit events in the period: {rel['released']} released "
               f"({rel['groups_released']} groups), {rel['refused']} refused, {rel['late_events']} late events "
               "dropped. Group counts are themselves DP outputs (noisy key selection).</p>")
    return "".join(out) + "</section>"


def _quality(r: dict[str, Any]) -> str:
    q = r["quality"]
    out = ["<section id=\"quality\"><h2>Data quality</h2>"]
    failures = q["failures_from_audit"]
    if not failures and not q["sources"]:
        out.append(_none("No quality rule failed and no quality window closed in this period."))
        return "".join(out) + "</section>"
    if failures:
        labels = [f"{t}: {rule}" for t, rules in failures.items() for rule in rules]
        counts = [n for rules in failures.values() for n in rules.values()]
        out.append(_chart("quality-failures", [{"type": "bar", "orientation": "h", "y": labels, "x": counts,
                                                "marker": {"color": "#8250df"}}],
                          "Events failing each quality rule (audit)", height=_bars_height(len(labels))))
        out.append(_table(["source topic", "rule", "events failing"],
                          [[t, rule, n] for t, rules in failures.items() for rule, n in rules.items()], numeric={2}))
    if q["sources"]:
        out.append(f"<h3>Quality windows ({q['windows']} in the period)</h3>")
        completeness = [(t, name, c) for t, s in q["sources"].items() for name, c in s["completeness"].items()]
        if completeness:
            labels = [f"{t}: {name}" for t, name, _ in completeness]
            traces = [{"type": "bar", "name": "present", "x": labels, "y": [c["rate"] for _, _, c in completeness],
                       "marker": {"color": "#1a7f37"}}]
            if any("target" in c for _, _, c in completeness):
                traces.append({"type": "scatter", "mode": "markers", "name": "target", "x": labels,
                               "y": [c.get("target") for _, _, c in completeness],
                               "marker": {"symbol": "line-ew-open", "size": 30, "color": "#c62828",
                                          "line": {"width": 3}}})
            out.append(_chart("quality-completeness", traces, "Completeness per field (share non-null)",
                              yaxis={"range": [0, 1.05], "tickformat": ".0%"}, counts=False))
        rows = []
        for t, s in q["sources"].items():
            for name, rule in s["rules"].items():
                rows.append([t, name, f"{rule['kind']} / {rule['action']}", rule["failed"], _pct(rule["rate"])])
            for name, c in s["completeness"].items():
                target = f" (target {_pct(c['target'])}, {c['windows_below_target']} window(s) below)" \
                    if "target" in c else ""
                rows.append([t, f"{name} present", "completeness" + target, c["present"], _pct(c["rate"])])
            rows.append([t, "event lag", "freshness", f"max {s['lag_ms']['max']} ms", f"mean {s['lag_ms']['mean']} ms"])
            risk = s.get("risk")
            if risk is not None:
                rows.append([t, "smallest class", f"k-anonymity (target {risk['k_target']})",
                             "" if risk["k_min"] is None else risk["k_min"], ""])
                rows.append([t, "records in classes below k", "k-anonymity", risk["below_k_records"],
                             _pct(risk["below_k_share"])])
        out.append(_table(["source topic", "measure", "kind / action", "count", "rate"], rows, numeric={3, 4}))
        out.append(_table(["source topic", "windows", "events checked", "sanitized"],
                          [[t, s["windows"], s["events"], s["sanitized"]] for t, s in q["sources"].items()],
                          numeric={1, 2, 3}))
    return "".join(out) + "</section>"


def _leaks(r: dict[str, Any]) -> str:
    leaks = r["leaks"]
    red = r["redactions"]
    out = ["<section id=\"leaks\"><h2>Leak sentinel and redaction</h2>"]
    if leaks["findings"]:
        entities = sorted({f["entity"] for f in leaks["findings"]})
        fields = sorted({f"{f['source']}: {f['field']}" for f in leaks["findings"]})
        out.append(_chart("leaks", [
            {"type": "bar", "orientation": "h", "name": entity, "y": fields,
             "x": [sum(f["count"] for f in leaks["findings"]
                       if f["entity"] == entity and f"{f['source']}: {f['field']}" == label) for label in fields]}
            for entity in entities], "Suspected PII in kept fields (sampled events)", barmode="stack",
            height=_bars_height(len(fields))))
        out.append(_table(["source topic", "field", "entity", "events"],
                          [[f["source"], f["field"], f["entity"], f["count"]] for f in leaks["findings"]], numeric={3}))
    else:
        out.append(_none("The leak sentinel found no PII in a kept field in this period."))
    if red["by_source"]:
        out.append(f"<h3>Entities redacted from free text ({red['events']} events)</h3>")
        out.append(_table(["source topic", "field", "entity", "redacted"],
                          [[t, path, entity, n] for t, paths in red["by_source"].items()
                           for path, entities in paths.items() for entity, n in entities.items()], numeric={3}))
    return "".join(out) + "</section>"


def _audit(r: dict[str, Any]) -> str:
    a = r["audit"]
    out = ["<section id=\"audit\"><h2>Audit trail</h2>"]
    out.append(_table(["audit record type", "in the period"], [[t, n] for t, n in a["by_type"].items()], numeric={1}))
    chains = a["chains"]
    if chains is None:
        out.append(_none("The hash chains were not verified."))
    else:
        status = "verified: every chain is intact" if chains["verified"] else \
            f"BROKEN: {chains['breaks_total']} break(s)"
        out.append(f"<p data-figure=\"chain-status\">Hash chains over the whole audit topic: {chains['events']} events "
                   f"in {chains['chains']} chains, {_e(status)}; {chains['restarts']} restart(s).</p>")
        if chains["breaks"]:
            out.append("<ul>" + "".join(f"<li><code>{_e(b)}</code></li>" for b in chains["breaks"]) + "</ul>")
    return "".join(out) + "</section>"


# ---- building blocks ----------------------------------------------------------------------------
def _plotly_js() -> str:
    """The plotly.js bundle of the installed plotly package, inlined once (as plotly's own
    `include_plotlyjs=True` does; MathJax is not loaded)."""
    from plotly.offline import get_plotlyjs

    return ("<script type=\"text/javascript\">window.PlotlyConfig = {MathJaxConfig: 'local'};</script>"
            f"<script type=\"text/javascript\" charset=\"utf-8\" id=\"plotly-js\">{get_plotlyjs()}</script>")


VALIDATE = False  # tests set it: every figure then goes through plotly's validation (slow: ~80 ms a figure)


def _chart(name: str, traces: Sequence[dict[str, Any]], title: str, height: int = 340, barmode: str | None = None,
           yaxis: dict[str, Any] | None = None, counts: bool = True) -> str:
    """One plotly figure as a <div> and its Plotly.newPlot call (the library is inlined once, in <head>).
    `counts`: the value axis counts events, so its ticks are whole numbers."""
    import plotly.io as pio

    layout: dict[str, Any] = {"title": {"text": title}, "height": height, "template": _template(),
                              "margin": {"l": 60, "r": 20, "t": 60, "b": 50},
                              "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right",
                                         "x": 1}}
    if barmode:
        layout["barmode"] = barmode
    if yaxis:
        layout["yaxis"] = yaxis
    horizontal = any(t.get("orientation") == "h" for t in traces)
    if horizontal:
        layout["yaxis"] = {**layout.get("yaxis", {}), "automargin": True}
        layout["margin"]["l"] = 20
    if counts:
        layout["xaxis" if horizontal else "yaxis"] = {**layout.get("xaxis" if horizontal else "yaxis", {}),
                                                      "dtick": _count_tick(traces, horizontal, barmode == "stack"),
                                                      "rangemode": "tozero"}
    figure: Any = {"data": list(traces), "layout": layout}
    if VALIDATE:
        import plotly.graph_objects as go

        figure = go.Figure(figure)
    div = pio.to_html(figure, full_html=False, include_plotlyjs=False, include_mathjax=False, validate=VALIDATE,
                      div_id=f"chart-{name}", config=CHART_CONFIG, default_height=f"{height}px", default_width="100%")
    return f"<div class=\"chart\" data-chart=\"{_e(name)}\">{div}</div>"


@functools.cache
def _template() -> dict[str, Any]:
    """plotly's "plotly_white" template, resolved once (the figures are dicts, not validated objects)."""
    import plotly.io as pio

    return dict(pio.templates["plotly_white"].to_plotly_json())


def _count_tick(traces: Sequence[dict[str, Any]], horizontal: bool, stacked: bool) -> int:
    """A whole-number tick step giving at most about 8 ticks up to the tallest bar (or stack)."""
    values, categories = ("x", "y") if horizontal else ("y", "x")
    totals: dict[Any, float] = {}
    for t in traces:
        for c, v in zip(t.get(categories) or [], t.get(values) or [], strict=False):
            if isinstance(v, int | float):
                totals[c] = totals.get(c, 0) + v if stacked else max(totals.get(c, 0), v)
    top = max(totals.values(), default=1)
    magnitude = 1
    while True:
        for n in (1, 2, 5):
            if top / (n * magnitude) <= 8:
                return n * magnitude
        magnitude *= 10


def _bars_height(bars: int) -> int:
    """Height of a horizontal bar chart: room for each bar, title and axis."""
    return 130 + 34 * max(1, bars)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    cls = [" class=\"n\"" if i in numeric else "" for i in range(len(head))]
    out = ["<table><thead><tr>", *(f"<th{cls[i]}>{_e(h)}</th>" for i, h in enumerate(head)), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls[i] if i < len(cls) else ''}>{_e(v)}</td>" for i, v in enumerate(row))
                   + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _none(text: str) -> str:
    return f"<p class=\"none\">{_e(text)}</p>"


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | int | None) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _axis_time(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size} {unit}"
    return f"{ms} ms"
