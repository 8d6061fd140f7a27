"""Deterministic domain tokens: format, determinism, domain separation, key versions."""

from __future__ import annotations

import base64
import hashlib
import hmac
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
