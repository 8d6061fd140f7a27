"""Retention by key expiry as pure logic: periods, period-key names, format v4, erasure, which periods
are due, KMS calls and compile errors. The key-topic records are passed by hand here; the real broker
(gateway retention enforce, the log cleaner) is in tests/integration/test_retention.py."""

from __future__ import annotations

import base64
import datetime
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_file
from gateway.core.policy.plan import Plan, plan_retentions
from gateway.errors import ConfigError, DecryptError, GatewayError, RejectedEvent
from gateway.keys.envelope import FORMAT_PERIOD, FieldDecryptor, context_bytes, parse_ciphertext, period_header
from gateway.keys.keyring import Keyring
from gateway.keys.kms import WrappedKey
from gateway.keys.period_keys import (
    DAY_MS,
    PeriodKeyName,
    PeriodKeys,
    day_label,
    day_of,
    due_keys,
    erase_at_ms,
    event_day,
    parse_period_key,
    summarize,
)
from gateway.keys.subject_keys import SubjectKeys, is_key_record, is_subject_key
from gateway.runtime import retention as retention_module
from gateway.runtime.keytopic import _retention_body
from gateway.runtime.keytopic import forgotten_key_id as _forgotten_key_id
from gateway.runtime.retention import RetentionSchedule, retention_owner, summary_lines
from gateway.settings import GatewayConfig
from tests.unit.key_topic import KeyTopic

DEK = bytes(range(16))
T0 = int(datetime.datetime(2026, 3, 4, 12, 30, tzinfo=datetime.UTC).timestamp() * 1000)  # a Wednesday noon
DAY0 = T0 // DAY_MS


def _schema(**privacy: Any) -> dict[str, Any]:
    return {
        "type": "record", "name": "Payment", "namespace": "t.retention",
        "privacy": {"source_topic": "pay.raw", "sanitized_topic": "pay.sanitized", "subject": "user_id", **privacy},
        "fields": [
            {"name": "user_id", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
            {"name": "card", "type": "string", "privacy": {"encrypt": {"retention_days": 1}}},
            {"name": "note", "type": ["null", "string"], "default": None,
             "privacy": {"encrypt": {"per_subject": True, "retention_days": 30}}},
            {"name": "code", "type": "string", "privacy": "encrypt"},
        ],
    }


@pytest.fixture
def plan(write_schema: Callable[..., Path]) -> Plan:
    return compile_plan(load_schema_file(write_schema(_schema(), "pay.avsc")))


class CountingKms:
    """The keyring behind a counter of wraps and unwraps (the KMS calls a KMS would bill)."""

    name = "local"

    def __init__(self, inner: Keyring) -> None:
        self.inner = inner
        self.wraps = 0
        self.unwraps = 0

    def active_key_id(self) -> str:
        return self.inner.active_key_id()

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        self.wraps += 1
        return self.inner.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(wrapped, context)

    def healthy(self) -> bool:
        return True


def _pipeline(plan: Plan, keyring: Keyring, config: GatewayConfig, topic: KeyTopic, kms: Any = None
              ) -> Pipeline:
    keys = SubjectKeys(kms or keyring, publisher=topic.publish)
    return Pipeline([plan], keyring, config, audit_partitions=1,
                    tokenizers=tokenizers(keyring, [plan]), kms=kms, subject_keys=keys)


def _sanitize(pipeline: Pipeline, user: str, ts: int, card: str = "4242", note: str | None = "n") -> Any:
    result = pipeline.stages["pay.raw"].sanitizer.sanitize({"user_id": user, "card": card, "note": note,
                                                            "code": "C"}, ts)
    assert pipeline.subject_keys is not None
    pipeline.subject_keys.publish_pending()  # as Pipeline.process does at the end of a batch
    return result


# ---- periods and names ---------------------------------------------------------------------------
def test_the_period_of_an_event_is_its_utc_day_and_a_future_time_counts_as_now() -> None:
    assert day_of(0) == 0 and day_of(DAY_MS - 1) == 0 and day_of(DAY_MS) == 1
    assert day_label(DAY0) == "2026-03-04"
    midnight = DAY0 * DAY_MS
    assert day_of(midnight - 1) == DAY0 - 1 and day_of(midnight) == DAY0
    assert event_day(T0, now_ms=T0 + 5 * DAY_MS) == DAY0
    assert event_day(T0 + 3 * DAY_MS, now_ms=T0) == DAY0  # a clock ahead cannot push the erasure out
    # retention N: the day's keys go at 00:00 UTC N days after the day ended
    assert erase_at_ms(1, DAY0) == (DAY0 + 2) * DAY_MS
    assert day_label(erase_at_ms(30, DAY0) // DAY_MS) == "2026-04-04"


def test_period_key_names_round_trip_and_are_never_subject_keys_or_bookkeeping() -> None:
    shared = PeriodKeyName(1, DAY0, DEK)
    subject = PeriodKeyName(30, DAY0, DEK, "customer", "tok_v1_abc")
    assert shared.name == f"period:1/2026-03-04/{DEK.hex()}"
    assert subject.name == f"period:30/2026-03-04/customer/tok_v1_abc/{DEK.hex()}"
    assert parse_period_key(shared.name) == shared and parse_period_key(subject.name) == subject
    # the audit's id never holds the token
    assert subject.key_id == f"period:30/2026-03-04/subject:customer/{DEK.hex()}"
    assert "tok_v1_abc" not in repr(subject) + subject.key_id
    for name in (shared.name, subject.name):
        assert is_key_record(name) and not is_subject_key(name)
    # a token domain named "period" holds no ':', so its subject keys stay subject keys
    lookalike = f"period/tok_v1_abc/{DEK.hex()}"
    assert is_subject_key(lookalike) and parse_period_key(lookalike) is None
    for bad in (f"period:01/2026-03-04/{DEK.hex()}", f"period:0/2026-03-04/{DEK.hex()}",
                f"period:1/2026-02-30/{DEK.hex()}", f"period:1/2026-3-04/{DEK.hex()}",
                f"period:1/2026-03-04/{DEK.hex().upper()}", f"period:1/2026-03-04/customer/{DEK.hex()}",
                f"period:1/2026-03-04/{DEK.hex()[:-2]}", f"period:70000/2026-03-04/{DEK.hex()}",
                f"_audit-head/x/{DEK.hex()}", ""):
        assert parse_period_key(bad) is None, bad


def test_subject_keys_hand_period_records_to_their_period_keys(keyring: Keyring) -> None:
    topic = KeyTopic()
    keys = SubjectKeys(keyring, publisher=topic.publish)
    keys.periods.current(1, DAY0)
    keys.current("customer", "tok_v1_abc")
    assert keys.publish_pending() == 2  # the subject key and the period key, stored together
    reader = topic.reader(keyring)
    assert len(reader) == 1 and len(reader.periods) == 1  # neither taken for the other
    assert reader.keys_of("customer", "tok_v1_abc") == keys.keys_of("customer", "tok_v1_abc")
    [name] = reader.periods.names()
    reader.apply(name.encode(), None)
    assert len(reader.periods) == 0 and reader.periods.erased == 1 and reader.erased == 0 and len(reader) == 1


# ---- format v4 -------------------------------------------------------------------------------------
def test_v4_round_trip_shared_and_per_subject(plan: Plan, keyring: Keyring, config: GatewayConfig) -> None:
    topic = KeyTopic()
    pipeline = _pipeline(plan, keyring, config, topic)
    result = _sanitize(pipeline, "alice", T0, card="4242 4242", note="alice's note")
    record = result.record
    card, note = parse_ciphertext(record["card"]), parse_ciphertext(record["note"])
    assert card.version == note.version == FORMAT_PERIOD
    assert (card.retention_days, card.day, card.kek_id) == (1, DAY0, "")
    assert (note.retention_days, note.day, note.kek_id) == (30, DAY0, "customer")
    assert parse_ciphertext(record["code"]).version == 1  # no retention: as before
    assert {card.key_id, note.key_id} <= result.other_key_ids  # the audit names both
    assert card.key_id.startswith("period:1/2026-03-04/") and note.key_id.startswith("period:30/2026-03-04/subject:")

    reader = topic.reader(keyring)  # an authorized consumer: keyring + the key topic (decrypt --bootstrap)
    opened, report = decrypt_record(record, plan, FieldDecryptor(keyring, subject_keys=reader))
    assert report.ok, report.fields
    assert (opened["card"], opened["note"]) == ("4242 4242", "alice's note")
    # without the key topic: not held here
    _, report = decrypt_record(record, plan, FieldDecryptor(keyring))
    assert report.fields["card"].startswith("key_not_held") and "retention" in report.fields["card"]

    # bound like the other formats: another field, subject or a changed period byte fails
    decryptor = FieldDecryptor(keyring, subject_keys=reader)
    with pytest.raises(DecryptError) as moved:
        decryptor.decrypt(record["card"], context_bytes(plan.sanitized_topic, "code", record["user_id"]))
    assert moved.value.reason == "tampered"
    with pytest.raises(DecryptError) as other_subject:
        decryptor.decrypt(record["card"], context_bytes(plan.sanitized_topic, "card", "tok_v1_other"))
    assert other_subject.value.reason == "tampered"
    shifted = bytearray(record["card"])
    shifted[6] ^= 1  # the day's low byte: another period, whose key this is not
    with pytest.raises(DecryptError) as other_period:
        decryptor.decrypt(bytes(shifted), context_bytes(plan.sanitized_topic, "card", record["user_id"]))
    assert other_period.value.reason == "key_erased"
    for truncated in (record["card"][:7], record["card"][:30]):
        with pytest.raises(DecryptError) as malformed:
            decryptor.decrypt(truncated, b"")
        assert malformed.value.reason == "malformed"


def test_any_v4_bytes_fail_with_a_decrypt_error_only(keyring: Keyring) -> None:
    decryptor = FieldDecryptor(keyring, subject_keys=SubjectKeys(keyring))
    rng = random.Random(4)
    header = period_header(1, DAY0, "customer", DEK)
    samples = [bytes([FORMAT_PERIOD]) + rng.randbytes(rng.randrange(0, 80)) for _ in range(300)]
    samples += [header[:1] + b"\xff\xff\xff\xff\xff\xff" + header[7:] + bytes(40)]  # a day past 9999-12-31
    for data in samples:
        with pytest.raises(DecryptError) as failed:
            decryptor.decrypt(data, b"", "tok_v1_x")
        assert failed.value.reason in ("malformed", "key_erased"), data.hex()
    with pytest.raises(GatewayError):
        period_header(1, 10**7, "", DEK)


def test_events_of_one_day_share_a_key_other_days_and_subjects_get_their_own(
        plan: Plan, keyring: Keyring, config: GatewayConfig) -> None:
    pipeline = _pipeline(plan, keyring, config, KeyTopic())
    first = _sanitize(pipeline, "alice", T0).record
    same_day = _sanitize(pipeline, "bob", T0 + 3 * 3600_000).record
    next_day = _sanitize(pipeline, "alice", T0 + DAY_MS).record
    ids = {k: parse_ciphertext(r["card"]).dek_id for k, r in (("a", first), ("b", same_day), ("c", next_day))}
    assert ids["a"] == ids["b"] != ids["c"]
    notes = [parse_ciphertext(r["note"]).dek_id for r in (first, same_day, next_day)]
    assert len(set(notes)) == 3  # per subject and day


def test_an_erased_period_reports_key_erased_and_other_periods_still_open(
        plan: Plan, keyring: Keyring, config: GatewayConfig) -> None:
    topic = KeyTopic()
    pipeline = _pipeline(plan, keyring, config, topic)
    old = _sanitize(pipeline, "alice", T0 - 3 * DAY_MS).record
    today = _sanitize(pipeline, "alice", T0).record
    reader = topic.reader(keyring)
    now = T0
    due = due_keys(reader.periods.names(), now)
    assert [(k.days, k.period) for k in due] == [(1, "2026-03-01")]  # the note's 30 days are not over
    for key in due:  # what gateway retention enforce writes
        topic.records.append((key.name.encode(), None))
        pipeline.subject_keys.apply(key.name.encode(), None)  # the worker's follower
    reader = topic.reader(keyring)
    decryptor = FieldDecryptor(keyring, subject_keys=reader)
    _, report = decrypt_record(old, plan, decryptor)
    assert report.fields["card"].startswith("key_erased") and "retention" in report.fields["card"]
    assert report.fields["note"] == report.fields["code"] == "decrypted"
    _, report = decrypt_record(today, plan, decryptor)
    assert report.ok
    # a late event of the erased day gets a new key, which the next run erases in turn
    late = _sanitize(pipeline, "bob", T0 - 3 * DAY_MS).record
    assert parse_ciphertext(late["card"]).dek_id != parse_ciphertext(old["card"]).dek_id
    assert [k.dek_id for k in due_keys(topic.reader(keyring).periods.names(), now)] == [
        parse_ciphertext(late["card"]).dek_id]


def test_gateway_forget_erases_the_subject_s_period_keys_too(plan: Plan, keyring: Keyring,
                                                               config: GatewayConfig) -> None:
    topic = KeyTopic()
    pipeline = _pipeline(plan, keyring, config, topic)
    token = _sanitize(pipeline, "alice", T0).subject
    _sanitize(pipeline, "alice", T0 - DAY_MS)
    _sanitize(pipeline, "bob", T0)
    reader = topic.reader(keyring)
    names = reader.periods.keys_of("customer", token)
    assert len(names) == 2 and all(f"/customer/{token}/" in n for n in names)  # only alice's, per day
    key_ids = [_forgotten_key_id(n) for n in names]  # what the forget event names
    assert all(k.startswith("period:30/") and "subject:customer/" in k and token not in k for k in key_ids)
    assert _forgotten_key_id(f"customer/{token}/{DEK.hex()}") == f"subject:customer/{DEK.hex()}"


def test_an_event_without_timestamp_or_subject_is_dead_lettered(plan: Plan, keyring: Keyring,
                                                               config: GatewayConfig) -> None:
    sanitizer = _pipeline(plan, keyring, config, KeyTopic()).stages["pay.raw"].sanitizer
    with pytest.raises(RejectedEvent) as no_time:
        sanitizer.sanitize({"user_id": "alice", "card": "4242", "note": None, "code": "C"}, -1)
    assert no_time.value.reason == "missing_timestamp" and "'card'" in no_time.value.message
    with pytest.raises(RejectedEvent) as no_subject:
        sanitizer.sanitize({"user_id": None, "card": "4242", "note": "n", "code": "C"}, T0)
    assert no_subject.value.reason == "missing_subject"


def test_a_retention_needs_the_key_topic(plan: Plan, keyring: Keyring, config: GatewayConfig,
                                         write_schema: Callable[..., Path]) -> None:
    schema = _schema()
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "note"]  # nothing per subject
    no_subject_keys = compile_plan(load_schema_file(write_schema(schema, "shared.avsc")))
    with pytest.raises(GatewayError, match="has a retention: the sanitizer needs the key topic"):
        Pipeline([no_subject_keys], keyring, config, audit_partitions=1,
                 tokenizers=tokenizers(keyring, [no_subject_keys]))


# ---- KMS calls -------------------------------------------------------------------------------------
def test_one_kms_call_per_new_period_key_never_per_event(plan: Plan, keyring: Keyring,
                                                         config: GatewayConfig) -> None:
    kms = CountingKms(keyring)
    topic = KeyTopic()
    pipeline = _pipeline(plan, keyring, config, topic, kms)
    periods = pipeline.subject_keys.periods
    for i in range(200):
        _sanitize(pipeline, "alice", T0 + i, note=None)  # the card only: one period key
    assert periods.kms_calls == 1
    for i in range(50):
        _sanitize(pipeline, "bob" if i % 2 else "carol", T0 + DAY_MS + i)
    assert periods.kms_calls == 1 + 1 + 2  # the next day's shared key, and one per subject for that day
    before = kms.wraps
    _sanitize(pipeline, "bob", T0 + DAY_MS + 99)
    assert kms.wraps == before  # cached

    # a worker restarting on the same key topic makes one key of its own for the day (one KMS call,
    # however many events), never encrypting again under a stored one whose uses it cannot know
    restarted = topic.reader(CountingKms(keyring))
    stored = set(restarted.periods.names())
    for _ in range(20):
        key = restarted.periods.current(1, DAY0)
    assert restarted.periods.kms_calls == 1 and len(restarted.periods.drain_pending()) == 1
    assert PeriodKeyName(1, DAY0, key.dek_id).name not in stored
    # a consumer unwraps each key once, whatever number of fields it opens
    reader_kms = CountingKms(keyring)
    reader = topic.reader(reader_kms)
    decryptor = FieldDecryptor(keyring, subject_keys=reader)
    for i in range(20):
        record = _sanitize(pipeline, "alice", T0 + i, note=None).record
        assert decrypt_record(record, plan, decryptor)[1].ok
    assert reader_kms.unwraps == 1


def test_a_used_up_period_key_is_replaced_within_its_day(keyring: Keyring) -> None:
    periods = PeriodKeys(keyring, max_uses=2)
    first = periods.current(1, DAY0)
    first.uses = 2
    second = periods.current(1, DAY0)
    assert second.dek_id != first.dek_id and len(periods) == 2
    assert len(periods.drain_pending()) == 2
    names = periods.names()
    assert len(names) == 2 and len({n.rsplit("/", 1)[0] for n in names}) == 1  # two keys of one period


# ---- which periods are due ---------------------------------------------------------------------------
def test_enforce_selects_the_periods_past_their_retention() -> None:
    today = DAY0
    names = {(days, offset): PeriodKeyName(days, today + offset, bytes([days, offset % 256]) + DEK[2:]).name
             for days in (1, 7) for offset in (0, -1, -2, -3, -8, -9)}
    names[(1, "subject")] = PeriodKeyName(1, today - 2, DEK, "customer", "tok_v1_abc").name
    due = due_keys(names.values(), now_ms=T0)
    # retention 1: days ended more than 1 day ago (-2 and before); 7: -8 and before; oldest erasure first
    assert [(k.days, k.day - today, k.domain) for k in due] == [
        (1, -9, ""), (1, -8, ""), (1, -3, ""), (7, -9, ""), (1, -2, ""), (1, -2, "customer"), (7, -8, "")]
    # the boundary: a day under retention 1 is due at 00:00 UTC two days after it began
    day_before_yesterday = PeriodKeyName(1, today - 1, DEK).name
    assert due_keys([day_before_yesterday], (today + 1) * DAY_MS - 1) == []
    assert len(due_keys([day_before_yesterday], (today + 1) * DAY_MS)) == 1
    assert due_keys(["customer/tok_v1_abc/" + DEK.hex(), "_audit-head/a/keys:retention"], T0 * 10) == []


def test_keys_waiting_to_be_stored_are_never_selected(keyring: Keyring) -> None:
    periods = PeriodKeys(keyring)
    periods.current(1, DAY0 - 5)
    assert due_keys(periods.names(), T0) == []  # its value is not in the key topic yet: no tombstone before it
    periods.drain_pending()
    assert len(due_keys(periods.names(), T0)) == 1


def test_the_retention_audit_event_names_periods_and_key_ids_never_tokens(config: GatewayConfig) -> None:
    erased = [PeriodKeyName(1, DAY0 - 3, DEK), PeriodKeyName(1, DAY0 - 3, DEK[::-1]),
              PeriodKeyName(30, DAY0 - 40, DEK, "customer", "tok_v1_secret")]
    body = _retention_body(config, erased, T0, restart=True)
    assert body["type"] == "retention_enforced" and body["chain"] == "keys:retention"
    assert body["keys_erased"] == 3 and body["chain_restart"] is True
    assert [(p["retention_days"], p["period"], p["scope"], p["keys_erased"]) for p in body["periods"]] == [
        (30, "2026-01-23", "subject:customer", 1), (1, "2026-03-01", "shared", 2)]
    assert body["periods"][1]["due_since"] == "2026-03-03T00:00:00Z"
    assert sorted(body["periods"][1]["key_ids"]) == sorted(k.key_id for k in erased[:2])
    assert "tok_v1_secret" not in str(body)


def test_show_lists_periods_key_ids_and_when_each_is_erased() -> None:
    names = [PeriodKeyName(1, DAY0 - 3, DEK).name, PeriodKeyName(1, DAY0, DEK).name,
             *(PeriodKeyName(1, DAY0, bytes([i]) * 16, "customer", f"tok_v1_{i}").name for i in range(7))]
    summaries = summarize(names)
    assert [(s.period, s.domain, len(s.key_ids)) for s in summaries] == [
        ("2026-03-01", "", 1), ("2026-03-04", "", 1), ("2026-03-04", "customer", 7)]
    text = "\n".join(summary_lines(summaries, T0))
    assert "2026-03-03T00:00:00Z  (due: gateway retention enforce)" in text
    assert "2026-03-06T00:00:00Z" in text and "... and 2 more" in text and "tok_v1_" not in text


# ---- the worker's schedule -----------------------------------------------------------------------------
def test_only_the_holder_of_the_owner_partition_runs_retention_once_per_interval(
        monkeypatch: pytest.MonkeyPatch, keyring: Keyring, config: GatewayConfig) -> None:
    runs: list[int] = []
    done = threading.Event()

    def fake_enforce(_config: GatewayConfig, periods: PeriodKeys, now_ms: int | None = None) -> list[Any]:
        runs.append(len(periods))
        done.set()
        return []

    monkeypatch.setattr(retention_module, "enforce_retention", fake_enforce)
    schedule = RetentionSchedule(config, PeriodKeys(keyring), ("pay.raw", 0), interval_s=3600)
    assert not schedule.tick({("pay.raw", 1), ("other", 0)})  # not the owner partition
    assert schedule.tick({("pay.raw", 0)})
    assert done.wait(5)
    schedule.close()
    assert not schedule.tick({("pay.raw", 0)})  # the next run waits its interval
    assert runs == [0]


def test_the_owner_is_partition_0_of_the_first_source_topic_with_a_retention(
        plan: Plan, write_schema: Callable[..., Path]) -> None:
    other = _schema(source_topic="a.raw", sanitized_topic="a.sanitized")
    other["fields"] = [f for f in other["fields"] if f["name"] in ("user_id", "code")]  # no retention
    no_retention = compile_plan(load_schema_file(write_schema(other, "a.avsc")))
    assert plan_retentions(plan) == {1, 30} and plan_retentions(no_retention) == frozenset()
    assert retention_owner([no_retention, plan]) == ("pay.raw", 0)
    assert retention_owner([no_retention]) is None


def test_retention_check_s_is_0_or_a_positive_interval() -> None:
    assert GatewayConfig(retention_check_s=0).retention_check_s == 0
    assert GatewayConfig().retention_check_s == 3600
    for bad in (-1, 0.5, 86_401):
        with pytest.raises(ConfigError, match="retention_check_s"):
            GatewayConfig(retention_check_s=bad)


# ---- the policy ------------------------------------------------------------------------------------------
def _errors(write_schema: Callable[..., Path], schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p.where, p.message) for p in lint_file(write_schema(schema)) if p.severity == "error"]


@pytest.mark.parametrize("bad", [0, -1, "7", True, 1.5, 36_501, None])
def test_a_field_s_retention_must_be_a_whole_number_of_days(write_schema: Callable[..., Path], bad: Any) -> None:
    schema = _schema()
    schema["fields"][1]["privacy"] = {"encrypt": {"retention_days": bad}}
    [(where, message)] = _errors(write_schema, schema)
    assert where == "card" and "retention_days must be a whole number of days from 1 to 36500" in message


def test_a_record_s_retention_is_checked_and_applies_to_every_encrypted_field_without_its_own(
        write_schema: Callable[..., Path]) -> None:
    schema = _schema(retention_days=0)
    assert _errors(write_schema, schema) == [
        ("(record)", "retention_days must be a whole number of days from 1 to 36500, e.g. 30")]
    schema = _schema(retention_days=90)
    schema["fields"].append({"name": "billing", "privacy": "keep", "type": {
        "type": "record", "name": "Billing", "fields": [
            {"name": "street", "type": "string", "privacy": "encrypt"}]}})
    plan = compile_plan(load_schema_file(write_schema(schema)))
    assert plan.field_actions["card"] == "encrypt:retention_days=1"  # its own wins
    assert plan.field_actions["note"] == "encrypt:per_subject,retention_days=30"
    assert plan.field_actions["code"] == "encrypt:retention_days=90"
    assert plan.field_actions["billing.street"] == "encrypt:retention_days=90"  # nested records too
    assert plan_retentions(plan) == {1, 30, 90}
    sanitized_doc = next(f["doc"] for f in plan.sanitized_schema["fields"] if f["name"] == "code")
    assert "format v4" in sanitized_doc and "90 day(s)" in sanitized_doc


def test_per_subject_with_a_retention_needs_a_tokenized_subject(write_schema: Callable[..., Path]) -> None:
    schema = _schema()
    del schema["privacy"]["subject"]
    [(where, message)] = _errors(write_schema, schema)
    assert where == "note" and "per_subject encryption needs a tokenized subject" in message


def test_a_purpose_view_keeps_the_record_s_retention(write_schema: Callable[..., Path]) -> None:
    schema = _schema(retention_days=5, purposes={"fraud": {
        "topic": "pay.fraud", "basis": "legitimate_interests",
        "fields": {"user_id": {"tokenize": {"domain": "customer"}}, "code": "encrypt"}}})
    plan = compile_plan(load_schema_file(write_schema(schema)))
    [view] = plan.purposes
    assert view.plan.field_actions["code"] == "encrypt:retention_days=5"


def test_no_key_material_in_reprs(keyring: Keyring) -> None:
    periods = PeriodKeys(keyring)
    key = periods.current(30, DAY0, "customer", "tok_v1_secret")
    [(name, value)] = periods.drain_pending()
    wrapped = base64.b64decode(orjson.loads(value or b"")["wrapped"])
    shown = repr(periods) + repr(key) + repr(parse_period_key(name.decode()))
    assert "tok_v1_secret" not in shown and wrapped.hex() not in shown and "wrapped" not in shown
