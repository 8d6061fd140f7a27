"""The privacy ledger's accounting: per window once, per rolling period capped, replays refused."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import ALREADY_RELEASED, DELTA_CAP, EPSILON_CAP, Charge, Ledger, LedgerEntry

HOUR = 3_600_000
SPEC = AggregateSpec(
    schema="t.Payment", name="spend", metric="count", field=None, group_by=("country",), window_ms=HOUR,
    grace_ms=0, epsilon=1.0, delta=1e-6, max_groups_per_subject=1, max_records_per_group=1, clamp=None,
    time_field=None, output_topic="out", source_topic="src", sanitized_topic="san", period_ms=24 * HOUR,
    period_epsilon_cap=3.0, period_delta_cap=1.0)


def test_window_is_charged_once_across_partitions_and_never_twice_per_partition() -> None:
    ledger = Ledger()
    assert ledger.check(SPEC, 0, 0) is None
    ledger.charge(SPEC, 0, 0, groups=4, released_at=1, instance="a")
    assert ledger.check(SPEC, 0, 0) == ALREADY_RELEASED
    assert ledger.check(SPEC, 0, 1) is None  # same window, other groups: no extra epsilon
    ledger.charge(SPEC, 0, 1, groups=2, released_at=1, instance="b")
    assert ledger.windows(SPEC.id) == {0: (1.0, 1e-6)}


def test_rolling_period_cap_refuses_the_release_that_would_exceed_it() -> None:
    ledger = Ledger()
    for w in range(3):
        assert ledger.check(SPEC, w * HOUR, 0) is None
        ledger.charge(SPEC, w * HOUR, 0, 1, 0, "a")
    assert ledger.check(SPEC, 3 * HOUR, 0) == EPSILON_CAP
    # a window released out of order is checked against every period containing it
    assert ledger.check(SPEC, -5 * HOUR, 0) == EPSILON_CAP
    # once the period has rolled past the first three windows, budget is available again
    assert ledger.check(SPEC, 27 * HOUR, 0) is None
    assert ledger.period_spend(SPEC.id, 2 * HOUR, SPEC.period_ms) == pytest.approx((3.0, 3e-6))


def test_delta_cap() -> None:
    spec = replace(SPEC, period_epsilon_cap=100.0, period_delta_cap=1.5e-6)
    ledger = Ledger()
    ledger.charge(spec, 0, 0, 1, 0, "a")
    assert ledger.check(spec, HOUR, 0) == DELTA_CAP


def test_entries_round_trip_and_tombstones() -> None:
    entry = LedgerEntry(SPEC.id, 0, HOUR, 2, 1.0, 1e-6, 3, 99, "inst")
    assert LedgerEntry.from_json(entry.to_json()) == entry
    other = LedgerEntry(SPEC.id, HOUR, 2 * HOUR, 0, 1.0, 1e-6, 1, 99, "inst")
    ledger = Ledger.from_records([(entry.key, entry.to_json()), (other.key, other.to_json()), (other.key, None)])
    assert list(ledger.entries) == [entry.key]
    assert ledger.released(SPEC.id, 0, 2) and not ledger.released(SPEC.id, HOUR, 0)


def test_summary_rows() -> None:
    ledger = Ledger()
    ledger.charge(SPEC, 0, 0, 1, 0, "a")
    ledger.charge(SPEC, HOUR, 0, 1, 0, "a")
    (row,) = ledger.summary(specs={SPEC.id: SPEC})
    assert row["windows"] == 2 and row["epsilon_total"] == 2.0
    assert row["epsilon_in_period"] == 2.0 and row["epsilon_remaining"] == 1.0 and row["epsilon_cap"] == 3.0


def test_concurrent_workers_cannot_jointly_exceed_the_cap_the_log_order_decides() -> None:
    """Two workers close different windows at once, each with a stale view in which both fit the
    cap. Their charges land in the ledger topic in some order; every replay of that order admits the
    first and refuses the second, so the two workers agree and the cap holds."""
    spec = replace(SPEC, period_epsilon_cap=2.0)
    history = LedgerEntry(spec.id, 0, HOUR, 0, 1.0, 1e-6, 1, 0, "old")
    log: list[tuple[bytes, bytes | None]] = [(history.key, history.to_json())]
    view_a, view_b = Ledger.from_records(log), Ledger.from_records(log)
    # each view alone would let its window through: the race the charges close
    assert view_a.check(spec, HOUR, 0) is None and view_b.check(spec, 2 * HOUR, 1) is None
    charge_a = Charge.for_release(spec, HOUR, 0, now_ms=5, instance="a")
    charge_b = Charge.for_release(spec, 2 * HOUR, 1, now_ms=5, instance="b")
    for first, second in ((charge_a, charge_b), (charge_b, charge_a)):
        ordered = [*log, (first.key, first.to_json()), (second.key, second.to_json())]
        views = [Ledger.from_records(ordered) for _ in range(2)]
        for view in views:
            assert view.check(spec, first.window_start, first.partition) is None
            assert view.check(spec, second.window_start, second.partition) == EPSILON_CAP
        assert views[0].decisions == views[1].decisions
        assert views[0].period_spend(spec.id, HOUR, spec.period_ms)[0] == pytest.approx(2.0)


def test_a_windows_first_charge_decides_for_all_its_partitions() -> None:
    spec = replace(SPEC, period_epsilon_cap=1.0)
    ledger = Ledger()
    for partition in range(3):  # the same window from three stage-2 partitions: charged once
        ledger.apply_charge(Charge.for_release(spec, 0, partition, 1, "a"))
    assert ledger.decisions == {(spec.id, 0): None}
    assert all(ledger.check(spec, 0, p) is None for p in range(3))
    ledger.apply_charge(Charge.for_release(spec, HOUR, 0, 1, "b"))
    assert ledger.check(spec, HOUR, 0) == EPSILON_CAP
    assert ledger.windows(spec.id) == {0: (1.0, 1e-6)}  # the refused window spends nothing
    charge = Charge.for_release(spec, HOUR, 2, 7, "c")
    assert Charge.from_json(charge.to_json()) == charge
