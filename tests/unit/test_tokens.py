"""Deterministic domain tokens: format, determinism, domain separation, key versions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import unicodedata

import pytest

from gateway.keys.keyring import Keyring
from gateway.keys.tokens import DomainTokenizer

KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))
TOKEN_RE = re.compile(r"^tok_v1_[A-Za-z0-9_-]{43}$")


def test_token_format() -> None:
    token = DomainTokenizer("customer", "1", KEY_A).token("canary.person@example.org")
    assert TOKEN_RE.match(token), token
    assert "=" not in token


def test_token_is_hmac_sha256_of_the_value() -> None:
    value = "canary.person@example.org"
    digest = hmac.new(KEY_A, value.encode(), hashlib.sha256).digest()
    expected = "tok_v1_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert DomainTokenizer("customer", "1", KEY_A).token(value) == expected


def _reference_token(key: bytes, version: str, value: str) -> str:
    """The definition, spelled out with the plain library calls."""
    digest = hmac.new(key, unicodedata.normalize("NFC", value).encode("utf-8"), hashlib.sha256).digest()
    assert digest == hmac.digest(key, unicodedata.normalize("NFC", value).encode("utf-8"), "sha256")
    return f"tok_v{version}_" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _many_values() -> list[str]:
    rng = random.Random(7)
    alphabets = ["abcXYZ019.@+-_ /", "éüßñçØÅ", "\u0301\u0308\u030a", "日本語中文한국어", "😀👍🏽\u200d",
                 "\x00\n\t\"\\", "ﬁﬂ™Ω℃"]
    values = ["", "a", "canary.person@example.org", "José", "Ångström", "ﬁle", "e\u0301", "\U0010ffff", "x" * 10_000]
    values += [unicodedata.normalize(form, v) for v in ("José Ångström", "Amélie", "한국어") for form in ("NFC", "NFD")]
    for _ in range(500):
        chars = "".join(alphabets[rng.randrange(len(alphabets))] for _ in range(3))
        values.append("".join(rng.choice(chars) for _ in range(rng.randrange(1, 40))))
    return values


@pytest.mark.parametrize("key,version", [(KEY_A, "1"), (KEY_B, "12"), (bytes(64), "3"), (b"k" * 100, "1")])
def test_tokens_match_the_reference_for_many_values(key: bytes, version: str) -> None:
    tokenizer = DomainTokenizer("customer", version, key)
    tokens = [tokenizer.token(v) for v in _many_values()]
    assert tokens == [_reference_token(key, version, v) for v in _many_values()]
    alphabet = "".join(t.split("_", 2)[2] for t in tokens)
    assert "-" in alphabet and "_" in alphabet and "=" not in alphabet  # the urlsafe characters were exercised


def test_tokens_without_the_openssl_hmac_state_are_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback: an hmac.HMAC that keeps no C state (a non-OpenSSL digest) tokenizes alike."""
    new = hmac.new
    monkeypatch.setattr(hmac, "new", lambda key, digestmod: new(key, digestmod=lambda d=b"": hashlib.sha256(d)))
    tokenizer = DomainTokenizer("customer", "1", KEY_A)
    assert isinstance(tokenizer._mac, hmac.HMAC)
    monkeypatch.undo()
    assert [tokenizer.token(v) for v in _many_values()] == [_reference_token(KEY_A, "1", v) for v in _many_values()]


def test_tokens_are_deterministic_and_the_mac_state_is_not_shared_between_calls() -> None:
    tokenizer = DomainTokenizer("customer", "1", KEY_A)
    first = tokenizer.token("alice")
    tokenizer.token("bob")
    assert tokenizer.token("alice") == first
    assert DomainTokenizer("customer", "1", KEY_A).token("alice") == first
    assert tokenizer.token("alice") != tokenizer.token("alicE")


def test_different_keys_give_different_tokens() -> None:
    assert DomainTokenizer("customer", "1", KEY_A).token("x") != DomainTokenizer("contact", "1", KEY_B).token("x")


def test_version_is_in_the_prefix_and_key_id() -> None:
    tokenizer = DomainTokenizer("patient", "7", KEY_A)
    assert tokenizer.token("x").startswith("tok_v7_")
    assert tokenizer.key_id == "token:patient/v7"


@pytest.mark.parametrize("value", ["José", "Ångström", "ﬁle"])
def test_values_are_nfc_normalized(value: str) -> None:
    tokenizer = DomainTokenizer("customer", "1", KEY_A)
    nfd = unicodedata.normalize("NFD", value)
    assert tokenizer.token(nfd) == tokenizer.token(unicodedata.normalize("NFC", value))


def test_empty_string_has_a_token() -> None:
    assert TOKEN_RE.match(DomainTokenizer("customer", "1", KEY_A).token(""))


def test_keyring_domains_have_independent_keys(keyring: Keyring) -> None:
    keyring.ensure_token_domains({"customer", "contact"})
    tokenizers = {}
    for domain in ("customer", "contact"):
        version, keys = keyring.token_keys(domain)
        assert version == "1"
        tokenizers[domain] = DomainTokenizer(domain, version, keys[version])
    assert tokenizers["customer"].token("same@example.org") != tokenizers["contact"].token("same@example.org")
