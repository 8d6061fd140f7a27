"""The raw record's key and headers under the policy (gateway/core/policy/key_headers.py): the adversary's side.

A producer puts an e-mail address in a header, a tenant id in another, a trace id in a third, secrets
in headers the policy does not name, and forges the gateway's own headers (`gateway-policy`,
`gateway-key`, `gateway-source`). The named ones must come out with their action, the others nowhere:
not on the sanitized or purpose topics, not in the audit, not in dead letters in clear, not in logs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import OutRecord, Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.key_headers import KEY_HEADER, KEY_PATH
from gateway.core.policy.lint import lint_file, load_plans
from gateway.core.policy.plan import policy_roles
from gateway.errors import PolicyError
from gateway.integrations.common import SanitizedReader
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

SOURCE, SANITIZED, VIEW = "signups.raw", "signups.sanitized", "signups.marketing"
EMAIL = "Alice.Canary@Example.org"  # tokenized (email normalizer): never in clear
UNNAMED = "unnamed-canary-7f3a"  # in a header the policy does not name
KEY_CANARY = "key-canary-91bd"  # the raw record key
TRACE = "trace-canary-c0ffee"  # encrypted
FORGED = "forged-canary-policy"  # a producer's `gateway-*` header
CANARIES = (EMAIL.lower(), EMAIL, UNNAMED, KEY_CANARY, TRACE, FORGED)
HEADERS = {"x-user-email": {"tokenize": {"domain": "email", "normalizer": "email"}}, "x-tenant": "keep",
           "x-trace": "encrypt", "x-debug": "drop"}


def _schema(key: Any = "encrypt", headers: Any = None, subject: bool = True, **privacy: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {"source_topic": SOURCE, "sanitized_topic": SANITIZED, "output": "json",
                                "headers": HEADERS if headers is None else headers, **privacy}
    if key is not None:
        settings["key"] = key
    if subject:
        settings["subject"] = "user_id"
        settings.setdefault("purposes", {"marketing": {"topic": VIEW, "basis": "legitimate_interests",
                                                       "fields": {"user_id": {"tokenize": {"domain": "user"}},
                                                                  "plan": "keep"}}})
    return {"type": "record", "name": "Signup", "namespace": "t", "privacy": settings, "fields": [
        {"name": "event_id", "type": "string", "privacy": "keep"},
        {"name": "user_id", "type": "string", "privacy": {"tokenize": {"domain": "user"}}},
        {"name": "plan", "type": "string", "privacy": "keep"},
    ]}


def _pipeline(write_schema: Any, tmp_path: Path, schema: dict[str, Any]) -> Pipeline:
    plan = compile_plan(load_schema_file(write_schema(schema)))
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t")
    ring = Keyring.open(tmp_path / "k.json")
    return Pipeline([plan], ring, config, 1, tokenizers(ring, [plan]))


def _event(offset: int, email: bytes = EMAIL.encode(), key: bytes | None = KEY_CANARY.encode(),
           user: str = "user-1") -> RawEvent:
    headers = [("x-user-email", email), ("x-tenant", b"acme"), ("x-trace", TRACE.encode()),
               ("x-trace", b"second-" + TRACE.encode()), ("x-debug", UNNAMED.encode()),
               ("x-unnamed", UNNAMED.encode()), ("gateway-policy", FORGED.encode()),
               ("gateway-key", FORGED.encode()), ("gateway-source", FORGED.encode()), ("X-Tenant", UNNAMED.encode())]
    value = {"event_id": f"E{offset}", "user_id": user, "plan": "pro"}
    return RawEvent(SOURCE, 0, offset, 1_780_000_000_000, key, orjson.dumps(value), headers)


def _everything(records: list[OutRecord]) -> bytes:
    """Every byte the outputs carry: values, keys, header names and values."""
    return b"|".join(b"|".join([r.value or b"", r.key or b"", *(n.encode() + b"=" + (v or b"")
                                                               for n, v in r.headers or ())]) for r in records)


def _no_canary(data: bytes | str) -> None:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    for canary in CANARIES:
        assert canary not in text


def test_named_headers_come_out_with_their_action_and_nothing_else_does(write_schema: Any, tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    caplog.set_level(logging.DEBUG)
    result = pipeline.process([_event(0), _event(1, email=b"  alice.canary@EXAMPLE.org ")])
    _no_canary(_everything(result.records))
    _no_canary(caplog.text)
    sanitized = [r for r in result.records if r.topic == SANITIZED]
    assert len(sanitized) == 2
    stage = pipeline.stages[SOURCE]
    token = stage.sanitizer.tokenizer("email").token(EMAIL.lower())
    subject = stage.sanitizer.tokenizer("user").token("user-1")
    for record in sanitized:
        names = [n for n, _ in record.headers or ()]
        # each gateway header once, the gateway's own value; no unnamed or dropped header; repeats kept
        assert sorted(n for n in names if n.startswith("gateway-")) == sorted(
            ["gateway-schema", "gateway-encoding", "gateway-policy", "gateway-source", "gateway-key"])
        assert not {"x-unnamed", "x-debug", "X-Tenant"} & set(names)
        headers = dict(record.headers or ())
        assert headers["gateway-policy"] == stage.plan.policy_hash.encode()
        assert headers["x-user-email"] == token.encode()  # equal inputs (after the normalizer), equal tokens
        assert headers["x-tenant"] == b"acme"
        assert names.count("x-trace") == 2
        assert record.key == subject.encode()  # a subject: the key stays its token (partitioning by subject)
    audit = record_entries(r.value for r in result.records if r.topic == pipeline.audit_topic)
    _no_canary(orjson.dumps(audit))
    actions = audit[0]["actions"]
    assert actions["(header)x-user-email"] == "tokenize:email:email"
    assert actions["(header)x-tenant"] == "keep" and actions["(header)x-trace"] == "encrypt"
    assert actions["(header)x-debug"] == "drop" and actions[KEY_PATH] == "encrypt"
    assert not any("unnamed" in path for path in actions)  # unnamed headers are not listed: producers name them
    # the purpose view carries neither the key's result nor any header of the policy
    view = [r for r in result.records if r.topic == VIEW]
    assert len(view) == 2 and all(r.key == subject.encode() for r in view)
    assert all(not n.startswith("x-") and n != KEY_HEADER for r in view for n, _ in r.headers or ())


def test_the_reader_opens_encrypted_headers_and_key_bound_to_their_record(write_schema: Any,
                                                                          tmp_path: Path) -> None:
    schema = _schema()
    pipeline = _pipeline(write_schema, tmp_path, schema)
    result = pipeline.process([_event(0), _event(1)])
    first, second = [r for r in result.records if r.topic == SANITIZED]
    reader = SanitizedReader(tmp_path, tmp_path / "k.json")
    decoded = reader.decode(SANITIZED, first.value, first.headers)
    assert decoded.opened, decoded.fields
    assert decoded.header("x-trace") == TRACE.encode()
    assert [v for n, v in decoded.headers if n == "x-trace"] == [TRACE.encode(), b"second-" + TRACE.encode()]
    assert decoded.header(KEY_HEADER) == KEY_CANARY.encode()
    assert decoded.reason("(header)x-trace") == "decrypted" and decoded.reason(KEY_PATH) == "decrypted"
    # a ciphertext moved to another record, or to another occurrence of its header, does not open
    moved = [(n, dict(second.headers or ())["x-trace"] if n == "x-trace" else v) for n, v in first.headers or ()]
    assert reader.decode(SANITIZED, first.value, moved).reason("(header)x-trace") == "tampered"
    traces = [v for n, v in first.headers or () if n == "x-trace"]
    swapped, i = [], 0
    for n, v in first.headers or ():
        if n == "x-trace":
            v, i = traces[1 - i], i + 1
        swapped.append((n, v))
    assert reader.decode(SANITIZED, first.value, swapped).reason("(header)x-trace") == "tampered"
    # a reader without keys reports them closed
    closed = SanitizedReader(tmp_path).decode(SANITIZED, first.value, first.headers)
    assert closed.reason("(header)x-trace") == "key_not_held" and closed.header("x-tenant") == b"acme"


def test_without_a_subject_a_kept_or_tokenized_key_is_the_record_key(write_schema: Any, tmp_path: Path) -> None:
    for key, expected in (("keep", KEY_CANARY.encode()), ({"tokenize": {"domain": "keys"}}, None)):
        path = tmp_path / f"k{len(str(key))}"
        path.mkdir()
        pipeline = _pipeline(lambda s, p=path: _write(p, s), path, _schema(key=key, headers={}, subject=False))
        result = pipeline.process([_event(0), _event(1)])
        keys = [r.key for r in result.records if r.topic == SANITIZED]
        if expected is None:
            expected = pipeline.stages[SOURCE].sanitizer.tokenizer("keys").token(KEY_CANARY).encode()
        assert keys == [expected, expected]
        assert all(KEY_HEADER not in dict(r.headers or ()) for r in result.records if r.topic == SANITIZED)
    path = tmp_path / "enc"
    path.mkdir()
    pipeline = _pipeline(lambda s: _write(path, s), path, _schema(key="encrypt", headers={}, subject=False))
    records = [r for r in pipeline.process([_event(0)]).records if r.topic == SANITIZED]
    assert records[0].key is None  # an encrypted key cannot partition (random nonce): it goes in a header
    assert dict(records[0].headers or ())[KEY_HEADER] not in (None, KEY_CANARY.encode())


def _write(directory: Path, schema: dict[str, Any]) -> Path:
    path = directory / "s.avsc"
    path.write_text(orjson.dumps(schema).decode())
    return path


def test_a_header_its_action_rejects_dead_letters_the_event_sealed(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    bad = _event(0, email=b"\xff" + EMAIL.encode())  # not UTF-8: tokenize cannot read it
    result = pipeline.process([bad, _event(1)])
    _no_canary(_everything(result.records))
    letters = [r for r in result.records if r.topic == f"{SOURCE}.dlq"]
    assert len(letters) == 1
    letter = orjson.loads(letters[0].value or b"")
    assert letter["reason"] == "invalid_utf8" and "(header)x-user-email" in letter["message"]
    opened = pipeline.sealer.unseal(letter)  # nothing lost: the original key and headers are sealed
    assert opened["key"] == KEY_CANARY.encode() and ("x-unnamed", UNNAMED.encode()) in [
        tuple(h) for h in opened["headers"]]
    audit = record_entries(r.value for r in result.records if r.topic == pipeline.audit_topic)
    assert [a["outcome"] for a in audit] == ["rejected:invalid_utf8", "sanitized"]


def test_a_header_too_large_dead_letters(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    big = _event(0)._replace(headers=[("x-tenant", b"a" * (pipeline.config.max_field_bytes + 1))])
    result = pipeline.process([big])
    audit = record_entries(r.value for r in result.records if r.topic == pipeline.audit_topic)
    assert [a["outcome"] for a in audit] == ["rejected:field_too_large"]


@pytest.mark.parametrize(("headers", "key", "where", "says"), [
    ({"gateway-policy": "keep"}, None, "(record).headers.gateway-policy", "gateway header"),
    ({"Gateway-Key": "keep"}, None, "(record).headers.Gateway-Key", "gateway header"),
    ({"x-a": "keep", "X-A": "drop"}, None, "(record).headers.X-A", "named twice"),
    ({"x-a": "mask"}, None, "(record).headers.x-a", "unknown action 'mask'"),
    ({"x-a": "frobnicate"}, None, "(record).headers.x-a", "unknown action 'frobnicate'"),
    ({"x-a": {"tokenize": {}}}, None, "(record).headers.x-a", "needs a domain"),
    (["x-a"], None, "(record).headers", "must be an object"),
    ({}, {"generalize": {"truncate": "hour"}}, "(record).key", "unknown action 'generalize'"),
    ({}, {"encrypt": {"bogus": 1}}, "(record).key", "unknown encrypt option"),
])
def test_lint_names_the_setting_of_a_bad_key_or_header(write_schema: Any, headers: Any, key: Any, where: str,
                                                       says: str) -> None:
    problems = [p for p in lint_file(write_schema(_schema(key=key, headers=headers))) if p.severity == "error"]
    assert any(p.where == where and says in p.message for p in problems), problems


def test_header_actions_join_the_plan_bookkeeping(write_schema: Any) -> None:
    """Roles of an encrypted header need their keys at start-up; a header's token domain is a domain of the
    plan; per-subject encryption of a header needs a tokenized subject, as a field's does."""
    headers = {"x-a": {"encrypt": {"roles": ["support"]}}, "x-b": {"tokenize": {"domain": "hdr"}}}
    plan = compile_plan(load_schema_file(write_schema(_schema(headers=headers))))
    assert "support" in policy_roles([plan]) and "hdr" in plan.token_domains
    problems = lint_file(write_schema(_schema(headers={"x-a": {"encrypt": {"per_subject": True}}}, subject=False)))
    assert any(p.where == "(header)x-a" and "per_subject" in p.message for p in problems), problems


def test_without_a_block_every_raw_header_and_the_key_stay_dropped(write_schema: Any, tmp_path: Path) -> None:
    schema = _schema(key=None, headers={})
    del schema["privacy"]["headers"]
    pipeline = _pipeline(write_schema, tmp_path, schema)
    result = pipeline.process([_event(0)])
    _no_canary(_everything(result.records))
    record = next(r for r in result.records if r.topic == SANITIZED)
    assert not any(n.startswith("x-") or n == KEY_HEADER for n, _ in record.headers or ())


def test_the_leak_sentinel_watches_kept_headers_and_a_kept_key(write_schema: Any, tmp_path: Path) -> None:
    """A kept header is in clear like a kept field: an e-mail address in it is a leak, and under an enforcing
    sentinel the event is dead-lettered instead of published (the address never in clear)."""
    pipeline = _pipeline(write_schema, tmp_path, _schema(key="keep", leak_sentinel="enforce"))
    leaking = _event(0)._replace(headers=[("x-tenant", EMAIL.encode())])
    result = pipeline.process([leaking, _event(1, key=f"key of {EMAIL}".encode())])
    _no_canary(_everything(result.records))
    audit = record_entries(r.value for r in result.records if r.topic == pipeline.audit_topic)
    assert [a["outcome"] for a in audit] == ["rejected:pii_in_kept_field"] * 2
    assert [a["leak_suspected"] for a in audit] == [[{"field": "(header)x-tenant", "entity": "EMAIL"}],
                                                    [{"field": KEY_PATH, "entity": "EMAIL"}]]
    clean = pipeline.process([_event(2)])
    assert [a["outcome"] for a in record_entries(r.value for r in clean.records
                                                 if r.topic == pipeline.audit_topic)] == ["sanitized"]


def test_named_headers_count_towards_the_output_limit(write_schema: Any, tmp_path: Path) -> None:
    """Kept headers, each within max_field_bytes, that together pass the producer's limit dead-letter the
    event (output_too_large) instead of making a record Kafka refuses, which would stop the partition."""
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    each = pipeline.config.max_field_bytes
    n = pipeline.max_output_bytes // each + 1
    big = _event(0)._replace(headers=[("x-tenant", b"a" * each)] * n)
    result = pipeline.process([big, _event(1)._replace(headers=[("x-tenant", b"a" * each)] * (n // 2))])
    audit = record_entries(r.value for r in result.records if r.topic == pipeline.audit_topic)
    assert [a["outcome"] for a in audit] == ["rejected:output_too_large", "sanitized"]


def test_a_header_written_twice_in_the_file_is_an_error(write_schema: Any, tmp_path: Path) -> None:
    """JSON parsers keep the last of two equal keys silently: the policy would not be what its author wrote."""
    path = write_schema(_schema(headers={"x-a": "keep"}))
    text = path.read_text().replace('"x-a":"keep"', '"x-a":"keep","x-a":{"tokenize":{"domain":"hdr"}}')
    text = text.replace('"x-a": "keep"', '"x-a": "keep", "x-a": {"tokenize": {"domain": "hdr"}}')
    assert text.count('"x-a"') == 2
    path.write_text(text)
    problems = [p for p in lint_file(path) if p.severity == "error"]
    assert [(p.where, "named twice" in p.message) for p in problems] == [("(record).headers.x-a", True)]
    with pytest.raises(PolicyError, match="named twice"):
        load_plans(tmp_path)


def test_a_named_header_without_a_value_passes_without_one(write_schema: Any, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, _schema())
    event = _event(0)._replace(headers=[("x-trace", None), ("x-trace", TRACE.encode()), ("x-user-email", None)])
    record = next(r for r in pipeline.process([event]).records if r.topic == SANITIZED)
    named = [(n, v) for n, v in record.headers or () if n.startswith("x-")]
    assert named[0] == ("x-trace", None) and named[2] == ("x-user-email", None)
    reader = SanitizedReader(tmp_path, tmp_path / "k.json")
    decoded = reader.decode(SANITIZED, record.value, record.headers)
    assert decoded.opened and [v for n, v in decoded.headers if n == "x-trace"] == [None, TRACE.encode()]
