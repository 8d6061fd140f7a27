"""Continual release on the real broker: running totals per declared group after every window,
zeros for groups and windows nobody contributed to, and the horizon's epsilon charged once. The
aggregate worker runs with the noise-free test double (tests/dp_doubles.py), so the totals must be
the exact prefix sums of the bounded counts."""

from __future__ import annotations

import datetime
import time
from collections import defaultdict

import orjson
import pytest

from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment
from .test_dp_aggregate import NOISE_FREE_WORKER, enable_aggregates, stages_drained, start_aggregator, wait_for

pytestmark = pytest.mark.integration
WINDOW_S = 2
HORIZON = 6
PER_WINDOW = {1: {"DE": 7, "FR": 3}, 2: {"DE": 4}, 4: {"DE": 2, "FR": 5}}  # window 3: nobody


def test_running_totals_per_declared_group_charged_once(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    # the horizon starts ahead: windows close on the wall-clock schedule, so its events are on time
    start_s = (int(time.time()) + 15) // WINDOW_S * WINDOW_S
    start = datetime.datetime.fromtimestamp(start_s, datetime.UTC).isoformat()
    enable_aggregates(d, [{"name": "running_by_country", "metric": "count", "group_by": ["country"],
                           "time_field": "occurred_at", "window_s": WINDOW_S, "grace_s": 0, "epsilon": 1.0,
                           "delta": 1e-6, "max_groups_per_subject": 1, "max_records_per_group": 1,
                           "continual": {"horizon_windows": HORIZON, "start": start,
                                         "groups": [["DE"], ["FR"], ["LU"]]}}])
    plan = d.payments
    samples = SampleEvents(seed=5)
    events, n = [], 0
    for t, counts in PER_WINDOW.items():
        for country, count in counts.items():
            for _ in range(count):
                event = samples.payment()
                event.update(country=country, user_id=f"subject-{n}",
                             occurred_at=(start_s + (t - 1) * WINDOW_S) * 1000 + 100 + n)
                events.append(encode_raw(plan, event, "avro"))
                n += 1
    d.produce(plan.source_topic, events)
    worker = d.start_worker("continual-sanitize")
    ledger_topic = f"privacy.ledger.{d.suffix}"
    aggregator = start_aggregator(d, "continual", ledger_topic, idle_s=1, command=NOISE_FREE_WORKER)
    topic = plan.aggregates[0].output_topic
    try:
        def released() -> list[dict[str, object]] | None:
            records = [orjson.loads(r.value) for r in d.read(topic)] if stages_drained(d) else []
            return records if {r["horizon"]["t"] for r in records} >= set(range(1, 5)) else None

        records = wait_for(released, 90, "the running totals of windows 1-4")
    finally:
        assert aggregator.stop() == 0
        assert worker.stop() == 0

    totals: dict[tuple[int, str], list[int]] = defaultdict(list)
    assert {r["horizon"]["t"] for r in records} <= set(range(1, HORIZON + 1))  # nothing past the horizon
    records = [r for r in records if r["horizon"]["t"] <= 4]  # windows 5 and 6 close on the clock too
    for r in records:
        assert r["release"] == "running_total" and r["epsilon_over"] == "horizon" and r["error_95"] > 0
        totals[(r["horizon"]["t"], r["group"]["country"])].append(r["running_total"])
    expected, running = {}, dict.fromkeys(("DE", "FR", "LU"), 0)
    for t in range(1, 5):
        for country in running:
            running[country] += PER_WINDOW.get(t, {}).get(country, 0)
            expected[(t, country)] = [running[country]]
    assert dict(totals) == expected  # one record per group and window, window 3 and LU included

    ledger = [orjson.loads(r.value) for r in d.read(ledger_topic)]
    entries = [e for e in ledger if e.get("type") != "charge" and e["aggregate"].endswith("running_by_country")]
    assert entries and sum(e["epsilon"] for e in entries) == pytest.approx(1.0)  # the horizon, once
