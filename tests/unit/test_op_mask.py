"""mask: compile-time checks, the sanitized type, values, and properties against an independent oracle."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.codec.writer import avro_bytes
from gateway.core.operators.base import CALL, FieldContext, OperatorError
from gateway.core.operators.mask import Mask
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.errors import RejectedEvent
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig
from tests.unit.operator_env import StringEnv, field_context


def _ctx(ftype: Any, name: str = "card") -> FieldContext:
    return field_context(ftype, name)


_Env = StringEnv


def _step(options: dict[str, Any], ftype: Any = "string", env: _Env | None = None) -> Callable[[str], str]:
    op = Mask.compile(options, _ctx(ftype))
    mode, fn = op.build(SimpleNamespace(name="card", path="card"), env or _Env())
    assert mode == CALL
    return lambda value: fn(value, None)


def _expected(value: str, keep: int, last: bool, char: str, preserve: str) -> str:
    """Oracle, written apart from the operator: list the maskable positions, reveal the chosen N of
    them only when the value has more than N."""
    positions = [i for i, c in enumerate(value) if c not in preserve]
    revealed: set[int] = set()
    if len(positions) > keep:
        revealed = set(positions[len(positions) - keep:] if last else positions[:keep]) if keep else set()
    return "".join(c if (c in preserve or i in revealed) else char for i, c in enumerate(value))


# ---- compile ----------------------------------------------------------------------------------
@pytest.mark.parametrize("options,needle", [
    ({}, "exactly one of 'keep_last' or 'keep_first'"),
    ({"keep_last": 4, "keep_first": 2}, "both are set"),
    ({"keep_last": -1}, "'keep_last' must be an integer of at least 0"),
    ({"keep_first": True}, "'keep_first' must be an integer of at least 0"),
    ({"keep_last": 2.5}, "'keep_last' must be an integer"),
    ({"keep_last": "4"}, "'keep_last' must be an integer"),
    ({"keep_last": 4, "char": ""}, "'char' must be a string of exactly one character"),
    ({"keep_last": 4, "char": "**"}, "'char' must be a string of exactly one character"),
    ({"keep_last": 4, "char": 7}, "'char' must be a string of exactly one character"),
    ({"keep_last": 4, "preserve": [" "]}, "'preserve' must be a string"),
    ({"keep_last": 4, "keep": 3}, "unknown mask option(s) ['keep']"),
])
def test_bad_options_are_refused_with_a_precise_message(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(OperatorError) as excinfo:
        Mask.compile(options, _ctx("string"))
    assert needle in str(excinfo.value)


@pytest.mark.parametrize("ftype,label", [
    ("int", "int"),
    ("bytes", "bytes"),
    ({"type": "enum", "name": "Kind", "symbols": ["A", "B"]}, "enum"),
    ({"type": "record", "name": "R", "fields": [{"name": "x", "type": "string"}]}, "record"),
    (["string", "int"], "[string, int]"),
    (["null", "long"], "[null, long]"),
])
def test_only_strings_can_be_masked(ftype: Any, label: str) -> None:
    with pytest.raises(OperatorError) as excinfo:
        Mask.compile({"keep_last": 4}, _ctx(ftype))
    assert str(excinfo.value).startswith(f"mask applies to strings, but the field is {label}")


def test_output_type_label_and_doc() -> None:
    op = Mask.compile({"keep_last": 4, "preserve": " -"}, _ctx(["null", "string"]))
    assert op.output_type(_ctx(["null", "string"])) == "string"
    field = op.sanitized_field(_ctx(["null", "string"]))
    assert field["type"] == ["null", "string"]
    assert "last 4 characters kept" in field["doc"]
    assert op.label == "mask:last4"
    assert Mask.compile({"keep_first": 2}, _ctx("string")).label == "mask:first2"
    # a string with a logical type (uuid) is masked into a plain string
    uuid = {"type": "string", "logicalType": "uuid"}
    assert Mask.compile({"keep_last": 4}, _ctx(uuid)).output_type(_ctx(uuid)) == "string"
    assert op.token_domains == frozenset() and not op.needs_subject


# ---- values -----------------------------------------------------------------------------------
@pytest.mark.parametrize("options,value,out", [
    ({"keep_last": 4, "preserve": " "}, "4242 4242 4242 4242", "**** **** **** 4242"),
    ({"keep_last": 4, "preserve": " -"}, "4242-4242 4242-1234", "****-**** ****-1234"),
    ({"keep_last": 4}, "4242424242424242", "************4242"),
    ({"keep_first": 2, "char": "#"}, "SW1A 1AA", "SW######"),
    ({"keep_first": 2, "char": "#", "preserve": " "}, "SW1A 1AA", "SW## ###"),
    ({"keep_last": 3, "preserve": " "}, "12 3 4", "*2 3 4"),  # separators inside the kept tail stay
    ({"keep_last": 0}, "secret", "******"),
    ({"keep_first": 0, "preserve": "@."}, "a.b@x.org", "*.*@*.***"),
    ({"keep_last": 4}, "", ""),
])
def test_values(options: dict[str, Any], value: str, out: str) -> None:
    assert _step(options)(value) == out


@pytest.mark.parametrize("options,value", [
    ({"keep_last": 4}, "1234"),
    ({"keep_last": 4}, "123"),
    ({"keep_first": 4}, "abcd"),
    ({"keep_last": 4, "preserve": " "}, "12 34"),  # 4 maskable characters: all masked
    ({"keep_first": 4, "preserve": "-"}, "-a-b-c-"),
])
def test_a_value_no_longer_than_n_is_masked_whole(options: dict[str, Any], value: str) -> None:
    out = _step(options)(value)
    preserve = options.get("preserve", "")
    assert out == "".join(c if c in preserve else "*" for c in value)


def test_mask_character_and_preserved_regex_specials_are_literal() -> None:
    step = _step({"keep_last": 2, "char": "\\", "preserve": "]^-[\\"})
    assert step("a]b^c-d[e\\fgh") == "\\]\\^\\-\\[\\\\\\gh"
    assert _step({"keep_last": 1, "char": "&"})("xyz") == "&&z"  # '&' and '\\' mean nothing to the replacement


def test_characters_are_code_points() -> None:
    assert _step({"keep_last": 2})("𝄞é𝄞éab") == "****ab"
    assert _step({"keep_first": 1, "char": "•", "preserve": " "})("é 𝄞") == "é •"


def test_oversized_values_are_refused_before_and_after_masking() -> None:
    step = _step({"keep_last": 4}, env=_Env(max_field_bytes=400))
    assert step("x" * 400) == "*" * 396 + "xxxx"
    with pytest.raises(RejectedEvent) as excinfo:
        step("x" * 401)
    assert excinfo.value.reason == "field_too_large" and "x" * 10 not in excinfo.value.message
    with pytest.raises(RejectedEvent):
        _step({"keep_last": 4, "preserve": " "})("é" * 201)  # 402 bytes in 201 characters
    # a three-byte mask character makes 150 ASCII bytes 442 bytes
    with pytest.raises(RejectedEvent):
        _step({"keep_last": 4, "char": "€"})("a" * 150)
    assert _step({"keep_last": 4, "char": "€"})("a" * 130) == "€" * 126 + "aaaa"


# ---- properties -------------------------------------------------------------------------------
_ALPHABET = "0123456789abcXYZ -./]^\\[é𝄞"
_values = st.text(alphabet=_ALPHABET, max_size=40)
_preserve = st.text(alphabet=" -./]^\\[é", max_size=4)


@settings(max_examples=300, deadline=None)
@given(value=_values, keep=st.integers(0, 12), last=st.booleans(), preserve=_preserve,
       char=st.sampled_from("*#\\X-"))
def test_mask_matches_the_oracle(value: str, keep: int, last: bool, preserve: str, char: str) -> None:
    options = {"keep_last" if last else "keep_first": keep, "char": char, "preserve": preserve}
    assert _step(options)(value) == _expected(value, keep, last, char, preserve)


@settings(max_examples=300, deadline=None)
@given(value=_values, keep=st.integers(0, 12), last=st.booleans(), preserve=_preserve)
def test_mask_never_reveals_more_than_n_and_keeps_the_length(value: str, keep: int, last: bool,
                                                             preserve: str) -> None:
    char = "•"  # not in the values' alphabet: a position that is not "•" reveals its character
    out = _step({"keep_last" if last else "keep_first": keep, "char": char, "preserve": preserve})(value)
    assert len(out) == len(value)
    maskable = [i for i, c in enumerate(value) if c not in preserve]
    revealed = [i for i in maskable if out[i] != char]
    assert all(out[i] == value[i] for i in revealed)
    assert len(revealed) <= keep
    if maskable:
        assert len(revealed) < len(maskable)  # never the whole value
    if revealed:  # the revealed characters are the last (first) ones
        assert revealed == (maskable[-len(revealed):] if last else maskable[:len(revealed)])
    assert all(out[i] == value[i] for i, c in enumerate(value) if c in preserve)


# ---- through the policy compiler, the sanitizer and the pipeline -----------------------------------
_SCHEMA = {"type": "record", "name": "Pay", "namespace": "ex.mask", "privacy": {"source_topic": "pay.raw"},
           "fields": [
               {"name": "id", "type": "string", "privacy": "keep"},
               {"name": "card", "type": "string", "privacy": {"mask": {"keep_last": 4, "preserve": " "}}},
               {"name": "phone", "type": ["null", "string"], "default": None,
                "privacy": {"mask": {"keep_first": 3, "char": "x"}}},
           ]}


def test_compiled_plan_sanitizes_and_publishes_valid_avro(write_schema: Any, keyring: Keyring,
                                                          tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(write_schema(_SCHEMA, name="mask.avsc")))
    assert plan.field_actions == {"id": "keep", "card": "mask:last4", "phone": "mask:first3"}
    fields = {f["name"]: f for f in plan.sanitized_schema["fields"]}
    assert fields["card"]["type"] == "string" and fields["phone"]["type"] == ["null", "string"]
    assert fields["phone"]["default"] is None
    pipeline = Pipeline([plan], keyring, GatewayConfig(keyring=tmp_path / "k.json", instance_id="t"), 1,
                        tokenizers(keyring, [plan]))
    sanitizer = pipeline.stages["pay.raw"].sanitizer
    out = sanitizer.sanitize({"id": "e1", "card": "4111 1111 1111 1234", "phone": "+4420 7946 0000"}).record
    assert out == {"id": "e1", "card": "**** **** **** 1234", "phone": "+44xxxxxxxxxxxx"}
    assert sanitizer.sanitize({"id": "e2", "card": "12", "phone": None}).record["phone"] is None
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, plan.sanitized_parsed, out)
    buffer.seek(0)
    assert fastavro.schemaless_reader(buffer, plan.sanitized_parsed, None) == out

    raw = avro_bytes(plan.schema.parsed, {"id": "e3", "card": "5500 0000 0000 0004", "phone": None})
    result = pipeline.process([RawEvent("pay.raw", 0, 0, 1_700_000_000_000, None, raw, None)])
    (record,) = [r for r in result.records if r.topic == plan.sanitized_topic]
    published = fastavro.schemaless_reader(io.BytesIO(record.value), plan.sanitized_parsed, None)
    assert published == {"id": "e3", "card": "**** **** **** 0004", "phone": None}
    assert b"5500" not in record.value


def test_a_wrong_type_in_a_schema_names_schema_field_and_type(write_schema: Any) -> None:
    schema = dict(_SCHEMA, fields=[*_SCHEMA["fields"], {"name": "n", "type": "long", "privacy": {"mask": {
        "keep_last": 2}}}])
    with pytest.raises(Exception) as excinfo:
        compile_plan(load_schema_file(write_schema(schema, name="bad.avsc")))
    assert "bad.avsc: n: mask applies to strings, but the field is long" in str(excinfo.value)
