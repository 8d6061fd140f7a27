"""Stage 1 (contribution bounding) and stage 2 (window sums), as pure logic; stage 2's close schedule:
tests/unit/test_dp_schedule.py."""

from __future__ import annotations

import random
import zlib
from dataclasses import replace

from gateway.dp.bounding import (
    ACCEPTED,
    LATE,
    MISSING,
    OVER_GROUPS,
    OVER_RECORDS,
    Contribution,
    ContributionBounder,
)
from gateway.dp.declarations import AggregateSpec
from gateway.dp.windows import GroupWindows
from tests.dp_doubles import NoiseFreeMechanism

SPEC = AggregateSpec(
    schema="t.Payment", name="spend", metric="sum", field="amount", group_by=("country",), window_ms=60_000,
    grace_ms=10_000, epsilon=1.0, delta=1e-6, max_groups_per_subject=2, max_records_per_group=3,
    clamp=(0, 1000), time_field="at", output_topic="out", source_topic="src", sanitized_topic="san",
    period_ms=86_400_000, period_epsilon_cap=100.0, period_delta_cap=1e-3)
COUNTRIES = ["DE", "FR", "NL", "PL", "ES", "IT"]
# events below arrive in random event-time order: a grace longer than the data keeps them all on time
ORDERLESS = replace(SPEC, grace_ms=10**9)


def _event(country: str, amount: int, at: int) -> dict[str, object]:
    return {"country": country, "amount": amount, "at": at}


def _pre_noise(events: list[tuple[str, dict[str, object]]], partitions: int = 1) -> dict[tuple[int, str], tuple]:
    """Stage 1 per partition (subjects hashed to partitions), stage 2, then a release without noise
    (the test double)."""
    bounders = [ContributionBounder((ORDERLESS,)) for _ in range(partitions)]
    windows = GroupWindows({ORDERLESS.id: ORDERLESS}, settle_ms=1000)
    windows.schedule(ORDERLESS.id, 0, None, now_ms=0)
    for offset, (subject, record) in enumerate(events):
        bounder = bounders[zlib.crc32(subject.encode()) % partitions]
        for _, outcome, contribution in bounder.offer(subject, record, 0):
            if outcome == ACCEPTED:
                assert contribution is not None
                assert windows.add(Contribution.from_json(contribution.to_json()), 0, offset, now_ms=0)
    mech = NoiseFreeMechanism(ORDERLESS)
    out = {}
    while windows.open:
        for key in windows.due(now_ms=ORDERLESS.grace_ms + 600_000):
            state = windows.close(key)
            for g in mech.release(state.counts, state.sums):
                out[(key[1], g.group)] = (g.noisy_count, g.noisy_sum)
    return out


def _population(rng: random.Random) -> list[tuple[str, dict[str, object]]]:
    events = []
    for s in range(300):
        for _ in range(rng.randint(1, 6)):
            events.append((f"tok_{s}", _event(rng.choice(COUNTRIES), rng.randint(-50, 2000),
                                              rng.randint(0, 119_999))))
    rng.shuffle(events)
    return events


def test_one_subject_with_10000_events_moves_each_group_by_at_most_its_bound() -> None:
    rng = random.Random(7)
    base = _population(rng)
    heavy = [("tok_heavy", _event(rng.choice(COUNTRIES), rng.randint(0, 10**6), rng.randint(0, 59_999)))
             for _ in range(10_000)]
    # interleave the heavy subject's events at random, keeping everyone else's order (which of a
    # subject's records count first is part of the bound, so the others must see the same order)
    slots = [True] * len(heavy) + [False] * len(base)
    rng.shuffle(slots)
    heavy_iter, base_iter = iter(heavy), iter(base)
    mixed = [next(heavy_iter) if slot else next(base_iter) for slot in slots]
    without, with_heavy = _pre_noise(base), _pre_noise(mixed)
    k, m, bound = SPEC.max_groups_per_subject, SPEC.max_records_per_group, 1000
    changed = 0
    for key in set(without) | set(with_heavy):
        c0, s0 = without.get(key, (0, 0))
        c1, s1 = with_heavy.get(key, (0, 0))
        assert 0 <= c1 - c0 <= m, key
        assert 0 <= s1 - s0 <= m * bound, key
        changed += (c1, s1) != (c0, s0)
    assert 1 <= changed <= k  # the heavy subject lands in at most k groups of its one window
    assert sum(c for c, _ in with_heavy.values()) - sum(c for c, _ in without.values()) <= k * m


def test_bounds_and_clamp_per_event() -> None:
    bounder = ContributionBounder((SPEC,))
    outcomes = [bounder.offer("s", _event(c, 5000, 1000), 0)[0] for c in ["DE"] * 4 + ["FR", "NL"]]
    assert [o for _, o, _ in outcomes] == [ACCEPTED] * 3 + [OVER_RECORDS, ACCEPTED, OVER_GROUPS]
    assert outcomes[0][2] is not None and outcomes[0][2].value == 1000  # clamped to hi
    low = bounder.offer("t", _event("DE", -7, 1000), 0)[0][2]
    assert low is not None and low.value == 0  # clamped to lo
    assert bounder.offer("t", {"country": "DE", "at": 5}, 0)[0][1] == MISSING
    # a new window starts a fresh bound
    assert bounder.offer("s", _event("PL", 1, 60_000), 0)[0][1] == ACCEPTED


def test_late_events_are_dropped_not_rebounded() -> None:
    bounder = ContributionBounder((SPEC,))
    assert bounder.offer("s", _event("DE", 1, 1_000), 0)[0][1] == ACCEPTED
    assert bounder.offer("x", _event("DE", 1, 70_000), 0)[0][1] == ACCEPTED  # watermark = window end + grace
    assert bounder.state.get((SPEC.id, 0)) is None  # window 0 forgotten
    assert bounder.offer("s", _event("DE", 1, 2_000), 0)[0][1] == LATE
    assert bounder.counts[LATE] == 1


def test_kafka_timestamp_when_no_time_field() -> None:
    spec = replace(SPEC, time_field=None)
    _, outcome, c = ContributionBounder((spec,)).offer("s", {"country": "DE", "amount": 1}, 125_000)[0]
    assert outcome == ACCEPTED and c is not None and c.window_start == 120_000 and c.event_time == 125_000


def test_partitioning_subjects_does_not_change_the_pre_noise_result() -> None:
    events = _population(random.Random(3))
    assert _pre_noise(events, partitions=1) == _pre_noise(events, partitions=4)


def test_forget_partition_drops_only_its_state() -> None:
    w = GroupWindows({SPEC.id: SPEC}, settle_ms=5_000)
    for p in (0, 1):
        w.schedule(SPEC.id, p, None, now_ms=0)
    c = Contribution(SPEC.id, 0, '["DE"]', 10, 30_000)
    w.add(c, 0, 1, 0)
    w.add(c, 1, 1, 0)
    w.forget_partition(0)
    assert list(w.open) == [(SPEC.id, 0, 1)] and not w.scheduled(SPEC.id, 0)


def _replay_changelog(log: list[tuple[list[object], bytes | None]]) -> ContributionBounder:
    bounder = ContributionBounder((SPEC,))
    bounder.restore(log)
    return bounder


def test_a_bounder_restored_from_its_changelog_continues_exactly_where_the_first_stopped() -> None:
    """A partition moving to another worker at any batch boundary changes no decision."""
    rng = random.Random(11)
    events = [(f"tok_{rng.randint(0, 30)}", _event(rng.choice(COUNTRIES), rng.randint(0, 2000),
                                                     i * 150 + rng.randint(0, 400))) for i in range(2_000)]
    for cut in (1, 97, 700, 1_500, 1_999):
        original = ContributionBounder((SPEC,))
        log: list[tuple[list[object], bytes | None]] = []
        for start in range(0, cut, 50):  # batches of 50, drained as the worker does per transaction
            for subject, record in events[start:min(start + 50, cut)]:
                original.offer(subject, record, 0)
            log += original.drain_changes()
        moved = _replay_changelog(log)
        assert moved.state == original.state and moved.marks == original.marks and moved.frontier == original.frontier
        for subject, record in events[cut:]:
            assert [o for _, o, _ in moved.offer(subject, record, 0)] == \
                   [o for _, o, _ in original.offer(subject, record, 0)], (cut, subject, record)


def test_without_the_changelog_a_moved_partition_would_grant_the_bound_again() -> None:
    """The gap the changelog closes: a fresh bounder mid-window accepts a subject at its bound."""
    first = ContributionBounder((SPEC,))
    assert [first.offer("s", _event("DE", 1, 1_000 + i), 0)[0][1] for i in range(4)] == \
           [ACCEPTED] * 3 + [OVER_RECORDS]
    restored = _replay_changelog(first.drain_changes())
    fresh = ContributionBounder((SPEC,))
    assert restored.offer("s", _event("DE", 1, 2_000), 0)[0][1] == OVER_RECORDS
    assert fresh.offer("s", _event("DE", 1, 2_000), 0)[0][1] == ACCEPTED


def test_closed_windows_are_tombstoned_and_the_watermark_keeps_late_events_late() -> None:
    bounder = ContributionBounder((SPEC,))
    bounder.offer("s", _event("DE", 1, 1_000), 0)
    log = bounder.drain_changes()
    bounder.offer("x", _event("FR", 1, 70_000), 0)  # closes window 0 (end 60_000 + grace 10_000)
    changes = bounder.drain_changes()
    assert (["s", SPEC.id, 0, "s"], None) in changes  # the closed window's subject is deleted
    assert bounder.drain_changes() == []  # nothing changed since
    restored = _replay_changelog(log + changes)
    assert (SPEC.id, 0) not in restored.state
    assert restored.offer("s", _event("DE", 1, 2_000), 0)[0][1] == LATE
