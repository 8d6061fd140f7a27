"""The privacy ledger's Kafka side on the real broker (gateway.runtime.ledger)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Producer

from gateway.dp.ledger import LedgerEntry
from gateway.runtime.ledger import LedgerFollower, ensure_ledger_topic, read_ledger

HOUR = 3_600_000


def _entry(window: int) -> LedgerEntry:
    return LedgerEntry("t.Payment.spend", window * HOUR, (window + 1) * HOUR, 0, 1.0, 1e-6, 2, 1, "other")


def _commit(bootstrap: str, topic: str, entries: list[LedgerEntry]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for entry in entries:
        producer.produce(topic, entry.to_json(), key=entry.key)
    assert producer.flush(30) == 0


def test_the_follower_goes_on_from_where_the_load_stopped(bootstrap: str) -> None:
    """An entry another worker commits between the load and the follower's start is applied (a
    follower starting at the partition end it is told at its start would skip it), and the loaded
    entries are not read a second time."""
    kafka = {"bootstrap.servers": bootstrap}
    topic = f"ledger-{uuid.uuid4().hex[:8]}"
    ensure_ledger_topic(kafka, topic)
    _commit(bootstrap, topic, [_entry(0), _entry(1)])

    ledger, follow_from = read_ledger(kafka, topic)
    assert set(ledger.entries) == {_entry(0).key, _entry(1).key}
    assert follow_from == {0: 2}

    _commit(bootstrap, topic, [_entry(2)])  # committed after the load, before the follower starts
    follower = LedgerFollower(kafka, topic, ledger, follow_from)
    try:
        applied = 0
        for _ in range(200):
            applied += follower.poll()
            if _entry(2).key in ledger.entries:
                break
            time.sleep(0.05)
        assert ledger.entries[_entry(2).key] == _entry(2)
        assert applied == 1
    finally:
        follower.close()
