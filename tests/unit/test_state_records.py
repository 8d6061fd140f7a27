"""Malformed state records without a broker: what the key store and the ledger make of them, and the
one helper that skips and counts them (the broker side is tests/integration/test_state_followers.py)."""

from __future__ import annotations

import logging

import orjson
import pytest
from prometheus_client import REGISTRY

from gateway.dp.ledger import Ledger, LedgerEntry
from gateway.errors import MalformedStateRecord
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys
from gateway.runtime.changelog import apply_records
from tests.unit.key_topic import KeyTopic

CANARY = "mallory.canary-1187"
MALFORMED = [b"[1, 2]", b'"x"', b"42", b"null", b"\xff\xfe", b"{}", orjson.dumps({"format": 2}),
             orjson.dumps({"format": 1, "kek_id": "k", "wrapped": "%%%", "created": 1}),
             orjson.dumps({"format": 1, "kek_id": "k", "wrapped": "AA==", "created": "1"}), orjson.dumps([CANARY])]


def _one_key(keyring: Keyring) -> tuple[KeyTopic, bytes]:
    topic = KeyTopic()
    keys = SubjectKeys(keyring, publisher=topic.publish)
    keys.current("patient", "tok_a")
    keys.publish_pending()
    return topic, topic.records[0][0]


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_key_record_raises_and_leaves_no_key_under_its_name(keyring: Keyring, value: bytes) -> None:
    topic, name = _one_key(keyring)
    keys = topic.reader(keyring)
    assert keys.keys_of("patient", "tok_a") == [name.decode()]
    with pytest.raises(MalformedStateRecord) as raised:
        keys.apply(name, value)
    assert CANARY not in str(raised.value)
    assert keys.keys_of("patient", "tok_a") == []  # as the compacted topic will hold: this record only
    keys.apply(name, None)  # a tombstone after it is still a tombstone
    assert keys.keys_of("patient", "tok_a") == []


def test_apply_records_skips_and_counts_what_cannot_be_read_and_applies_the_rest(
        keyring: Keyring, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    topic, name = _one_key(keyring)
    keys = SubjectKeys(keyring)
    records = [(b"patient/tok_m/" + b"0" * 32, v) for v in MALFORMED] + [*topic.records, (None, b"x")]

    def skipped() -> float:
        return REGISTRY.get_sample_value("gateway_state_records_skipped_total",
                                         {"state": "keys", "topic": "unit.keys"}) or 0.0

    before = skipped()
    assert apply_records("keys", "unit.keys", records, keys.apply) == len(MALFORMED)
    assert skipped() - before == len(MALFORMED)
    assert keys.keys_of("patient", "tok_a") == [name.decode()]
    assert CANARY not in caplog.text and all(CANARY not in str(r.__dict__) for r in caplog.records)


def test_other_errors_are_not_swallowed() -> None:
    def broken(_key: bytes, _value: bytes | None) -> None:
        raise RuntimeError("a bug, not a record")

    with pytest.raises(RuntimeError):
        apply_records("keys", "unit.keys", [(b"k", b"v")], broken)


HOUR = 3_600_000


@pytest.mark.parametrize("value", [b"[1, 2]", b'"x"', b"42", b"null", b"\xff", b'{"aggregate": "a"}'])
def test_a_malformed_ledger_record_raises_and_leaves_no_entry_under_its_key(value: bytes) -> None:
    entry = LedgerEntry("t.Payment.spend", 0, HOUR, 0, 1.0, 1e-6, 2, 1, "w")
    ledger = Ledger()
    ledger.apply_record(entry.key, entry.to_json())
    with pytest.raises(MalformedStateRecord):
        ledger.apply_record(entry.key, value)
    assert entry.key not in ledger.entries
    with pytest.raises(MalformedStateRecord):
        ledger.apply_record(b"charge|t.Payment.spend|0|0", value)
    assert not ledger.charges
