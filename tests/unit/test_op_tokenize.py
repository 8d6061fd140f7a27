"""tokenize with a normalizer: one person's spellings give one token; forget applies the same."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.app import tokenizers
from gateway.cli.options import normalized_subject as _normalized_subject
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_file
from gateway.keys import normalize
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig


def _schema(annotation: Any) -> dict[str, Any]:
    return {"type": "record", "name": "U", "namespace": "t",
            "privacy": {"source_topic": "u.raw", "sanitized_topic": "u.sanitized", "subject": "contact"},
            "fields": [{"name": "contact", "type": "string", "privacy": annotation}]}


def _sanitizer(write_schema: Any, tmp_path: Path, annotation: Any) -> Any:
    plan = compile_plan(load_schema_file(write_schema(_schema(annotation))))
    keyring = Keyring.open(tmp_path / "k.json")
    return Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                    tokenizers(keyring, [plan])) \
        .stages["u.raw"].sanitizer


def test_email_spellings_of_one_address_give_one_token(write_schema, tmp_path: Path) -> None:
    sanitizer = _sanitizer(write_schema, tmp_path, {"tokenize": {"domain": "customer", "normalizer": "email"}})
    tokens = {sanitizer.sanitize({"contact": v}).record["contact"] for v in ("A@x.org", "a@x.org", " a@x.org\t",
                                                                             "Ａ@x.org")}  # fullwidth A: NFKC
    assert len(tokens) == 1
    assert sanitizer.sanitize({"contact": "b@x.org"}).record["contact"] not in tokens


def test_without_a_normalizer_spellings_stay_apart(write_schema, tmp_path: Path) -> None:
    sanitizer = _sanitizer(write_schema, tmp_path, {"tokenize": {"domain": "customer"}})
    assert len({sanitizer.sanitize({"contact": v}).record["contact"] for v in ("A@x.org", "a@x.org")}) == 2


def test_phone_numbers_are_tokenized_as_e164(write_schema, tmp_path: Path) -> None:
    sanitizer = _sanitizer(write_schema, tmp_path, {"tokenize": {"domain": "phone", "normalizer": "phone",
                                                                 "region": "GB"}})
    tokens = {sanitizer.sanitize({"contact": v}).record["contact"]
              for v in ("020 7946 0958", "+44 20 7946 0958", "+442079460958", "(020) 7946-0958")}
    assert len(tokens) == 1
    assert normalize.normalizer("phone", "GB")("020 7946 0958") == "+442079460958"


def test_an_unparseable_phone_still_gets_a_stable_token() -> None:
    norm = normalize.normalizer("phone", "US")
    assert norm("  not a number ") == "not a number"


@given(st.emails())
def test_email_normalizer_is_idempotent(address: str) -> None:
    once = normalize.email(address)
    assert normalize.email(once) == once and normalize.email(address.upper()) == normalize.email(address)


@pytest.mark.parametrize(("annotation", "message"), [
    ({"tokenize": {"domain": "c", "normalizer": "soundex"}}, "unknown normalizer 'soundex'"),
    ({"tokenize": {"domain": "c", "normalizer": "phone", "region": "XX"}}, "region 'XX'"),
    ({"tokenize": {"domain": "c", "region": "GB"}}, "belongs to the phone normalizer"),
    ({"tokenize": {}}, "tokenize needs a domain"),
])
def test_bad_normalizer_options_are_compile_errors(write_schema, annotation: Any, message: str) -> None:
    errors = [p for p in lint_file(write_schema(_schema(annotation))) if p.severity == "error"]
    assert len(errors) == 1 and message in errors[0].message, errors


def test_forget_normalizes_the_identifier_like_the_policy(write_schema, tmp_path: Path) -> None:
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "u.avsc").write_bytes(write_schema(_schema({"tokenize": {"domain": "customer",
                                                                         "normalizer": "email"}})).read_bytes())
    config = GatewayConfig(schemas=schemas)
    args = argparse.Namespace(domain="customer", normalizer=None)
    assert _normalized_subject(args, config, "  Jane@Example.ORG ") == "jane@example.org"
    args = argparse.Namespace(domain="customer", normalizer="phone:GB")
    assert _normalized_subject(args, config, "020 7946 0958") == "+442079460958"
    args = argparse.Namespace(domain="unknown", normalizer=None)
    with pytest.raises(Exception, match="no policy .* tokenizes into domain 'unknown'"):
        _normalized_subject(args, config, "x")
