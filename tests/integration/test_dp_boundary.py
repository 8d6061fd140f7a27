"""Nothing exact leaves the DP boundary: `gateway aggregate` (the real one, with noise) runs with
`--metrics-port` on a stream whose bounded contributions the test knows exactly; neither its
`gateway_dp_*` metric samples (scraped while it runs and after the windows released) nor the numbers
in its log lines carry any of those exact figures, and the releases still carry their privacy
metadata (epsilon, delta, mechanism, bounds, error bound)."""

from __future__ import annotations

import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from gateway.dp.bounding import ACCEPTED, ContributionBounder
from gateway.dp.mechanisms import AggregateMechanism
from gateway.embedded.broker import free_port
from tests.http_get import http_get

from .conftest import Deployment
from .test_dp_aggregate import consumed_all, enable_aggregates, stages_drained, start_aggregator, wait_for

pytestmark = pytest.mark.integration
WINDOW_S = 5
AGGREGATES = [  # events in random order over two windows: a grace of two windows keeps all on time
    {"name": "spend", "metric": "sum", "field": "amount_minor", "group_by": ["country"], "time_field": "occurred_at",
     "window_s": WINDOW_S, "grace_s": 2 * WINDOW_S, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
     "max_records_per_group": 3, "clamp": [0, 5000]},
    {"name": "visits", "metric": "count", "group_by": ["currency"], "time_field": "occurred_at",
     "window_s": WINDOW_S, "grace_s": 2 * WINDOW_S, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
     "max_records_per_group": 2},
]
SMALLEST = 10  # exact figures below this are too common (partition numbers, window counts) to test for
# a number standing alone in a string: not part of a topic name, a partition ("topic:2") or a version
_NUMBER = re.compile(r"(?<![\w.:/-])\d+(?:\.\d+)?(?![\w.:/-])")
_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def _events(base: int) -> list[tuple[bytes, dict[str, Any]]]:
    """Subjects with 1 to 9 events over two windows and two groups per aggregate: many exceed the
    record bound (m) and the group bound (k), so every kind of exact count is well above 10."""
    rng = random.Random(2024)
    out = []
    for s in range(260):
        subject = f"tok_v1_boundary{s}".encode()
        for _ in range(rng.randint(1, 9)):
            out.append((subject, {"country": rng.choice(["DE", "FR"]), "currency": rng.choice(["EUR", "USD"]),
                                  "amount_minor": rng.randint(-100, 9000),
                                  "occurred_at": base + rng.randint(0, 2 * WINDOW_S * 1000 - 1)}))
    rng.shuffle(out)  # subjects interleave; each subject's own order is the order produced
    return out


def _exact_figures(d: Deployment, events: list[tuple[bytes, dict[str, Any]]]) -> set[float]:
    """Every exact figure of the stream the DP stages must keep inside: per aggregate, window and
    group the accepted contributions and their sum; per aggregate (and over all of them), per window
    and in total, each bounding outcome (accepted, over_record_bound, over_group_bound); totals of
    events, subjects and subject-windows (what the bounding state holds)."""
    bounder = ContributionBounder(d.payments.aggregates)  # the pure stage-1 logic, in produce order
    tallies: Counter[tuple[Any, ...]] = Counter()
    subject_windows: set[tuple[str, str, int]] = set()
    for key, record in events:
        tallies[("events",)] += 1
        for spec, outcome, c in bounder.offer(key.decode(), record, 0):
            window = spec.window_start(int(record["occurred_at"]))
            for who in (spec.name, "all"):  # per aggregate, and over all of them
                tallies[(who, outcome)] += 1
                tallies[(who, window, outcome)] += 1
            tallies[(spec.name, window, "events")] += 1
            subject_windows.add((spec.name, key.decode(), window))
            if outcome == ACCEPTED and c is not None:
                tallies[(spec.name, window, c.group, "count")] += 1
                tallies[(spec.name, window, c.group, "sum")] += c.value
                tallies[(spec.name, c.group, "count")] += 1
    tallies[("subjects",)] = len({key for key, _ in events})
    tallies[("subject_windows",)] = len(subject_windows)
    for name in ("spend", "visits"):
        tallies[(name, "subject_windows")] = sum(1 for s in subject_windows if s[0] == name)
    for name, outcome in (("spend", "over_record_bound"), ("spend", "over_group_bound"),
                          ("visits", "over_record_bound"), ("visits", "over_group_bound")):
        assert tallies[(name, outcome)] >= SMALLEST, (name, outcome, tallies[(name, outcome)])
    return {float(n) for n in tallies.values() if n >= SMALLEST}


def _data_independent(d: Deployment) -> set[float]:
    """Figures the worker may log that do not depend on the data: scales, thresholds, budgets."""
    out: set[float] = set()
    for spec in d.payments.aggregates:
        out |= {float(v) for v in AggregateMechanism(spec).describe().values() if isinstance(v, int | float)}
    return out


def _dp_samples(text: str) -> list[tuple[str, float]]:
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group(1).startswith("gateway_dp_"):
            samples.append((match.group(1), float(match.group(3))))
    return samples


def _numbers(value: Any) -> Iterator[float]:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int | float):
        yield float(value)
    elif isinstance(value, str):
        yield from (float(n) for n in _NUMBER.findall(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(k)
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def _log_numbers(log: str) -> list[tuple[float, str]]:
    """Each number in the worker's log lines with its line (the timestamp field aside)."""
    out = []
    for line in log.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            entry = line  # not one of ours: every number in it counts
        if isinstance(entry, dict):
            entry.pop("time", None)
        out += [(n, line) for n in _numbers(entry)]
    return out


def test_metrics_and_logs_of_the_dp_stages_carry_no_exact_figure(
        bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    d = Deployment(bootstrap, tmp_path_factory.mktemp("boundary"), uuid.uuid4().hex[:8])
    enable_aggregates(d, AGGREGATES)
    window_ms = WINDOW_S * 1000
    base = (int(time.time() * 1000) + 10_000) // window_ms * window_ms + window_ms  # two windows, just ahead
    events = _events(base)
    exact = _exact_figures(d, events)
    assert exact.isdisjoint(_data_independent(d)), "pick other test data: an exact figure equals a constant"
    # the checks below catch what the worker used to report (its stop line's exact tallies)
    accepted = max(exact)
    assert [n for n, _ in _log_numbers(orjson.dumps({"counts": {"stage1:accepted": int(accepted)}}).decode())
            if n in exact] == [accepted]
    port = free_port()
    # a settle of 4 s after end + grace: time to scrape while the windows are still open
    worker = start_aggregator(d, "boundary", f"privacy.ledger.{d.suffix}", "--metrics-port", str(port), idle_s=4)
    scrapes: list[str] = []
    try:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        headers = [("gateway-schema", d.payments.sanitized_schema["name"].encode()), ("gateway-encoding", b"json")]
        for key, record in events:
            producer.produce(d.payments.sanitized_topic, orjson.dumps(record), key, headers=headers)
        assert producer.flush(30) == 0
        # stage 1 has bounded (and committed) everything: scrape while it runs
        wait_for(lambda: consumed_all(d, f"{d.group_id}.dp-bound", d.payments.sanitized_topic), 30,
                 "stage 1 to commit its whole input")
        status, text = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        scrapes.append(text)
        output = d.payments.aggregates[0].output_topic

        def released() -> list[dict[str, Any]]:
            return [orjson.loads(r.value or b"") for r in d.read(output)]

        # 2 aggregates x 2 windows x 2 groups, each far above its key-selection threshold; the second
        # window closes on the clock, about 2 windows + grace + settle after the first event
        schema = d.payments.aggregates[0].schema
        wait_for(lambda: {(r["aggregate"], r["window"]["start"]) for r in released()} ==
                 {(f"{schema}/{a['name']}", w) for a in AGGREGATES for w in (base, base + window_ms)}, 60,
                 "both windows' releases")
        wait_for(lambda: stages_drained(d), 30, "both DP stages to commit their whole input")
        status, text = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        scrapes.append(text)
    finally:
        assert worker.stop() == 0
    log = worker.log()
    assert '"msg":"aggregate worker stopped"' in log and '"msg":"windows closed"' in log

    # metrics: no contributions counter at all, and no exact figure among the DP samples
    for text in scrapes:
        assert "gateway_dp_contributions" not in text
        leaked = [(name, value) for name, value in _dp_samples(text) if value in exact]
        assert not leaked, leaked
    final = dict(_dp_samples(scrapes[-1]))  # the DP metrics are there, and counted the releases
    assert {"gateway_dp_releases_total", "gateway_dp_groups_released_total",
            "gateway_dp_epsilon_spent_total"} <= set(final)
    # logs: no exact figure as a number anywhere in the worker's log lines
    leaked_lines = [line for n, line in _log_numbers(log) if n in exact]
    assert not leaked_lines, "\n".join(leaked_lines)

    # the releases still carry their privacy metadata
    specs = {s.id: s for s in d.payments.aggregates}
    records = released()
    assert records
    for r in records:
        spec = specs[r["aggregate"]]
        assert r["mechanism"].startswith("discrete_laplace") and r["epsilon"] == 1.0 and r["delta"] == 1e-6
        assert r["bounds"] == spec.bounds() and r["error_95"] > 0 and r["threshold"] >= SMALLEST
        assert r["noise_scale"]["count"] > 0
