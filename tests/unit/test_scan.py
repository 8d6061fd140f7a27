"""`gateway scan`'s pure part (gateway/core/scan.py) with the real detectors: statistics per field path,
the identifier and free-text heuristics, the suggestion rules, what --write-policy writes, and that
no value ever reaches the report or the written schema."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.codec.raw import SchemaFile, load_schema_file
from gateway.core.detectors import detector
from gateway.core.policy.lint import lint_file
from gateway.core.scan import ENTITY_ACTIONS, Scanner, suggest, token_domain
from gateway.errors import PolicyError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CANARY_EMAIL = "zz.canary.scan@example.org"
CANARY_CARD = "4111111111111111"
CANARY_WORD = "Quuxbertine"  # a word of free text: must not appear either
_WORDS = ["order", "delivered", "late", "customer", "called", "about", "refund", "the", "parcel", "was", "damaged"]


def _schema(tmp_path: Path, fields: list[dict[str, Any]], privacy: dict[str, Any] | None = None,
            name: str = "Event") -> SchemaFile:
    raw: dict[str, Any] = {"type": "record", "name": name, "namespace": "test.scan", "fields": fields}
    if privacy is not None:
        raw["privacy"] = privacy
    path = tmp_path / f"{name}.avsc"
    path.write_bytes(orjson.dumps(raw))
    return load_schema_file(path)


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        total += (d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _email(rng: random.Random) -> str:
    return f"{rng.choice(['ada', 'grace', 'alan', 'edsger'])}.{rng.randint(1, 10_000)}@example.com"


def _note(rng: random.Random, i: int) -> str:
    words = rng.sample(_WORDS, 6)
    if i % 10 == 0:
        words.insert(3, f"contact {_email(rng)}")
    return " ".join(words)


@pytest.fixture
def flat(tmp_path: Path) -> Scanner:
    """A flat unannotated schema with one kind of content per field, 300 events."""
    schema = _schema(tmp_path, [
        {"name": "order_id", "type": "string"},
        {"name": "email", "type": "string"},
        {"name": "phone", "type": ["null", "string"], "default": None},
        {"name": "card", "type": "string"},
        {"name": "iban", "type": "string"},
        {"name": "client_ip", "type": "string"},
        {"name": "notes", "type": ["null", "string"], "default": None},
        {"name": "country", "type": "string"},
        {"name": "amount", "type": "long"},
        {"name": "paid", "type": "boolean"},
    ], {"source_topic": "flat.raw"})
    rng = random.Random(5)
    scanner = Scanner(schema)
    for i in range(300):
        scanner.add({
            "order_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "email": CANARY_EMAIL if i == 0 else _email(rng),
            "phone": None if i % 3 == 0 else f"+1 415 2{rng.randint(10, 99)} {rng.randint(1000, 9999)}",
            "card": CANARY_CARD if i == 0 else _luhn_card(rng),
            "iban": "DE89370400440532013000" if i % 2 else "GB82WEST12345698765432",
            "client_ip": f"198.51.100.{rng.randint(1, 254)}",
            "notes": f"{CANARY_WORD} {_note(rng, i)}" if i == 1 else (None if i % 7 == 0 else _note(rng, i)),
            "country": rng.choice(["DE", "FR", "PT", "IE", "US"]),
            "amount": rng.randint(1, 10_000),
            "paid": bool(i % 2),
        })
    return scanner


def _rows(scanner: Scanner) -> dict[str, Any]:
    return {r.path: r for r in scanner.fields()}


def test_a_field_of_emails_is_tokenized_with_the_email_normalizer(flat: Scanner) -> None:
    row = _rows(flat)["email"]
    assert row.entities["EMAIL"]["rate"] == pytest.approx(1.0) and row.entities["EMAIL"]["whole"] == pytest.approx(1.0)
    assert row.suggested == {"tokenize": {"domain": "email", "normalizer": "email"}}
    assert row.policy == row.suggested and row.change == "added" and row.pii


def test_whole_value_entities_get_their_action(flat: Scanner) -> None:
    rows = _rows(flat)
    assert rows["card"].suggested == {"mask": {"keep_last": 4}}
    assert rows["iban"].suggested == "encrypt"
    assert rows["client_ip"].suggested == {"tokenize": {"domain": "ip"}}
    assert rows["phone"].nulls == 100 and rows["phone"].values == 200  # rates are over non-null values


# gateway.core.detectors's phone finder skips a number at the very start of the text (its "glued to a word"
# check reads the missing character before it as '' and `'' in "#_"` holds): until that is fixed,
# a field whose whole value is a phone number finds nothing
WHOLE_VALUE_PHONES = bool(detector().find("+1 650 253 0000"))


@pytest.mark.xfail(not WHOLE_VALUE_PHONES, reason="gateway.core.detectors misses a phone at the start of the text",
                   strict=True)
def test_a_field_of_phone_numbers_is_tokenized_with_the_phone_normalizer(flat: Scanner) -> None:
    row = _rows(flat)["phone"]
    assert row.entities["PHONE"]["whole"] >= 0.8
    assert row.suggested == {"tokenize": {"domain": "phone", "normalizer": "phone"}}


def test_free_text_with_planted_emails_is_redacted(flat: Scanner) -> None:
    row = _rows(flat)["notes"]
    assert row.free_text and not row.identifier_like
    assert 0.05 < row.entities["EMAIL"]["rate"] < 0.2 and row.entities["EMAIL"]["whole"] == 0
    assert row.suggested == {"redact": {}} and row.policy == {"redact": {}}


def test_uuids_are_identifier_like_and_tokenized_under_a_domain_named_after_the_field(flat: Scanner) -> None:
    row = _rows(flat)["order_id"]
    assert row.identifier_like and not row.pii and row.entities == {}
    assert row.distinct == 300 and row.distinct_ratio == 1.0
    assert row.suggested == {"tokenize": {"domain": "order"}}


def test_countries_and_non_strings_are_kept(flat: Scanner) -> None:
    rows = _rows(flat)
    assert rows["country"].suggested == "keep" and not rows["country"].identifier_like
    assert rows["country"].distinct == 5
    for path in ("amount", "paid"):
        assert rows[path].suggested == "keep" and rows[path].policy == "keep" and rows[path].distinct is None


def test_nested_records_arrays_and_maps_use_the_policy_paths(tmp_path: Path) -> None:
    schema = _schema(tmp_path, [
        {"name": "billing", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"}, {"name": "contact", "type": "string"}]}},
        {"name": "shipping", "type": ["null", "Address"], "default": None},
        {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Item", "fields": [
            {"name": "sku", "type": "string"}]}}},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "aliases", "type": {"type": "array", "items": "string"}},
    ], {"source_topic": "nested.raw", "sanitized_topic": "nested.sanitized"})
    scanner = Scanner(schema)
    rng = random.Random(9)
    for i in range(100):
        scanner.add({
            "billing": {"city": rng.choice(["Berlin", "Paris"]), "contact": _email(rng)},
            "shipping": None if i % 2 else {"city": "Lisbon", "contact": _email(rng)},
            "items": [{"sku": f"SKU-{rng.randint(1, 9)}"} for _ in range(2)],
            "tags": {"ref": _email(rng), "k": _email(rng)},
            "aliases": ["x", "y"],
        })
    rows = _rows(scanner)
    assert list(rows) == ["billing.city", "billing.contact", "shipping.city", "shipping.contact", "items[].sku",
                          "tags{}", "aliases[]"]
    assert rows["items[].sku"].values == 200 and rows["shipping.city"].values == 50
    assert rows["tags{}"].entities["EMAIL"]["whole"] == 1.0 and rows["tags{}"].field == "tags"
    # a string action does not apply to a map of strings: the map is encrypted
    assert rows["tags{}"].suggested == ENTITY_ACTIONS["EMAIL"] and rows["tags{}"].policy == "encrypt"
    assert rows["aliases[]"].policy == "keep"
    written = scanner.annotated_schema("nested.raw")
    fields = {f["name"]: f for f in written["fields"]}
    assert fields["billing"]["privacy"] == "keep" and fields["shipping"]["privacy"] == "keep"  # containers descend
    address = {f["name"]: f for f in fields["billing"]["type"]["fields"]}
    assert address["contact"]["privacy"] == ENTITY_ACTIONS["EMAIL"] and address["city"]["privacy"] == "keep"
    assert fields["items"]["type"]["items"]["fields"][0]["privacy"] == "keep"
    assert fields["tags"]["privacy"] == "encrypt"


def test_existing_annotations_are_kept_unless_keep_hides_pii(tmp_path: Path) -> None:
    schema = _schema(tmp_path, [
        {"name": "user_id", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
        {"name": "email", "type": "string", "privacy": "encrypt"},
        {"name": "contact", "type": "string", "privacy": "keep"},
        {"name": "country", "type": "string", "privacy": "keep"},
        {"name": "when", "type": "long", "privacy": "drop"},
        {"name": "location", "privacy": "encrypt", "type": ["null", {"type": "record", "name": "Geo", "fields": [
            {"name": "label", "type": "string"}]}], "default": None},
    ], {"source_topic": "annotated.raw", "subject": "user_id"})
    scanner = Scanner(schema)
    rng = random.Random(2)
    for i in range(60):
        scanner.add({"user_id": f"u-{i % 20}", "email": _email(rng), "contact": _email(rng), "country": "DE",
                     "when": i, "location": {"label": _email(rng)}})
    rows = _rows(scanner)
    assert rows["email"].current == "encrypt" and rows["email"].policy == "encrypt" and rows["email"].change == "kept"
    assert rows["email"].suggested == ENTITY_ACTIONS["EMAIL"]  # reported beside the current action
    assert rows["contact"].change == "replaced" and rows["contact"].policy == ENTITY_ACTIONS["EMAIL"]
    assert "replaced" in rows["contact"].reason
    assert rows["country"].change == "kept" and rows["when"].policy == "drop"
    assert rows["location.label"].change == "covered" and rows["location.label"].policy is None
    assert rows["location.label"].covered_by == "location"
    written = scanner.annotated_schema("annotated.raw")
    assert written["privacy"] == {"source_topic": "annotated.raw", "subject": "user_id"}
    geo = written["fields"][5]["type"][1]["fields"][0]
    assert "privacy" not in geo  # inside an encrypted record: untouched
    report = scanner.report("annotated.raw")
    assert report["summary"]["replaced"] == 1 and report["summary"]["covered"] == 1


def test_the_subject_is_never_invented_and_stays_tokenizable(tmp_path: Path) -> None:
    schema = _schema(tmp_path, [{"name": "email", "type": "string"}, {"name": "card", "type": "string",
                                                                          "privacy": "keep"}],
                     {"source_topic": "s.raw", "subject": "card"})
    scanner = Scanner(schema)
    rng = random.Random(4)
    for _ in range(30):
        scanner.add({"email": _email(rng), "card": _luhn_card(rng)})
    rows = _rows(scanner)
    # the subject must be kept or tokenized: a card subject in clear gets a token, not a mask
    assert rows["card"].suggested == {"mask": {"keep_last": 4}} and rows["card"].policy == {"tokenize": {"domain":
                                                                                                           "card"}}
    unsubjected = _schema(tmp_path, [{"name": "email", "type": "string"}], None, name="NoBlock")
    scanner = Scanner(unsubjected)
    scanner.add({"email": _email(rng)})
    written = scanner.annotated_schema("events.raw")
    assert written["privacy"] == {"sanitized_topic": "events.raw.sanitized", "source_topic": "events.raw"}


def test_the_report_and_the_written_schema_never_hold_a_value(flat: Scanner, tmp_path: Path) -> None:
    flat.failed("json_invalid")
    report = orjson.dumps(flat.report("flat.raw", {"from": "end"}))
    written = orjson.dumps(flat.annotated_schema("flat.raw"))
    table = repr(flat.fields())
    for canary in (CANARY_EMAIL, CANARY_EMAIL.split("@")[0], CANARY_CARD, CANARY_CARD[-8:], CANARY_WORD,
                   "198.51.100.", "DE89370400440532013000", "example.com"):
        for text in (report.decode(), written.decode(), table):
            assert canary not in text, canary
    parsed = orjson.loads(report)
    assert parsed["sample"]["undecodable_reasons"] == {"json_invalid": 1} and parsed["sample"]["events"] == 300
    assert set(parsed["fields"][0]) == {"path", "field", "type", "values", "nulls", "inspected", "entities",
                                        "distinct",
                                        "distinct_capped", "distinct_ratio", "mean_length", "identifier_like",
                                        "free_text", "pii", "current", "suggested", "policy", "change", "covered_by",
                                        "reason"}


def test_the_written_policy_lints(flat: Scanner, tmp_path: Path) -> None:
    path = tmp_path / "flat.avsc"
    path.write_bytes(orjson.dumps(flat.annotated_schema("flat.raw"), option=orjson.OPT_INDENT_2))
    problems = lint_file(path)
    assert not problems, [str(p) for p in problems]


@pytest.mark.parametrize("name", ["payments.avsc", "clinical_visits.avsc"])
def test_the_example_schemas_scan_and_their_written_policy_lints(name: str, tmp_path: Path) -> None:
    from gateway.embedded.samples import SampleEvents

    schema = load_schema_file(SCHEMAS / name)
    scanner = Scanner(schema)
    samples = SampleEvents(seed=3)
    make = samples.payment if name == "payments.avsc" else samples.clinical_visit
    for _ in range(200):
        scanner.add(make())
    rows = _rows(scanner)
    assert rows["email"].entities["EMAIL"]["whole"] > 0.99
    assert rows["email"].change == "kept"  # the schema's own tokenize stays
    path = tmp_path / name
    path.write_bytes(orjson.dumps(scanner.annotated_schema(schema.privacy["source_topic"])))
    assert not [p for p in lint_file(path) if p.severity == "error"]


def test_union_and_enum_fields(tmp_path: Path) -> None:
    schema = _schema(tmp_path, [
        {"name": "ref", "type": ["null", "string", "long"], "default": None},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
        {"name": "empty", "type": ["null", "string"], "default": None},
    ], {"source_topic": "u.raw"})
    scanner = Scanner(schema)
    rng = random.Random(1)
    for i in range(40):
        scanner.add({"ref": _email(rng) if i % 2 else i, "kind": "A", "empty": None})
    rows = _rows(scanner)
    assert rows["ref"].values == 40 and rows["ref"].entities["EMAIL"]["rate"] == 1.0  # over the strings
    assert rows["ref"].policy == "encrypt"  # string actions need a plain string field
    assert rows["kind"].policy == "keep"
    assert rows["empty"].suggested == "drop" and rows["empty"].values == 0 and rows["empty"].nulls == 40


def test_recursive_schemas_are_refused(tmp_path: Path) -> None:
    schema = _schema(tmp_path, [{"name": "next", "type": ["null", "Event"], "default": None}])
    with pytest.raises(PolicyError, match="recursive"):
        Scanner(schema)


def test_suggestion_rules_without_data() -> None:
    for entity, action in (("IBAN", "encrypt"), ("NATIONAL_ID", "encrypt"), ("IP", {"tokenize": {"domain": "ip"}})):
        assert suggest({entity: {"rate": 0.95, "whole": 0.9}}, False, False, "x")[0] == action
    assert suggest({"EMAIL": {"rate": 0.3, "whole": 0.3}}, False, False, "x")[0] == {"redact": {}}
    assert suggest({"EMAIL": {"rate": 0.3, "whole": 0.3}}, False, True, "contact_ref")[0] == {
        "tokenize": {"domain": "contact"}}
    assert suggest({}, False, False, "x") == ("keep", "no PII found, not identifier-like")
    assert [token_domain(p) for p in ("user_id", "items[].orderId", "tags{}", "Session-UUID", "_id", "x.y.z")] == [
        "user", "order", "tags", "session", "id", "z"]


@dataclass(frozen=True)
class _M:
    entity: str
    start: int
    end: int


class _CountingDetector:
    def __init__(self) -> None:
        self.calls = 0

    def find(self, text: str) -> list[_M]:
        self.calls += 1
        return [_M("EMAIL", 0, len(text))] if "@" in text else []


def test_repeated_values_are_inspected_once(tmp_path: Path) -> None:
    schema = _schema(tmp_path, [{"name": "country", "type": "string"}], {"source_topic": "c.raw"})
    detector = _CountingDetector()
    scanner = Scanner(schema, detector)
    scanner.add_all({"country": c} for c in ["DE", "FR", "DE", "DE", "FR"] * 100)
    assert detector.calls == 2 and scanner.events == 500
    assert _rows(scanner)["country"].distinct == 2


def test_detection_stops_after_max_inspected_distinct_values(tmp_path: Path) -> None:
    schema = _schema(tmp_path, [{"name": "contact", "type": "string"}], {"source_topic": "m.raw"})
    detector = _CountingDetector()
    scanner = Scanner(schema, detector)
    scanner.add_all({"contact": f"p{i}@example.com"} for i in range(3000))
    row = _rows(scanner)["contact"]
    assert detector.calls == 2000 and row.inspected == 2000 and row.values == 3000 and row.distinct == 3000
    assert row.entities["EMAIL"] == {"rate": 1.0, "whole": 1.0}
