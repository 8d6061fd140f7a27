"""What a new user trips over, without a broker: librdkafka kept quiet and its errors named in one
GatewayError, `gateway dump` without schemas and of binary values, `policy lint FILE`, `policy show`
listing the aggregates, the output/input lint warning, Avro JSON unions, the assignment-wait log."""

from __future__ import annotations

import base64
import logging
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from gateway import cli
from gateway.core.codec.raw import EventDecoder, decoded_for_json, load_schema_file
from gateway.core.codec.sanitized import StoredRecord
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_file
from gateway.errors import GatewayError, RejectedEvent
from gateway.runtime import clients, dump
from gateway.runtime.transactional import AssignmentWait
from gateway.settings import GatewayConfig

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"
REFUSED = "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused (after 0ms in state CONNECT)"


# ---- librdkafka quiet, its errors named ---------------------------------------------------------
def test_every_client_silences_librdkafka_and_routes_errors() -> None:
    errors = clients.ClientErrors("test", log_every_s=None)
    assert clients._quiet(errors) == {"error_cb": errors, "log_level": 0}
    assert clients._quiet(None) == {"log_level": 0}  # nobody polls an admin: no error events queued
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    try:  # at DEBUG, librdkafka's lines go through our JSON handler (and its redaction filter)
        assert clients._quiet(errors)["logger"] is logging.getLogger("gateway.librdkafka")
    finally:
        root.setLevel(level)


def test_client_errors_keep_the_brokers_own_reason_over_all_brokers_down() -> None:
    errors = clients.ClientErrors("test", log_every_s=None)
    errors(KafkaError(KafkaError._TRANSPORT, REFUSED))
    errors(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert errors.cause == "Connect to ipv4#127.0.0.1:9 failed: Connection refused"
    assert not errors.hopeless
    errors(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed"))
    assert errors.hopeless and errors.cause == "SASL authentication error: Authentication failed"


def test_client_errors_log_each_code_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    errors = clients.ClientErrors("consumer w1", log_every_s=60)
    with caplog.at_level(logging.WARNING, logger="gateway.kafka"):
        for _ in range(50):
            errors(KafkaError(KafkaError._TRANSPORT, REFUSED))
    assert len(caplog.records) == 1
    assert caplog.records[0].reason == "Connect to ipv4#127.0.0.1:9 failed: Connection refused"  # type: ignore[attr-defined]


class _DeadClient:
    """list_topics fails as librdkafka does; poll serves the error callback."""

    def __init__(self, errors: clients.ClientErrors, error: KafkaError) -> None:
        self.errors, self.error, self.calls = errors, error, 0

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        self.calls += 1
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport "
                                        "failure"))

    def poll(self, timeout: float) -> None:
        self.errors(self.error)


def test_require_metadata_names_the_broker_and_the_cause() -> None:
    errors = clients.ClientErrors("reader", log_every_s=None)
    client = _DeadClient(errors, KafkaError(KafkaError._TRANSPORT, REFUSED))
    with pytest.raises(GatewayError) as excinfo:
        clients.require_metadata(client, errors, "127.0.0.1:9", "t", timeout_s=0.2)  # type: ignore[arg-type]
    message = str(excinfo.value)
    assert message.startswith("cannot reach Kafka at 127.0.0.1:9: Connect to ipv4#127.0.0.1:9 failed: "
                              "Connection refused; no answer within 0s")
    assert "\n" not in message


def test_require_metadata_gives_up_at_once_on_an_authentication_failure() -> None:
    errors = clients.ClientErrors("reader", log_every_s=None)
    failure = KafkaError(KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed during "
                         "authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512")
    client = _DeadClient(errors, failure)
    with pytest.raises(GatewayError, match="invalid credentials with SASL mechanism SCRAM-SHA-512"):
        clients.require_metadata(client, errors, "k:9093", timeout_s=30)  # type: ignore[arg-type]
    assert client.calls == 1


# ---- gateway dump -----------------------------------------------------------------------------
def _record(value: bytes | None, **headers: bytes) -> StoredRecord:
    return StoredRecord("t", 0, 7, None, value, dict(headers))


def test_dump_prints_json_as_is_text_as_text_and_binary_base64() -> None:
    assert dump.plain_value(b'{"a": 1,\n "b": [2]}') == {"a": 1, "b": [2]}
    assert dump.plain_value(b"plain text, line\n") == {"value": "plain text, line\n", "value_encoding": "utf-8"}
    binary = b"\x02\x14payments\x00\xff"
    assert dump.plain_value(binary) == {"value": base64.b64encode(binary).decode(), "value_encoding": "base64"}
    assert dump.plain_value(None) is None


def test_dump_without_schemas_prints_json_records_and_names_the_avro_ones(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./schemas here
    monkeypatch.delenv("GATEWAY_SCHEMAS", raising=False)
    dumper = dump.Dumper(GatewayConfig.load({}, environ={}), explicit=False)
    name = b"example.payments.sanitized.Payment"
    as_json = dumper.line(_record(b'{"event_id": "e1"}', **{"gateway-schema": name, "gateway-encoding": b"json"}))
    assert as_json == {"event_id": "e1"}
    avro = dumper.line(_record(b"\x04e1", **{"gateway-schema": name, "gateway-encoding": b"avro"}))
    assert avro == {"value": base64.b64encode(b"\x04e1").decode(), "value_encoding": "base64",
                    "schema": name.decode()}
    note = dumper.note("payments.sanitized")
    assert "1 Avro record(s) of 'payments.sanitized'" in note and "partition/offset 0/7" in note
    assert "no schemas" in note and "--schemas DIR" in note and "\n" not in note


def test_dump_decodes_avro_with_the_default_schemas_directory(payments_plan: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.core.codec.writer import avro_bytes

    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "payments.avsc").write_bytes((SCHEMAS / "payments.avsc").read_bytes())
    monkeypatch.chdir(tmp_path)
    dumper = dump.Dumper(GatewayConfig.load({}, environ={}), explicit=False)
    record = {f["name"]: None for f in payments_plan.sanitized_schema["fields"]}
    record.update(event_id="e1", occurred_at=1, user_id="tok", email="tok", customer_name=b"x", card_number=b"y",
                  amount_minor=5, currency="EUR", country="DE",
                  billing_address={"street": b"s", "city": "c", "country": "DE"},
                  merchant={"merchant_id": "m", "category": "c"})
    value = avro_bytes(payments_plan.sanitized_parsed, record)
    line = dumper.line(_record(value, **{"gateway-schema": payments_plan.sanitized_schema["name"].encode(),
                                         "gateway-encoding": b"avro"}))
    assert line["event_id"] == "e1" and line["customer_name"] == base64.b64encode(b"x").decode()
    assert not dumper.undecoded


# ---- policy lint / show -------------------------------------------------------------------------
def test_policy_lint_accepts_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "lint", str(SCHEMAS / "payments.avsc")]) == 0
    out = capsys.readouterr().out
    assert 'user_agent: no privacy annotation' in out and '{"tokenize": {"domain": D}}' in out
    assert "0 error(s), 1 warning(s)" in out


def test_policy_lint_of_a_missing_path_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["policy", "lint", str(tmp_path / "nope.avsc")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_policy_show_lists_the_aggregates(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    schema = orjson.loads((SCHEMAS / "payments.avsc").read_bytes())
    schema["privacy"]["aggregates"].append(
        {"name": "running_by_country", "metric": "count", "group_by": ["country"], "time_field": "occurred_at",
         "window_s": 60, "grace_s": 0, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
         "max_records_per_group": 1, "continual": {"horizon_windows": 8, "start": "2026-01-01T00:00:00Z",
                                                   "groups": [["DE"], ["FR"]]}})
    path = tmp_path / "payments.avsc"
    path.write_bytes(orjson.dumps(schema))
    assert cli.main(["policy", "show", str(path)]) == 0
    out = capsys.readouterr().out
    aggregates = out.split("aggregates:\n", 1)[1].split("sanitized schema:", 1)[0]
    assert "spend_by_country: sum(amount_minor) by country -> payments.raw.aggregates" in aggregates
    assert "window 60 s on occurred_at, grace 10 s; epsilon 1, delta 1e-06 per window" in aggregates
    assert "clamped to [0, 100000]" in aggregates and "caps: epsilon 6" in aggregates
    assert "budget subject:customer" in aggregates and "payments_by_currency: count by currency" in aggregates
    assert "continual: running totals over 8 window(s) from 2026-01-01T00:00:00Z" in aggregates


def test_policy_show_lists_the_purpose_views_and_their_schemas(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    """A purpose view is published to a topic of its own with a schema of its own: `policy show` says
    what each view holds and prints the schema its consumers read (docs/policy/purposes.md)."""
    schema = orjson.loads((SCHEMAS / "payments.avsc").read_bytes())
    schema["privacy"]["purposes"] = {
        "fraud": {"topic": "payments.fraud", "basis": "consent",
                  "fields": {"user_id": {"tokenize": {"domain": "customer"}}, "card_number": "encrypt",
                             "amount_minor": "keep"}},
        "analytics": {"topic": "payments.analytics", "basis": "legitimate_interests", "output": "json",
                      "fields": {"user_id": {"tokenize": {"domain": "customer"}}, "country": "keep"}}}
    path = tmp_path / "payments.avsc"
    path.write_bytes(orjson.dumps(schema))
    assert cli.main(["policy", "show", str(path)]) == 0
    out = capsys.readouterr().out
    purposes = out.split("\npurposes:\n", 1)[1].split("\nsanitized schema:", 1)[0]
    assert "fraud -> payments.fraud (basis consent: only while the subject's consent is in force" in purposes
    assert "analytics -> payments.analytics (basis legitimate_interests; output json)" in purposes
    fraud = purposes.split("fraud -> ", 1)[1].split("analytics -> ", 1)[0]
    actions = dict(line.split() for line in fraud.splitlines()[1:] if line.strip())
    assert {f: a for f, a in actions.items() if a != "drop"} == {
        "user_id": "tokenize:customer", "card_number": "encrypt", "amount_minor": "keep"}
    assert actions["ip_address"] == actions["email"] == "drop"  # a field the view does not list
    plans = {p.name: p.plan for p in compile_plan(load_schema_file(path)).purposes}
    for name in ("fraud", "analytics"):
        printed = out.split(f"purpose '{name}' schema:\n", 1)[1]
        assert orjson.loads(printed[: printed.index("\n}") + 2]) == plans[name].sanitized_schema
    assert plans["fraud"].sanitized_schema["name"].endswith("fraud.Payment")


def test_policy_show_says_when_there_are_no_purposes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "show", str(SCHEMAS / "payments.avsc")]) == 0
    out = capsys.readouterr().out
    assert "purposes:        (none)" in out and "purpose '" not in out


def test_policy_show_says_when_there_are_no_aggregates(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["policy", "show", str(SCHEMAS / "clinical_visits.avsc")]) == 0
    assert "aggregates:      (none)" in capsys.readouterr().out


@pytest.mark.parametrize("settings,warned", [({"output": "same"}, True), ({"output": "same", "input": "auto"}, True),
                                             ({"output": "avro"}, False), ({"output": "same", "input": "json"}, False),
                                             ({}, False)])
def test_lint_warns_when_output_same_meets_input_auto(tmp_path: Path, settings: dict[str, str], warned: bool) -> None:
    schema = {"type": "record", "name": "T", "namespace": "t",
              "privacy": {"source_topic": "t.raw", **settings},
              "fields": [{"name": "n", "type": "long", "privacy": "keep"}]}
    path = tmp_path / "t.avsc"
    path.write_bytes(orjson.dumps(schema))
    problems = [p for p in lint_file(path) if "output 'same' with input 'auto'" in p.message]
    assert [p.severity for p in problems] == (["warning"] if warned else [])


# ---- JSON input: Avro JSON unions -----------------------------------------------------------------
@pytest.fixture
def clinical_decoder() -> EventDecoder:
    return EventDecoder(load_schema_file(SCHEMAS / "clinical_visits.avsc"), "auto", None, 1 << 20)


def _visit() -> dict[str, Any]:
    from gateway.embedded.samples import SampleEvents

    visit = decoded_for_json(SampleEvents(seed=4).clinical_visit())
    visit.update(email="a@example.org", location={"lat": 1.5, "lon": 2.5})
    visit["procedures"] = [{**visit["procedures"][0], "notes": "n1"}] if visit["procedures"] else []
    return visit


def test_json_unions_may_be_plain_or_avro_json_wrapped(clinical_decoder: EventDecoder) -> None:
    plain = _visit()
    expected, encoding = clinical_decoder.decode(orjson.dumps(plain))
    assert encoding == "json"
    wrapped = dict(plain, email={"string": "a@example.org"},
                   location={"example.clinical.GeoPoint": {"lat": 1.5, "lon": 2.5}})
    wrapped["procedures"] = [{**p, "notes": {"string": p["notes"]}} for p in plain["procedures"]]
    assert clinical_decoder.decode(orjson.dumps(wrapped)) == (expected, "json")
    mixed = dict(plain, location={"GeoPoint": {"lat": 1.5, "lon": 2.5}})  # the short name, beside plain unions
    assert clinical_decoder.decode(orjson.dumps(mixed)) == (expected, "json")
    assert clinical_decoder.decode(orjson.dumps(dict(plain, email={"null": None})))[0]["email"] is None


def test_a_wrapped_union_naming_no_branch_is_dead_lettered(clinical_decoder: EventDecoder) -> None:
    with pytest.raises(RejectedEvent) as excinfo:
        clinical_decoder.decode(orjson.dumps(dict(_visit(), email={"int": 3})))
    assert excinfo.value.reason == "wrong_type" and "email" in str(excinfo.value)


# ---- the wait for the first assignment ------------------------------------------------------------
class _Description:
    def __init__(self, state: str, members: list[str]) -> None:
        import confluent_kafka

        self.state = confluent_kafka.ConsumerGroupState[state]
        self.members = [type("M", (), {"member_id": m})() for m in members]


def test_the_assignment_wait_is_logged_with_its_likely_cause(caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("gateway.runtime.transactional.time.monotonic", lambda: now[0])

    def describe() -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(_Description("PREPARING_REBALANCING", ["dead-member", "me"]))
        return future

    wait = AssignmentWait("sanitize", "privacy-gateway", 10_000, describe, every_s=5)
    with caplog.at_level(logging.INFO, logger="gateway.runtime"):
        wait.started()
        now[0] += 2
        wait.tick(lambda: "me")  # too early: nothing
        now[0] += 4
        wait.tick(lambda: "me")
        now[0] += 3
        assert wait.assigned() == 9.0 and wait.assigned() is None
    first, still = caplog.records
    assert first.getMessage() == "waiting for partition assignment" and first.group_id == "privacy-gateway"  # type: ignore[attr-defined]
    assert still.getMessage() == "still waiting for partition assignment"
    assert still.waited_s == 6.0 and still.group_state == "preparing_rebalancing"  # type: ignore[attr-defined]
    assert "session_timeout_ms=10000" in still.likely_cause and "1 other member" in still.likely_cause  # type: ignore[attr-defined]
