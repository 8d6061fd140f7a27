"""Whether a window had data does not leave the DP boundary (issue #31, item 3), on the real broker.
Every window of every declared aggregate closes on every stage-2 partition on the wall-clock
schedule: an empty window is released (noise only: key selection keeps no group) and accounted
exactly like one with data — one charge and one ledger entry per partition, one audit event, the same
metrics. And the epsilon the worker reports (`gateway_dp_epsilon_spent_total`), the ledger and
`gateway budget show` agree: a window costs its epsilon once, however many partitions release it."""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from gateway.dp.ledger import Ledger
from gateway.embedded.broker import free_port
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents
from tests.http_get import http_get

from .conftest import Deployment, cli
from .test_dp_aggregate import audit_bodies, enable_aggregates, start_aggregator, wait_for

pytestmark = pytest.mark.integration
WINDOW_S = 2
PARTITIONS = 3
_EPSILON = re.compile(r'^gateway_dp_epsilon_spent_total\{aggregate="([^"]+)"\} ([0-9.e+-]+)$', re.M)
_RELEASES = re.compile(r'^gateway_dp_releases_total\{aggregate="([^"]+)",outcome="([^"]+)"\} ([0-9.e+-]+)$', re.M)


def test_every_window_closes_and_is_accounted_alike_with_or_without_data(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    enable_aggregates(d, [{"name": "visits", "metric": "count", "group_by": ["country"], "time_field": "occurred_at",
                           "window_s": WINDOW_S, "grace_s": 1, "epsilon": 0.5, "delta": 1e-6,
                           "max_groups_per_subject": 1, "max_records_per_group": 1}])
    schema_path = d.schemas / "payments.avsc"
    schema = orjson.loads(schema_path.read_bytes())
    schema["privacy"]["budget"] = {"period_s": 3600, "epsilon_cap": 1000.0}
    schema_path.write_bytes(orjson.dumps(schema))
    plan = d.payments
    spec = plan.aggregates[0]
    sanitizer = d.start_worker("schedule-sanitize")
    port = free_port()
    ledger_topic = f"privacy.ledger.{d.suffix}"
    aggregator = start_aggregator(d, "schedule", ledger_topic, "--metrics-port", str(port))
    try:
        # data in one window only, a few windows ahead
        base = (int(time.time()) + 6) // WINDOW_S * WINDOW_S * 1000
        samples = SampleEvents(seed=3)
        events = []
        for i in range(40):
            e = samples.payment()
            e.update(user_id=f"s-{i}", country="DE", occurred_at=base + 10 + i)
            events.append(encode_raw(plan, e, "avro"))
        d.produce(plan.source_topic, events)
        after = base + 4 * WINDOW_S * 1000

        def closed() -> list[dict[str, Any]] | None:
            found = [b for b in audit_bodies(d, "dp_release") if b["window"]["start"] <= after]
            return found if any(b["window"]["start"] == after for b in found) else None

        wait_for(closed, 90, "the windows after the one with data to close")

        def reported() -> dict[str, float]:
            return {a: float(v) for a, v in _EPSILON.findall(http_get(f"http://127.0.0.1:{port}/metrics")[1])}

        def agreeing() -> tuple[dict[str, float], float] | None:
            """The metric and the ledger at one moment (no release between two scrapes), equal."""
            before = reported()
            ledger = Ledger.from_records((r.key, r.value) for r in d.read(ledger_topic))
            total = ledger.summary(specs={spec.id: spec})[0]["epsilon_total"]
            after = reported()
            return (after, total) if before == after and after.get(spec.id) == pytest.approx(total) else None

        # each window's epsilon once (not once per partition), as the ledger counts it
        metric, _ = wait_for(agreeing, 30, "gateway_dp_epsilon_spent_total to equal the ledger's spend")
        text = http_get(f"http://127.0.0.1:{port}/metrics")[1]
    finally:
        assert aggregator.stop() == 0
        assert sanitizer.stop() == 0
    releases = audit_bodies(d, "dp_release")
    by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for b in releases:
        by_window[b["window"]["start"]].append(b)
    windows = sorted(by_window)
    # consecutive: no window is skipped for want of data, and every one is closed on every partition
    assert windows == list(range(windows[0], windows[-1] + 1, WINDOW_S * 1000)) and base in windows
    assert len(windows) >= 5
    for start, bodies in by_window.items():
        assert sorted(b["partition"] for b in bodies) == list(range(PARTITIONS)), start
        assert {b["outcome"] for b in bodies} == {"released"} and {b["epsilon"] for b in bodies} == {0.5}
        shape = [sorted(set(b) - {"time"}) for b in bodies]
        assert shape == [sorted(set(releases[0]) - {"time"})] * PARTITIONS  # the same fields, data or not
    released = [orjson.loads(r.value or b"") for r in d.read(spec.output_topic)]
    assert {r["window"]["start"] for r in released} == {base}  # the data's window published its group
    assert all(r["released_at"] == r["window"]["end"] + 1000 for r in released)  # the schedule's time

    records = d.read(ledger_topic)
    kinds = Counter((orjson.loads(r.value or b"").get("type", "entry"), orjson.loads(r.value or b"")["window_start"])
                    for r in records)
    for start in windows:
        assert kinds[("charge", start)] == PARTITIONS and kinds[("entry", start)] == PARTITIONS, start
    ledger = Ledger.from_records((r.key, r.value) for r in records)
    (row,) = ledger.summary(specs={spec.id: spec})
    assert row["epsilon_total"] == pytest.approx(0.5 * len(windows))
    assert list(metric) == [spec.id]
    counted = {(a, o): float(v) for a, o, v in _RELEASES.findall(text)}
    reported = {a: float(v) for a, v in _EPSILON.findall(text)}
    assert counted[(spec.id, "released")] == pytest.approx(reported[spec.id] / 0.5 * PARTITIONS)
    shown = cli("budget", "show", "--bootstrap", d.bootstrap, "--ledger-topic", ledger_topic,
                "--schemas", str(d.schemas))
    assert shown.returncode == 0, shown.stderr
    assert f"epsilon spent {row['epsilon_total']:g}" in shown.stdout.decode(), shown.stdout.decode()
