"""One budget for two aggregates on the real broker: their combined spend never passes the source's
cap, the release that would is refused and audited, and `gateway budget show` sums them."""

from __future__ import annotations

import time

import orjson
import pytest

from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment, cli
from .test_dp_aggregate import audit_bodies, enable_aggregates, start_aggregator, wait_for

pytestmark = pytest.mark.integration
WINDOW_S = 2


def _count(name: str, epsilon: float) -> dict[str, object]:
    return {"name": name, "metric": "count", "group_by": ["country"], "time_field": "occurred_at",
            "window_s": WINDOW_S, "epsilon": epsilon, "delta": 1e-6, "max_groups_per_subject": 1,
            "max_records_per_group": 1, "period_s": 3600}


def test_two_aggregates_share_one_cap(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    enable_aggregates(d, [_count("a_count", 1.0), _count("b_count", 0.5)])
    schema_path = d.schemas / "payments.avsc"
    schema = orjson.loads(schema_path.read_bytes())
    schema["privacy"]["budget"] = {"period_s": 3600, "epsilon_cap": 2.0}
    schema_path.write_bytes(orjson.dumps(schema))
    plan = d.payments
    start_ms = (int(time.time()) + 15) // WINDOW_S * WINDOW_S * 1000  # ahead: windows close on the clock
    samples = SampleEvents(seed=9)
    events = []
    for w in range(3):
        for i in range(20):
            event = samples.payment()
            event.update(country="DE", user_id=f"s-{w}-{i}", occurred_at=start_ms + w * WINDOW_S * 1000 + i)
            events.append(encode_raw(plan, event, "avro"))
    d.produce(plan.source_topic, events)
    worker = d.start_worker("budget-sanitize")
    ledger_topic = f"privacy.ledger.{d.suffix}"
    aggregator = start_aggregator(d, "budget", ledger_topic, idle_s=1)
    try:
        def decided() -> list[dict[str, object]] | None:
            # every window closes on the schedule, data or not: the first three it closed decide
            found = audit_bodies(d, "dp_release")
            first = min((r["window"]["start"] for r in found), default=None)
            found = [r for r in found if first is not None and r["window"]["start"] < first + 3 * WINDOW_S * 1000]
            return found if len({(r["aggregate"], r["window"]["start"]) for r in found}) >= 6 else None

        releases = wait_for(decided, 90, "the six window decisions")
        start_ms = min(r["window"]["start"] for r in releases)
    finally:
        assert aggregator.stop() == 0
        assert worker.stop() == 0
    outcome = {(r["aggregate"].rsplit("/", 1)[1], (r["window"]["start"] - start_ms) // (WINDOW_S * 1000)):
               r["outcome"] for r in releases}
    assert len(releases) == 6 * 3  # each window decided on each of the three partitions, alike
    # windows are charged in (window, aggregate) order: a 1.0 + b 0.5, then b fits (2.0) and a does not
    assert outcome == {("a_count", 0): "released", ("b_count", 0): "released",
                       ("a_count", 1): "refused:budget_epsilon_cap", ("b_count", 1): "released",
                       ("a_count", 2): "refused:budget_epsilon_cap", ("b_count", 2): "refused:budget_epsilon_cap"}
    ledger = [orjson.loads(r.value) for r in d.read(ledger_topic)]
    spent: dict[tuple[str, int], float] = {}
    for e in ledger:
        if e.get("type") != "charge":
            spent[(e["aggregate"], e["window_start"])] = e["epsilon"]  # a window costs it once
    assert sum(spent.values()) == pytest.approx(2.0)  # never more than the cap
    shown = cli("budget", "show", "--bootstrap", d.bootstrap, "--ledger-topic", ledger_topic,
                "--schemas", str(d.schemas))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout.decode()
    assert "budget subject:customer: latest 3600 s period: 2 of cap 2, remaining 0" in text, text
    assert "a_count 1" in text and "b_count 1" in text  # each aggregate's part: 1.0 and 0.5 + 0.5
