"""Lateness follows event time per upstream, not the order partitions interleave: the outside audit's
case (several raw partitions, a backlog, re-keying by subject) loses nothing, while events genuinely
late in their own raw partition are still caught."""

from __future__ import annotations

import random
from dataclasses import replace

from gateway.dp.bounding import ACCEPTED, LATE, ContributionBounder
from gateway.dp.declarations import AggregateSpec

SPEC = AggregateSpec(
    schema="t.Payment", name="spend", metric="count", field=None, group_by=("country",), window_ms=10_000,
    grace_ms=5_000, epsilon=1.0, delta=1e-6, max_groups_per_subject=1, max_records_per_group=1000, clamp=None,
    time_field=None, output_topic="out", source_topic="src", sanitized_topic="san", period_ms=86_400_000,
    period_epsilon_cap=100.0, period_delta_cap=1.0, max_skew_ms=300_000)
RAW_PARTITIONS = 6
UPSTREAMS = frozenset(f"raw/{p}" for p in range(RAW_PARTITIONS))


def _backlog(rng: random.Random) -> list[tuple[str, int, str]]:
    """60 s of events per raw partition, each partition in event-time order, read the way a sanitize
    worker drains a backlog: one raw partition's batch after another's (blocks of 200 events)."""
    per_partition = {p: sorted(rng.randint(0, 60_000) for _ in range(600)) for p in range(RAW_PARTITIONS)}
    out = []
    cursors = dict.fromkeys(per_partition, 0)
    while any(cursors[p] < len(per_partition[p]) for p in per_partition):
        p = rng.choice([p for p in per_partition if cursors[p] < len(per_partition[p])])
        block = per_partition[p][cursors[p]:cursors[p] + 200]
        cursors[p] += len(block)
        out += [(f"tok_{rng.randint(0, 50)}", t, f"raw/{p}") for t in block]
    return out


def test_a_backlog_of_interleaved_raw_partitions_loses_nothing_in_stage_1() -> None:
    bounder = ContributionBounder((SPEC,), "0", UPSTREAMS)
    outcomes = [bounder.offer(subject, {"country": "DE"}, t, upstream)[0][1]
                for subject, t, upstream in _backlog(random.Random(3))]
    assert outcomes.count(LATE) == 0 and outcomes.count(ACCEPTED) == len(outcomes)
    # the single-watermark rule this replaces would have dropped a large share of the same stream
    single = ContributionBounder((SPEC,), "0")
    dropped = sum(single.offer(s, {"country": "DE"}, t, "")[0][1] == LATE for s, t, _ in _backlog(random.Random(3)))
    assert dropped > len(outcomes) // 10


def test_an_event_late_in_its_own_raw_partition_is_still_late() -> None:
    bounder = ContributionBounder((SPEC,), "0", UPSTREAMS)
    assert bounder.offer("a", {"country": "DE"}, 40_000, "raw/0")[0][1] == ACCEPTED
    # window [20 s, 30 s) closes at 35 s: raw/0 has moved past it, so its event for it is late
    assert bounder.offer("b", {"country": "DE"}, 25_000, "raw/0")[0][1] == LATE
    # another raw partition, still behind, may deliver it
    assert bounder.offer("c", {"country": "DE"}, 25_000, "raw/1")[0][1] == ACCEPTED


def test_state_is_forgotten_only_when_every_upstream_passed_and_never_granted_again() -> None:
    tight = replace(SPEC, max_records_per_group=1)
    bounder = ContributionBounder((tight,), "0", frozenset({"raw/0", "raw/1"}))
    assert bounder.offer("s", {"country": "DE"}, 1_000, "raw/0")[0][1] == ACCEPTED
    bounder.offer("x", {"country": "DE"}, 20_000, "raw/0")
    assert ("t.Payment/spend", 0) in bounder.state  # raw/1, not seen yet, may still reach [0, 10 s)
    bounder.offer("y", {"country": "DE"}, 16_000, "raw/1")
    assert ("t.Payment/spend", 0) not in bounder.state  # both upstreams are past 15 s: forgotten
    # a third upstream showing up with an event for the forgotten window is late: the subject's
    # bound there is spent, and a fresh state would grant it again
    assert bounder.offer("s", {"country": "DE"}, 2_000, "raw/2")[0][1] == LATE


def test_a_raw_partition_lagging_beyond_the_skew_is_late_and_does_not_hold_state() -> None:
    bounder = ContributionBounder((SPEC,), "0", UPSTREAMS)
    bounder.offer("a", {"country": "DE"}, 1_000, "raw/0")
    bounder.offer("b", {"country": "DE"}, 1_000_000, "raw/1")  # 999 s ahead: more than the 300 s skew
    assert not any(k[1] < 600_000 for k in bounder.state)
    assert bounder.offer("c", {"country": "DE"}, 2_000, "raw/0")[0][1] == LATE
