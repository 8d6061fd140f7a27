"""The HTML report: one self-contained file (nothing loaded from anywhere), every figure as text
beside its chart, no value, subject, token or key in it."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs_version

from gateway.core.policy.plan import Plan
from gateway.dp.ledger import Ledger
from gateway.report import html as report_html
from gateway.report.collect import collect
from gateway.report.html import render
from tests.unit import test_report_collect
from tests.unit.test_report_collect import CANARIES, SINCE, UNTIL, build

plan = test_report_collect.plan  # the same fixture: the ride policy of those tests
URL_ATTRIBUTES = {"src", "href", "srcset", "action", "data", "poster", "background", "formaction"}


class Page(HTMLParser):
    """What the tests look at: URL attributes, text outside scripts and styles, tiles, table rows, charts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.tiles: dict[str, str] = {}
        self.rows: list[list[str]] = []
        self.charts: list[str] = []
        self._stack: list[str] = []
        self._tile: str | None = None
        self._in_value = False
        self._script: dict[str, str | None] | None = None
        self._script_text: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.urls += [(tag, k, v or "") for k, v in attrs if k in URL_ATTRIBUTES]
        if tag == "script":
            self._script, self._script_text = a, []
        if tag == "div" and a.get("data-figure"):
            self._tile = a["data-figure"]
        if tag == "div" and a.get("class") == "value" and self._tile:
            self._in_value = True
        if tag == "div" and a.get("data-chart"):
            self.charts.append(str(a["data-chart"]))
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._script is not None:
            self.scripts.append((self._script, "".join(self._script_text)))
            self._script = None
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if tag == "div" and self._in_value:
            self._in_value = False
            self._tile = None
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self._script_text.append(data)
            return
        if self._stack and self._stack[-1] == "style":
            return
        self.text.append(data)
        if self._in_value and self._tile:
            self.tiles[self._tile] = self.tiles.get(self._tile, "") + data.strip()
        if self._cell is not None:
            self._cell.append(data)


def parse(document: str) -> Page:
    page = Page()
    page.feed(document)
    page.close()
    return page


@pytest.fixture(scope="module")
def document(plan: Plan) -> str:
    return render(build(plan))


def test_the_headline_numbers_are_in_the_text(document: str) -> None:
    tiles = parse(document).tiles
    assert tiles["events"] == "11" and tiles["sanitized"] == "7" and tiles["rejected"] == "3"
    assert tiles["withheld"] == "1" and tiles["forgotten"] == "3"
    assert tiles["keys-created"] == "2" and tiles["keys-erased"] == "2"
    assert tiles["dp-releases"] == "2" and tiles["epsilon"] == "3" and tiles["leaks"] == "2"


def test_tables_hold_every_charted_figure(document: str) -> None:
    rows = parse(document).rows
    assert ["wrong_type", "2"] in rows and ["quality:fare.range", "1"] in rows
    assert ["rides.raw", "t.report.Ride", "11", "7", "3", "1", "wrong_type 2, quality:fare.range 1",
            "k_anonymity 1"] in rows
    assert ["keep", "3", "ride_id, city, fare"] in rows and ["tokenize", "1", "rider_id"] in rows
    assert ["subject keys created", "2"] in rows and ["subjects forgotten", "3"] in rows
    dp = next(r for r in rows if r and r[0] == "t.report.Ride/rides_by_city")
    assert dp[:9] == ["t.report.Ride/rides_by_city", "rides.raw", "3", "3", "3", "3", "3", "1 d", "100.0%"]
    assert ["rides.raw", "fare.range", "2"] in rows  # failures from the audit
    assert ["rides.raw", "city", "EMAIL", "2"] in rows  # leak sentinel
    assert ["rides.raw", "note", "EMAIL", "2"] in rows  # redactions


def test_charts_are_plotly_figures_drawn_by_the_inlined_library(document: str) -> None:
    page = parse(document)
    assert set(page.charts) >= {"events-over-time", "events-by-source", "dead-letter-reasons", "dead-letters-over-time",
                                "fields-by-action", "keys", "dp-aggregates", "dp-budgets", "quality-failures",
                                "quality-completeness", "leaks"}
    assert document.count("Plotly.newPlot(") == len(page.charts)
    library = [body for attrs, body in page.scripts if attrs.get("id") == "plotly-js"]
    assert len(library) == 1 and len(library[0]) > 1_000_000  # the whole bundle, once
    assert get_plotlyjs_version() in library[0]


def test_nothing_is_loaded_from_anywhere(document: str) -> None:
    page = parse(document)
    assert page.urls == [], page.urls  # no src, href, srcset ... at all: no script, stylesheet, image or font
    assert all("src" not in attrs for attrs, _ in page.scripts)
    library = next(body for attrs, body in page.scripts if attrs.get("id") == "plotly-js")
    rest = document.replace(library, "")  # the library's own strings (e.g. the SVG namespace) aside
    assert "http://" not in rest and "https://" not in rest
    assert "@import" not in rest and "url(" not in rest


def test_no_value_subject_token_or_key_reaches_the_html(document: str) -> None:
    for canary in CANARIES:
        assert canary not in document, canary


def test_names_are_escaped(plan: Plan) -> None:
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=[], ledger=Ledger(), keys=[], quality=[], plans=[],
                     topics={"audit": "<script>alert(1)</script>"}, notes=["<img src=x onerror=alert(1)>"])
    document = render(report)
    assert "<script>alert(1)" not in document and "<img src=x" not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document


def test_an_empty_period_says_so_without_charts() -> None:
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=[], ledger=Ledger(), keys=[], quality=[], plans=[])
    page = parse(render(report))
    text = " ".join(page.text)
    assert "No event was audited in this period." in text and "No schemas were given" in text
    assert page.charts == [] and page.tiles["events"] == "0"


def test_the_file_is_written_whole(plan: Plan, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    out.write_text(render(build(plan)), encoding="utf-8")
    assert out.read_text(encoding="utf-8").rstrip().endswith("</html>")


def test_every_figure_passes_plotly_s_validation(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    """The report skips plotly's (slow) validation; here each figure goes through it, so a misspelt
    trace or layout property fails."""
    monkeypatch.setattr(report_html, "VALIDATE", True)
    assert len(parse(render(build(plan))).charts) == 11
    with pytest.raises(ValueError, match="colour"):
        report_html._chart("bad", [{"type": "bar", "x": [1], "y": [1], "colour": "red"}], "a misspelt property")


def test_count_axes_tick_whole_numbers() -> None:
    def tick(top: int) -> int:
        return report_html._count_tick([{"x": ["a"], "y": [top]}], horizontal=False, stacked=False)

    assert [tick(n) for n in (0, 1, 8, 9, 16, 17, 40, 41, 1000, 123456)] == [1, 1, 1, 2, 2, 5, 5, 10, 200, 20000]
    stacked = [{"orientation": "h", "y": ["a", "b"], "x": [6, 1]}, {"orientation": "h", "y": ["a", "b"], "x": [6, 1]}]
    assert report_html._count_tick(stacked, horizontal=True, stacked=True) == 2  # 12 in the tallest stack


def test_a_script_in_a_schema_topic_or_reason_name_from_the_audit_is_escaped() -> None:
    """The audit topic's names reach the report as they were written: a `<script>` in a schema, source
    topic, dead-letter reason or quality rule stays text (the templates autoescape), never markup."""
    hostile = "<script>alert(1)</script>"
    audit = [test_report_collect.event("sanitized", SINCE + 1000, topic=hostile, schema=hostile),
             test_report_collect.event(f"rejected:{hostile}", SINCE + 2000, topic=hostile, schema=hostile,
                                       quality=[hostile])]
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=audit, ledger=Ledger(), keys=[], quality=[], plans=[],
                     topics={"audit": hostile})
    document = render(report)
    assert "<script>alert" not in document
    page = parse(document)
    assert [attrs.get("id") for attrs, _ in page.scripts].count("plotly-js") == 1
    assert len(page.scripts) == 2 + len(page.charts)  # plotly's config line, its library, one per chart: no more
    assert next(r for r in page.rows if r[0] == hostile)[:5] == [hostile, hostile, "2", "1", "1"]
    assert hostile in " ".join(page.text)  # shown, as text
