"""Running totals of a continual aggregate: every declared group, every window of the horizon (zeros
where nobody contributed), restored without redrawing noise, charged once per horizon."""

from __future__ import annotations

import datetime
from dataclasses import replace

import orjson
import pytest

from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import Charge, Ledger
from gateway.dp.running import RunningTotals
from gateway.dp.windows import WindowState
from gateway.runtime.jobs.aggregate import window_cost
from tests.dp_doubles import ExactCounter

START = int(datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC).timestamp() * 1000)
MINUTE = 60_000
GROUPS = ('["DE"]', '["FR"]', '["LU"]')
SPEC = AggregateSpec(
    schema="t.Payment", name="running", metric="count", field=None, group_by=("country",), window_ms=MINUTE,
    grace_ms=0, epsilon=1.0, delta=1e-6, max_groups_per_subject=1, max_records_per_group=3, clamp=None,
    time_field=None, output_topic="out", source_topic="src", sanitized_topic="san", period_ms=86_400_000,
    period_epsilon_cap=10.0, period_delta_cap=1.0, continual_windows=8, continual_start_ms=START,
    continual_groups=GROUPS)


def _state(counts: dict[str, int]) -> WindowState:
    return WindowState(counts=dict(counts), sums={})


def test_totals_are_prefix_sums_for_every_group_and_skipped_windows_are_zeros() -> None:
    running = RunningTotals(SPEC, ExactCounter)
    first = running.release(START, _state({'["DE"]': 5, '["FR"]': 2}))
    assert [(r.t, r.totals) for r in first] == [(1, {'["DE"]': 5, '["FR"]': 2, '["LU"]': 0})]
    later = running.release(START + 3 * MINUTE, _state({'["DE"]': 1}))  # windows 2 and 3 had nobody
    assert [(r.t, r.window_start) for r in later] == [(2, START + MINUTE), (3, START + 2 * MINUTE),
                                                      (4, START + 3 * MINUTE)]
    assert [r.totals['["DE"]'] for r in later] == [5, 5, 6]
    assert running.release(START + MINUTE, _state({'["DE"]': 9})) == []  # behind: already released
    assert running.release(START + 8 * MINUTE, _state({'["DE"]': 9})) == []  # past the horizon
    assert running.release(START - MINUTE, _state({'["DE"]': 9})) == []  # before its start


def test_restore_continues_with_the_same_nodes() -> None:
    running = RunningTotals(SPEC)  # OpenDP noise
    for w in range(3):
        running.release(START + w * MINUTE, _state({'["DE"]': 3, '["FR"]': 1}))
    saved = running.state_json()
    again = RunningTotals(SPEC)
    again.restore(saved)
    assert again.t == 3 and again.state_json() == saved
    assert {g: c.total() for g, c in again.counters.items()} == {g: c.total() for g, c in running.counters.items()}
    with pytest.raises(Exception, match="no longer declares"):
        RunningTotals(replace(SPEC, continual_groups=('["DE"]',))).restore(saved)


def test_records_carry_the_release_facts() -> None:
    running = RunningTotals(SPEC)
    (release,) = running.release(START, _state({'["DE"]': 30}))
    record = running.record(release, '["DE"]', 123)
    assert record["group"] == {"country": "DE"} and record["release"] == "running_total"
    assert record["horizon"] == {"start": START, "windows": 8, "t": 1}
    assert record["epsilon"] == 1.0 and record["epsilon_over"] == "horizon" and record["delta"] == 0.0
    assert record["error_95"] == running.plan.half_width_95(1) > 0
    assert "binary" in record["mechanism"] or "tree" in record["mechanism"]
    assert record["bounds"]["max_records_per_group"] == 3
    assert abs(record["running_total"] - 30) < 10 * running.plan.scale  # noised, not wildly off
    orjson.dumps(record)


def test_the_horizon_is_charged_once() -> None:
    ledger = Ledger()
    costs = []
    for w in range(8):
        cost = window_cost(SPEC, ledger)
        costs.append(cost)
        ledger.apply_charge(Charge.for_release(SPEC, START + w * MINUTE, 0, 0, "w", cost))
    assert costs == [(1.0, 0.0)] + [(0.0, 0.0)] * 7
    assert sum(e for e, _ in ledger.windows(SPEC.id).values()) == pytest.approx(SPEC.epsilon)
    paid: set[str] = set()
    assert window_cost(SPEC, Ledger(), paid) == (1.0, 0.0)
    paid.add(SPEC.id)
    assert window_cost(SPEC, Ledger(), paid) == (0.0, 0.0)  # a second window charged in the same batch
