"""Dead-letter sealing: round trip, binding to source coordinates (and, format 2, to the subject's key),
erasure by `gateway forget`, no readable PII; and which dead letters the pipeline seals under which key."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.raw import load_schema_file
from gateway.core.deadletter import (
    QUARANTINE_SEAL_FORMAT,
    SUBJECT_SEAL_FORMAT,
    QuarantineSealer,
    _coordinates,
    _payload,
)
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.embedded.samples import CANARIES
from gateway.errors import DecryptError
from gateway.keys.keyring import Keyring
from gateway.keys.subject_keys import SubjectKeys, entry_key
from gateway.keys.tokens import DomainTokenizer
from gateway.settings import GatewayConfig
from tests.unit.key_topic import KeyTopic

VALUE = orjson.dumps({"email": CANARIES["email"], "card": CANARIES["card"], "name": CANARIES["name"]})
KEY = CANARIES["ip"].encode()
HEADERS = [("trace", CANARIES["patient"].encode()), ("empty", b""), ("binary", b"\x00\xff")]


@pytest.fixture
def sealer(keyring: Keyring) -> QuarantineSealer:
    return QuarantineSealer(*keyring.quarantine_key())


def _dead_letter(sealed: dict[str, Any], topic: str = "payments.raw", partition: int = 2,
                 offset: int = 41) -> dict[str, Any]:
    return {"reason": "wrong_type", "source": {"topic": topic, "partition": partition, "offset": offset},
            "sealed": sealed}


def test_seal_unseal_round_trip(sealer: QuarantineSealer) -> None:
    sealed = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    assert sealed["format"] == QUARANTINE_SEAL_FORMAT == 3
    assert sealed["key_id"] == sealer.key_id
    opened = sealer.unseal(_dead_letter(sealed))
    assert opened == {"value": VALUE, "key": KEY, "headers": HEADERS}


def test_seal_unseal_none_parts(sealer: QuarantineSealer) -> None:
    sealed = sealer.seal("payments.raw", 0, 0, None, None, None)
    assert sealer.unseal(_dead_letter(sealed, partition=0, offset=0)) == {"value": None, "key": None, "headers": []}


def test_unseal_with_a_reopened_keyring(keyring: Keyring, sealer: QuarantineSealer) -> None:
    sealed = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    again = Keyring.open(keyring.path, create=False)
    assert QuarantineSealer(*again.quarantine_key(sealed["key_id"])).unseal(_dead_letter(sealed))["value"] == VALUE


@pytest.mark.parametrize("coordinates", [{"topic": "clinical.visits.raw"}, {"partition": 3}, {"offset": 42},
                                         {"offset": 0}])
def test_unseal_with_changed_coordinates_fails(sealer: QuarantineSealer, coordinates: dict[str, Any]) -> None:
    sealed = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    with pytest.raises(DecryptError) as excinfo:
        sealer.unseal(_dead_letter(sealed, **coordinates))
    assert excinfo.value.reason == "tampered"


def test_unseal_with_another_key_fails(sealer: QuarantineSealer, tmp_path) -> None:
    sealed = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    other = QuarantineSealer(*Keyring.open(tmp_path / "other.json").quarantine_key())
    with pytest.raises(DecryptError):
        other.unseal(_dead_letter(sealed))


def test_unseal_of_altered_data_fails(sealer: QuarantineSealer) -> None:
    sealed = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    raw = bytearray(base64.b64decode(sealed["data"]))
    raw[20] ^= 1
    with pytest.raises(DecryptError):
        sealer.unseal(_dead_letter(dict(sealed, data=base64.b64encode(bytes(raw)).decode())))


def test_sealed_json_contains_no_canary(sealer: QuarantineSealer) -> None:
    sealed = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    text = orjson.dumps(_dead_letter(sealed))
    decoded = base64.b64decode(sealed["data"])
    for canary in CANARIES.values():
        assert canary.encode() not in text
        assert canary.encode() not in decoded
        assert base64.b64encode(canary.encode())[:12] not in text


def test_seals_are_randomized(sealer: QuarantineSealer) -> None:
    a = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    b = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    assert a["data"] != b["data"]


# ---- format 2: sealed under the subject's key (erased by gateway forget) ----------------------------

SUBJECT = CANARIES["email"]


def _token(keyring: Keyring, value: str, domain: str = "customer") -> str:
    version, keys = keyring.token_keys(domain)
    return DomainTokenizer(domain, version, keys[version]).token(value)


@pytest.fixture
def subject_sealer(keyring: Keyring) -> tuple[QuarantineSealer, KeyTopic]:
    keyring.ensure_token_domains({"customer"})
    topic = KeyTopic()
    return QuarantineSealer(*keyring.quarantine_key(), SubjectKeys(keyring, publisher=topic.publish)), topic


def _seal2(sealer: QuarantineSealer, token: str) -> dict[str, Any]:
    sealed = sealer.seal_for_subject("payments.raw", 2, 41, VALUE, KEY, HEADERS, "customer", token)
    assert sealer.subject_keys is not None
    sealer.subject_keys.publish_pending()  # as Pipeline.process does before the batch commits
    return sealed


def test_subject_seal_round_trip(keyring: Keyring, subject_sealer: tuple[QuarantineSealer, KeyTopic]) -> None:
    sealer, topic = subject_sealer
    token = _token(keyring, SUBJECT)
    sealed = _seal2(sealer, token)
    assert sealed["format"] == SUBJECT_SEAL_FORMAT == 2
    assert sealed["key"]["domain"] == "customer" and sealed["key"]["subject"] == token
    assert sealed["key_id"] == f"subject:customer/{sealed['key']['dek']}"
    assert [k for k, _ in topic.records] == [entry_key("customer", token, bytes.fromhex(sealed["key"]["dek"])).encode()]
    assert sealer.unseal(_dead_letter(sealed)) == {"value": VALUE, "key": KEY, "headers": HEADERS}
    # an operator's own reader of the key topic (gateway dlq unseal --bootstrap) opens it too
    operator = QuarantineSealer(*keyring.quarantine_key(), topic.reader(keyring))
    assert operator.unseal(_dead_letter(sealed))["value"] == VALUE
    # one key per subject: a second dead letter of the subject reuses it
    assert _seal2(sealer, token)["key"]["dek"] == sealed["key"]["dek"] and len(topic.records) == 1


@pytest.mark.parametrize("coordinates", [{"topic": "clinical.visits.raw"}, {"partition": 3}, {"offset": 42}])
def test_subject_seal_with_changed_coordinates_is_tampered(
        keyring: Keyring, subject_sealer: tuple[QuarantineSealer, KeyTopic], coordinates: dict[str, Any]) -> None:
    sealer, _ = subject_sealer
    sealed = _seal2(sealer, _token(keyring, SUBJECT))
    with pytest.raises(DecryptError) as excinfo:
        sealer.unseal(_dead_letter(sealed, **coordinates))
    assert excinfo.value.reason == "tampered"


class _AnyName:
    """A key store that hands out one subject's key whatever subject is asked for: what a relabelled
    seal would meet if keys were not bound to their names. The subject in the associated data stops it."""

    def __init__(self, keys: SubjectKeys, domain: str, token: str, dek: bytes) -> None:
        self._aead = keys.aead_for(domain, token, dek)

    def aead_for(self, _domain: str, _subject: str, _dek_id: bytes) -> Any:
        return self._aead


def test_subject_seal_relabelled_to_another_subject_is_tampered(
        keyring: Keyring, subject_sealer: tuple[QuarantineSealer, KeyTopic]) -> None:
    sealer, _ = subject_sealer
    token = _token(keyring, SUBJECT)
    sealed = _seal2(sealer, token)
    assert sealer.subject_keys is not None
    dek = bytes.fromhex(sealed["key"]["dek"])
    lenient = QuarantineSealer(*keyring.quarantine_key(), _AnyName(sealer.subject_keys, "customer", token, dek))  # type: ignore[arg-type]
    assert lenient.unseal(_dead_letter(sealed))["value"] == VALUE
    for name in ({"subject": _token(keyring, "someone.else@example.org")}, {"domain": "patient"},
                 {"dek": "00" * len(dek)}):
        with pytest.raises(DecryptError) as excinfo:
            lenient.unseal(_dead_letter(dict(sealed, key=dict(sealed["key"], **name))))
        assert excinfo.value.reason == "tampered", name


def test_subject_seal_after_forget_is_key_erased(keyring: Keyring,
                                                 subject_sealer: tuple[QuarantineSealer, KeyTopic]) -> None:
    sealer, topic = subject_sealer
    alice, bob = _token(keyring, SUBJECT), _token(keyring, "bob.canary@example.org")
    sealed_alice, sealed_bob = _seal2(sealer, alice), _seal2(sealer, bob)
    quarantined = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    topic.forget("customer", alice)
    operator = QuarantineSealer(*keyring.quarantine_key(), topic.reader(keyring))
    with pytest.raises(DecryptError) as excinfo:
        operator.unseal(_dead_letter(sealed_alice))
    assert excinfo.value.reason == "key_erased"
    assert operator.unseal(_dead_letter(sealed_bob))["value"] == VALUE  # another subject: untouched
    assert operator.unseal(_dead_letter(quarantined))["value"] == VALUE  # format 1: the quarantine key
    # the running worker's own store, once its follower applied the tombstone, no longer opens it either
    assert sealer.subject_keys is not None
    for key, value in topic.records[-1:]:
        sealer.subject_keys.apply(key, value)
    with pytest.raises(DecryptError, match="key_erased"):
        sealer.unseal(_dead_letter(sealed_alice))


def test_subject_seal_without_the_key_topic_is_key_not_held(
        keyring: Keyring, subject_sealer: tuple[QuarantineSealer, KeyTopic]) -> None:
    sealer, _ = subject_sealer
    sealed = _seal2(sealer, _token(keyring, SUBJECT))
    with pytest.raises(DecryptError) as excinfo:
        QuarantineSealer(*keyring.quarantine_key()).unseal(_dead_letter(sealed))
    assert excinfo.value.reason == "key_not_held" and "--bootstrap" in excinfo.value.message


@pytest.mark.parametrize("sealed", [None, {"format": 3, "data": ""}, {"format": 2, "data": "", "key": {}},
                                    {"format": 2, "data": "", "key": {"domain": "c", "subject": "t", "dek": "zz"}},
                                    {"format": 1, "data": "not base64!"}, "text"])
def test_unseal_of_a_malformed_dead_letter_is_malformed(sealer: QuarantineSealer, sealed: Any) -> None:
    with pytest.raises(DecryptError) as excinfo:
        sealer.unseal(_dead_letter(sealed))
    assert excinfo.value.reason == "malformed"


def test_format_3_size_and_fields(sealer: QuarantineSealer) -> None:
    sealed = sealer.seal("payments.raw", 2, 41, VALUE, KEY, HEADERS)
    assert set(sealed) == {"format", "key_id", "seal_id", "data"} and sealed["format"] == 3
    assert len(bytes.fromhex(sealed["seal_id"])) == 16
    assert len(base64.b64decode(sealed["data"])) == 12 + 4 + len(orjson.dumps(
        {"key": base64.b64encode(KEY).decode(), "value_is_null": False,
         "headers": [[n, base64.b64encode(d).decode()] for n, d in HEADERS]})) + len(VALUE) + 16


def test_format_1_dead_letters_still_unseal(keyring: Keyring, sealer: QuarantineSealer) -> None:
    """Dead letters written before format 3: directly under the quarantine key named by key_id."""
    key_id, key = keyring.quarantine_key()
    nonce = bytes(12)
    data = nonce + AESGCM(key).encrypt(nonce, _payload(VALUE, KEY, HEADERS), _coordinates("payments.raw", 2, 41))
    old = {"format": 1, "key_id": key_id, "data": base64.b64encode(data).decode()}
    assert sealer.unseal(_dead_letter(old)) == {"value": VALUE, "key": KEY, "headers": HEADERS}
    with pytest.raises(DecryptError) as moved:
        sealer.unseal(_dead_letter(old, offset=42))
    assert moved.value.reason == "tampered"


def test_subject_sealed_json_holds_no_subject_or_canary(keyring: Keyring,
                                                        subject_sealer: tuple[QuarantineSealer, KeyTopic]) -> None:
    sealer, topic = subject_sealer
    sealed = _seal2(sealer, _token(keyring, SUBJECT))
    text = orjson.dumps(_dead_letter(sealed)) + b"".join(k + (v or b"") for k, v in topic.records)
    for canary in CANARIES.values():
        assert canary.encode() not in text
        assert base64.b64encode(canary.encode())[:12] not in text
    assert repr(sealer).count("key_id") == 1 and "subject_keys=True" in repr(sealer)


# ---- the pipeline: which dead letters are sealed under which key ------------------------------------

ORDER_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Order", "namespace": "t.dlq",
    "privacy": {"source_topic": "orders.raw", "sanitized_topic": "orders.sanitized", "subject": "email",
                "output": "json", "leak_sentinel": "enforce"},
    "fields": [
        {"name": "email", "type": "string", "privacy": {"tokenize": {"domain": "customer", "normalizer": "email"}}},
        {"name": "comment", "type": "string", "privacy": "keep"},
        {"name": "amount", "type": "long", "privacy": "keep",
         "quality": {"range": {"min": 0, "max": 1000, "action": "reject"}}},
    ],
}
BOB = "bob.canary@example.org"


def _order(email: str, comment: str = "fine", amount: Any = 5) -> bytes:
    return orjson.dumps({"email": email, "comment": comment, "amount": amount})


def _order_pipeline(write_schema: Any, tmp_path: Path, keyring: Keyring,
                    with_keys: bool = True) -> tuple[Pipeline, KeyTopic]:
    plan = compile_plan(load_schema_file(write_schema(ORDER_SCHEMA, "orders.avsc")))
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t", leak_sample_rate=1.0)
    topic = KeyTopic()
    keys = SubjectKeys(keyring, publisher=topic.publish) if with_keys else None
    return Pipeline([plan], keyring, config, 1, tokenizers(keyring, [plan]), subject_keys=keys), topic


ORDERS = [  # (value, expected reason, expected seal format)
    (_order(SUBJECT), None, None),
    (_order(f"  {SUBJECT.upper()}", comment=f"card {CANARIES['card']}"), "pii_in_kept_field", 2),  # normalized
    (_order(SUBJECT, amount=-5), "quality:amount.range", 2),
    (_order(SUBJECT, amount=CANARIES["card"]), "wrong_type", 2),  # JSON that parsed: its subject is read
    (orjson.dumps({"comment": CANARIES["name"], "amount": 1}), "missing_field", 3),  # no subject to read
    (orjson.dumps({"email": 7, "comment": "x", "amount": 1}), "wrong_type", 3),  # a subject that is not a string
    (b'{"email": "' + SUBJECT.encode() + b'", "comment": ', "json_invalid", 3),  # never parsed: not read
    (b"\x07" + CANARIES["name"].encode(), "avro_truncated", 3),  # Avro that does not decode: not read
    (_order(BOB, comment=f"mail {CANARIES['email']}"), "pii_in_kept_field", 2),
]


def _run_orders(pipeline: Pipeline) -> tuple[list[RawEvent], dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    events = [RawEvent("orders.raw", 0, i, 1_000, None, value, [("trace", b"t")])
              for i, (value, _, _) in enumerate(ORDERS)]
    result = pipeline.process(events)
    letters = {orjson.loads(r.value)["source"]["offset"]: orjson.loads(r.value)
               for r in result.records if r.topic == "orders.raw.dlq"}
    audit = {e["event"]["offset"]: e for e in record_entries(r.value for r in result.records
                                                              if r.topic == "privacy.audit")}
    return events, letters, audit


def test_pipeline_seals_dead_letters_of_a_readable_subject_under_its_key(
        write_schema: Any, tmp_path: Path, keyring: Keyring) -> None:
    pipeline, topic = _order_pipeline(write_schema, tmp_path, keyring)
    events, letters, audit = _run_orders(pipeline)
    assert {i: (letters[i]["reason"], letters[i]["sealed"]["format"]) for i in letters} == \
        {i: (reason, fmt) for i, (_, reason, fmt) in enumerate(ORDERS) if reason is not None}
    alice, bob = _token(keyring, SUBJECT), _token(keyring, BOB)
    assert {letters[i]["sealed"]["key"]["subject"] for i in (1, 2, 3)} == {alice}  # one subject, one token
    assert letters[8]["sealed"]["key"]["subject"] == bob
    assert len({letters[i]["sealed"]["key"]["dek"] for i in (1, 2, 3)}) == 1
    # the keys were handed to the key topic in the batch (before its commit)
    assert len(topic.records) == 2 and all(v is not None for _, v in topic.records)
    quarantine_id = keyring.quarantine_key()[0]
    for i, letter in letters.items():
        sealed = letter["sealed"]
        expected = [quarantine_id] if sealed["format"] == 3 else ["token:customer/v1", sealed["key_id"]]
        assert audit[i]["key_ids"] == expected
    # everything opens for an operator holding the keyring and reading the key topic
    operator = QuarantineSealer(*keyring.quarantine_key(), topic.reader(keyring))
    for i, letter in letters.items():
        assert operator.unseal(letter) == {"value": events[i].value, "key": None, "headers": [("trace", b"t")]}
    # no raw subject or canary in what the pipeline wrote (the sealed originals hold them, encrypted)
    written = b"".join(orjson.dumps(letters[i]) + orjson.dumps(audit[i]) for i in letters)
    written += b"".join(k + (v or b"") for k, v in topic.records)
    for secret in (*CANARIES.values(), BOB, SUBJECT.upper()):
        assert secret.encode() not in written, secret

    # gateway forget of the first subject: its dead letters no longer open; the rest do
    topic.forget("customer", alice)
    operator = QuarantineSealer(*keyring.quarantine_key(), topic.reader(keyring))
    for i, letter in letters.items():
        if letter["sealed"].get("key", {}).get("subject") == alice:
            with pytest.raises(DecryptError, match="key_erased"):
                operator.unseal(letter)
        else:
            assert operator.unseal(letter)["value"] == events[i].value


def test_pipeline_without_subject_keys_seals_under_the_quarantine_key(
        write_schema: Any, tmp_path: Path, keyring: Keyring) -> None:
    pipeline, _ = _order_pipeline(write_schema, tmp_path, keyring, with_keys=False)
    _, letters, audit = _run_orders(pipeline)
    assert {letter["sealed"]["format"] for letter in letters.values()} == {3}
    assert {tuple(a["key_ids"]) for i, a in audit.items() if i in letters} == {(keyring.quarantine_key()[0],)}


def test_pipeline_falls_back_to_the_quarantine_key_when_no_subject_key_can_be_had(
        write_schema: Any, tmp_path: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.keys.errors import KmsUnavailable

    pipeline, topic = _order_pipeline(write_schema, tmp_path, keyring)

    def down(*_args: Any) -> Any:
        raise KmsUnavailable("the KMS is down")

    assert pipeline.subject_keys is not None
    monkeypatch.setattr(pipeline.subject_keys, "current", down)
    events, letters, audit = _run_orders(pipeline)
    assert len(letters) == len(ORDERS) - 1  # every rejected event still dead-lettered
    assert {letter["sealed"]["format"] for letter in letters.values()} == {3} and topic.records == []
    operator = QuarantineSealer(*keyring.quarantine_key())
    assert all(operator.unseal(letter)["value"] == events[i].value for i, letter in letters.items())


def test_pipeline_reads_the_subject_of_an_internal_error_after_decoding(
        write_schema: Any, tmp_path: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, _ = _order_pipeline(write_schema, tmp_path, keyring)
    stage = pipeline.stages["orders.raw"]

    def explode(*_args: Any, **_kwargs: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(stage, "finish", explode)
    result = pipeline.process([RawEvent("orders.raw", 0, 0, 1_000, None, _order(SUBJECT), None)])
    [letter] = [orjson.loads(r.value) for r in result.records if r.topic == "orders.raw.dlq"]
    assert letter["reason"] == "internal_error" and letter["sealed"]["format"] == 2
    assert letter["sealed"]["key"]["subject"] == _token(keyring, SUBJECT)


def test_dlq_unseal_command_without_the_key_topic(write_schema: Any, tmp_path: Path, keyring: Keyring,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Format 1 opens with the keyring alone; format 2 asks for the key topic (exit 1), one line each."""
    import io
    import sys

    from gateway.cli import main

    pipeline, _ = _order_pipeline(write_schema, tmp_path, keyring)
    events, letters, _ = _run_orders(pipeline)
    lines = b"".join(orjson.dumps(letters[i]) + b"\n" for i in sorted(letters)) + b"not json\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(lines)))
    assert main(["dlq", "unseal", "--keyring", str(keyring.path)]) == 1
    out, err = capsys.readouterr()
    opened = [orjson.loads(line) for line in out.splitlines()]
    format_1 = sorted(i for i, letter in letters.items() if letter["sealed"]["format"] == 3)
    assert [o["source"]["offset"] for o in opened] == format_1
    assert all(base64.b64decode(o["value"]) == events[o["source"]["offset"]].value for o in opened)
    assert opened[0]["headers"] == [["trace", base64.b64encode(b"t").decode()]] and opened[0]["key"] is None
    assert err.count(": key_not_held: ") == len(letters) - len(format_1)
    assert f"line {len(letters) + 1}: malformed" in err
    assert f"{len(letters) - len(format_1) + 1} dead letter(s) could not be unsealed" in err
    assert SUBJECT not in err and CANARIES["card"] not in err
