"""Metrics and health on a running worker: scrape /metrics while events flow, check the counters move
by what was published, and that no canary PII reaches the endpoint; /healthz and /readyz answer."""

from __future__ import annotations

import re
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from gateway.core.codec.writer import avro_bytes
from gateway.embedded.broker import free_port
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import CANARIES, SampleEvents, broken_payment_events
from tests.http_get import http_get

from .conftest import Deployment

pytestmark = pytest.mark.integration
N_EVENTS = 120



def _samples(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _partitions_with_records(bootstrap: str, topic: str) -> set[str]:
    """The partitions of `topic` (written without transactions) holding records."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-watermarks"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {str(p) for p in partitions if consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]}
    finally:
        consumer.close()


def _caught_up(text: str, topic: str, partitions: set[str], events: int) -> bool:
    """The scrape shows every event counted and a lag of 0 on every partition that had records."""
    lag: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^gateway_consumer_lag\{(.*)\} (\S+)$", line)
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) if match else {}
        if match and labels.get("topic") == topic:
            lag[labels["partition"]] = float(match.group(2))
    return (partitions <= set(lag) and not any(lag.values())
            and _samples(text, "gateway_events_total", source_topic=topic) >= events
            and _samples(text, "gateway_audit_events_total") >= events)


def test_counters_move_with_the_events_and_never_show_pii(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = d.start_worker("metrics", extra=("--metrics-port", str(port)))
    try:
        deadline = time.monotonic() + 30
        while http_get(f"{base}/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert http_get(f"{base}/readyz") == (200, "ready\n")
        assert http_get(f"{base}/healthz") == (200, "ok\n")
        assert http_get(f"{base}/nothing")[0] == 404
        before = http_get(f"{base}/metrics")[1]
        topic = d.payments.source_topic
        assert _samples(before, "gateway_events_total", source_topic=topic) == 0
        assert _samples(before, "gateway_ready", check="kafka") == 1

        samples = SampleEvents(seed=23)
        valid = [encode_raw(d.payments, samples.payment(canary=(i % 10 == 0)), "avro") for i in range(N_EVENTS)]
        broken = broken_payment_events(samples.payment(canary=True), 1,
                                       lambda r: avro_bytes(d.payments.schema.parsed, r))
        d.produce(topic, [v for _, v in broken] + valid)
        d.wait_for_audit(N_EVENTS + len(broken))
        # the lag gauge refreshes every 5 s, and a batch's counters move once its commit is observed
        # (just after its audit events are readable): scrape until both show the caught-up worker
        with_data = _partitions_with_records(d.bootstrap, topic)
        assert with_data
        deadline = time.monotonic() + 30
        while True:
            after = http_get(f"{base}/metrics")[1]
            if _caught_up(after, topic, with_data, N_EVENTS + len(broken)):
                break
            assert time.monotonic() < deadline, f"the metrics did not show the caught-up worker:\n{after}"
            time.sleep(0.2)

        assert _samples(after, "gateway_events_total", source_topic=topic, outcome="sanitized") == N_EVENTS
        assert _samples(after, "gateway_events_total", source_topic=topic, outcome="rejected") == len(broken)
        reasons = {code for code, _ in broken}
        for reason in reasons:
            assert _samples(after, "gateway_dead_letters_total", source_topic=topic, reason=reason) >= 1, reason
        assert _samples(after, "gateway_dead_letters_total", source_topic=topic) == len(broken)
        assert _samples(after, "gateway_audit_events_total") == N_EVENTS + len(broken)
        assert _samples(after, "gateway_stage_seconds_count", stage="process") >= 1
        assert _samples(after, "gateway_stage_seconds_count", stage="commit") >= 1
        assert _samples(after, "gateway_stage_seconds_count", stage="wait") >= 1
        assert _samples(after, "gateway_event_latency_seconds_count") >= 1
        # an event's wait for its batch is part of its latency to the commit, sample by sample
        assert _samples(after, "gateway_event_queued_seconds_count") == _samples(
            after, "gateway_event_latency_seconds_count")
        assert 0 < _samples(after, "gateway_event_queued_seconds_sum") < _samples(
            after, "gateway_event_latency_seconds_sum")
        assert _samples(after, "gateway_dek_cache_total", result="hit") >= N_EVENTS - 1
        assert _samples(after, "gateway_dek_cache_total", result="miss") >= 1
        assert _samples(after, "gateway_consumer_lag", topic=topic) == 0  # caught up
        assert "gateway_consumer_lag{" in after
        for canary in CANARIES.values():
            assert canary not in after, canary
    finally:
        assert worker.stop() == 0
    for canary in CANARIES.values():
        assert canary not in worker.log()
