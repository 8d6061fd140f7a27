"""Back-to-back transactions (the loop begins batch N + 1's transaction as soon as N's commit returns)
on the real broker: the coordinator refuses the new transaction's AddPartitionsToTxn/AddOffsetsToTxn
with CONCURRENT_TRANSACTIONS while it still writes N's markers, and the gateway's transactional
producer must ask again soon, not after librdkafka's default retry.backoff.ms of 100 ms (which was
the sanitize p99's constant ~100 ms extra, see gateway/runtime/clients.py).

The retry gap is read from librdkafka's own "eos" debug lines (its clock, one process). 100 ms is a
lower bound of every gap under the old setting (80 ms with librdkafka's jitter), whatever the machine's
load, so one retry answered well under it proves the shorter backoff is in force; a slow machine only
makes gaps longer, and the test takes the shortest of five.
"""

from __future__ import annotations

import re
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from gateway.runtime import clients
from gateway.runtime.topics import admin_client, create_topics
from gateway.settings import GatewayConfig

pytestmark = pytest.mark.integration
# librdkafka's default retry.backoff.ms is 100, jittered by up to 20% (KIP-580): never under 80 ms. With
# the gateway's 10 ms the gaps are 10-15 ms plus the broker's answer; 50 tells the two apart under load.
OLD_MIN_GAP_MS = 80
BOUND_MS = 50
_STAMP = re.compile(r"^%\d\|(\d+\.\d+)\|")


def _offsets_retry_gaps_ms(log: str) -> list[float]:
    """Per AddOffsetsToTxn refused with CONCURRENT_TRANSACTIONS: ms until the next answer that was not,
    on librdkafka's clock (its stderr lines: "%7|<seconds>|ADDOFFSETS|...")."""
    gaps, refused_at = [], None
    for line in log.splitlines():
        match = _STAMP.match(line)
        if match is None or "AddOffsetsToTxn response" not in line:
            continue
        at = float(match.group(1))
        if "CONCURRENT_TRANSACTIONS" in line:
            refused_at = at if refused_at is None else refused_at
        elif refused_at is not None:
            gaps.append((at - refused_at) * 1000)
            refused_at = None
    return gaps


def test_concurrent_transactions_retried_sooner_than_the_default_backoff(
        bootstrap: str, capfd: pytest.CaptureFixture[str]) -> None:
    topic = f"txn-retry-{uuid.uuid4().hex[:6]}"
    admin = admin_client({"bootstrap.servers": bootstrap})
    create_topics(admin, {topic: 9})
    config = GatewayConfig(bootstrap=bootstrap)
    # librdkafka's own logger (no Python logger): its lines carry its clock, not the time poll served them
    producer = clients.transactional_producer(config, topic, **{"debug": "eos", "log_level": 7})
    group = Consumer({"bootstrap.servers": bootstrap, "group.id": topic})
    try:
        producer.init_transactions(30)
        metadata = group.consumer_group_metadata()
        gaps: list[float] = []
        log = ""
        for n in range(400):  # the loop's pattern: records on 9 partitions, the offsets, commit, at once again
            producer.begin_transaction()
            for partition in range(9):
                producer.produce(topic, b"x" * 100, partition=partition)
            producer.send_offsets_to_transaction([TopicPartition(topic, 0, n + 1)], metadata, 30)
            producer.commit_transaction(30)
            log += capfd.readouterr().err
            gaps = _offsets_retry_gaps_ms(log)
            if len(gaps) >= 5:
                break
        assert gaps, "no transaction met its predecessor's markers: nothing to observe"
        assert min(gaps) < BOUND_MS, (
            f"every CONCURRENT_TRANSACTIONS retry waited {BOUND_MS} ms or more ({sorted(gaps)[:5]}; the default "
            f"backoff never waits under {OLD_MIN_GAP_MS}): the transactional producer still backs off "
            "librdkafka's default")
    finally:
        group.close()
        producer.flush(10)
