"""`gateway report --dpia`'s assembly (pure): the inventory from the compiled plans, the access statement
from the broker's answer, and each open risk raised exactly when its condition holds; the record-level
legal basis the inventory shows; the HTML loads nothing and escapes what it shows."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import cli
from gateway.core.access import Access, Acl
from gateway.core.audit import ChainReport, Finding, Kind
from gateway.core.codec.raw import SchemaFile
from gateway.core.policy.compiler import compile_schema
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.core.scan import FieldReport, Scanner
from gateway.dp.ledger import Ledger
from gateway.report.collect import collect
from gateway.report.dpia import AuditCheck, Dpia, RiskKind, build_dpia, per_day
from gateway.report.dpia_html import render_dpia
from tests.unit import test_report_collect as report_collect

SINCE, UNTIL = 1_750_000_000_000, 1_750_003_600_000

SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Ride", "namespace": "t.dpia",
    "privacy": {"source_topic": "rides.raw", "sanitized_topic": "rides.sanitized", "subject": "rider_id",
                "input": "json", "output": "json", "basis": "contract",
                "purposes": {"pricing": {"topic": "rides.pricing", "basis": "legitimate_interests",
                                         "fields": {"rider_id": {"tokenize": {"domain": "rider"}}, "city": "keep"}}},
                "aggregates": [{"name": "rides_by_city", "metric": "count", "group_by": ["city"], "window_s": 3600,
                                "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
                                "max_records_per_group": 1}],
                "budget": {"period_s": 86400, "epsilon_cap": 5.0}},
    "fields": [
        {"name": "rider_id", "type": "string", "privacy": {"tokenize": {"domain": "rider"}}},
        {"name": "city", "type": "string", "privacy": "keep"},
        {"name": "contact", "type": "string", "privacy": "keep"},
        {"name": "note", "type": "string", "privacy": {"encrypt": {"per_subject": True, "retention_days": 30}}},
        {"name": "phone", "type": "string", "privacy": "drop"},
    ],
}
NO_AUTHORIZER = Access(groups_by_topic={"rides.sanitized": ("billing",)}, authorizer="")
WITH_ACLS = Access(authorizer="org.apache.kafka.metadata.authorizer.StandardAuthorizer", acls=(
    Acl("User:billing", "*", "READ", "ALLOW", "TOPIC", "rides.", "PREFIXED"),
    Acl("User:ops", "*", "WRITE", "ALLOW", "TOPIC", "rides.sanitized", "LITERAL"),
    Acl("User:bi", "*", "READ", "ALLOW", "TOPIC", "rides.pricing", "LITERAL")))
VERIFIED = AuditCheck(True, True, events=10, records=2, chains=1, authenticated=True)


def plans_of(tmp_path: Path, schema: dict[str, Any]) -> list[Plan]:
    (tmp_path / "ride.avsc").write_bytes(orjson.dumps(schema))
    return load_plans(tmp_path)


def dpia(plans: Sequence[Plan], access: Access = WITH_ACLS, audit: AuditCheck = VERIFIED,
         scans: dict[str, Sequence[FieldReport]] | None = None, audit_events: Sequence[dict[str, Any]] = ()) -> Dpia:
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=audit_events, ledger=Ledger(), keys=(), quality=(),
                     plans=plans)
    return build_dpia(report, plans, access, audit, scans or {})


def kinds(d: Dpia) -> set[str]:
    return {r.kind.value for r in d.risks}


def test_a_well_declared_policy_has_no_open_risk(tmp_path: Path) -> None:
    d = dpia(plans_of(tmp_path, SCHEMA))
    assert d.risks == ()
    body = d.to_json()
    fields = {e["path"]: e for e in body["inventory"]}
    note = {k: fields["note"][k] for k in ("action", "retention_days", "key_scope", "basis", "roles")}
    assert note == {"action": "encrypt:per_subject,retention_days=30", "retention_days": 30, "key_scope": "period",
                    "basis": "contract", "roles": []}
    assert fields["city"]["purposes"] == [{"purpose": "pricing", "basis": "legitimate_interests", "action": "keep",
                                           "topic": "rides.pricing"}]
    assert fields["contact"]["purposes"] == [] and fields["phone"]["annotated"]
    outputs = {o["topic"]: o for o in body["outputs"]}
    assert {t: o["kind"] for t, o in outputs.items()} == {
        "rides.sanitized": "sanitized", "rides.pricing": "purpose", "rides.raw.aggregates": "aggregates",
        "rides.raw.dlq": "dead_letters"}
    assert outputs["rides.sanitized"]["basis"] == "contract"
    assert outputs["rides.pricing"]["basis"] == "legitimate_interests"
    # a prefixed READ names every rides.* topic; a WRITE grant is no reader; a literal one names its topic only
    assert outputs["rides.sanitized"]["read_acls"] == ["ALLOW User:billing (READ, PREFIXED rides.)"]
    assert outputs["rides.pricing"]["read_acls"] == ["ALLOW User:billing (READ, PREFIXED rides.)",
                                                       "ALLOW User:bi (READ, LITERAL rides.pricing)"]
    assert body["access"]["acls_listed"] == 3 and "3 ACL binding(s)" in body["access"]["statement"]
    (budget,) = body["measures"]["dp_budgets"]
    assert budget["epsilon_per_day"] == 5.0 and budget["aggregates"] == ["t.dpia.Ride/rides_by_city"]
    assert body["measures"]["token_domains"] == {"rider": ["t.dpia.Ride: rider_id"]}
    text = "\n".join(d.summary_lines())
    assert "  measures    1 field(s) encrypted (period 1), 1 token domain(s), 1 DP budget(s), 0 quality rule(s); " \
           "leak sentinel observe 1" in text
    assert "risks       0 open: none" in text and "inventory   5 field(s) of 1 source(s); 4 output topic(s)" in text


def test_each_planted_risk_is_named(tmp_path: Path) -> None:
    schema = copy.deepcopy(SCHEMA)
    del schema["privacy"]["basis"]
    schema["privacy"]["budget"] = {"period_s": 3600, "epsilon_cap": 1.0}  # 24 epsilon per subject per day
    schema["fields"].append({"name": "nickname", "type": "string"})
    (plan,) = plans_of(tmp_path, schema)
    scanner = Scanner(plan.schema)
    for i in range(40):
        scanner.add({"rider_id": f"r{i}", "city": "Lyon", "contact": f"rider{i}@example.org", "note": "n",
                     "phone": "x", "nickname": "n"})
    broken = AuditCheck.of(ChainReport(chains=1, events=3, records=1,
                                       findings=[Finding(Kind.GAP, "rides.raw:0 offsets 4..5 are not audited")]))
    leak = {"type": "event", "time": SINCE + 1, "outcome": "sanitized", "event": {"topic": "rides.raw"},
            "leak_suspected": [{"field": "city", "entity": "EMAIL"}]}
    d = dpia([plan], NO_AUTHORIZER, broken, {plan.name: scanner.fields()}, [leak])
    risks = {(r.kind, r.where) for r in d.risks}
    assert risks == {(RiskKind.KEPT_PII, "contact"), (RiskKind.LEAK_FOUND, "city"), (RiskKind.AUDIT_UNVERIFIED, None),
                     (RiskKind.NO_AUTHORIZER, None), (RiskKind.DP_ABOVE_DOCUMENTED, "budget subject:rider"),
                     (RiskKind.NO_LEGAL_BASIS, "rides.sanitized"), (RiskKind.UNANNOTATED_DROPPED, "nickname")}
    by_kind = {r.kind: r for r in d.risks}
    assert "24 epsilon per subject per day" in by_kind[RiskKind.DP_ABOVE_DOCUMENTED].message
    assert "gap" in by_kind[RiskKind.AUDIT_UNVERIFIED].message
    assert by_kind[RiskKind.LEAK_FOUND].schema == plan.name
    assert d.to_json()["risk_counts"]["kept_pii"] == 1
    assert d.to_json()["access"]["statement"] == "no authorizer: every client may read every topic"
    assert d.to_json()["outputs"][0]["consumer_groups"] == ["billing"]
    assert not any("example.org" in r.message for r in d.risks)  # a value never reaches a risk


def test_the_record_key_and_named_headers_are_in_the_inventory(tmp_path: Path) -> None:
    schema = copy.deepcopy(SCHEMA)
    schema["privacy"]["key"] = {"tokenize": {"domain": "rider"}}
    schema["privacy"]["headers"] = {"x-trace": {"encrypt": {"roles": ["support"]}}, "x-debug": "drop"}
    d = dpia(plans_of(tmp_path, schema))
    rows = {e.path: e for e in d.inventory}
    assert rows["(record key)"].action == "tokenize:rider" and rows["(record key)"].purposes == ()
    assert (rows["(header)x-trace"].key_scope, rows["(header)x-trace"].roles) == ("roles", ("support",))
    assert rows["(header)x-debug"].action == "drop"
    assert d.to_json()["measures"]["token_domains"] == {"rider": ["t.dpia.Ride: (record key)",
                                                                  "t.dpia.Ride: rider_id"]}
    assert d.risks == ()


def test_an_audit_not_verified_is_a_risk(tmp_path: Path) -> None:
    d = dpia(plans_of(tmp_path, SCHEMA), audit=AuditCheck.not_run("no keyring at 'k.json'"))
    ((kind, message),) = [(r.kind, r.message) for r in d.risks]
    assert kind is RiskKind.AUDIT_UNVERIFIED and "no keyring" in message
    assert "NOT VERIFIED (no keyring at 'k.json')" in "\n".join(d.summary_lines())


def test_a_broker_that_says_nothing_of_its_authorizer_is_no_finding_either_way(tmp_path: Path) -> None:
    d = dpia(plans_of(tmp_path, SCHEMA), access=Access(authorizer=None, acls=None, acl_error="denied"))
    assert d.risks == ()
    assert d.access.statement.startswith("unknown")


@pytest.mark.parametrize(("basis", "error"), [("contract", None), ("legitimate_interests", None),
                                               ("consent", "not gated by consent"), ("whim", "basis must be one of")])
def test_the_record_level_basis_is_validated(basis: str, error: str | None) -> None:
    raw = copy.deepcopy(SCHEMA)
    raw["privacy"]["basis"] = basis
    plan, problems = compile_schema(SchemaFile(Path("ride.avsc"), raw, raw))
    errors = [str(p) for p in problems if p.severity == "error"]
    if error is None:
        assert plan is not None and plan.basis == basis and not errors
    else:
        assert plan is None and any(error in e for e in errors), errors


def test_per_day_reckons_as_lint_does() -> None:
    assert per_day(1.0, 3_600_000) == 24.0
    assert per_day(10.0, 86_400_000) == 10.0
    assert per_day(5.0, 7 * 86_400_000) == 5.0  # a week's cap could all be spent in one day
    assert per_day(float("inf"), 3_600_000) == float("inf")


def test_the_html_loads_nothing_and_escapes_what_it_shows(tmp_path: Path) -> None:
    plans = plans_of(tmp_path, SCHEMA)
    report = collect(since_ms=SINCE, until_ms=UNTIL, audit=(), ledger=Ledger(), keys=(), quality=(), plans=plans)
    d = build_dpia(report, plans, NO_AUTHORIZER, VERIFIED, {}, notes=['<script>alert("x")</script>'])
    html = render_dpia(d)
    assert "<script" not in html and "&lt;script&gt;" in html
    assert not re.search(r"<(link|img|iframe|object|embed)\b|(src|href)\s*=|url\(|@import", html, re.I)
    for section in ("overview", "inventory", "measures", "evidence", "audit", "risks"):
        assert f'<section id="{section}">' in html
    assert 'data-figure="risks"><div class="value">1</div>' in html  # no authorizer


def test_the_k_anonymity_figures_of_the_period_reach_the_evidence(tmp_path: Path) -> None:
    plans = plans_of(tmp_path, SCHEMA)
    report = collect(since_ms=report_collect.SINCE, until_ms=report_collect.UNTIL, audit=(), ledger=Ledger(), keys=(),
                     quality=report_collect.quality_records(), plans=plans)
    d = build_dpia(report, plans, WITH_ACLS, VERIFIED, {})
    # one window in the period (its two partitions' records merged), one before it
    k = d.to_json()["evidence"]["k_anonymity"]["rides.raw"]
    assert (k["windows"], k["k_target"], k["k_min"], k["records"], k["below_k_records"]) == (1, 5, 3, 10, 2)
    html = render_dpia(d)
    assert re.search(r'<td>rides\.raw</td><td class="n">1</td><td class="n">5</td><td class="n">3</td>'
                     r'<td class="n">10</td><td class="n">2</td>', html)


@pytest.mark.parametrize(("acl", "reads"), [
    (Acl("User:a", "*", "READ", "ALLOW", "TOPIC", "*", "LITERAL"), True),  # the wildcard topic
    (Acl("User:a", "*", "ALL", "ALLOW", "TOPIC", "rides.sanitized", "LITERAL"), True),
    (Acl("User:a", "*", "READ", "ALLOW", "TOPIC", "rides.sanitized.x", "LITERAL"), False),
    (Acl("User:a", "*", "READ", "ALLOW", "TOPIC", "rides.s", "PREFIXED"), True),
    (Acl("User:a", "*", "READ", "ALLOW", "GROUP", "rides.sanitized", "LITERAL"), False),
    (Acl("User:a", "*", "DESCRIBE", "ALLOW", "TOPIC", "rides.sanitized", "LITERAL"), False),
    (Acl("User:a", "*", "READ", "DENY", "TOPIC", "rides.sanitized", "LITERAL"), True),  # listed, as DENY
])
def test_which_acl_bindings_let_a_principal_read_a_topic(acl: Acl, reads: bool) -> None:
    assert acl.matches_topic("rides.sanitized") is reads


def test_the_command_refuses_a_dpia_without_policies_before_reaching_kafka(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./schemas here
    monkeypatch.delenv("GATEWAY_SCHEMAS", raising=False)
    assert cli.main(["report", "--dpia", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "--dpia needs the policies" in capsys.readouterr().err
    assert cli.main(["report", "--dpia", "--sample", "-1", "--schemas", str(Path(__file__).parents[2] / "schemas"),
                     "--bootstrap", "127.0.0.1:1"]) == 2
    assert "--sample must be 0 (no scan) or more" in capsys.readouterr().err
