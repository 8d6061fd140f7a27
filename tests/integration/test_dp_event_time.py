"""Producer-controlled event time cannot stall the pipeline (issue #31, item 4), on the real broker.
One event stamped in the year 3000 used to move stage 1's mark of its raw partition (persisted) so
far that every later event was late, for good. Now the sanitize worker dead-letters it
(`event_time_out_of_range`) and the events after it are bounded and released as if it never came."""

from __future__ import annotations

import time

import orjson
import pytest

from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment
from .test_dp_aggregate import NOISE_FREE_WORKER, audit_bodies, enable_aggregates, start_aggregator, wait_for

pytestmark = pytest.mark.integration
WINDOW_S = 4
YEAR_3000 = 32_503_680_000_000
EVENTS = 30


def test_an_event_from_the_year_3000_is_dead_lettered_and_stalls_nothing(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    enable_aggregates(d, [{"name": "visits", "metric": "count", "group_by": ["country"], "time_field": "occurred_at",
                           "window_s": WINDOW_S, "grace_s": WINDOW_S, "epsilon": 1.0, "delta": 1e-6,
                           "max_groups_per_subject": 1, "max_records_per_group": 1}])
    plan = d.payments
    sanitizer = d.start_worker("time-sanitize")
    aggregator = start_aggregator(d, "time", f"privacy.ledger.{d.suffix}", command=NOISE_FREE_WORKER)
    try:
        base = (int(time.time()) + 8) // WINDOW_S * WINDOW_S * 1000
        samples = SampleEvents(seed=11)
        future = samples.payment()
        future.update(user_id="s-future", country="DE", occurred_at=YEAR_3000)
        events = [encode_raw(plan, future, "avro")]
        for i in range(EVENTS):
            e = samples.payment()
            e.update(user_id=f"s-{i}", country="DE", occurred_at=base + 100 + i)
            events.append(encode_raw(plan, e, "avro"))
        d.produce(plan.source_topic, events, partition=0)  # one raw partition, in this order

        def released() -> list[dict[str, object]]:
            return [orjson.loads(r.value or b"") for r in d.read(plan.aggregates[0].output_topic)
                    if orjson.loads(r.value or b"")["window"]["start"] == base]

        records = wait_for(released, 90, "the window after the year-3000 event to be released")
    finally:
        assert aggregator.stop() == 0
        assert sanitizer.stop() == 0
    assert [r["value"] for r in records] == [EVENTS]  # the noise-free double: every event counted
    assert audit_bodies(d, "dp_late") == []
    dead = [orjson.loads(r.value or b"") for r in d.read(plan.dlq_topic)]
    assert [x["reason"] for x in dead] == ["event_time_out_of_range"]
    assert str(YEAR_3000) not in orjson.dumps(dead).decode()  # the message names the field, not the value
