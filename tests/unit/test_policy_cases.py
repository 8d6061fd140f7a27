"""`gateway policy test`: the example cases beside a schema and the canary fuzz run, through the real compiled
plan and pipeline in process (no broker: nothing here talks to Kafka). Each test tries to get a wrong policy,
a wrong expectation or a leak past the command; failures must name case, path and actions, never a value of
a tokenized or encrypted field."""

from __future__ import annotations

import copy
import json
import shutil
import xml.etree.ElementTree as ET  # noqa: S405 - parsing our own output
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import app, cli
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import SOURCE_HEADER, BatchResult, RawEvent, parse_source_ref
from gateway.core.policy.cases import Action, CaseFileError, FieldExpectation, load_case_file, values_at
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import load_plans
from gateway.core.policy.runner import Canaries, fuzz, judge_field, plant
from gateway.embedded.samples import SampleEvents

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

# canaries: values that must never be printed, whatever the expectation says
CARD, EMAIL, NAME = "4929123456781234", "canary.zebulon@example.org", "Zebulon Canaryfield"

TICKET: dict[str, Any] = {
    "type": "record", "name": "Ticket", "namespace": "example.support",
    "privacy": {
        "source_topic": "tickets.raw", "sanitized_topic": "tickets.sanitized", "subject": "customer_id",
        "purposes": {
            "fraud": {"topic": "tickets.fraud", "basis": "consent",
                      "fields": {"customer_id": {"tokenize": {"domain": "customer"}}, "full_name": "encrypt",
                                 "ticket_id": "keep"}},
            "analytics": {"topic": "tickets.analytics", "basis": "legitimate_interests",
                          "fields": {"customer_id": {"tokenize": {"domain": "customer"}}, "country": "keep"}}}},
    "fields": [
        {"name": "ticket_id", "type": "string", "privacy": "keep"},
        {"name": "customer_id", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
        {"name": "email", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
        {"name": "card_number", "type": "string", "privacy": {"mask": {"keep_last": 4}}},
        {"name": "full_name", "type": "string", "privacy": "encrypt"},
        {"name": "notes", "type": "string", "privacy": "redact"},
        {"name": "country", "type": "string", "privacy": "keep"},
        {"name": "ip_address", "type": "string", "privacy": "drop"},
    ]}

INPUT = {"ticket_id": "t-0001", "customer_id": "customer-00042", "email": EMAIL, "card_number": CARD,
         "full_name": NAME, "notes": "Card declined twice, please call back.", "country": "GB",
         "ip_address": "203.0.113.77"}


def _policy(tmp_path: Path, cases: list[dict[str, Any]] | None, schema: dict[str, Any] | None = None) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(exist_ok=True)
    (directory / "tickets.avsc").write_text(json.dumps(schema or TICKET))
    if cases is not None:
        (directory / "tickets.cases.json").write_text(json.dumps(cases))
    return directory


def _case(name: str, expect: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "input": dict(INPUT, **extra.pop("input", {})), "expect": expect, **extra}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["policy", "test", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _junit(path: Path) -> ET.Element:
    return ET.parse(path).getroot()  # noqa: S314 - our own file


# ---- the shipped schemas carry cases, and pass --------------------------------------------------------------
def test_the_shipped_schemas_cases_and_fuzz_pass_with_a_junit_report(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "junit.xml"
    code, out, err = _run(capsys, str(SCHEMAS), "--fuzz", "20", "--junit", str(report))
    assert code == 0, out
    schemas = sorted(SCHEMAS.glob("*.avsc"))
    case_counts = {}
    for schema in schemas:
        cases = schema.with_name(schema.stem + ".cases.json")
        assert cases.exists(), f"{schema.name} ships without cases"
        case_counts[compile_plan(load_schema_file(schema)).name] = len(orjson.loads(cases.read_bytes()))
    root = _junit(report)
    assert root.get("tests") == str(sum(case_counts.values()) + len(schemas)) and root.get("failures") == "0"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == set(case_counts)
    for name, suite in suites.items():
        names = [c.get("name") for c in suite.iter("testcase")]
        assert suite.get("tests") == str(case_counts[name] + 1) == str(len(names))
        assert names[-1] == "fuzz (20 events)"
    assert "20 events: 20 sanitized, 0 dead-lettered" in out
    assert "fuzz example.payments.Payment: 20/20 events" in err  # progress lines


# ---- cases: what a wrong expectation prints -------------------------------------------------------------
def test_wrong_expectations_fail_naming_case_path_and_actions_but_never_a_protected_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        _case("all as the policy says", {"fields": {
            "ticket_id": "keep", "customer_id": "tokenized", "email": "tokenized", "full_name": "encrypted",
            "card_number": {"action": "masked", "masked_to": "************1234"}, "ip_address": "dropped",
            "country": {"action": "keep", "equals": "GB"}}}),
        _case("wrong about each field", {"fields": {
            "card_number": "tokenized", "email": "keep", "full_name": "tokenized", "customer_id": "encrypted",
            "ip_address": "keep", "ticket_id": "dropped"}}),
        _case("masked to something else", {"fields": {"card_number": {"action": "masked",
                                                                       "masked_to": "XXXXXXXXXXXX1234"}}}),
    ]
    report = tmp_path / "junit.xml"
    code, out, err = _run(capsys, str(_policy(tmp_path, cases)), "--junit", str(report))
    assert code == 1
    prefix = "FAIL example.support.Ticket: case 'wrong about each field': "
    for line in ["card_number: expected tokenized, actual masked", "email: expected keep, actual tokenized",
                 "full_name: expected tokenized, actual encrypted", "customer_id: expected encrypted, actual tokenized",
                 "ip_address: expected keep, actual dropped", "ticket_id: expected dropped, actual keep"]:
        assert prefix + line in out
    # a masked output is what the sanitized topic holds in clear: it may be shown; never the input
    assert ("case 'masked to something else': card_number: expected masked to \"XXXXXXXXXXXX1234\", actual "
            "masked to \"************1234\"") in out
    assert "'all as the policy says'" not in out
    text = out + err + report.read_text()
    for canary in (CARD, EMAIL, NAME, "203.0.113.77"):
        assert canary not in text
    root = _junit(report)
    assert (root.get("tests"), root.get("failures")) == ("3", "2")
    failed = {c.get("name"): c.find("failure") for c in root.iter("testcase")}
    assert failed["all as the policy says"] is None
    assert "card_number: expected tokenized, actual masked" in (failed["wrong about each field"].text or "")


def test_an_encrypted_field_must_open_to_the_input() -> None:
    """Encrypted is judged by opening the ciphertext: one that opens to another value fails, and the
    message holds neither value."""
    expected = FieldExpectation(Action.ENCRYPTED)
    given = {"full_name": NAME}
    output = {"full_name": "AAECAwQ="}
    opened_right = [({"full_name": NAME}, {"full_name": "decrypted"})]
    opened_wrong = [({"full_name": "Somebody Else"}, {"full_name": "decrypted"})]
    assert judge_field("full_name", expected, given, output, opened_right)[0] == []
    failures = judge_field("full_name", expected, given, output, opened_wrong)[0]
    assert [str(f) for f in failures] == ["full_name: expected encrypted, opening to the input's value, actual "
                                          "encrypted, opening to another value"]
    unopened = [(output, {"full_name": "key_erased: the subject's key is erased"})]
    assert str(judge_field("full_name", expected, given, output, unopened)[0][0]) == (
        "full_name: expected encrypted, actual encrypted (does not open: key_erased)")


def test_equal_tokens_across_cases_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        _case("first", {"fields": {"customer_id": "tokenized"}}),
        _case("same customer", {"fields": {"customer_id": {"action": "tokenized", "same_token_as": "first/customer_id"},
                                           "email": {"action": "tokenized", "same_token_as": "email"}}},
              input={"email": "customer-00042"}),
        _case("another customer", {"fields": {"customer_id": {"action": "tokenized",
                                                              "same_token_as": "first/customer_id"}}},
              input={"customer_id": "customer-00043"}),
    ]
    code, out, _ = _run(capsys, str(_policy(tmp_path, cases)))
    assert code == 1
    assert out.count("FAIL") == 1
    assert ("case 'another customer': customer_id: expected the token of 'first/customer_id', actual another "
            "token") in out
    assert "customer-0004" not in out


def test_dead_letters_and_outcomes_are_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        _case("a number for a string", {"dead_letter": "wrong_type"}, input={"country": 44}),
        _case("expected to pass, but refused", {"fields": {"country": "keep"}}, input={"ticket_id": 7}),
        _case("expected refused, but passes", {"dead_letter": "wrong_type"}),
        _case("refused for another reason", {"dead_letter": "missing_field"}, input={"country": 44}),
    ]
    code, out, _ = _run(capsys, str(_policy(tmp_path, cases)))
    assert code == 1
    assert "'a number for a string'" not in out
    assert ("case 'expected to pass, but refused': (outcome): expected sanitized, actual dead letter wrong_type"
            in out)
    assert "case 'expected refused, but passes': (outcome): expected dead letter wrong_type, actual sanitized" in out
    assert ("case 'refused for another reason': (outcome): expected dead letter missing_field, actual dead letter "
            "wrong_type") in out


def test_purposes_follow_the_declared_consent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        _case("consented", {"purposes": ["analytics", "fraud"],
                            "purpose_fields": {"fraud": {"full_name": "encrypted", "customer_id": "tokenized",
                                                         "card_number": "dropped"},
                                               "analytics": {"country": "keep", "full_name": "dropped"}}},
              consent={"fraud": True}),
        _case("revoked", {"purposes": ["analytics"]}, consent={"fraud": False}),
        _case("never asked", {"purposes": ["analytics"]}),
        _case("wrongly expects fraud", {"purposes": ["analytics", "fraud"]}, consent={"fraud": False}),
        _case("wrong about the view", {"purpose_fields": {"fraud": {"full_name": "keep"}}}, consent={"fraud": True}),
    ]
    code, out, _ = _run(capsys, str(_policy(tmp_path, cases)))
    assert code == 1
    assert out.count("FAIL") == 2, out
    assert ("case 'wrongly expects fraud': (purposes): expected published ['analytics', 'fraud'], actual published "
            "['analytics']") in out
    assert "case 'wrong about the view': fraud:full_name: expected keep, actual encrypted" in out
    assert NAME not in out


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda c: c[0]["expect"]["fields"].update(email="tokenised"),
     "case 'x': expect.fields.email: action must be one of keep, tokenized, encrypted, dropped, masked"),
    (lambda c: c[0]["expect"]["fields"].update(e_mail="keep"),
     "case 'x': expect.fields.e_mail: no such field in example.support.Ticket"),
    (lambda c: c[0]["expect"]["fields"].update(full_name={"action": "encrypted", "equals": "x"}),
     "case 'x': expect.fields.full_name: 'equals'/'masked_to' apply to kept and masked fields"),
    (lambda c: c[0]["input"].update(email=None),
     "case 'x': expect.fields.email: the input holds no value there"),
    (lambda c: c[0]["expect"]["fields"].update(email={"action": "tokenized", "same_token_as": "nobody/email"}),
     "case 'x': expect.fields.email: same_token_as: no case named 'nobody'"),
    (lambda c: c[0]["expect"].update(dead_letter="wrong_type"),
     "case 'x': a dead-lettered event has no fields or purposes"),
    (lambda c: c[0].update(consent={"analytics": True}),
     "case 'x': consent.analytics: not a purpose of example.support.Ticket whose basis is consent"),
    (lambda c: c[0]["expect"].update(purposes=["marketing"]),
     "case 'x': expect.purposes: 'marketing' is not a purpose"),
    (lambda c: c[0].pop("input"), "case 'x': 'input' (the raw event as JSON) is missing"),
    (lambda c: c.append(copy.deepcopy(c[0])), "case #2: the name 'x' is taken by an earlier case"),
    (lambda c: c[0].update(name=""), "case #1: 'name' must be a non-empty string"),
])
def test_invalid_case_files_name_the_case_and_path(tmp_path: Path, mutate: Any, message: str) -> None:
    cases = [_case("x", {"fields": {"email": "tokenized", "full_name": "encrypted"}})]
    mutate(cases)
    directory = _policy(tmp_path, cases)
    plan = compile_plan(load_schema_file(directory / "tickets.avsc"))
    with pytest.raises(CaseFileError) as failed:
        load_case_file(directory / "tickets.cases.json", plan)
    assert f"{directory / 'tickets.cases.json'}: {message}" in str(failed.value)
    assert EMAIL not in str(failed.value) and NAME not in str(failed.value)


def test_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _policy(tmp_path, None)
    (directory / "tickets.cases.json").write_text("[{")
    code, _, err = _run(capsys, str(directory))
    assert code == 2 and "tickets.cases.json: not valid JSON" in err
    code, _, err = _run(capsys, str(tmp_path / "missing"))
    assert code == 2 and "is not a directory" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, str(empty))
    assert code == 2 and "no *.avsc schema files found" in err
    code, _, err = _run(capsys, str(directory), "--fuzz", "-1")
    assert code == 2


def test_paths_name_array_elements(tmp_path: Path) -> None:
    record = {"procedures": [{"code": "a", "notes": "x"}, {"code": "b", "notes": None}], "clinic": None}
    assert values_at(record, "procedures[].code") == ["a", "b"]
    assert values_at(record, "procedures[1].notes") == [None]
    assert values_at(record, "procedures[5].notes") is None
    assert values_at(record, "clinic.region") == [None]
    assert values_at({"clinic": {}}, "clinic.region") is None


# ---- fuzz ---------------------------------------------------------------------------------------------------
def _leaky(tmp_path: Path, field: str, privacy: Any, purpose: str | None = None) -> Path:
    schema = copy.deepcopy(TICKET)
    if purpose is None:
        next(f for f in schema["fields"] if f["name"] == field)["privacy"] = privacy
    else:
        schema["privacy"]["purposes"][purpose]["fields"][field] = privacy
    return _policy(tmp_path, None, schema)


def test_fuzz_passes_a_sound_policy_and_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = _policy(tmp_path, None)
    runs = []
    for _ in range(2):
        report = tmp_path / "junit.xml"
        code, out, _ = _run(capsys, str(directory), "--fuzz", "30", "--seed", "11", "--junit", str(report))
        assert code == 0, out
        runs.append(out)
        root = _junit(report)
        assert (root.get("tests"), root.get("failures")) == ("1", "0")
    assert runs[0] == runs[1]
    # every field not kept in clear got canaries (the redacted notes: an e-mail address inside the text)
    for path in ("customer_id", "email", "card_number", "full_name", "notes", "ip_address"):
        assert f"{path} (30)" in runs[0]
    assert "30 events: 30 sanitized, 0 dead-lettered" in runs[0]


@pytest.mark.parametrize(("field", "privacy", "purpose", "where"), [
    ("card_number", {"mask": {"keep_last": 12}}, None, "sanitized"),  # a mask that leaves too much
    ("notes", {"redact": {"entities": ["PHONE"]}}, None, "sanitized"),  # free text whose redaction misses e-mail
    ("card_number", {"mask": {"keep_first": 10}}, "analytics", "purpose analytics"),  # a view's own leak
])
def test_fuzz_fails_a_leaky_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, privacy: Any,
                                   purpose: str | None, where: str) -> None:
    report = tmp_path / "junit.xml"
    code, out, _ = _run(capsys, str(_leaky(tmp_path, field, privacy, purpose)), "--fuzz", "10", "--junit",
                        str(report))
    assert code == 1, out
    assert f"FAIL example.support.Ticket: fuzz: canary of '{field}' (event 0) survives in the {where}" in out
    assert not any(f"canary of '{other}'" in out for other in ("email", "full_name", "customer_id", "ip_address"))
    root = _junit(report)
    assert (root.get("tests"), root.get("failures")) == ("1", "1")
    assert "survives in the" in (root.find("testsuite/testcase/failure").text or "")  # type: ignore[union-attr]


def test_canaries_keep_the_shape_of_the_value_they_replace() -> None:
    canaries = Canaries(3)
    card = canaries.like("4111 1111 1111 1111")
    assert len(card) == 19 and card[4] == " " and card.replace(" ", "").isdigit() and card != "4111 1111 1111 1111"
    mail = canaries.like("ada.lovelace@example.com")
    assert [c for c in mail if not c.isalnum()] == [".", "@", "."] and mail.index("@") == 12
    assert len(canaries.like("GB")) >= 8  # too short to find again: lengthened
    assert canaries.like("abcdefgh") != canaries.like("abcdefgh")
    plan = compile_plan(load_schema_file(SCHEMAS / "payments.avsc"))
    record = {"user_id": "user-1", "email": "a@b.c", "event_id": "e", "billing_address": {"street": "1 Road",
                                                                                           "city": "London"}}
    planted = plant(record, plan, canaries)
    assert set(planted) == {"user_id", "email", "billing_address.street"}
    assert record["event_id"] == "e" and record["billing_address"]["city"] == "London"
    assert record["billing_address"]["street"] == planted["billing_address.street"][0]


def test_the_shipped_case_files_are_valid(tmp_path: Path) -> None:
    """Copied elsewhere, the shipped schema and its cases still load (no path depends on the checkout)."""
    for schema in SCHEMAS.glob("*.avsc"):
        shutil.copy(schema, tmp_path)
        shutil.copy(schema.with_name(schema.stem + ".cases.json"), tmp_path)
        plan = compile_plan(load_schema_file(tmp_path / schema.name))
        assert load_case_file(tmp_path / (schema.stem + ".cases.json"), plan).cases


def test_fuzz_searches_dead_letters_and_the_audit(tmp_path: Path) -> None:
    """Refused events are searched too: their dead letters (sealed original, clear reason) hold no canary;
    a dead letter or an audit record that quoted a value would be found."""
    schema = copy.deepcopy(TICKET)
    next(f for f in schema["fields"] if f["name"] == "country")["quality"] = {
        "allowed": {"values": ["XX"], "action": "reject"}}
    directory = _policy(tmp_path, None, schema)
    plans = load_plans(directory)
    bench = app.policy_bench(plans, tmp_path / "bench")
    make = SampleEvents(5).for_schema(plans[0].schema.raw).event
    sound = fuzz(bench, plans[0], make, 10, 5)
    assert (sound.sanitized, sound.dead_lettered, sound.leaks) == (0, 10, ())
    real = bench.pipeline.process

    def quoting(events: list[RawEvent], *args: Any) -> BatchResult:
        """The pipeline, but its dead letters' message and its audit records quote the raw event."""
        result = real(events, *args)
        raw = {e.offset: e.value or b"" for e in events}
        quoted = []
        for record in result.records:
            if record.topic == plans[0].dlq_topic:
                offset = parse_source_ref(dict(record.headers or [])[SOURCE_HEADER])[2]  # type: ignore[index]
                record = record._replace(value=record.value + raw[offset]) if offset % 2 else record  # type: ignore[operator]
            elif record.topic == bench.pipeline.audit_topic:
                record = record._replace(value=record.value + raw[min(raw)])  # type: ignore[operator]
            quoted.append(record)
        return BatchResult(quoted, result.counts)

    bench.pipeline.process = quoting  # type: ignore[method-assign]
    leaky = fuzz(bench, plans[0], make, 10, 5)
    wheres = {(leak.event, leak.where) for leak in leaky.leaks}
    assert {(n, "dead letter") for n in range(1, 10, 2)} < wheres
    assert (0, "audit") in wheres and (2, "dead letter") not in wheres


def test_per_subject_and_role_scoped_ciphertexts_open_on_the_bench(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Encrypted is proven by opening: under the subject's own key (format v2) and under a role's (v3) too."""
    schema = orjson.loads((SCHEMAS / "payments.avsc").read_bytes())
    for f in schema["fields"]:
        if f["name"] == "customer_name":
            f["privacy"] = {"encrypt": {"per_subject": True}}
        elif f["name"] == "card_number":
            f["privacy"] = {"encrypt": {"roles": ["fraud"]}}
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "payments.avsc").write_text(json.dumps(schema))
    shutil.copy(SCHEMAS / "payments.cases.json", directory)
    code, out, _ = _run(capsys, str(directory))
    assert code == 0, out
    cases = orjson.loads((SCHEMAS / "payments.cases.json").read_bytes())
    assert cases[0]["expect"]["fields"]["customer_name"] == cases[0]["expect"]["fields"]["card_number"] == "encrypted"


def test_fuzz_expects_in_clear_what_a_purpose_keeps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A consented purpose that keeps the name in clear is the policy's intent: its view is not a leak, while
    the same canary in the sanitized record would be (the sanitized record encrypts the name)."""
    code, out, _ = _run(capsys, str(_leaky(tmp_path, "full_name", "keep", "fraud")), "--fuzz", "10")
    assert code == 0, out
    assert "full_name (10)" in out
