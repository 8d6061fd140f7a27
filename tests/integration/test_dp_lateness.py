"""The outside audit's lateness case on the real broker: events published in event-time order to six
raw partitions as a backlog, re-keyed by subject through the sanitize worker, then bounded and
released by the aggregate worker. Nothing is dropped as late (it was 47% before the per-upstream
rule), and every window is released."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment
from .test_dp_aggregate import audit_bodies, enable_aggregates, stages_drained, start_aggregator, wait_for

pytestmark = pytest.mark.integration
RAW_PARTITIONS = 6
WINDOW_S, GRACE_S, SPAN_S = 5, 5, 30
EVENTS = 600


def test_a_backlog_across_six_raw_partitions_loses_no_event_as_late(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    enable_aggregates(d, [{"name": "visits_by_country", "metric": "count", "group_by": ["country"],
                           "time_field": "occurred_at", "window_s": WINDOW_S, "grace_s": GRACE_S,
                           "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
                           "max_records_per_group": 50}])
    plan = d.payments
    admin = AdminClient({"bootstrap.servers": d.bootstrap})
    for future in admin.create_topics([NewTopic(plan.source_topic, RAW_PARTITIONS, 1)]).values():
        future.result(30)
    # half a minute of event time starting shortly (stage 2 closes windows on the wall clock, so
    # the backlog must reach it before its windows' close), each raw partition in event-time order
    base = (int(time.time()) + 20) // WINDOW_S * WINDOW_S * 1000
    samples = SampleEvents(seed=77)
    per_partition: dict[int, list[bytes]] = {p: [] for p in range(RAW_PARTITIONS)}
    for i in range(EVENTS):
        event = samples.payment()
        event.update(country="DE", occurred_at=base + i * SPAN_S * 1000 // EVENTS, user_id=f"user-{i % 150}")
        per_partition[i % RAW_PARTITIONS].append(encode_raw(plan, event, "avro"))
    for p, values in per_partition.items():
        d.produce(plan.source_topic, values, partition=p)

    worker = d.start_worker("late-sanitize", partitions=RAW_PARTITIONS)
    aggregator = start_aggregator(d, "late", f"privacy.ledger.{d.suffix}", idle_s=2)
    try:
        last = base + (SPAN_S - WINDOW_S) * 1000
        releases = wait_for(lambda: [r for r in audit_bodies(d, "dp_release") if base <= r["window"]["start"] <= last]
                            if stages_drained(d) and any(r["window"]["start"] == last
                                                         for r in audit_bodies(d, "dp_release")) else None,
                            120, "the windows' releases")
        windows = {r["window"]["start"] for r in releases}
    finally:
        assert aggregator.stop() == 0
        assert worker.stop() == 0
    late = audit_bodies(d, "dp_late")
    assert late == [], f"{len(late)} events dropped as late, by stage: {sorted({b['stage'] for b in late})}"
    assert windows == {base + w * WINDOW_S * 1000 for w in range(SPAN_S // WINDOW_S)}
    assert all(r["outcome"] == "released" for r in releases)
