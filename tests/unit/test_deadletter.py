"""Dead-letter sealing: round trip, binding to source coordinates, no readable PII."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from gateway.deadletter import QuarantineSealer
from gateway.errors import DecryptError
from gateway.keys.keyring import Keyring
from gateway.samples import CANARIES

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
    assert sealed["format"] == 1
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
