"""The `gateway forget` chain head as logic: a bookkeeping record in the key topic that is never
taken for a subject key. The forget transaction itself runs on the real broker in
tests/integration/test_shredding.py."""

from __future__ import annotations

import orjson

from gateway.core.operators.tokenize import DOMAIN_RE
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys, is_subject_key
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime.keytopic import forget_head_key, forget_head_value, parse_forget_head

ALICE = "alice.unit-1"


def _keys_with(keyring: Keyring, *subjects: str) -> tuple[SubjectKeys, dict[str, bytes]]:
    keyring.ensure_token_domains({"patient"})
    _, token_keys = keyring.token_keys("patient")
    keys = SubjectKeys(keyring)
    for subject in subjects:
        for version, key in token_keys.items():
            keys.current("patient", DomainTokenizer("patient", version, key).token(subject))
    keys.drain_pending()
    return keys, token_keys


def test_head_records_are_bookkeeping_never_keys(keyring: Keyring) -> None:
    keys, _ = _keys_with(keyring, ALICE)
    assert len(keys) == 1
    head = forget_head_key("privacy.audit")
    assert head == b"_audit-head/privacy.audit/keys:forget"
    assert not is_subject_key(head) and is_subject_key(keys.entries()[0][0])
    assert not DOMAIN_RE.match(head.decode().split("/", 1)[0])  # no token domain can look like it
    keys.apply(head, forget_head_value("privacy.audit", "a" * 64))
    keys.apply(head, None)  # a head's tombstone erases nothing either
    assert len(keys) == 1 and keys.erased == 0


def test_head_value_round_trips_and_a_damaged_one_reads_as_no_head() -> None:
    assert parse_forget_head(forget_head_value("a", "0f" * 32)) == "0f" * 32
    assert parse_forget_head(None) is None
    for damaged in (b"not json", b"[]", b"{}", orjson.dumps({"format": 2, "hash": "0f" * 32}),
                    orjson.dumps({"format": 1, "hash": "0F" * 32}), orjson.dumps({"format": 1, "hash": "0f" * 31})):
        assert parse_forget_head(damaged) is None
