"""Stage 2 closes windows on a schedule that does not depend on the data: every window of every
aggregate on every owned partition, empty or not, once the wall clock passed end + grace + settle;
event times (a producer's) only choose a window, they never move the schedule."""

from __future__ import annotations

from dataclasses import replace

import orjson

from gateway.dp.bounding import Contribution
from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import Charge, Ledger, LedgerEntry
from gateway.dp.windows import GroupWindows, close_time, first_due

SPEC = AggregateSpec(
    schema="t.Payment", name="visits", metric="count", field=None, group_by=("country",), window_ms=10_000,
    grace_ms=2_000, epsilon=1.0, delta=1e-6, max_groups_per_subject=1, max_records_per_group=1, clamp=None,
    time_field=None, output_topic="out", source_topic="src", sanitized_topic="san", period_ms=3_600_000,
    period_epsilon_cap=100.0, period_delta_cap=1.0)
SETTLE = 1_000


def _windows(now: int, partitions: int = 2) -> GroupWindows:
    w = GroupWindows({SPEC.id: SPEC}, settle_ms=SETTLE)
    for p in range(partitions):
        w.schedule(SPEC.id, p, None, now)
    return w


def test_every_window_of_every_partition_closes_with_or_without_data() -> None:
    now = 1_000_000
    w = _windows(now)
    assert w.due(now) == []  # a fresh schedule releases nothing about the past
    first = first_due(SPEC, now, SETTLE)
    assert close_time(SPEC, first) + SETTLE > now >= close_time(SPEC, first - SPEC.window_ms) + SETTLE
    # data on partition 0 only, in the second window
    assert w.add(Contribution(SPEC.id, first + 10_000, '["DE"]', 0, first + 10_500), 0, 7)
    later = close_time(SPEC, first + 20_000) + SETTLE
    due = w.due(later)
    assert due == sorted((SPEC.id, s, p) for s in (first, first + 10_000, first + 20_000) for p in (0, 1))
    states = {k: w.close(k) for k in due}
    assert states[(SPEC.id, first + 10_000, 0)].counts == {'["DE"]': 1}
    assert all(not s.counts for k, s in states.items() if k != (SPEC.id, first + 10_000, 0))
    assert w.due(later) == []


def test_event_time_never_moves_the_schedule() -> None:
    now = 1_000_000
    w = _windows(now, partitions=1)
    first = first_due(SPEC, now, SETTLE)
    year_3000 = 32_503_680_000_000
    assert w.add(Contribution(SPEC.id, SPEC.window_start(year_3000), '["DE"]', 0, year_3000), 0, 1)
    assert w.due(close_time(SPEC, first) + SETTLE) == [(SPEC.id, first, 0)]  # only the wall clock decides
    assert w.add(Contribution(SPEC.id, first, '["DE"]', 0, first + 1), 0, 2)  # not late


def test_a_contribution_for_a_closed_or_unscheduled_window_is_late() -> None:
    now = 1_000_000
    w = _windows(now, partitions=1)
    first = first_due(SPEC, now, SETTLE)
    assert not w.add(Contribution(SPEC.id, first - 10_000, '["DE"]', 0, first - 1), 0, 1)  # before the schedule
    w.close((SPEC.id, first, 0))
    assert not w.add(Contribution(SPEC.id, first, '["DE"]', 0, first + 1), 0, 2)
    assert not w.add(Contribution(SPEC.id, first, '["DE"]', 0, first + 1), 1, 3)  # partition not scheduled


def test_a_restart_goes_on_after_the_last_window_done_and_catches_up_at_most_a_period() -> None:
    now = 10_000_000
    ledger = Ledger()
    entry = LedgerEntry.for_release(SPEC, now - 100_000, 0, 0, now, "w")
    ledger.apply(entry)
    w = GroupWindows({SPEC.id: SPEC}, settle_ms=SETTLE)
    w.schedule(SPEC.id, 0, ledger.last_window(SPEC.id, 0), now)
    assert w.due(now)[0] == (SPEC.id, now - 90_000, 0)  # the missed windows, from the next one on
    # an admitted charge not released yet is not done: its window is released again (from the charge)
    ledger.apply_charge(Charge.for_release(SPEC, now - 90_000, 0, now, "w", drawn={"groups": []}))
    assert ledger.last_window(SPEC.id, 0) == now - 100_000
    long_ago = GroupWindows({SPEC.id: SPEC}, settle_ms=SETTLE)
    long_ago.schedule(SPEC.id, 0, 0, now)
    assert long_ago.next_window[(SPEC.id, 0)] == first_due(SPEC, now, SETTLE) - SPEC.period_ms


def test_a_continual_aggregate_is_scheduled_on_its_one_partition_inside_its_horizon() -> None:
    spec = replace(SPEC, continual_windows=3, continual_start_ms=2_000_000, continual_groups=('["DE"]',))
    w = GroupWindows({spec.id: spec}, settle_ms=SETTLE)
    for p in range(3):
        w.schedule(spec.id, p, None, 1_000_000, only_partition=0)
    assert list(w.next_window) == [(spec.id, 0)] and w.next_window[(spec.id, 0)] == 2_000_000
    due = w.due(10**9)
    assert [k[1] for k in due] == [2_000_000, 2_010_000, 2_020_000]  # the horizon, nothing past it


def test_the_charge_keeps_the_drawn_values_and_the_first_charge_decides() -> None:
    drawn = {"groups": [['["DE"]', 41, None]]}
    first = Charge.for_release(SPEC, 0, 1, 5, "a", drawn=drawn)
    assert Charge.from_json(first.to_json()).drawn == drawn
    ledger = Ledger()
    ledger.apply_record(first.key, first.to_json())
    second = Charge.for_release(SPEC, 0, 1, 6, "b", drawn={"groups": [['["DE"]', 40, None]]})
    ledger.apply_record(second.key, second.to_json())
    assert ledger.charge_of(SPEC.id, 0, 1).drawn == drawn  # a retry, or another worker, releases these
    other = Charge.for_release(SPEC, 0, 2, 7, "b", drawn={"groups": []})
    ledger.apply_record(other.key, other.to_json())
    # the window's epsilon is reported once: by the release of the partition whose charge decided it
    assert ledger.reported_cost(SPEC.id, 0, 1) == 1.0 and ledger.reported_cost(SPEC.id, 0, 2) == 0.0
    old = _without_drawn(first)
    assert Charge.from_json(old).drawn is None  # a charge of the previous format is still read


def _without_drawn(charge: Charge) -> bytes:
    body = orjson.loads(charge.to_json())
    del body["drawn"]
    return orjson.dumps(body)
