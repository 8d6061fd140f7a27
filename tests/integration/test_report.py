"""`gateway report` on the real broker: a worker sanitizes sample events and planted ones (broken,
out of range, PII in a kept field, per-subject keys), one subject is forgotten, and the report's
JSON equals what the test reads from the topics itself; the HTML, rendered in headless Chromium,
draws its charts and shows the totals, and neither holds any planted value, subject or token."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.audit import record_entries
from gateway.core.quality.report import merge_windows
from gateway.runtime.reader import read_topic

from .conftest import Deployment, cli, committed_count, wait_for

pytestmark = pytest.mark.integration

ALICE, BOB = "alice.report-canary-6613", "bob.report-canary-2290"
LEAK_EMAIL = "leak.report-canary-3391@example.org"
NOTE = "diagnosis report-canary-7781"
SAMPLES = 60  # valid sample events per schema from `gateway produce-samples`
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=10000")


def rendered_dom(page: Path, workdir: Path) -> str:
    """The DOM headless Chromium builds from `page`, scripts run (skips the test without Chromium)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does): "
                    "the JSON was checked, the rendered HTML was not")
    profile = workdir / "chromium-profile"
    profile.mkdir()
    rendered = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                              capture_output=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr.decode()[-2000:]
    return rendered.stdout.decode()


def _notes_schema(suffix: str) -> dict[str, Any]:
    """Per-subject keys (the key topic), a reject rule (a dead-letter reason), a kept free-text field
    (the leak sentinel) and one-second quality windows."""
    return {
        "type": "record", "name": "Note", "namespace": "t.report",
        "privacy": {"source_topic": f"report.notes.raw.{suffix}", "sanitized_topic": f"report.notes.sanitized.{suffix}",
                    "subject": "patient_id", "input": "json", "output": "json", "quality": {"window_s": 1}},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "patient_id", "type": "string", "privacy": {"tokenize": {"domain": "report-patient"}}},
            {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True}}},
            {"name": "comment", "type": "string", "privacy": "keep"},
            {"name": "amount", "type": "long", "privacy": "keep",
             "quality": {"range": {"min": 0, "max": 1000, "action": "reject"}}},
        ],
    }


def test_report_counts_equal_the_topics_and_the_html_draws_them(fresh_deployment: Deployment, tmp_path: Path) -> None:
    d = fresh_deployment
    kafka = {"bootstrap.servers": d.bootstrap}
    key_topic, quality_topic = f"privacy.keys.{d.suffix}", f"privacy.quality.{d.suffix}"
    ledger_topic = f"privacy.ledger.{d.suffix}"  # no aggregate worker: the ledger does not exist, caps still shown
    notes = _notes_schema(d.suffix)
    (d.schemas / "notes.avsc").write_bytes(orjson.dumps(notes))
    source = notes["privacy"]["source_topic"]
    phases: dict[str, float] = {}
    mark = time.monotonic()
    worker = d.start_worker("r1", partitions=2, wait=False, extra=(
        "--key-topic", key_topic, "--quality-topic", quality_topic, "--leak-sample-rate", "1"))
    try:  # the events wait in their topics while the worker starts (its group reads from the earliest offset)
        result = cli("produce-samples", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas),
                     "--count", str(SAMPLES))
        assert result.returncode == 0, result.stderr.decode()[-2000:]
        planted = [
            {"event_id": "n1", "patient_id": ALICE, "note": NOTE, "comment": "fine", "amount": 10},
            {"event_id": "n2", "patient_id": BOB, "note": NOTE, "comment": f"mail {LEAK_EMAIL}", "amount": 20},
            {"event_id": "n3", "patient_id": ALICE, "note": NOTE, "comment": "too much", "amount": 5000},
            {"event_id": "n4", "patient_id": BOB, "note": NOTE, "comment": "typed", "amount": "twenty"},
        ]
        d.produce(source, [orjson.dumps(p) for p in planted] + [b'{"event_id": "n5", "patient_id": '])
        expected = 3 * SAMPLES + len(planted) + 1
        phases["produce"], mark = time.monotonic() - mark, time.monotonic()
        worker.wait_for_log('"msg":"partitions assigned"')
        phases["worker start"], mark = time.monotonic() - mark, time.monotonic()
        d.wait_for_audit(expected)
        phases["audit wait"], mark = time.monotonic() - mark, time.monotonic()
        # the quality windows of the notes' partitions close within a second of going idle
        wait_for(lambda: committed_count(d.bootstrap, quality_topic) and any(
            w["source"] == source for w in merge_windows(orjson.loads(r.value or b"{}")
                                                         for r in read_topic(kafka, quality_topic))),
            "a quality window of the notes")
        phases["quality wait"], mark = time.monotonic() - mark, time.monotonic()
    finally:
        assert worker.stop() == 0  # stopped: the topics stand still while the report and the test read them
    phases["worker stop"], mark = time.monotonic() - mark, time.monotonic()
    forget = cli("forget", ALICE, "--domain", "report-patient", "--bootstrap", d.bootstrap, "--keyring",
                 str(d.keyring), "--schemas", str(d.schemas), "--key-topic", key_topic, "--audit-topic", d.audit_topic)
    assert forget.returncode == 0, forget.stderr.decode()
    assert "1 key(s) erased" in forget.stdout.decode()
    phases["forget"], mark = time.monotonic() - mark, time.monotonic()

    out = tmp_path / "report.html"
    with ThreadPoolExecutor(4) as pool:  # the report runs while the test reads the topics itself
        running = pool.submit(cli, "report", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas),
                              "--audit-topic", d.audit_topic, "--key-topic", key_topic, "--quality-topic",
                              quality_topic, "--ledger-topic", ledger_topic, "--since", "1h", "--html", str(out),
                              "--json")
        # the ground truth, from the topics as the test reads them
        reads = [pool.submit(read_topic, kafka, topic) for topic in (d.audit_topic, key_topic, quality_topic)]
        audit_records, key_records, quality_records = (f.result() for f in reads)
        report = running.result()
    audit = record_entries(r.value for r in audit_records)  # the entries: a worker's record holds a batch's
    windows = merge_windows(orjson.loads(r.value or b"{}") for r in quality_records)
    phases["report"], mark = time.monotonic() - mark, time.monotonic()
    assert report.returncode == 0, report.stderr.decode()[-3000:]
    body = orjson.loads(report.stdout)
    document = out.read_text(encoding="utf-8")
    events = [a for a in audit if a["type"] == "event"]
    assert len(events) == expected
    outcomes = Counter(a["outcome"].split(":", 1)[0] for a in events)
    reasons = Counter(a["outcome"].split(":", 1)[1] for a in events if a["outcome"].startswith("rejected:"))
    per_source = Counter(a["event"]["topic"] for a in events)
    assert reasons["wrong_type"] >= 1 and reasons["quality:amount.range"] >= 1 and reasons["json_invalid"] == 1
    (forgotten,) = [a for a in audit if a["type"] == "subject_forgotten"]
    created = {r.key for r in key_records if r.key and not r.key.startswith(b"_") and r.value is not None}
    leak_events = [a for a in events if a.get("leak_suspected")]
    assert any({"field": "comment", "entity": "EMAIL"} in a["leak_suspected"] for a in leak_events)
    quality_failures: dict[str, Counter[str]] = {}
    for a in events:
        if a.get("quality"):
            quality_failures.setdefault(a["event"]["topic"], Counter()).update(a["quality"])

    # ---- the report says the same ------------------------------------------------------------------
    e = body["events"]
    assert e["total"] == len(events)
    assert e["by_outcome"] == {"sanitized": outcomes["sanitized"], "rejected": outcomes["rejected"],
                               "withheld": outcomes["withheld"]}
    assert e["dead_letter_reasons"] == dict(reasons)
    assert {t: s["total"] for t, s in e["by_source"].items()} == dict(per_source)
    assert sum(sum(v) for v in e["series"]["by_outcome"].values()) == len(events)
    assert body["forgotten"] == {"subjects": 1, "by_domain": {"report-patient": 1},
                                 "keys_erased": forgotten["keys_erased"], "without_keys": 0}
    sk = body["keys"]["subject_keys"]
    assert sk["created"] == len(created) >= 2 and sk["erased"] == forgotten["keys_erased"] == 1
    assert sk["live"] == len(created) - 1 and sk["created_by_domain"] == {"report-patient": len(created)}
    assert len(body["keys"]["kek_ids"]) == 1 and body["keys"]["rotations"]["kek"] == 0
    assert body["leaks"]["events"] == len(leak_events)
    assert {"source": source, "field": "comment", "entity": "EMAIL"} in [
        {k: f[k] for k in ("source", "field", "entity")} for f in body["leaks"]["findings"]]
    assert body["quality"]["failures_from_audit"] == {t: dict(c) for t, c in quality_failures.items()}
    assert body["quality"]["windows"] == len(windows) >= 1
    assert body["quality"]["sources"][source]["events"] == sum(w["events"] for w in windows if w["source"] == source)
    policies = {p["schema"]: p for p in body["policies"]}
    assert set(policies) == {"example.payments.Payment", "example.clinical.ClinicalVisit", "t.report.Note"}
    assert policies["example.payments.Payment"]["fields"] == d.payments.field_actions
    assert policies["t.report.Note"]["counts"] == {"encrypt": 1, "keep": 3, "tokenize": 1}
    dp = {a["aggregate"]: a for a in body["dp"]["aggregates"]}
    assert set(dp) == {a.id for a in d.payments.aggregates}
    assert all(a["epsilon_report_period"] == 0 and a["epsilon_cap"] > 0 for a in dp.values())
    chains = body["audit"]["chains"]
    assert chains["verified"] and chains["events"] == len(audit) and chains["breaks"] == []

    # ---- nothing planted, no subject and no token ----------------------------------------------
    tokens = forgotten["subject_tokens"]
    key_names = [r.key.decode() for r in key_records if r.key and not r.key.startswith(b"_")]
    for canary in (ALICE, BOB, LEAK_EMAIL, NOTE, "report-canary", *tokens,
                   *(name.split("/")[1] for name in key_names)):
        assert canary not in report.stdout.decode(), canary
        assert canary not in document, canary
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)\s*=\s*[\"']?https?://", document, re.I)

    # ---- the HTML in a real browser -------------------------------------------------------------
    mark = time.monotonic()
    dom = rendered_dom(out, tmp_path)
    phases["chromium"] = time.monotonic() - mark
    charts = document.count('data-chart="')
    assert charts >= 8, charts
    svgs = dom.count('class="main-svg"')
    assert svgs >= charts, (svgs, charts)  # plotly drew every chart (each is one or more main-svg layers)
    for chart in ("events-over-time", "events-by-source", "dead-letter-reasons", "fields-by-action", "keys",
                  "dp-aggregates", "quality-failures", "leaks"):
        drawn = re.search(rf'id="chart-{chart}"[^>]*class="[^"]*js-plotly-plot', dom) or \
            re.search(rf'class="[^"]*js-plotly-plot[^"]*"[^>]*id="chart-{chart}"', dom)
        assert drawn, f"chart {chart} was not drawn"
    for tile, n in (("sanitized", outcomes["sanitized"]), ("rejected", outcomes["rejected"]),
                    ("events", len(events)), ("forgotten", 1)):
        assert re.search(rf'data-figure="{tile}"><div class="value">{n}</div>', dom), (tile, n)
    print(", ".join(f"{k} {v:.1f}s" for k, v in phases.items()) + f"; {charts} charts, {svgs} main-svg")
