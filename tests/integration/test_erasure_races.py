"""Erasure is final, on the real broker: no writer of the key topic brings an erased key back.

Each test pauses one writer at its critical point (a hook, never a sleep) while another acts:

- `gateway keys rewrap` between its snapshot and its write, while `forget` and a retention run erase
  keys it read: the erased keys must stay erased (before: the rewrap re-stored them);
- `forget` between its snapshot and its transaction, while a worker stores a new key for the same
  subject: that key must be erased too (before: it survived the forget);
- `forget` with its transaction open, while a worker stores a new key: the worker cannot use it
  (its batch cannot commit) until the forget committed, and then it is a fresh key.

And one writer that is not honest: it re-stores an erased key's old value; readers refuse it.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from gateway.cli.keys import cmd_rewrap
from gateway.keys.keyring import Keyring
from gateway.keys.period_keys import DAY_MS, PeriodKeyName
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime import keytopic
from gateway.runtime.keytopic import (
    KeyTopic,
    enforce_retention,
    forget_subject,
    load_period_keys,
    load_subject_keys,
)
from gateway.runtime.reader import read_topic
from gateway.settings import GatewayConfig

from .conftest import wait_for

pytestmark = pytest.mark.integration
DOMAIN = "patient"
ALICE, BOB = "alice.canary-5521", "bob.canary-6632"


class Setup:
    def __init__(self, bootstrap: str, root: Path) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.keyring_path = root / "keyring.json"
        self.keyring = Keyring.open(self.keyring_path)
        self.keyring.ensure_token_domains({DOMAIN})
        self.config = GatewayConfig(bootstrap=bootstrap, keyring=self.keyring_path, key_topic=f"privacy.keys.{suffix}",
                                    audit_topic=f"privacy.audit.{suffix}", group_id=f"gateway-{suffix}", partitions=3,
                                    consent_topic=f"privacy.consent.{suffix}")
        self.kafka = self.config.kafka_client_config()
        _, self.token_keys = self.keyring.token_keys(DOMAIN)

    def token(self, subject: str) -> str:
        version, key = max(self.token_keys.items())
        return DomainTokenizer(DOMAIN, version, key).token(subject)

    def worker(self, max_uses: int = 4_000_000) -> KeyTopic:
        return KeyTopic(self.config, SubjectKeys(self.keyring, max_uses=max_uses))

    def snapshot(self) -> SubjectKeys:
        return load_subject_keys(self.kafka, self.config.key_topic, SubjectKeys(self.keyring))

    def live(self) -> set[str]:
        keys = self.snapshot()
        return {name for name, _ in keys.entries()} | {name for name, _ in keys.periods.entries()}

    def stored_values(self, committed_only: bool = True) -> dict[str, bytes | None]:
        """The last record per key name in the log (`committed_only=False`: open and aborted transactions'
        records too, and records past an open transaction)."""
        return {r.key.decode(): r.value for r in read_topic(self.kafka, self.config.key_topic,
                                                            committed_only=committed_only) if r.key is not None}


@pytest.fixture
def setup(bootstrap: str, tmp_path: Path) -> Iterator[Setup]:
    yield Setup(bootstrap, tmp_path)
    keytopic.PAUSE_POINTS.clear()


def new_subject_key(worker: KeyTopic, subject_token: str) -> str:
    """What a worker does when it encrypts the subject's next field with its key used up: a new key,
    stored (KeyTopic.publish) before anything under it is published. Returns the key's name."""
    key = worker.keys.current(DOMAIN, subject_token)
    key.uses += 1  # this one encrypted a field; with max_uses=1 the next call makes a new key
    worker.keys.publish_pending()
    return f"{DOMAIN}/{subject_token}/{key.dek_id.hex()}"


def test_rewrap_never_restores_a_key_that_forget_or_retention_erased_meanwhile(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = setup.worker()
    try:
        alice = new_subject_key(worker, setup.token(ALICE))
        bob = new_subject_key(worker, setup.token(BOB))
        today = int(time.time() * 1000) // DAY_MS
        old_day = worker.keys.periods.current(1, today - 5)  # a 1-day retention, 5 days ago: due
        new_day = worker.keys.periods.current(1, today)
        worker.keys.publish_pending()
    finally:
        worker.close()
    old_name = PeriodKeyName(1, today - 5, old_day.dek_id, "", "").name
    new_name = PeriodKeyName(1, today, new_day.dek_id, "", "").name
    assert {alice, bob, old_name, new_name} <= setup.live()
    setup.keyring.rotate_kek()  # every stored key is now under an older KEK: rewrap re-stores all four

    # the hook: rewrap has read its snapshot and wrapped every key again; before it writes them,
    # forget erases alice and a retention run erases the old day (both commit)
    original = SubjectKeys.rewrap
    fired: list[bool] = []

    def rewrap_then_erase(self: SubjectKeys, *args: Any) -> Any:
        records = original(self, *args)
        if not fired:
            fired.append(True)
            forget_subject(setup.config, ALICE, DOMAIN, setup.token_keys, setup.snapshot())
            events = enforce_retention(setup.config, load_period_keys(setup.kafka, setup.config.key_topic))
            assert [p["period"] for e in events for p in e["periods"]]
            assert alice not in setup.live() and old_name not in setup.live()
        return records

    monkeypatch.setattr(SubjectKeys, "rewrap", rewrap_then_erase)
    assert cmd_rewrap(argparse.Namespace(), setup.config) == 0
    assert fired

    live = setup.live()
    assert alice not in live, "rewrap brought back the key forget erased"
    assert old_name not in live, "rewrap brought back the period key retention erased"
    assert {bob, new_name} <= live
    active = Keyring.open(setup.keyring_path, create=False).active_key_id()
    keys = setup.snapshot()
    wrapped = dict(keys.entries()) | dict(keys.periods.entries())
    assert wrapped[bob].kek_id == active and wrapped[new_name].kek_id == active  # the rewrap did its work
    # and in the log itself: the last record of each erased name is its tombstone
    stored = setup.stored_values()
    assert stored[alice] is None and stored[old_name] is None


def test_forget_erases_a_key_a_worker_stored_after_the_forget_read_its_snapshot(setup: Setup) -> None:
    worker = setup.worker(max_uses=1)
    token = setup.token(ALICE)
    try:
        first = new_subject_key(worker, token)
        snapshot = setup.snapshot()  # forget's snapshot: alice has one key
        assert snapshot.keys_of(DOMAIN, token) == [first]
        second = new_subject_key(worker, token)  # the worker, meanwhile: alice's next key
        assert second != first and second in setup.live()
        event = forget_subject(setup.config, ALICE, DOMAIN, setup.token_keys, snapshot)
        assert setup.snapshot().keys_of(DOMAIN, token) == [], "a key stored during the forget survived it"
        assert event["keys_erased"] == 2
        assert f"subject:{DOMAIN}/{second.rsplit('/', 1)[1]}" in event["key_ids"]
        wait_for(lambda: worker.keys.keys_of(DOMAIN, token) == [], "the worker evicting both keys", 30)
    finally:
        worker.close()


def test_a_worker_cannot_use_a_key_stored_while_a_forget_is_open_until_the_forget_committed(setup: Setup) -> None:
    worker = setup.worker(max_uses=1)
    token = setup.token(ALICE)
    try:
        first = new_subject_key(worker, token)
        snapshot = setup.snapshot()
        stored: dict[str, Any] = {}

        def store_next_key() -> None:
            try:
                stored["name"] = new_subject_key(worker, token)
            except Exception as exc:  # reported below
                stored["error"] = exc

        writer = threading.Thread(target=store_next_key)

        def while_forget_is_open() -> None:
            # the forget's fences are written, its transaction open: the worker stores a new key now
            writer.start()
            wait_for(lambda: any(name.startswith(f"{DOMAIN}/{token}/") and name != first
                                 for name in setup.stored_values(committed_only=False)),
                     "the worker's new key in the log", 30)
            assert writer.is_alive(), "the worker went on with a key it could not yet read back"

        keytopic.PAUSE_POINTS["forget:fenced"] = while_forget_is_open
        event = forget_subject(setup.config, ALICE, DOMAIN, setup.token_keys, snapshot)
        writer.join(60)
        assert not writer.is_alive() and "error" not in stored, stored
        assert event["keys_erased"] == 1
        # the new key came after the forget's fences: a fresh key for events after the erasure
        assert setup.snapshot().keys_of(DOMAIN, token) == [stored["name"]]
        assert first not in setup.live()
    finally:
        worker.close()


def test_a_writer_that_restores_an_erased_keys_old_value_is_refused_by_every_reader(setup: Setup) -> None:
    """Not a race: a writer with Write on the key topic (and a copy of the wrapped value, read before
    the forget) stores it again under its name. Readers honour the erased-names topic, which only
    forget writes, and refuse it: at start-up, and in a worker already following the topic."""
    worker = setup.worker()
    try:
        alice = new_subject_key(worker, setup.token(ALICE))
        bob = new_subject_key(worker, setup.token(BOB))
        copied = setup.stored_values()[alice]
        assert copied is not None
        forget_subject(setup.config, ALICE, DOMAIN, setup.token_keys, setup.snapshot())
        wait_for(lambda: alice not in {n for n, _ in worker.keys.entries()}, "the worker evicting alice's key", 30)

        written: dict[str, int] = {}
        rogue = Producer({**setup.kafka, "enable.idempotence": True})
        rogue.produce(setup.config.key_topic, copied, alice.encode(),
                      on_delivery=lambda err, msg: written.update(partition=msg.partition(), offset=msg.offset()))
        assert rogue.flush(30) == 0 and written
        assert setup.stored_values()[alice] == copied  # the value is back in the topic...

        live = setup.live()  # ...but a reader starting now refuses it
        assert alice not in live, "a reader took the re-stored value of an erased key"
        assert bob in live
        # the running worker has read past it, and refused it too
        wait_for(lambda: worker._positions.get(written["partition"], -1) > written["offset"],
                 "the worker reading past the re-stored value", 30)
        assert alice not in {n for n, _ in worker.keys.entries()}
    finally:
        worker.close()
