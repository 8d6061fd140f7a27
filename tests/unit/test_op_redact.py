"""redact: entities in free text replaced, joins kept through tokens, long texts never passed through,
and the audit event counting entities without the text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_file
from gateway.core.policy.plan import Plan
from gateway.keys.keyring import Keyring
from gateway.keys.tokens import DomainTokenizer
from gateway.settings import GatewayConfig

EMAIL = "Jane.Doe+vip@Example.org"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"


def _schema(note_action: Any, extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "record", "name": "Ticket", "namespace": "t",
            "privacy": {"source_topic": "tickets.raw", "sanitized_topic": "tickets.sanitized", "subject": "email",
                        "output": "json"},
            "fields": [{"name": "email", "type": "string",
                        "privacy": {"tokenize": {"domain": "customer", "normalizer": "email"}}},
                       {"name": "note", "type": ["null", "string"], "default": None, "privacy": note_action},
                       *(extra or [])]}


def _pipeline(write_schema: Callable[..., Path], tmp_path: Path, note_action: Any) -> tuple[Pipeline, Plan, Keyring]:
    plan = compile_plan(load_schema_file(write_schema(_schema(note_action))))
    keyring = Keyring.open(tmp_path / "k.json")
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t")
    return Pipeline([plan], keyring, config, 1, tokenizers(keyring, [plan])), plan, keyring


def _run(pipeline: Pipeline, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                     list[dict[str, Any]]]:
    events = [RawEvent("tickets.raw", 0, i, 1_790_000_000_000, None, orjson.dumps(r), None)
              for i, r in enumerate(records)]
    out = pipeline.process(events).records
    pick = {t: [orjson.loads(r.value) for r in out if r.topic == t] for t in ("tickets.sanitized", "tickets.raw.dlq")}
    pick["privacy.audit"] = record_entries(r.value for r in out if r.topic == "privacy.audit")
    return pick["tickets.sanitized"], pick["tickets.raw.dlq"], pick["privacy.audit"]


def test_entities_become_placeholders_and_the_audit_counts_them(write_schema, tmp_path: Path) -> None:
    pipeline, _, _ = _pipeline(write_schema, tmp_path, {"redact": {}})
    note = f"Customer {EMAIL} paid with {CARD}, refund to {IBAN} please; version 1.2.3.4.5 is fine"
    sanitized, dlq, audit = _run(pipeline, [{"email": EMAIL, "note": note}])
    assert dlq == []
    assert sanitized[0]["note"] == ("Customer <EMAIL> paid with <CARD>, refund to <IBAN> please; "
                                    "version 1.2.3.4.5 is fine")
    assert audit[0]["redacted"] == {"note": {"CARD": 1, "EMAIL": 1, "IBAN": 1}}
    blob = orjson.dumps(audit)
    for canary in (EMAIL, CARD, IBAN, "Customer"):
        assert canary.encode() not in blob


def test_a_tokenized_entity_joins_with_the_tokenized_field(write_schema, tmp_path: Path) -> None:
    action = {"redact": {"tokenize": {"EMAIL": {"domain": "customer", "normalizer": "email"}}}}
    pipeline, _, keyring = _pipeline(write_schema, tmp_path, action)
    sanitized, _, _ = _run(pipeline, [{"email": EMAIL, "note": f"mail {EMAIL.upper()} today"}])
    version, keys = keyring.token_keys("customer")
    expected = DomainTokenizer("customer", version, keys[version]).token(EMAIL.casefold())
    assert sanitized[0]["email"] == expected  # the field: normalized, then tokenized
    assert sanitized[0]["note"] == f"mail <EMAIL:{expected}> today"  # the same token inside the text


def test_a_text_above_the_bound_is_dead_lettered_by_default(write_schema, tmp_path: Path) -> None:
    pipeline, _, _ = _pipeline(write_schema, tmp_path, {"redact": {"max_chars": 100}})
    long_note = ("words " * 30) + EMAIL
    sanitized, dlq, audit = _run(pipeline, [{"email": EMAIL, "note": long_note}, {"email": EMAIL, "note": "ok"}])
    assert [d["reason"] for d in dlq] == ["text_too_long"]
    assert [a["outcome"] for a in audit] == ["rejected:text_too_long", "sanitized"]
    assert EMAIL.encode() not in orjson.dumps(dlq[0]["message"])
    assert [s["note"] for s in sanitized] == ["ok"]


def test_truncation_cuts_at_whitespace_so_no_entity_survives_half_cut(write_schema, tmp_path: Path) -> None:
    pipeline, _, _ = _pipeline(write_schema, tmp_path, {"redact": {"max_chars": 80, "too_long": "truncate"}})
    note = "x" * 40 + " contact " + EMAIL + " and more words after the address"  # the bound falls inside the email
    sanitized, dlq, _ = _run(pipeline, [{"email": EMAIL, "note": note}])
    assert dlq == [] and len(sanitized[0]["note"]) <= 80
    assert sanitized[0]["note"].endswith("[truncated]")
    assert "Jane" not in sanitized[0]["note"] and "Example" not in sanitized[0]["note"]


@pytest.mark.parametrize(("action", "message"), [
    ({"redact": {"entities": ["EMAIL", "SSN"]}}, "unknown entities ['SSN']"),
    ({"redact": {"entities": []}}, "non-empty list"),
    ({"redact": {"tokenize": {"CARD": {"domain": "c"}}, "entities": ["EMAIL"]}}, "not among the redacted"),
    ({"redact": {"tokenize": {"EMAIL": {"domain": "Bad Domain"}}}}, "needs a domain"),
    ({"redact": {"tokenize": {"EMAIL": {"domain": "customer", "normalizer": "soundex"}}}}, "unknown normalizer"),
    ({"redact": {"max_chars": 10}}, "'max_chars'"),
    ({"redact": {"too_long": "pass"}}, "'too_long'"),
    ({"redact": {"phone_region": "XX"}}, "'phone_region'"),
    ({"redact": {"colour": "red"}}, "unknown redact option"),
])
def test_compile_errors_name_the_problem(write_schema, action: Any, message: str) -> None:
    errors = [p for p in lint_file(write_schema(_schema(action))) if p.severity == "error"]
    assert [e.where for e in errors] == ["note"] and message in errors[0].message, errors


def test_redact_applies_to_strings_only(write_schema) -> None:
    schema = _schema("keep", [{"name": "n", "type": "long", "privacy": {"redact": {}}}])
    errors = [p for p in lint_file(write_schema(schema)) if p.severity == "error"]
    assert [e.where for e in errors] == ["n"] and "applies to strings" in errors[0].message


def test_a_domain_must_use_one_normalizer(write_schema) -> None:
    action = {"redact": {"tokenize": {"EMAIL": {"domain": "customer"}}}}  # the email field uses "email"
    errors = [p for p in lint_file(write_schema(_schema(action))) if p.severity == "error"]
    assert len(errors) == 1 and "different normalizers" in errors[0].message


def test_the_sanitized_schema_says_what_the_field_holds(write_schema) -> None:
    plan = compile_plan(load_schema_file(write_schema(_schema({"redact": {"entities": ["EMAIL", "PHONE"]}}))))
    note = next(f for f in plan.sanitized_schema["fields"] if f["name"] == "note")
    assert note["type"] == ["null", "string"] and note["default"] is None
    assert "EMAIL, PHONE" in note["doc"]
    assert plan.field_actions["note"] == "redact"
