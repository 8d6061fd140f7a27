"""Policy test cases: the example events kept beside a schema (`<schema stem>.cases.json`) and what must come
out of the compiled plan for each (`gateway policy test`, run by gateway.core.policy.runner).

A case file is a JSON list of cases::

    [{"name": "a card payment",
      "input": {... the raw event as JSON ...},
      "timestamp_ms": 1790000000000,                      (optional: the raw event's Kafka timestamp)
      "consent": {"fraud": true},                         (optional: the subject's consent per consent purpose)
      "expect": {
        "fields": {"email": {"action": "tokenized", "same_token_as": "another case/email"},
                   "card_number": "encrypted",
                   "card_hint": {"action": "masked", "masked_to": "************1111"}},
        "purposes": ["fraud"],                             (the purposes whose view is published)
        "purpose_fields": {"fraud": {"card_number": "encrypted"}},
        "dead_letter": "wrong_type"}}]                     (instead of fields: the dead letter's reason)

The file is checked whole before anything runs, and every problem names the file, the case and the path:
a test that cannot mean what it says is an error of its own (exit 2), not a failure. Paths are the plan's
(`billing_address.street`, `procedures[].notes`); `procedures[0].notes` names one element. An expected
field must hold a value in the input (a null passes every action unchanged, so it would prove nothing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from gateway.core.policy.plan import Plan
from gateway.errors import GatewayError

CASES_SUFFIX = ".cases.json"
_INDEX = re.compile(r"\[\d*\]")
_SEGMENT = re.compile(r"^([^.\[\]]+)((?:\[\d*\])*)$")
_CASE_KEYS = frozenset({"name", "input", "timestamp_ms", "consent", "expect"})
_EXPECT_KEYS = frozenset({"fields", "purposes", "purpose_fields", "dead_letter"})
_FIELD_KEYS = frozenset({"action", "equals", "masked_to", "same_token_as"})


class CaseFileError(GatewayError):
    """A case file that cannot be run as written; the message names file, case and path (never a value)."""


class Action(StrEnum):
    """What a case may expect of a field, as observed on the output (not as the policy declares it)."""

    KEEP = "keep"  # the output holds the input's value
    TOKENIZED = "tokenized"  # a token (tok_v<version>_...) in place of the value
    ENCRYPTED = "encrypted"  # a ciphertext that opens, with the keyring, to the input's value
    DROPPED = "dropped"  # not in the output at all
    MASKED = "masked"  # another value in clear (mask, generalize, redact, shift_date)


@dataclass(frozen=True)
class TokenRef:
    """Another (case, path) whose token must equal this one's."""

    case: str
    path: str


@dataclass(frozen=True)
class FieldExpectation:
    action: Action
    equals: Any = None  # the output value, when given (`equals` or `masked_to`): keep and masked only
    has_equals: bool = False
    same_token_as: TokenRef | None = None


@dataclass(frozen=True)
class Expectation:
    fields: dict[str, FieldExpectation] = field(default_factory=dict)
    purposes: tuple[str, ...] | None = None  # None: not checked
    purpose_fields: dict[str, dict[str, FieldExpectation]] = field(default_factory=dict)
    dead_letter: str | None = None


@dataclass(frozen=True)
class Case:
    name: str
    input: Any
    expect: Expectation
    timestamp_ms: int | None = None
    consent: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseFile:
    path: Path
    plan: Plan
    cases: tuple[Case, ...]


def plan_path(path: str) -> str:
    """A case path as the plan names it: element indexes become `[]`."""
    return _INDEX.sub("[]", path)


def values_at(record: Any, path: str) -> list[Any] | None:
    """The values at `path` in a decoded record (one per array element for `[]`), None when the path is
    absent (a field the record does not have: dropped). A null on the way gives [None]."""
    nodes: list[Any] = [record]
    for segment in path.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            return None
        name, indexes = match.group(1), re.findall(r"\[(\d*)\]", match.group(2))
        found: list[Any] = []
        for node in nodes:
            if node is None:
                found.append(None)
                continue
            if not isinstance(node, Mapping) or name not in node:
                return None
            values = [node[name]]
            for index in indexes:
                expanded: list[Any] = []
                for value in values:
                    if not isinstance(value, list):
                        expanded.append(None if value is None else value)
                    elif index == "":
                        expanded += value
                    elif int(index) < len(value):
                        expanded.append(value[int(index)])
                    else:
                        return None
                values = expanded
            found += values
        nodes = found
    return nodes


def case_file_of(schema_path: Path) -> Path:
    """`schemas/payments.avsc` -> `schemas/payments.cases.json`."""
    return schema_path.with_name(schema_path.stem + CASES_SUFFIX)


def load_case_files(plans: list[Plan]) -> list[CaseFile]:
    """The case files beside the plans' schema files (a schema without one has no cases); every file
    checked, then the token references across cases. Raises CaseFileError naming file, case and path."""
    files = []
    for plan in plans:
        path = case_file_of(plan.schema.path)
        if path.exists():
            files.append(load_case_file(path, plan))
    return files


def load_case_file(path: Path, plan: Plan) -> CaseFile:
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise CaseFileError(f"{path}: cannot read: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise CaseFileError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, list):
        raise CaseFileError(f"{path}: a case file is a JSON list of cases, each {{name, input, expect}}")
    cases: list[Case] = []
    names: set[str] = set()
    for number, entry in enumerate(raw, start=1):
        case = _case(path, plan, number, entry)
        if case.name in names:
            raise CaseFileError(f"{path}: case #{number}: the name '{case.name}' is taken by an earlier case")
        names.add(case.name)
        cases.append(case)
    _check_token_refs(path, cases)
    return CaseFile(path, plan, tuple(cases))


def _case(path: Path, plan: Plan, number: int, entry: Any) -> Case:
    where = f"{path}: case #{number}"
    if not isinstance(entry, dict):
        raise CaseFileError(f"{where}: a case is an object {{name, input, expect}}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CaseFileError(f"{where}: 'name' must be a non-empty string")
    where = f"{path}: case '{name}'"
    unknown = sorted(set(entry) - _CASE_KEYS)
    if unknown:
        raise CaseFileError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(_CASE_KEYS)})")
    if "input" not in entry:
        raise CaseFileError(f"{where}: 'input' (the raw event as JSON) is missing")
    timestamp = entry.get("timestamp_ms")
    if timestamp is not None and (not isinstance(timestamp, int) or isinstance(timestamp, bool) or timestamp < 0):
        raise CaseFileError(f"{where}: 'timestamp_ms' must be a non-negative integer (milliseconds)")
    consent = entry.get("consent") or {}
    if not isinstance(consent, dict) or not all(isinstance(v, bool) for v in consent.values()):
        raise CaseFileError(f"{where}: 'consent' maps consent purposes to true or false")
    for purpose in consent:
        if purpose not in plan.consent_purposes:
            raise CaseFileError(f"{where}: consent.{purpose}: not a purpose of {plan.name} whose basis is "
                                f"consent (those are {list(plan.consent_purposes)})")
    if consent and (plan.subject_field is None or plan.subject_domain is None):
        raise CaseFileError(f"{where}: 'consent' needs a tokenized subject, and {plan.name} has none")
    expect = entry.get("expect")
    if not isinstance(expect, dict):
        raise CaseFileError(f"{where}: 'expect' must be an object with fields, purposes or dead_letter")
    return Case(name, entry["input"], _expectation(where, plan, expect, entry["input"]), timestamp, dict(consent))


def _expectation(where: str, plan: Plan, expect: dict[str, Any], record: Any) -> Expectation:
    unknown = sorted(set(expect) - _EXPECT_KEYS)
    if unknown:
        raise CaseFileError(f"{where}: expect: unknown key(s) {unknown} (allowed: {sorted(_EXPECT_KEYS)})")
    dead = expect.get("dead_letter")
    if dead is not None and (not isinstance(dead, str) or not dead):
        raise CaseFileError(f"{where}: expect.dead_letter must be a reason code such as \"wrong_type\"")
    if dead is not None and (expect.get("fields") or expect.get("purposes") or expect.get("purpose_fields")):
        raise CaseFileError(f"{where}: a dead-lettered event has no fields or purposes: expect either "
                            "dead_letter or fields/purposes")
    fields = _fields(f"{where}: expect.fields", plan, expect.get("fields") or {}, record)
    purposes = expect.get("purposes")
    names = [p.name for p in plan.purposes]
    if purposes is not None:
        if not isinstance(purposes, list) or not all(isinstance(p, str) for p in purposes):
            raise CaseFileError(f"{where}: expect.purposes is a list of purpose names")
        for purpose in purposes:
            if purpose not in names:
                raise CaseFileError(f"{where}: expect.purposes: '{purpose}' is not a purpose of {plan.name} "
                                    f"(those are {names})")
    by_purpose = expect.get("purpose_fields") or {}
    if not isinstance(by_purpose, dict):
        raise CaseFileError(f"{where}: expect.purpose_fields maps purposes to their fields' expectations")
    views = {p.name: p.plan for p in plan.purposes}
    purpose_fields = {}
    for purpose, spec in by_purpose.items():
        if purpose not in views:
            raise CaseFileError(f"{where}: expect.purpose_fields: '{purpose}' is not a purpose of {plan.name} "
                                f"(those are {names})")
        if purposes is not None and purpose not in purposes:
            raise CaseFileError(f"{where}: expect.purpose_fields.{purpose}: the case expects the purpose "
                                "withheld (not in expect.purposes)")
        purpose_fields[purpose] = _fields(f"{where}: expect.purpose_fields.{purpose}", views[purpose], spec, record)
    return Expectation(fields, tuple(purposes) if purposes is not None else None, purpose_fields, dead)


def _fields(where: str, plan: Plan, spec: Any, record: Any) -> dict[str, FieldExpectation]:
    if not isinstance(spec, dict):
        raise CaseFileError(f"{where}: maps field paths to an action or {{action, ...}}")
    out = {}
    for path, item in spec.items():
        at = f"{where}.{path}"
        if plan_path(path) not in plan.field_actions:
            known = ", ".join(plan.field_actions)
            raise CaseFileError(f"{at}: no such field in {plan.name} (its paths: {known})")
        if isinstance(item, str):
            item = {"action": item}
        if not isinstance(item, dict):
            raise CaseFileError(f"{at}: an action name or an object {{action, equals, same_token_as}}")
        unknown = sorted(set(item) - _FIELD_KEYS)
        if unknown:
            raise CaseFileError(f"{at}: unknown key(s) {unknown} (allowed: {sorted(_FIELD_KEYS)})")
        try:
            action = Action(item.get("action"))
        except ValueError:
            raise CaseFileError(f"{at}: action must be one of {', '.join(a.value for a in Action)}") from None
        has_equals = "equals" in item or "masked_to" in item
        if "equals" in item and "masked_to" in item:
            raise CaseFileError(f"{at}: give 'equals' or 'masked_to', not both")
        if has_equals and action not in (Action.KEEP, Action.MASKED):
            raise CaseFileError(f"{at}: 'equals'/'masked_to' apply to kept and masked fields; a {action} field's "
                                "value is checked without being written down")
        ref = item.get("same_token_as")
        if ref is not None:
            if action is not Action.TOKENIZED:
                raise CaseFileError(f"{at}: 'same_token_as' needs action tokenized")
            ref = _token_ref(at, ref)
        if action is not Action.DROPPED:
            values = values_at(record, path)
            if not values or any(v is None for v in values):
                raise CaseFileError(f"{at}: the input holds no value there (a null passes every action "
                                    "unchanged): give the field a value, or expect it dropped")
        out[path] = FieldExpectation(action, item.get("equals", item.get("masked_to")), has_equals, ref)
    return out


def _token_ref(at: str, ref: Any) -> TokenRef:
    """`"path"` (this case), `"case name/path"` or `{"case": ..., "path": ...}`: paths hold no '/'."""
    if isinstance(ref, dict) and isinstance(ref.get("case"), str) and isinstance(ref.get("path"), str):
        return TokenRef(ref["case"], ref["path"])
    if isinstance(ref, str) and ref:
        case, _, path = ref.rpartition("/")
        return TokenRef(case, path)
    raise CaseFileError(f"{at}: same_token_as is \"<case name>/<path>\", \"<path>\" or {{case, path}}")


def _check_token_refs(path: Path, cases: list[Case]) -> None:
    by_name = {c.name: c for c in cases}
    for case in cases:
        for field_path, expected in case.expect.fields.items():
            ref = expected.same_token_as
            if ref is None:
                continue
            other = by_name.get(ref.case or case.name)
            where = f"{path}: case '{case.name}': expect.fields.{field_path}: same_token_as"
            if other is None:
                raise CaseFileError(f"{where}: no case named '{ref.case}' in this file")
            target = other.expect.fields.get(ref.path)
            if target is None or target.action is not Action.TOKENIZED:
                raise CaseFileError(f"{where}: case '{other.name}' does not expect '{ref.path}' tokenized")
