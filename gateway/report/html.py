"""`gateway report --html FILE`: the report as ONE self-contained HTML file.

Inline CSS, the plotly.js bundle inlined once (from the installed plotly package, so the version
pinned in pyproject.toml), each chart a plotly figure drawn by it, and every figure also as text in
a table beside its chart. No element loads anything: no external script, stylesheet, image or font,
so the file opens offline and can be archived with the assessment it documents.

The markup is in Jinja2 templates (gateway/report/templates/) with autoescape on: this module turns
the collected report into data (tiles, tables, charts), the templates lay it out, and every name,
topic, reason or note is escaped on its way in. Only two things go in as they are: the plotly.js
bundle and each chart's plotly <div> (plotly's own output; its figure JSON escapes '</').
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
from markupsafe import Markup

from gateway.report.collect import PrivacyReport, iso

COLORS = {"sanitized": "#2e7d32", "rejected": "#c62828", "withheld": "#ef6c00"}
CHART_CONFIG = {"displaylogo": False, "displayModeBar": False, "responsive": True, "showSendToCloud": False,
                "plotlyServerURL": "", "modeBarButtonsToRemove": ["sendDataToCloud"]}

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("gateway.report", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, trim_blocks=True, keep_trailing_newline=True)


@dataclass(frozen=True)
class Table:
    """A table the templates draw: its head, its rows (None shows as an empty cell) and the columns
    that hold numbers (right-aligned)."""

    head: Sequence[str]
    rows: list[Sequence[Any]]
    numeric: frozenset[int] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Tile:
    name: str
    value: Any
    label: str
    cls: str


def render(report: PrivacyReport) -> str:
    """The whole HTML document."""
    r = report.to_json()
    title = f"Privacy report {r['period']['since_iso']} .. {r['period']['until_iso']}"
    return _TEMPLATES.get_template("report.html.j2").render(
        title=title, r=r, plotly_js=_plotly_js(), overview=_overview(r), events=_events(r),
        policies=_policies(r), keys=_keys(r), dp=_dp(r), quality=_quality(r), leaks=_leaks(r), consent=_consent(r),
        audit=_audit(r))


# ---- sections: each the data its part of report.html.j2 draws (None: the section says it has nothing) ----------
def _overview(r: dict[str, Any]) -> dict[str, Any]:
    e = r["events"]
    o = e["by_outcome"]
    chains = r["audit"]["chains"]
    epsilon = sum(a["epsilon_report_period"] for a in r["dp"]["aggregates"])
    tiles = [Tile("events", e["total"], "events audited", ""),
             Tile("sanitized", o["sanitized"], "sanitized", "good"),
             Tile("rejected", o["rejected"], "rejected (dead letters)", "bad" if o["rejected"] else ""),
             Tile("withheld", o["withheld"], "withheld (risk)", ""),
             Tile("forgotten", r["forgotten"]["subjects"], "subjects forgotten", ""),
             Tile("keys-created", r["keys"]["subject_keys"]["created"], "subject keys created", ""),
             Tile("keys-erased", r["keys"]["subject_keys"]["erased"], "subject keys erased", ""),
             Tile("dp-releases", r["dp"]["releases"]["released"], "DP releases", ""),
             Tile("epsilon", _num(epsilon), "epsilon spent (all aggregates)", ""),
             Tile("leaks", r["leaks"]["events"], "leak-sentinel hits", "bad" if r["leaks"]["events"] else "")]
    if chains is not None:
        tiles.append(Tile("chains", "verified" if chains["verified"] else "BROKEN",
                          f"audit chains ({chains['chains']})", "good" if chains["verified"] else "bad"))
    return {"tiles": tiles, "notes": r["notes"]}


def _events(r: dict[str, Any]) -> dict[str, Any] | None:
    e = r["events"]
    if not e["total"]:
        return None
    series = e["series"]
    x = [_axis_time(t) for t in series["starts"]]
    bucket = _duration(series["bucket_ms"])
    over_time = _chart("events-over-time", [
        {"type": "bar", "name": kind, "x": x, "y": ys, "marker": {"color": COLORS.get(kind)}}
        for kind, ys in series["by_outcome"].items() if any(ys)],
        f"Events per {bucket} (UTC, audit time)", barmode="stack")
    sources = e["by_source"]
    by_source = _chart("events-by-source", [
        {"type": "bar", "orientation": "h", "name": kind, "y": list(sources),
         "x": [s["by_outcome"].get(kind, 0) for s in sources.values()], "marker": {"color": COLORS.get(kind)}}
        for kind, n in e["by_outcome"].items() if n],
        "Events per source topic", barmode="stack", height=_bars_height(len(sources)))
    rows = [[topic, s["schema"] or "", s["total"], *(s["by_outcome"].get(k, 0) for k in e["by_outcome"]),
             ", ".join(f"{k} {n}" for k, n in s["dead_letter_reasons"].items()),
             ", ".join(f"{k} {n}" for k, n in s["withheld_reasons"].items())] for topic, s in sources.items()]
    rows.append(["all sources", "", e["total"], *e["by_outcome"].values(), "", ""])
    table = _table(["source topic", "schema", "events", *e["by_outcome"], "dead-letter reasons", "withheld reasons"],
                   rows, numeric={2, 3, 4, 5})
    reasons = e["dead_letter_reasons"]
    dead = None if not reasons else {
        "chart": _chart("dead-letter-reasons", [{"type": "bar", "orientation": "h", "y": list(reasons),
                                                 "x": list(reasons.values()), "marker": {"color": COLORS["rejected"]}}],
                        "Dead letters per reason", height=_bars_height(len(reasons))),
        "over_time": _chart("dead-letters-over-time", [
            {"type": "bar", "name": reason, "x": x, "y": ys} for reason, ys in series["by_reason"].items()],
            f"Dead letters per reason per {bucket} (UTC)", barmode="stack"),
        "table": _table(["reason", "dead letters"], [[k, n] for k, n in reasons.items()], numeric={1})}
    withheld = _table(["reason", "withheld"], [[k, n] for k, n in e["withheld_reasons"].items()], numeric={1}) \
        if e["withheld_reasons"] else None
    return {"over_time": over_time, "by_source": by_source, "table": table, "reasons": dead, "withheld": withheld}


def _policies(r: dict[str, Any]) -> dict[str, Any] | None:
    policies = r["policies"]
    if not policies:
        return None
    kinds = sorted({k for p in policies for k in p["counts"]})
    chart = _chart("fields-by-action", [
        {"type": "bar", "name": kind, "x": [p["schema"] for p in policies],
         "y": [p["counts"].get(kind, 0) for p in policies]} for kind in kinds],
        "Fields per action (from the compiled policies)", barmode="stack")
    schemas = [{"schema": p["schema"], "policy": p["policy"][:16], "source_topic": p["source_topic"],
                "sanitized_topic": p["sanitized_topic"], "leak_sentinel": p["leak_sentinel"],
                "table": _table(["action", "fields", "field paths"],
                                [[kind, len(paths), ", ".join(paths)] for kind, paths in p["by_action"].items()],
                                numeric={1})} for p in policies]
    return {"chart": chart, "schemas": schemas}


def _keys(r: dict[str, Any]) -> dict[str, Any]:
    k = r["keys"]
    sk = k["subject_keys"]
    f = r["forgotten"]
    figures = {"subject keys created": sk["created"], "subject keys erased": sk["erased"],
               "subjects forgotten": f["subjects"], "subject keys rewrapped": sk["rewrapped_in_topic"],
               "KEK ids in use": len(k["kek_ids"]), "token keys in use": len(k["token_keys"])}
    chart = _chart("keys", [{"type": "bar", "x": list(figures), "y": list(figures.values()),
                             "marker": {"color": "#0969da"}}], "Keys in the period") if any(figures.values()) else None
    table = _table(["figure", "count"], [[name, n] for name, n in figures.items()]
                   + [["subject keys live (key topic now)", sk["live"]],
                      ["tombstones still in the key topic", sk["tombstones_in_topic"]]], numeric={1})
    forgotten = _table(["domain", "forget events"], [[d, n] for d, n in f["by_domain"].items()], numeric={1}) \
        if f["subjects"] else None
    by_domain = None
    if sk["created_by_domain"] or sk["live_by_domain"]:
        domains = sorted(set(sk["created_by_domain"]) | set(sk["live_by_domain"]))
        by_domain = _table(["domain", "created in the period", "live now"],
                           [[d, sk["created_by_domain"].get(d, 0), sk["live_by_domain"].get(d, 0)] for d in domains],
                           numeric={1, 2})
    rows = [["KEK", kid, v["events"], v.get("deks", 0), iso(v["first_seen"]), iso(v["last_seen"])]
            for kid, v in k["kek_ids"].items()]
    rows += [["token key", kid, v["events"], "", iso(v["first_seen"]), iso(v["last_seen"])]
             for kid, v in k["token_keys"].items()]
    rows += [["quarantine key", kid, v["events"], "", iso(v["first_seen"]), iso(v["last_seen"])]
             for kid, v in k["quarantine_keys"].items()]
    rows += [["per-subject keys", f"domain {d}", v["events"], v.get("deks", 0), iso(v["first_seen"]),
              iso(v["last_seen"])] for d, v in k["subject_deks"].items()]
    ids = _table(["kind", "key id", "events", "data keys", "first seen", "last seen"], rows, numeric={2, 3}) \
        if rows else None
    return {"chart": chart, "table": table, "forgotten": forgotten, "by_domain": by_domain, "ids": ids,
            "rotations": k["rotations"]}


def _consent(r: dict[str, Any]) -> dict[str, Any] | None:
    c, ret = r["consent"], r["retention"]
    if not (c["changes"] or c["views"] or c["rejected"] or ret["runs"]):
        return None
    views = None
    if c["views"]:
        purposes = list(c["views"])
        views = {"chart": _chart("purposes", [
            {"type": "bar", "name": kind, "x": purposes, "y": [c["views"][p][kind] for p in purposes]}
            for kind in ("published", "withheld")], "Purpose views: published and withheld events", barmode="stack"),
            "table": _table(["purpose", "published", "withheld (no consent)"],
                            [[p, v["published"], v["withheld"]] for p, v in c["views"].items()], numeric={1, 2})}
    changes = rejected = None
    if c["changes"] or c["rejected"]:
        changes = _table(["purpose", "granted", "revoked"],
                         [[p, n.get("granted", 0), n.get("revoked", 0)] for p, n in c["changes"].items()],
                         numeric={1, 2})
        if c["rejected"]:
            rejected = _table(["rejected consent event reason", "events"], list(map(list, c["rejected"].items())),
                              numeric={1})
    return {"views": views, "changes": changes, "rejected": rejected, "retention": ret if ret["runs"] else None}


def _dp(r: dict[str, Any]) -> dict[str, Any] | None:
    dp = r["dp"]
    aggregates = dp["aggregates"]
    if not aggregates and not dp["budgets"]:
        return None
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
    chart = _chart("dp-aggregates", traces, "Epsilon per aggregate", barmode="group", counts=False)
    table = _table(
        ["aggregate", "source", "releases", "windows", "epsilon (period)", "peak rolling", "cap", "period",
         "used", "refused", "late"],
        [[a["aggregate"], a["source_topic"] or "", a["releases_report_period"], a["windows_report_period"],
          _num(a["epsilon_report_period"]), _num(a.get("epsilon_peak_period")), _num(a.get("epsilon_cap")),
          _duration(a["period_s"] * 1000) if a.get("period_s") else "", _pct(a.get("cap_used")),
          sum(n for o, n in a["audit"].items() if o.startswith("refused")), a["audit"].get("late", 0)]
         for a in aggregates], numeric={2, 3, 4, 5, 6, 8, 9, 10})
    budgets = None
    if dp["budgets"]:
        rows = dp["budgets"]
        names = [b["budget"] for b in rows]
        budgets = {"chart": _chart("dp-budgets", [
            {"type": "bar", "name": "peak rolling period", "x": names,
             "y": [b["epsilon_peak_period"] for b in rows]},
            {"type": "bar", "name": "latest period", "x": names, "y": [b["epsilon_latest_period"] for b in rows]},
            {"type": "scatter", "mode": "markers", "name": "cap", "x": names,
             "y": [b["epsilon_cap"] for b in rows],
             "marker": {"symbol": "line-ew-open", "size": 40, "color": "#c62828", "line": {"width": 3}}}],
            "Epsilon per budget against its cap", barmode="group", counts=False),
            "table": _table(["budget", "sources", "epsilon (period)", "peak rolling", "latest period", "cap",
                             "remaining", "period", "used"],
                            [[b["budget"], ", ".join(b["sources"]), _num(b["epsilon_report_period"]),
                              _num(b["epsilon_peak_period"]), _num(b["epsilon_latest_period"]),
                              _num(b["epsilon_cap"]), _num(b["epsilon_remaining"]), _duration(b["period_s"] * 1000),
                              _pct(b["cap_used"])] for b in rows], numeric={2, 3, 4, 5, 6, 8})}
    return {"chart": chart, "table": table, "budgets": budgets, "releases": dp["releases"]}


def _quality(r: dict[str, Any]) -> dict[str, Any] | None:
    q = r["quality"]
    failures = q["failures_from_audit"]
    if not failures and not q["sources"]:
        return None
    failed = None
    if failures:
        labels = [f"{t}: {rule}" for t, rules in failures.items() for rule in rules]
        counts = [n for rules in failures.values() for n in rules.values()]
        failed = {"chart": _chart("quality-failures", [{"type": "bar", "orientation": "h", "y": labels, "x": counts,
                                                        "marker": {"color": "#8250df"}}],
                                  "Events failing each quality rule (audit)", height=_bars_height(len(labels))),
                  "table": _table(["source topic", "rule", "events failing"],
                                  [[t, rule, n] for t, rules in failures.items() for rule, n in rules.items()],
                                  numeric={2})}
    windows = None
    if q["sources"]:
        completeness = [(t, name, c) for t, s in q["sources"].items() for name, c in s["completeness"].items()]
        chart = None
        if completeness:
            labels = [f"{t}: {name}" for t, name, _ in completeness]
            traces = [{"type": "bar", "name": "present", "x": labels, "y": [c["rate"] for _, _, c in completeness],
                       "marker": {"color": "#1a7f37"}}]
            if any("target" in c for _, _, c in completeness):
                traces.append({"type": "scatter", "mode": "markers", "name": "target", "x": labels,
                               "y": [c.get("target") for _, _, c in completeness],
                               "marker": {"symbol": "line-ew-open", "size": 30, "color": "#c62828",
                                          "line": {"width": 3}}})
            chart = _chart("quality-completeness", traces, "Completeness per field (share non-null)",
                           yaxis={"range": [0, 1.05], "tickformat": ".0%"}, counts=False)
        rows: list[Sequence[Any]] = []
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
        windows = {"count": q["windows"], "completeness": chart,
                   "measures": _table(["source topic", "measure", "kind / action", "count", "rate"], rows,
                                      numeric={3, 4}),
                   "sources": _table(["source topic", "windows", "events checked", "sanitized"],
                                     [[t, s["windows"], s["events"], s["sanitized"]] for t, s in q["sources"].items()],
                                     numeric={1, 2, 3})}
    return {"failures": failed, "windows": windows}


def _leaks(r: dict[str, Any]) -> dict[str, Any]:
    leaks = r["leaks"]
    red = r["redactions"]
    findings = None
    if leaks["findings"]:
        entities = sorted({f["entity"] for f in leaks["findings"]})
        fields = sorted({f"{f['source']}: {f['field']}" for f in leaks["findings"]})
        findings = {"chart": _chart("leaks", [
            {"type": "bar", "orientation": "h", "name": entity, "y": fields,
             "x": [sum(f["count"] for f in leaks["findings"]
                       if f["entity"] == entity and f"{f['source']}: {f['field']}" == label) for label in fields]}
            for entity in entities], "Suspected PII in kept fields (sampled events)", barmode="stack",
            height=_bars_height(len(fields))),
            "table": _table(["source topic", "field", "entity", "events"],
                            [[f["source"], f["field"], f["entity"], f["count"]] for f in leaks["findings"]],
                            numeric={3})}
    redactions = None
    if red["by_source"]:
        redactions = {"events": red["events"],
                      "table": _table(["source topic", "field", "entity", "redacted"],
                                      [[t, path, entity, n] for t, paths in red["by_source"].items()
                                       for path, entities in paths.items() for entity, n in entities.items()],
                                      numeric={3})}
    return {"findings": findings, "redactions": redactions}


def _audit(r: dict[str, Any]) -> dict[str, Any]:
    a = r["audit"]
    chains = a["chains"]
    status = None
    if chains is not None:
        status = "verified: every chain is intact" if chains["verified"] else \
            f"BROKEN: {chains['breaks_total']} break(s)"
    return {"table": _table(["audit record type", "in the period"], [[t, n] for t, n in a["by_type"].items()],
                            numeric={1}),
            "chains": chains, "status": status}


# ---- building blocks ----------------------------------------------------------------------------
def _plotly_js() -> Markup:
    """The plotly.js bundle of the installed plotly package, inlined once (as plotly's own
    `include_plotlyjs=True` does; MathJax is not loaded): the template puts it in its <script>."""
    from plotly.offline import get_plotlyjs

    return Markup(get_plotlyjs())  # noqa: S704 - plotly's own bundle, not data


VALIDATE = False  # tests set it: every figure then goes through plotly's validation (slow: ~80 ms a figure)


def _chart(name: str, traces: Sequence[dict[str, Any]], title: str, height: int = 340, barmode: str | None = None,
           yaxis: dict[str, Any] | None = None, counts: bool = True) -> Markup:
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
    div = Markup(div)  # noqa: S704 - plotly's own <div>, its figure JSON escapes '</'
    return Markup(_TEMPLATES.get_template("chart.html.j2").render(name=name, div=div))  # noqa: S704 - autoescaped


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


def _table(head: Sequence[str], rows: list[Sequence[Any]], numeric: set[int] | None = None) -> Table:
    return Table(head, rows, frozenset(numeric or ()))


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
