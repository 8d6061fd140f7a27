"""State followers fail loudly, on the real broker: the key topic, the consent topic and the DP ledger.

Whoever can write to a state topic can put anything there: JSON that is not an object, a bare
string, a number, the JSON text `null` (which is not a tombstone), bytes that are not UTF-8. Such a
record is skipped and counted (gateway_state_records_skipped_total); the follower keeps following,
so a tombstone written after it still erases; a fresh reader starts over it. A follower that dies
anyway makes the worker not ready, and the worker stops (its supervisor starts it again)."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from gateway.app import tokenizers
from gateway.consent.table import ConsentChange
from gateway.core.policy.lint import load_plans
from gateway.dp.bound_store import STATE_CONFIG, state_records
from gateway.dp.ledger import LedgerEntry
from gateway.errors import GatewayError
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.runtime import consent
from gateway.runtime.changelog import ensure_changelog
from gateway.runtime.jobs.aggregate import BoundHandler
from gateway.runtime.jobs.sanitize import Worker
from gateway.runtime.keytopic import KeyTopic, ensure_key_topic, load_subject_keys
from gateway.runtime.ledger import LedgerFollower, ensure_ledger_topic, read_ledger
from gateway.settings import GatewayConfig

from .conftest import REPO, wait_for

pytestmark = pytest.mark.integration
CANARY = "mallory.canary-6402"
# what another writer may put where a state record belongs; none of it is a tombstone
MALFORMED = [b"[1, 2]", b'"x"', b"42", b"null", b"\xff\xfe\x80 not utf-8",
             orjson.dumps([CANARY]), orjson.dumps({"format": 1, "note": CANARY})]


def _skipped(state: str, topic: str) -> float:
    """gateway_state_records_skipped_total{state, topic}, as /metrics shows it (0 before the first)."""
    return REGISTRY.get_sample_value("gateway_state_records_skipped_total", {"state": state, "topic": topic}) or 0.0


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in records:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0


def _no_canary(caplog: pytest.LogCaptureFixture) -> None:
    text = caplog.text + "".join(str(getattr(r, "__dict__", "")) for r in caplog.records)
    assert CANARY not in text


# ---- the key topic ----------------------------------------------------------------------------------
def _key_config(bootstrap: str, tmp_path: Path) -> GatewayConfig:
    suffix = uuid.uuid4().hex[:8]
    return GatewayConfig(bootstrap=bootstrap, keyring=tmp_path / "keyring.json", key_topic=f"privacy.keys.{suffix}",
                         group_id=f"gateway-{suffix}", partitions=1)


def _new_key(keys: SubjectKeys, token: str) -> bytes:
    keys.current("patient", token)
    keys.publish_pending()  # durable on the key topic before it returns
    (name,) = keys.keys_of("patient", token)
    return name.encode()


def test_malformed_key_records_are_skipped_counted_and_a_later_tombstone_still_erases(
        bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = _key_config(bootstrap, tmp_path)
    keyring = Keyring.open(config.keyring)
    keys = SubjectKeys(keyring)
    running = KeyTopic(config, keys)
    fresh: KeyTopic | None = None
    try:
        erased, kept, overwritten = _new_key(keys, "tok_a"), _new_key(keys, "tok_b"), _new_key(keys, "tok_c")
        before = _skipped("keys", config.key_topic)
        junk = [(f"patient/tok_m{i}/{i:032x}".encode(), value) for i, value in enumerate(MALFORMED)]
        junk.append((overwritten, b"[1, 2]"))  # over a live key: no key under that name from here on
        _produce(bootstrap, config.key_topic, [*junk, (erased, None)])  # then the erasure

        wait_for(lambda: not keys.keys_of("patient", "tok_a"), "the tombstone after the malformed records applied",
                 timeout_s=30)
        assert running.alive()
        assert _skipped("keys", config.key_topic) - before == len(junk)
        assert keys.keys_of("patient", "tok_b") == [kept.decode()]
        assert keys.keys_of("patient", "tok_c") == []

        # a fresh worker starts over the same records and holds the same keys
        fresh_keys = SubjectKeys(keyring)
        fresh = KeyTopic(config, fresh_keys)
        assert fresh.alive()
        assert _skipped("keys", config.key_topic) - before == 2 * len(junk)
        for token, expected in (("tok_a", []), ("tok_b", [kept.decode()]), ("tok_c", [])):
            assert fresh_keys.keys_of("patient", token) == expected
        # and so do the CLI's readers (decrypt, forget, rewrap)
        loaded = load_subject_keys(config.kafka_client_config(), config.key_topic, SubjectKeys(keyring))
        assert sorted(n for n, _ in loaded.entries()) == [kept.decode()]
    finally:
        running.close()
        if fresh is not None:
            fresh.close()
    _no_canary(caplog)


# ---- the consent topic ------------------------------------------------------------------------------
def test_malformed_consent_records_are_skipped_counted_and_a_later_tombstone_still_erases(
        bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    suffix = uuid.uuid4().hex[:8]
    config = GatewayConfig(bootstrap=bootstrap, keyring=tmp_path / "k.json", consent_topic=f"privacy.consent.{suffix}",
                           group_id=f"gateway-{suffix}")
    at = 1_790_000_000_000
    grant = ConsentChange("customer", "tok_a", "fraud", at, True, "cli")
    kept = ConsentChange("customer", "tok_b", "fraud", at, True, "cli")
    table, follower = consent.restore_table(config)
    assert follower is not None
    try:
        _produce(bootstrap, config.consent_topic, [(grant.key(), grant.value()), (kept.key(), kept.value())])
        wait_for(lambda: consent.follow(table, follower) >= 0 and table.in_force("customer", "tok_a", "fraud", at),
                 "the grant followed", timeout_s=30)
        before = _skipped("consent", config.consent_topic)
        junk = [(ConsentChange("customer", f"tok_m{i}", "fraud", at, True, "").key(), value)
                for i, value in enumerate(MALFORMED)]
        junk.append((b"not-a-consent-key", kept.value()))
        _produce(bootstrap, config.consent_topic, [*junk, (grant.key(), None)])  # then the erasure
        wait_for(lambda: consent.follow(table, follower) >= 0 and not table.known("customer", "tok_a"),
                 "the tombstone after the malformed records applied", timeout_s=30)
        assert _skipped("consent", config.consent_topic) - before == len(junk)
        assert table.in_force("customer", "tok_b", "fraud", at)

        fresh, fresh_follower = consent.restore_table(config)
        assert fresh_follower is not None
        fresh_follower.close()
        assert _skipped("consent", config.consent_topic) - before == 2 * len(junk)
        assert not fresh.known("customer", "tok_a") and fresh.in_force("customer", "tok_b", "fraud", at)
    finally:
        follower.close()
    _no_canary(caplog)


# ---- the DP ledger ----------------------------------------------------------------------------------
HOUR = 3_600_000


def _entry(window: int) -> LedgerEntry:
    return LedgerEntry("t.Payment.spend", window * HOUR, (window + 1) * HOUR, 0, 1.0, 1e-6, 2, 1, "other")


def test_malformed_ledger_records_are_skipped_counted_and_a_later_tombstone_still_applies(
        bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    kafka = {"bootstrap.servers": bootstrap}
    topic = f"ledger-{uuid.uuid4().hex[:8]}"
    ensure_ledger_topic(kafka, topic)
    _produce(bootstrap, topic, [(_entry(0).key, _entry(0).to_json()), (_entry(1).key, _entry(1).to_json())])
    ledger, follow_from = read_ledger(kafka, topic)
    follower = LedgerFollower(kafka, topic, ledger, follow_from)
    try:
        before = _skipped("dp-ledger", topic)
        junk = [(f"t.Payment.spend|{i}|0".encode(), value) for i, value in enumerate(MALFORMED)]
        junk.append((b"charge|t.Payment.spend|7|0", b'{"aggregate": 3}'))
        _produce(bootstrap, topic, [*junk, (_entry(0).key, None), (_entry(2).key, _entry(2).to_json())])

        def followed() -> bool:
            follower.poll()
            return _entry(2).key in ledger.entries

        wait_for(followed, "the entry after the malformed records followed", timeout_s=30)
        assert _entry(0).key not in ledger.entries and ledger.entries[_entry(1).key] == _entry(1)
        assert _skipped("dp-ledger", topic) - before == len(junk)

        fresh, _ = read_ledger(kafka, topic)  # a fresh worker starts over them
        assert fresh.entries == ledger.entries
        assert _skipped("dp-ledger", topic) - before == 2 * len(junk)
    finally:
        follower.close()
    _no_canary(caplog)


# ---- a follower that dies ---------------------------------------------------------------------------
def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Note", "namespace": "t.followers",
        "privacy": {"source_topic": f"notes.raw.{suffix}", "sanitized_topic": f"notes.sanitized.{suffix}",
                    "subject": "patient_id", "input": "json", "output": "json"},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "patient_id", "type": "string", "privacy": {"tokenize": {"domain": "patient"}}},
            {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True}}},
        ],
    }


def test_a_worker_starts_over_malformed_key_records_and_stops_not_ready_when_its_key_follower_dies(
        bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key topic holds malformed records before the worker starts: it starts. Then its follower
    dies (an error injected by this test into the follower's apply, the production code has no such
    hook): the worker's readiness fails first, naming the key-topic follower, then it stops with an
    error saying why, so its supervisor starts it again and it restores the key topic."""
    caplog.set_level(logging.INFO)
    suffix = uuid.uuid4().hex[:8]
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "notes.avsc").write_bytes(orjson.dumps(_schema(suffix)))
    config = GatewayConfig(bootstrap=bootstrap, schemas=schemas, keyring=tmp_path / "keyring.json",
                           audit_topic=f"privacy.audit.{suffix}", group_id=f"gateway-{suffix}", instance_id="f1",
                           key_topic=f"privacy.keys.{suffix}", partitions=1, session_timeout_ms=6000)
    ensure_key_topic(config.kafka_client_config(), config.key_topic, 1)
    _produce(bootstrap, config.key_topic, [(f"patient/tok_m{i}/{i:032x}".encode(), v) for i, v in enumerate(MALFORMED)])

    poison = b"patient/tok_poison/" + b"0" * 32
    real_apply = SubjectKeys.apply

    def apply(self: SubjectKeys, key: bytes, value: bytes | None) -> None:
        if key == poison:
            raise RuntimeError("injected by the test")
        real_apply(self, key, value)

    monkeypatch.setattr(SubjectKeys, "apply", apply)
    plans, ring = load_plans(schemas), Keyring.open(config.keyring)
    worker = Worker(config, plans, ring, tokenizers=tokenizers(ring, plans))
    seen: dict[str, Any] = {}

    def poison_when_ready() -> None:  # the worker runs on the main thread (it installs signal handlers)
        try:
            wait_for(lambda: worker.health.failing() == [], "the worker ready", timeout_s=60)
            assert worker.key_topic is not None
            seen["alive"] = worker.key_topic.alive()  # it started over the malformed records
            _produce(bootstrap, config.key_topic, [(poison, b"{}")])
            wait_for(lambda: worker._stop, "the worker stopping", timeout_s=30)
        finally:
            worker.request_stop()  # a no-op once it stopped on its own; else the test ends, failing below

    helper = threading.Thread(target=poison_when_ready, daemon=True)
    helper.start()
    with pytest.raises(GatewayError, match=r"key-topic follower died \(RuntimeError\)"):
        worker.run()
    helper.join(30)
    assert seen == {"alive": True}
    assert worker.key_topic is not None and not worker.key_topic.alive()
    changes = [(r.check, r.ok) for r in caplog.records if r.getMessage() == "readiness check changed"]
    first_down = next(change for change in changes if not change[1])
    assert first_down == ("key-topic", False), changes  # not ready for that reason, before it stopped
    messages = [r.getMessage() for r in caplog.records]
    assert messages.index("the key-topic follower died: erasures are no longer applied here") < \
        messages.index("worker stopped")
    _no_canary(caplog)


# ---- the DP bounding state (restored when stage 1 opens a partition) --------------------------------
def test_malformed_bounding_state_records_are_skipped_counted_and_a_later_tombstone_still_applies(
        bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    """Stage 1 restores a partition's bounders from its changelog (gateway aggregate): records there that
    are not a mark, a frontier or a subject's counts, or whose key is not a changelog key, are skipped
    and counted; the entries after them, a subject's deletion included, still apply."""
    caplog.set_level(logging.INFO)
    kafka = {"bootstrap.servers": bootstrap}
    plan = next(p for p in load_plans(REPO / "schemas") if p.aggregates)
    spec = plan.aggregates[0]
    state_topic = f"dp-bound-state-{uuid.uuid4().hex[:8]}"
    ensure_changelog(kafka, state_topic, 1, STATE_CONFIG)
    source, window = (plan.sanitized_topic, 0), 1_790_000_000_000
    counts = orjson.dumps({'["DE"]': 2})

    def entry(subject: str, value: bytes | None) -> tuple[list[Any], bytes | None]:
        return ["s", spec.id, window, subject], value

    valid = state_records(state_topic, 1, source, [entry("tok_a", counts), entry("tok_b", counts),
                                                   entry("tok_c", counts), (["m", spec.id, "raw/0"], b"1790000000500")])
    junk = state_records(state_topic, 1, source, [entry(f"tok_m{i}", v) for i, v in enumerate(MALFORMED)]
                         + [entry("tok_b", b"[1, 2]"), (["m", spec.id, "raw/1"], b'"x"')])
    bad_keys = [b"not json", b"[1, 2]", orjson.dumps({"topic": CANARY}), b"\xff\xfe"]
    erase = state_records(state_topic, 1, source, [entry("tok_a", None)])
    _produce(bootstrap, state_topic, [(r.key, r.value) for r in valid + junk] + [(k, counts) for k in bad_keys]
             + [(r.key, r.value) for r in erase])

    before = _skipped("dp-bound-state", state_topic)
    handler = BoundHandler(kafka, {plan.sanitized_topic: plan}, "unused", state_topic, 1, None)  # type: ignore[arg-type]
    handler.open(source, 10, None)
    handler.restore()
    bounder = handler.bounders[source]
    assert set(bounder.state[(spec.id, window)]) == {"tok_c"}  # a: erased after the junk; b: junk over it
    assert bounder.marks == {(spec.id, "raw/0"): 1_790_000_000_500}
    assert _skipped("dp-bound-state", state_topic) - before == len(junk) + len(bad_keys)
    _no_canary(caplog)
