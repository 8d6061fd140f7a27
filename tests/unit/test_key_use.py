"""Key use limits across processes, and late events of an erased period, as pure logic.

A process encrypts only under keys it created (gateway.keys.key_store): a key loaded from the key
topic opens ciphertexts but never makes new ones, so `max_uses` bounds each key across the whole
group and across restarts. The key topic is the in-memory stand-in of tests/unit/key_topic.py; the
real broker is in tests/integration/test_key_use.py."""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.deadletter import QuarantineSealer
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.errors import DecryptError
from gateway.keys.envelope import FORMAT_PERIOD, FORMAT_SUBJECT, FieldDecryptor, encrypt_field, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.period_keys import DAY_MS, due_keys
from gateway.keys.subject_keys import SubjectKeys
from gateway.settings import GatewayConfig
from tests.unit.key_topic import KeyTopic

T0 = int(datetime.datetime(2026, 3, 4, 12, 30, tzinfo=datetime.UTC).timestamp() * 1000)
DAY0 = T0 // DAY_MS
OLD = T0 - 10 * DAY_MS  # a day past its 7-day retention at T0


def _uses(ciphertexts: list[bytes]) -> Counter[bytes]:
    return Counter(parse_ciphertext(c).dek_id for c in ciphertexts)


# ---- item 9: use limits across processes ---------------------------------------------------------
@pytest.mark.parametrize("scope", ["subject", "period", "subject-period"])
def test_two_processes_never_encrypt_under_one_key_beyond_max_uses(keyring: Keyring, scope: str) -> None:
    """Process B loads process A's key from the topic, then both keep encrypting: every key still
    encrypts at most max_uses values in total (B never picks up A's key with a fresh count)."""
    topic = KeyTopic()
    a = SubjectKeys(keyring, max_uses=3, publisher=topic.publish)

    def current(keys: SubjectKeys) -> Any:
        if scope == "subject":
            return keys.current("customer", "tok_v1_alice")
        return keys.periods.current(7, DAY0, *(("customer", "tok_v1_alice") if scope == "subject-period" else ()))

    out = [encrypt_field(current(a), b"v", b"ctx") for _ in range(2)]
    a.publish_pending()
    b = SubjectKeys(keyring, max_uses=3, publisher=topic.publish)  # a second process (or A restarted) ...
    for key, value in topic.records:  # ... loads the key topic
        b.apply(key, value)
    for _ in range(5):
        out.append(encrypt_field(current(a), b"v", b"ctx"))
        out.append(encrypt_field(current(b), b"v", b"ctx"))
    a.publish_pending()
    b.publish_pending()
    uses = _uses(out)
    assert max(uses.values()) <= 3, uses
    assert len(uses) >= 4  # A: 7 values (3 keys), B: 5 values (2 keys), none shared
    # every key of the set still opens its ciphertexts, in either process and in a fresh reader
    reader = topic.reader(keyring)
    for data in out:
        parsed = parse_ciphertext(data)
        if parsed.version == FORMAT_SUBJECT:
            aead = reader.aead_for("customer", "tok_v1_alice", parsed.dek_id)
        else:
            assert parsed.version == FORMAT_PERIOD
            aead = reader.periods.aead_for(7, DAY0, parsed.kek_id, "tok_v1_alice" if parsed.kek_id else "",
                                           parsed.dek_id)
        assert aead.decrypt(parsed.nonce, parsed.body, parsed.header + b"ctx") == b"v"


def test_a_restarted_process_makes_its_own_key_and_forget_erases_the_whole_set(keyring: Keyring) -> None:
    topic = KeyTopic()
    first = SubjectKeys(keyring, publisher=topic.publish)
    before = encrypt_field(first.current("customer", "tok_v1_alice"), b"v", b"ctx")
    first.publish_pending()
    restarted = topic.reader(keyring)
    restarted.publisher = topic.publish
    key = restarted.current("customer", "tok_v1_alice")
    assert key.dek_id != parse_ciphertext(before).dek_id and key.uses == 0
    after = encrypt_field(key, b"v", b"ctx")
    assert restarted.current("customer", "tok_v1_alice") is key  # then cached: one new key per process
    assert restarted.publish_pending() == 1
    assert len(topic.reader(keyring).keys_of("customer", "tok_v1_alice")) == 2  # a set per subject
    topic.forget("customer", "tok_v1_alice")
    reader = topic.reader(keyring)
    for data in (before, after):
        with pytest.raises(DecryptError) as erased:
            reader.aead_for("customer", "tok_v1_alice", parse_ciphertext(data).dek_id)
        assert erased.value.reason == "key_erased"


def test_a_key_dropped_from_the_cache_is_never_taken_up_again(keyring: Keyring) -> None:
    """Its count is gone with it: the subject's next value gets a new key."""
    keys = SubjectKeys(keyring, cache_size=1)
    first = keys.current("customer", "tok_v1_a")
    keys.current("customer", "tok_v1_b")  # evicts a's key from the keys in use
    assert keys.current("customer", "tok_v1_a").dek_id != first.dek_id


# ---- item 10: late events of an erased day -------------------------------------------------------
FIELDS: dict[str, dict[str, Any]] = {
    "shared_day": {"encrypt": {"retention_days": 7}},
    "subject_day": {"encrypt": {"per_subject": True, "retention_days": 7}},
    "subject": {"encrypt": {"per_subject": True}},  # a per-subject key retention does not erase
}
SCOPES = [("shared_day",), ("subject_day",), ("shared_day", "subject_day"), ("shared_day", "subject"),
          ("subject_day", "subject"), ("shared_day", "subject_day", "subject")]


def _plan(write_schema: Callable[..., Path], scopes: tuple[str, ...]) -> Plan:
    schema = {
        "type": "record", "name": "Late", "namespace": "t.late",
        "privacy": {"source_topic": "late.raw", "sanitized_topic": "late.sanitized", "subject": "user_id"},
        "fields": [{"name": "user_id", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}}]
        + [{"name": s, "type": "string", "privacy": FIELDS[s]} for s in scopes],
    }
    return compile_plan(load_schema_file(write_schema(schema, "late.avsc")))


@pytest.mark.parametrize("subject", ["known", "new"])
@pytest.mark.parametrize("scopes", SCOPES, ids="+".join)
def test_a_late_event_of_an_erased_day_gets_new_keys_for_every_scope(
        write_schema: Callable[..., Path], keyring: Keyring, config: GatewayConfig, scopes: tuple[str, ...],
        subject: str) -> None:
    plan = _plan(write_schema, scopes)
    topic = KeyTopic()
    keys = SubjectKeys(keyring, publisher=topic.publish)
    sanitizer = Pipeline([plan], keyring, config, audit_partitions=1,
                         tokenizers=tokenizers(keyring, [plan]), subject_keys=keys).stages["late.raw"].sanitizer

    def sanitize(user: str, ts: int) -> dict[str, Any]:
        record = sanitizer.sanitize({"user_id": user, **{s: f"{user}-{s}" for s in scopes}}, ts).record
        keys.publish_pending()  # as Pipeline.process does at the end of a batch
        return record

    old = [sanitize(user, OLD) for user in ("alice", "bob")]
    today = sanitize("alice", T0)
    due = due_keys(topic.reader(keyring).periods.names(), T0)
    assert due and all(k.day == OLD // DAY_MS for k in due)
    for key in due:  # what gateway retention enforce writes, and the worker's follower applies
        topic.records.append((key.name.encode(), None))
        keys.apply(key.name.encode(), None)

    late = sanitize("alice" if subject == "known" else "zed", OLD + 3600_000)  # no KeyError, no dead letter

    reader = topic.reader(keyring)
    decryptor = FieldDecryptor(keyring, subject_keys=reader)
    opened, report = decrypt_record(late, plan, decryptor)
    assert report.ok, report.fields
    assert all(opened[s].endswith(f"-{s}") for s in scopes)
    erased_ids = {k.dek_id for k in due}
    for s in scopes:
        if s != "subject":
            assert parse_ciphertext(late[s]).dek_id not in erased_ids  # a new key for that day ...
    _, old_report = decrypt_record(old[0], plan, decryptor)
    for s in scopes:
        assert old_report.fields[s] == "decrypted" if s == "subject" else old_report.fields[s].startswith("key_erased")
    assert decrypt_record(today, plan, decryptor)[1].ok
    # ... which the next run erases in turn
    late_ids = {parse_ciphertext(late[s]).dek_id for s in scopes if s != "subject"}
    assert {k.dek_id for k in due_keys(reader.periods.names(), T0)} == late_ids


# ---- item 9: the quarantine key: use limits and rotation -----------------------------------------
def _letter(sealed: dict[str, Any], offset: int) -> dict[str, Any]:
    return {"reason": "json_invalid", "source": {"topic": "t.raw", "partition": 0, "offset": offset}, "sealed": sealed}


def test_each_process_seals_under_seal_keys_of_its_own_within_max_uses(keyring: Keyring) -> None:
    """Two workers on one keyring: every seal key seals at most max_uses dead letters, and no two
    processes ever share one (a random 128-bit seal id each), so the bound holds across the group."""
    first = QuarantineSealer.of_keyring(keyring, max_uses=2)
    second = QuarantineSealer.of_keyring(Keyring.open(keyring.path, create=False), max_uses=2)
    letters = [_letter(s.seal("t.raw", 0, i, b"v%d" % i, None, None), i)
               for i, s in enumerate([first, second] * 5)]
    by_process = [{letter["sealed"]["seal_id"] for letter in letters[p::2]} for p in (0, 1)]
    assert not by_process[0] & by_process[1]
    uses = Counter(letter["sealed"]["seal_id"] for letter in letters)
    assert max(uses.values()) <= 2 and len(uses) == 6  # 5 seals per process: 3 seal keys each
    assert {letter["sealed"]["key_id"] for letter in letters} == {keyring.quarantine_key()[0]}
    reader = QuarantineSealer.of_keyring(Keyring.open(keyring.path, create=False))
    assert [reader.unseal(letter)["value"] for letter in letters] == [b"v%d" % i for i in range(10)]
    # the seal id and the key id are bound: changing either does not open
    tampered = dict(letters[0]["sealed"], seal_id=letters[1]["sealed"]["seal_id"])
    with pytest.raises(DecryptError) as other_seal:
        reader.unseal(_letter(tampered, 0))
    assert other_seal.value.reason == "tampered"


def test_quarantine_rotation_round_trip(keyring: Keyring) -> None:
    """After `gateway keys rotate-quarantine` (another process, the keyring file) a running sealer seals
    under the new key at its next dead letter; the old dead letters still unseal with the keyring."""
    sealer = QuarantineSealer.of_keyring(keyring)
    old_id = sealer.key_id
    before = _letter(sealer.seal("t.raw", 0, 1, b"before", None, None), 1)
    new_id = Keyring.open(keyring.path, create=False).rotate_quarantine()  # the CLI, elsewhere
    after = _letter(sealer.seal("t.raw", 0, 2, b"after", None, None), 2)
    assert (before["sealed"]["key_id"], after["sealed"]["key_id"]) == (old_id, new_id) and new_id != old_id
    assert sealer.key_id == new_id and orjson.loads(bytes(orjson.dumps([sealer.audit_key_ids()]))) == [[new_id]]
    ring = Keyring.open(keyring.path, create=False)
    assert ring.quarantine_key()[0] == new_id and set(ring.quarantine_key_ids()) == {old_id, new_id}
    reader = QuarantineSealer.of_keyring(ring)
    assert (reader.unseal(before)["value"], reader.unseal(after)["value"]) == (b"before", b"after")
    # a sealer holding only the new key cannot open the old letter: it names a key not held
    with pytest.raises(DecryptError) as not_held:
        QuarantineSealer(*ring.quarantine_key()).unseal(before)
    assert not_held.value.reason == "key_not_held"
    assert ring.quarantine_key(old_id)[1].hex() not in repr(reader) + repr(sealer)
