"""Reading topics to their end on the real broker (gateway.consume.read_topic)."""

from __future__ import annotations

import uuid

from confluent_kafka import Producer

from gateway.runtime.reader import read_topic
from gateway.runtime.topics import admin_client, create_topics


def test_read_topic_ends_each_partition_at_its_end_including_an_empty_one(bootstrap: str) -> None:
    """read_topic reads every partition until its end-of-partition event. An empty partition
    must end at once, and every record of the others must come back, in offset order."""
    topic = f"consume-{uuid.uuid4().hex[:8]}"
    assert create_topics(admin_client({"bootstrap.servers": bootstrap}), {topic: 3}) == [topic]
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sent = {0: [f"p0-{i}".encode() for i in range(1500)], 2: [f"p2-{i}".encode() for i in range(7)]}
    for partition, values in sent.items():
        for value in values:
            producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0

    records = read_topic({"bootstrap.servers": bootstrap}, topic, timeout_s=30)

    by_partition = {p: [r.value for r in records if r.partition == p] for p in range(3)}
    assert by_partition == {0: sent[0], 1: [], 2: sent[2]}
    assert [r.offset for r in records if r.partition == 0] == list(range(1500))
    assert read_topic({"bootstrap.servers": bootstrap}, topic, timeout_s=30, partitions={1}) == []
