"""Producer-controlled event time cannot stall anything (issue #31, item 4): an event time beyond
now + max_skew_s is out of range. The sanitize pipeline dead-letters it (`event_time_out_of_range`);
stage 1 of the DP aggregates drops it (and one before 2000) without moving a mark."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.pipeline import RawEvent
from gateway.dp.bounding import ACCEPTED, LATE, OUT_OF_RANGE, ContributionBounder
from gateway.dp.declarations import AggregateSpec
from gateway.errors import ConfigError, RejectedEvent
from gateway.event_time import EARLIEST_MS, check_event_time, in_range
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig
from tests.unit.test_deadletter import SUBJECT, _order, _order_pipeline

NOW = 1_800_000_000_000
YEAR_3000 = 32_503_680_000_000
SPEC = AggregateSpec(
    schema="t.Payment", name="visits", metric="count", field=None, group_by=("country",), window_ms=10_000,
    grace_ms=5_000, epsilon=1.0, delta=1e-6, max_groups_per_subject=1, max_records_per_group=100, clamp=None,
    time_field="at", output_topic="out", source_topic="src", sanitized_topic="san", period_ms=86_400_000,
    period_epsilon_cap=100.0, period_delta_cap=1.0)


def test_the_range() -> None:
    assert in_range(NOW + 300_000, NOW, 300_000) and not in_range(NOW + 300_001, NOW, 300_000)
    assert in_range(EARLIEST_MS, NOW, 0) and not in_range(EARLIEST_MS - 1, NOW, 0)


def test_the_pipeline_check_names_the_field_never_the_value() -> None:
    check_event_time(NOW, {"at": NOW - 5_000}, ("at",), NOW, 300_000)
    check_event_time(-1, {}, ("at",), NOW, 300_000)  # no timestamp: handled where one is needed
    with pytest.raises(RejectedEvent) as caught:
        check_event_time(NOW, {"at": YEAR_3000}, ("at",), NOW, 300_000)
    assert caught.value.reason == "event_time_out_of_range" and str(YEAR_3000) not in str(caught.value)
    with pytest.raises(RejectedEvent):
        check_event_time(YEAR_3000, {}, (), NOW, 300_000)
    check_event_time(1_000, {"at": 1_000}, ("at",), NOW, 300_000)  # old: a backfill is valid input


def test_a_year_3000_event_moves_no_stage_1_mark() -> None:
    bounder = ContributionBounder((SPEC,), "0", frozenset({"raw/0"}), max_skew_ms=300_000)
    assert bounder.offer("a", {"country": "DE", "at": YEAR_3000}, NOW, "raw/0", now_ms=NOW)[0][1] == OUT_OF_RANGE
    assert bounder.marks == {} and bounder.frontier == {} and bounder.state == {}
    assert bounder.offer("b", {"country": "DE", "at": NOW}, NOW, "raw/0", now_ms=NOW)[0][1] == ACCEPTED
    # without the range check (the old behaviour) the same event makes every later one late
    unchecked = ContributionBounder((SPEC,), "0", frozenset({"raw/0"}))
    unchecked.offer("a", {"country": "DE", "at": YEAR_3000}, NOW, "raw/0", now_ms=NOW)
    assert unchecked.offer("b", {"country": "DE", "at": NOW}, NOW, "raw/0", now_ms=NOW)[0][1] == LATE


def test_max_skew_s_is_validated_naming_the_setting() -> None:
    assert GatewayConfig().max_skew_s == 300
    with pytest.raises(ConfigError, match="max_skew_s"):
        GatewayConfig(max_skew_s=-1)


def test_the_sanitize_pipeline_dead_letters_it_before_the_quality_window_counts_it(
        write_schema: Any, tmp_path: Path, keyring: Keyring) -> None:
    pipeline, _ = _order_pipeline(write_schema, tmp_path, keyring)
    now = int(time.time() * 1000)
    result = pipeline.process([RawEvent("orders.raw", 0, 0, YEAR_3000, None, _order(SUBJECT), None),
                               RawEvent("orders.raw", 0, 1, now, None, _order(SUBJECT), None)])
    letters = [orjson.loads(r.value) for r in result.records if r.topic == "orders.raw.dlq"]
    assert [(x["reason"], x["source"]["offset"]) for x in letters] == [("event_time_out_of_range", 0)]
    window = pipeline.stages["orders.raw"].quality.partitions[0].window  # type: ignore[union-attr]
    assert window.events == 1 and window.lag_max_ms < 60_000  # only the event in range was checked
