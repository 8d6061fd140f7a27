"""Envelope encryption: ciphertext format, tamper detection, context binding, DEK rotation, reprs."""

from __future__ import annotations

import base64

import pytest

from gateway.core.deadletter import QuarantineSealer
from gateway.errors import DecryptError
from gateway.keys import envelope
from gateway.keys.envelope import (
    DEK_ID_BYTES,
    FORMAT_V1,
    NONCE_BYTES,
    DataKey,
    DekCache,
    FieldDecryptor,
    context_bytes,
    encrypt_field,
    parse_ciphertext,
)
from gateway.keys.keyring import Keyring
from gateway.keys.kms import WrappedKey
from gateway.keys.tokens import DomainTokenizer

CTX = context_bytes("payments.sanitized", "card_number", "tok_v1_subject")
PLAINTEXT = b"4111111111111111"


@pytest.fixture
def deks(keyring: Keyring) -> DekCache:
    return DekCache(keyring, max_age_s=3600, max_uses=1_000_000)


@pytest.fixture
def ciphertext(deks: DekCache) -> bytes:
    return encrypt_field(deks.current(), PLAINTEXT, CTX)


def _regions(data: bytes) -> dict[str, range]:
    parsed = parse_ciphertext(data)
    header, nonce_end = len(parsed.header), len(parsed.header) + NONCE_BYTES
    return {"header": range(0, header), "nonce": range(header, nonce_end), "body": range(nonce_end, len(data))}


def _replace(data: bytes, index: int, value: int) -> bytes:
    return data[:index] + bytes([value]) + data[index + 1:]


# ---- format ------------------------------------------------------------------------------------
def test_round_trip_and_layout(keyring: Keyring, deks: DekCache, ciphertext: bytes) -> None:
    assert FieldDecryptor(keyring).decrypt(ciphertext, CTX) == PLAINTEXT
    parsed = parse_ciphertext(ciphertext)
    key = deks.current()
    assert ciphertext[0] == FORMAT_V1
    assert parsed.kek_id == keyring.active_key_id()
    assert len(parsed.dek_id) == DEK_ID_BYTES
    assert parsed.dek_id == key.dek_id
    assert parsed.key_id == key.key_id == f"{keyring.active_key_id()}/{key.dek_id.hex()}"
    assert len(parsed.nonce) == NONCE_BYTES
    assert len(parsed.body) == len(PLAINTEXT) + 16  # GCM tag
    assert PLAINTEXT not in ciphertext


def test_context_bytes_are_unambiguous() -> None:
    assert context_bytes("ab", "c", "") != context_bytes("a", "bc", "")
    assert context_bytes("a", "", "b") != context_bytes("a", "b", "")


# ---- tampering ---------------------------------------------------------------------------------
@pytest.mark.parametrize("region", ["header", "nonce", "body"])
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_flipping_any_byte_fails(keyring: Keyring, ciphertext: bytes, region: str, mask: int) -> None:
    decryptor = FieldDecryptor(keyring)
    for index in _regions(ciphertext)[region]:
        tampered = _replace(ciphertext, index, ciphertext[index] ^ mask)
        with pytest.raises(DecryptError):
            decryptor.decrypt(tampered, CTX)


def test_flipped_body_byte_is_reported_as_tampered(keyring: Keyring, ciphertext: bytes) -> None:
    index = _regions(ciphertext)["body"][3]
    with pytest.raises(DecryptError) as excinfo:
        FieldDecryptor(keyring).decrypt(_replace(ciphertext, index, ciphertext[index] ^ 1), CTX)
    assert excinfo.value.reason == "tampered"


def test_flipped_dek_id_is_reported_as_tampered(keyring: Keyring, ciphertext: bytes) -> None:
    index = 2 + ciphertext[1]  # first dek_id byte
    with pytest.raises(DecryptError) as excinfo:
        FieldDecryptor(keyring).decrypt(_replace(ciphertext, index, ciphertext[index] ^ 1), CTX)
    assert excinfo.value.reason == "tampered"


def test_unknown_format_version(keyring: Keyring, ciphertext: bytes) -> None:
    with pytest.raises(DecryptError) as excinfo:
        FieldDecryptor(keyring).decrypt(_replace(ciphertext, 0, 9), CTX)  # 1-3 are formats v1-v3
    assert excinfo.value.reason == "unknown_format"


def test_any_value_in_the_wrapped_length_field_fails_with_decrypt_error(keyring: Keyring,
                                                                        ciphertext: bytes) -> None:
    low_byte = 2 + ciphertext[1] + DEK_ID_BYTES + 1
    decryptor = FieldDecryptor(keyring)
    for value in range(256):
        if value == ciphertext[low_byte]:
            continue
        with pytest.raises(DecryptError):
            decryptor.decrypt(_replace(ciphertext, low_byte, value), CTX)


@pytest.mark.parametrize("other", [
    context_bytes("payments.sanitized", "customer_name", "tok_v1_subject"),  # another field path
    context_bytes("clinical.visits.sanitized", "card_number", "tok_v1_subject"),  # another topic
    context_bytes("payments.sanitized", "card_number", "tok_v1_someone_else"),  # another subject
    context_bytes("payments.sanitized", "card_number", ""),  # subject removed
])
def test_ciphertext_moved_to_another_context_is_tampered(keyring: Keyring, ciphertext: bytes,
                                                         other: bytes) -> None:
    with pytest.raises(DecryptError) as excinfo:
        FieldDecryptor(keyring).decrypt(ciphertext, other)
    assert excinfo.value.reason == "tampered"


def test_truncated_ciphertext_is_malformed(keyring: Keyring, ciphertext: bytes) -> None:
    decryptor = FieldDecryptor(keyring)
    minimum = len(parse_ciphertext(ciphertext).header) + NONCE_BYTES + 16
    for length in range(minimum):
        with pytest.raises(DecryptError) as excinfo:
            decryptor.decrypt(ciphertext[:length], CTX)
        assert excinfo.value.reason == "malformed", length
    for length in range(minimum, len(ciphertext)):  # too short a body: the tag cannot verify
        with pytest.raises(DecryptError):
            decryptor.decrypt(ciphertext[:length], CTX)


def test_appended_bytes_fail(keyring: Keyring, ciphertext: bytes) -> None:
    with pytest.raises(DecryptError) as excinfo:
        FieldDecryptor(keyring).decrypt(ciphertext + b"\x00", CTX)
    assert excinfo.value.reason == "tampered"


def test_decryptor_caches_unwrapped_deks(keyring: Keyring, deks: DekCache, monkeypatch) -> None:
    calls: list[str] = []
    real_unwrap = keyring.unwrap

    def counting_unwrap(wrapped: WrappedKey, context: bytes) -> bytes:
        calls.append(wrapped.kek_id)
        return real_unwrap(wrapped, context)

    monkeypatch.setattr(keyring, "unwrap", counting_unwrap)
    decryptor = FieldDecryptor(keyring)
    for i in range(5):
        assert decryptor.decrypt(encrypt_field(deks.current(), b"v%d" % i, CTX), CTX) == b"v%d" % i
    assert len(calls) == 1


# ---- DEK cache ---------------------------------------------------------------------------------
def test_dek_rotates_after_max_uses(keyring: Keyring) -> None:
    cache = DekCache(keyring, max_age_s=3600, max_uses=3)
    ids = []
    for _ in range(7):
        key = cache.current()
        encrypt_field(key, b"x", CTX)
        ids.append(key.dek_id)
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] == ids[4] == ids[5]
    assert ids[6] not in (ids[0], ids[3])
    assert ids[0] != ids[3]
    assert cache.kms_calls == 3


def test_dek_not_rotated_without_use(keyring: Keyring) -> None:
    cache = DekCache(keyring, max_age_s=3600, max_uses=1)
    assert cache.current() is cache.current()
    assert cache.kms_calls == 1


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_dek_rotates_after_max_age(keyring: Keyring, monkeypatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(envelope, "time", clock)
    cache = DekCache(keyring, max_age_s=60, max_uses=1_000_000)
    first = cache.current()
    clock.now += 60
    assert cache.current() is first
    clock.now += 0.5
    second = cache.current()
    assert second is not first
    assert second.dek_id != first.dek_id
    assert cache.kms_calls == 2
    clock.now += 30
    assert cache.current() is second
    assert cache.kms_calls == 2


def test_old_deks_still_decrypt_after_rotation(keyring: Keyring) -> None:
    cache = DekCache(keyring, max_age_s=3600, max_uses=1)
    ciphertexts = [encrypt_field(cache.current(), b"value %d" % i, CTX) for i in range(4)]
    assert cache.kms_calls == 4
    assert len({parse_ciphertext(c).dek_id for c in ciphertexts}) == 4
    decryptor = FieldDecryptor(keyring)
    assert [decryptor.decrypt(c, CTX) for c in ciphertexts] == [b"value %d" % i for i in range(4)]


def test_nonces_are_unique(deks: DekCache) -> None:
    key = deks.current()
    nonces = {parse_ciphertext(encrypt_field(key, b"same", CTX)).nonce for _ in range(1000)}
    assert len(nonces) == 1000
    assert key.uses == 1000


# ---- no key bytes in reprs ---------------------------------------------------------------------
def _encodings(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode().rstrip("="), repr(secret)]


def _assert_hidden(secret: bytes, text: str) -> None:
    assert len(secret) == 32
    for encoded in _encodings(secret):
        assert encoded not in text


def test_data_key_repr_hides_the_dek(keyring: Keyring, deks: DekCache, ciphertext: bytes) -> None:
    parsed = parse_ciphertext(ciphertext)
    dek = keyring.unwrap(WrappedKey(parsed.kek_id, parsed.wrapped), envelope._DEK_CONTEXT + parsed.dek_id)
    key = deks.current()
    assert isinstance(key, DataKey)
    _assert_hidden(dek, repr(key))
    _assert_hidden(dek, str(key))
    assert key.dek_id.hex() in repr(key)


def test_keyring_repr_hides_every_key(keyring: Keyring) -> None:
    import orjson

    keyring.ensure_token_domains({"customer"})
    data = orjson.loads(keyring.path.read_bytes())
    secrets = [base64.b64decode(v) for section in (data["kek"], data["quarantine"])
               for v in section["keys"].values()]
    secrets += [base64.b64decode(v) for domain in data["token_domains"].values() for v in domain["keys"].values()]
    assert len(secrets) == 3
    for secret in secrets:
        _assert_hidden(secret, repr(keyring))
        _assert_hidden(secret, str(keyring))
    assert "customer" in repr(keyring)


def test_tokenizer_repr_hides_the_key(keyring: Keyring) -> None:
    keyring.ensure_token_domains({"customer"})
    version, keys = keyring.token_keys("customer")
    tokenizer = DomainTokenizer("customer", version, keys[version])
    _assert_hidden(keys[version], repr(tokenizer))
    assert "customer" in repr(tokenizer)


def test_quarantine_sealer_repr_hides_the_key(keyring: Keyring) -> None:
    key_id, key = keyring.quarantine_key()
    sealer = QuarantineSealer(key_id, key)
    _assert_hidden(key, repr(sealer))
    assert key_id in repr(sealer)
