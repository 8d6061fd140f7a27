"""`gateway forget` end to end on the real broker: the subject's keys and consent history go together,
the identifier is normalized as its domain declares, and the command says what it erased (and
fails, writing nothing, when nothing matched)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from gateway.consent.table import ConsentChange
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime import changelog
from gateway.runtime.consent import restore_table
from gateway.runtime.keytopic import KeyTopic, load_subject_keys
from gateway.settings import GatewayConfig

from .conftest import audit_entries, cli

pytestmark = pytest.mark.integration
DOMAIN = "customer"
ALICE = "alice.canary-4410@example.org"  # as the policy's email normalizer leaves it
ALICE_SPELLED = "  Alice.Canary-4410@EXAMPLE.org"  # as an operator may type it
BOB = "bob.canary-8812@example.org"


def _schema(suffix: str) -> dict[str, Any]:
    return {
        "type": "record", "name": "Order", "namespace": "t.forget",
        "privacy": {"source_topic": f"orders.raw.{suffix}", "sanitized_topic": f"orders.sanitized.{suffix}",
                    "subject": "email", "input": "json", "output": "json"},
        "fields": [
            {"name": "email", "type": "string",
             "privacy": {"tokenize": {"domain": DOMAIN, "normalizer": "email"}}},
            {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True}}},
        ],
    }


def test_forget_erases_keys_and_consent_history_with_the_domains_normalizer(bootstrap: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "orders.avsc").write_bytes(orjson.dumps(_schema(suffix)))
    keyring_path = tmp_path / "keyring.json"
    keyring = Keyring.open(keyring_path)
    keyring.ensure_token_domains({DOMAIN})
    config = GatewayConfig(bootstrap=bootstrap, keyring=keyring_path, key_topic=f"privacy.keys.{suffix}",
                           audit_topic=f"privacy.audit.{suffix}", consent_topic=f"privacy.consent.{suffix}",
                           group_id=f"gateway-{suffix}", partitions=2)
    kafka = config.kafka_client_config()
    version, token_keys = keyring.token_keys(DOMAIN)
    alice, bob = (DomainTokenizer(DOMAIN, version, token_keys[version]).token(s) for s in (ALICE, BOB))

    # what the workers stored: alice's key; consent changes of alice (granted, then revoked) and bob
    worker = KeyTopic(config, SubjectKeys(keyring))
    try:
        worker.keys.current(DOMAIN, alice)
        worker.keys.publish_pending()
    finally:
        worker.close()
    changelog.ensure_changelog(kafka, config.consent_topic, 1)
    producer = Producer({**kafka, "enable.idempotence": True})
    for token, at, granted in ((alice, 1_000, True), (alice, 2_000, False), (bob, 1_000, True)):
        change = ConsentChange(DOMAIN, token, "fraud", at, granted, "test")
        producer.produce(config.consent_topic, change.value(), change.key())
    assert producer.flush(30) == 0

    settings = ("--domain", DOMAIN, "--bootstrap", bootstrap, "--keyring", str(keyring_path), "--key-topic",
                config.key_topic, "--audit-topic", config.audit_topic, "--consent-topic", config.consent_topic)
    # without the domain's declaration the normalizer is not guessed (a guess would erase nothing)
    guessed = cli("forget", *settings, "--schemas", str(tmp_path / "no-such-dir"), stdin=ALICE_SPELLED.encode())
    assert guessed.returncode != 0 and "normalizer" in guessed.stderr.decode()
    assert load_subject_keys(kafka, config.key_topic, SubjectKeys(keyring)).keys_of(DOMAIN, alice)

    forgot = cli("forget", *settings, "--schemas", str(schemas), stdin=ALICE_SPELLED.encode() + b"\n")
    out = forgot.stdout.decode() + forgot.stderr.decode()
    assert forgot.returncode == 0, out
    assert "1 key(s) erased" in out and "2 consent record(s) erased" in out
    assert ALICE not in out and ALICE_SPELLED not in out

    assert load_subject_keys(kafka, config.key_topic, SubjectKeys(keyring)).keys_of(DOMAIN, alice) == []
    table, _ = restore_table(config, create=False)
    assert table.history(DOMAIN, alice) == {}, "the forgotten subject's consent history is still there"
    assert table.history(DOMAIN, bob) == {"fraud": [(1_000, True)]}  # nobody else's
    [event] = [e for e in audit_entries(bootstrap, config.audit_topic) if e.get("type") == "subject_forgotten"]
    assert event["keys_erased"] == 1 and event["consent_records_erased"] == 2

    again = cli("forget", *settings, "--schemas", str(schemas), stdin=ALICE.encode())
    assert again.returncode == 1 and "nothing was erased" in again.stderr.decode()
    # bob has consent but no key: erased, and the command does not claim a key was
    bob_forgot = cli("forget", *settings, "--schemas", str(schemas), stdin=BOB.encode())
    out = bob_forgot.stdout.decode()
    assert bob_forgot.returncode == 0, bob_forgot.stderr.decode()
    assert "no key of this subject" in out and "1 consent record(s) erased" in out
    assert "can no longer be decrypted" not in out
    table, _ = restore_table(config, create=False)
    assert len(table) == 0
    assert len([e for e in audit_entries(bootstrap, config.audit_topic)
                if e.get("type") == "subject_forgotten"]) == 2  # the failed one wrote nothing
