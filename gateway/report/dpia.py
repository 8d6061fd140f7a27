"""`gateway report --dpia`: a data-protection impact assessment (GDPR Art. 35) drawn from the running system.

Art. 35(7) asks for a description of the processing, its necessity, the risks and the measures. This
module assembles them, pure (no Kafka here), from what `gateway report` already collected and what
the command read besides:

* the **inventory** (from the compiled plans): per source topic and field the action, the purposes
  whose views carry it and their legal basis, the sanitized topic's own legal basis (the record-level
  ``"basis"``), the retention and the roles that may open it; per output topic the consumer groups
  that committed offsets on it and the ACL bindings (ALLOW and DENY) on reading it (gateway.core.access);
* the **measures**: encryption and its key scopes, tokenization domains, DP budgets declared and
  spent, quality rules and the re-identification measure, the leak sentinel's mode;
* the **evidence** over the period: `PrivacyReport`'s figures (events by outcome, dead letters by
  reason, erasures, retention runs, consent changes, leak findings, k-anonymity) and the audit's
  verification as `gateway audit verify` runs it;
* the **open risks** the gateway can see (`RiskKind`): a kept field the scan classifies as PII, PII
  the leak sentinel found in kept fields, fields dropped for want of an annotation, a DP budget above
  the documented level, an unverified or broken audit, no legal basis declared, no authorizer.

"The scan" is `gateway scan`'s classifier (gateway.core.scan) over a sample of each source topic, as
the command read it: the raw values are the only place a field's content can be judged, and the
scanner keeps counts and entity names only. A kept field in which it finds an entity is a risk
whatever the sentinel saw. Like the report, the DPIA holds names and counts only: no value, subject,
token or key.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import orjson

from gateway.core.access import Access
from gateway.core.audit import ChainReport
from gateway.core.operators.base import RecordPlan
from gateway.core.operators.encrypt import Encrypt
from gateway.core.policy.compiler import UNANNOTATED
from gateway.core.policy.key_headers import KEY_PATH
from gateway.core.policy.plan import Plan
from gateway.core.scan import FieldReport
from gateway.dp.declarations import LINT_EPSILON_PER_DAY
from gateway.report.collect import PrivacyReport, iso

DPIA_FORMAT = 1
DAY_S = 86_400
MAX_LISTED = 20  # audit problems listed (all are counted)


class Severity(Enum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


class RiskKind(Enum):
    """The open risks the gateway can see, each with its severity."""

    KEPT_PII = "kept_pii"  # the scan classifies a kept field as PII
    LEAK_FOUND = "leak_found"  # the leak sentinel found PII in a kept field in the period
    AUDIT_UNVERIFIED = "audit_unverified"  # the audit was not verified, or the verification found problems
    NO_AUTHORIZER = "no_authorizer"  # the broker has no authorizer: every client may read every topic
    DP_ABOVE_DOCUMENTED = "dp_above_documented"  # a DP budget above the documented epsilon per subject per day
    NO_LEGAL_BASIS = "no_legal_basis"  # a sanitized topic without a declared legal basis
    UNANNOTATED_DROPPED = "unannotated_dropped"  # a field dropped because nobody annotated it

    @property
    def severity(self) -> Severity:
        return _SEVERITY[self]


_SEVERITY = {RiskKind.KEPT_PII: Severity.HIGH, RiskKind.LEAK_FOUND: Severity.HIGH,
             RiskKind.AUDIT_UNVERIFIED: Severity.HIGH, RiskKind.NO_AUTHORIZER: Severity.HIGH,
             RiskKind.DP_ABOVE_DOCUMENTED: Severity.MEDIUM, RiskKind.NO_LEGAL_BASIS: Severity.MEDIUM,
             RiskKind.UNANNOTATED_DROPPED: Severity.LOW}


class OutputKind(Enum):
    SANITIZED = "sanitized"
    PURPOSE = "purpose"
    AGGREGATES = "aggregates"
    DEAD_LETTERS = "dead_letters"


# ---- the document's parts -------------------------------------------------------------------------
@dataclass(frozen=True)
class PurposeUse:
    purpose: str
    basis: str
    action: str
    topic: str


@dataclass(frozen=True)
class FieldEntry:
    """One field of one source: what the gateway does with it and who may open it."""

    schema: str
    source_topic: str
    path: str
    action: str  # the compiled label (keep, drop, tokenize:<domain>, encrypt:..., ...)
    annotated: bool  # False: dropped because it carries no annotation
    basis: str | None  # the sanitized topic's legal basis (None: not declared); a dropped field has none to need
    purposes: tuple[PurposeUse, ...]
    retention_days: int | None  # encrypted under a period key: readable this many days
    roles: tuple[str, ...]  # encrypted for these roles only
    key_scope: str | None  # encrypt: subject | roles | period | data key


@dataclass(frozen=True)
class OutputTopic:
    topic: str
    kind: OutputKind
    schema: str
    purpose: str | None
    basis: str | None
    consumer_groups: tuple[str, ...]  # groups with committed offsets on the topic
    read_acls: tuple[str, ...]  # "ALLOW User:x (READ, LITERAL name)" ALLOW and DENY bindings on reading it


@dataclass(frozen=True)
class AccessSummary:
    authorizer: str | None  # the brokers' authorizer class; "" none; None unknown
    acls_listed: int | None
    acl_error: str | None
    groups_listed: int
    statement: str  # one sentence: who may read the outputs


@dataclass(frozen=True)
class AuditCheck:
    """`gateway audit verify`'s verdict (chains, MACs, committed heads, source coverage), or why it did not run."""

    ran: bool
    ok: bool | None
    events: int = 0
    records: int = 0
    chains: int = 0
    authenticated: bool = False
    problems: tuple[str, ...] = ()  # the first MAX_LISTED of them
    problems_total: int = 0
    notes: int = 0
    reason: str | None = None  # why it did not run

    @classmethod
    def of(cls, report: ChainReport) -> AuditCheck:
        return cls(True, report.ok, report.events, report.records, report.chains, report.authenticated,
                   tuple(f"{f.kind.value}: {f.message}" for f in report.problems[:MAX_LISTED]),
                   len(report.problems), len(report.notes))

    @classmethod
    def not_run(cls, reason: str) -> AuditCheck:
        return cls(False, None, reason=reason)


@dataclass(frozen=True)
class Risk:
    kind: RiskKind
    severity: Severity
    schema: str | None
    where: str | None
    message: str


@dataclass(frozen=True)
class Dpia:
    generated_ms: int
    since_ms: int
    until_ms: int
    inventory: tuple[FieldEntry, ...]
    outputs: tuple[OutputTopic, ...]
    access: AccessSummary
    measures: dict[str, Any]
    evidence: dict[str, Any]
    audit_check: AuditCheck
    risks: tuple[Risk, ...]
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        body = {"format": DPIA_FORMAT, "generated_at": self.generated_ms, "generated_at_iso": iso(self.generated_ms),
                "period": {"since": self.since_ms, "until": self.until_ms, "since_iso": iso(self.since_ms),
                           "until_iso": iso(self.until_ms)},
                "inventory": [asdict(e) for e in self.inventory], "outputs": [asdict(o) for o in self.outputs],
                "access": asdict(self.access), "measures": self.measures, "evidence": self.evidence,
                "audit_verification": asdict(self.audit_check), "risks": [asdict(r) for r in self.risks],
                "risk_counts": self.risk_counts(), "notes": list(self.notes)}
        return _plain(body)

    def dumps(self) -> bytes:
        return orjson.dumps(self.to_json())

    def risk_counts(self) -> dict[str, int]:
        counts = dict.fromkeys((k.value for k in RiskKind), 0)
        for r in self.risks:
            counts[r.kind.value] += 1
        return counts

    def summary_lines(self) -> list[str]:
        """The short text form (`gateway report --dpia` without --html or --json)."""
        e = self.evidence["events"]
        o = e["by_outcome"]
        sources = sorted({f.source_topic for f in self.inventory})
        lines = [f"DPIA {iso(self.since_ms)} .. {iso(self.until_ms)}",
                 f"  inventory   {len(self.inventory)} field(s) of {len(sources)} source(s); "
                 f"{len(self.outputs)} output topic(s)",
                 f"  access      {self.access.statement}",
                 "  measures    " + self._measures_line(),
                 f"  evidence    {e['total']} events: {o['sanitized']} sanitized, {o['rejected']} dead-lettered, "
                 f"{o['withheld']} withheld; {self.evidence['forgotten']['subjects']} subject(s) forgotten",
                 "  audit       " + _audit_line(self.audit_check),
                 f"  risks       {len(self.risks)} open: "
                 + (", ".join(f"{k} {n}" for k, n in self.risk_counts().items() if n) or "none")]
        lines += [f"    [{r.severity.value}] {r.kind.value}: {r.message}" for r in self.risks]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


    def _measures_line(self) -> str:
        m = self.measures
        scopes = Counter(e["scope"] for e in m["encryption"])
        rules = sum(len(q["rules"]) for q in m["quality"])
        modes = Counter(m["leak_sentinel"].values())
        return (f"{len(m['encryption'])} field(s) encrypted"
                + (f" ({', '.join(f'{s} {n}' for s, n in sorted(scopes.items()))})" if scopes else "")
                + f", {len(m['token_domains'])} token domain(s), {len(m['dp_budgets'])} DP budget(s), {rules} quality "
                f"rule(s); leak sentinel {', '.join(f'{mode} {n}' for mode, n in sorted(modes.items()))}")


def _audit_line(check: AuditCheck) -> str:
    if not check.ran:
        return f"NOT VERIFIED ({check.reason})"
    status = "verified" if check.ok else f"BROKEN ({check.problems_total} finding(s))"
    return f"{check.events} events in {check.records} records, {check.chains} chains: {status}"


# ---- building it ------------------------------------------------------------------------------------
def build_dpia(report: PrivacyReport, plans: Sequence[Plan], access: Access, audit_check: AuditCheck,
               scans: Mapping[str, Sequence[FieldReport]], notes: Sequence[str] = ()) -> Dpia:
    """The DPIA: `report` is the period's `PrivacyReport`, `access` the broker's answer for the output
    topics, `audit_check` the audit's verification, `scans` the scan of each source (schema full name ->
    its field reports; a source not scanned is absent and named in `notes`)."""
    ordered = sorted(plans, key=lambda p: p.name)
    inventory = tuple(e for p in ordered for e in _inventory(p))
    outputs = tuple(_outputs(ordered, access))
    r = report.to_json()
    summary = _access_summary(access)
    risks = _risks(ordered, inventory, outputs, access, audit_check, scans, r)
    return Dpia(generated_ms=report.generated_ms, since_ms=report.since_ms, until_ms=report.until_ms,
                inventory=inventory, outputs=outputs, access=summary, measures=_measures(ordered, inventory, r),
                evidence=_evidence(r), audit_check=audit_check, risks=risks, notes=(*report.notes, *notes))


def _encrypted(record: RecordPlan) -> dict[str, Encrypt]:
    """Every encrypted field's path and its operator, nested records included."""
    found: dict[str, Encrypt] = {}
    for fp in record.fields:
        if isinstance(fp.operator, Encrypt):
            found[fp.path] = fp.operator
        shape = fp.shape
        while shape is not None:
            if shape.record is not None:
                found.update(_encrypted(shape.record))
            shape = shape.inner
    return found


def _scope(op: Encrypt) -> str:
    if op.roles:
        return "roles"
    if op.retention_days is not None:
        return "period"
    return "subject" if op.per_subject else "data key"


def _inventory(plan: Plan) -> list[FieldEntry]:
    unannotated = {w.where for w in plan.warnings if w.message.startswith(UNANNOTATED)}
    encrypted = _encrypted(plan.record)
    views = [(p, p.plan.field_actions) for p in plan.purposes]
    rows = []
    for path, action in plan.field_actions.items():
        op = encrypted.get(path)
        uses = tuple(PurposeUse(p.name, p.basis, actions[path], p.topic) for p, actions in views
                     if actions.get(path, "drop") != "drop")
        rows.append(FieldEntry(
            schema=plan.name, source_topic=plan.source_topic, path=path, action=action,
            annotated=path not in unannotated, basis=plan.basis, purposes=uses,
            retention_days=op.retention_days if op else None, roles=tuple(op.roles) if op else (),
            key_scope=_scope(op) if op else None))
    # the record key and the named headers (gateway.core.policy.key_headers): processed like fields, in no view
    kh = plan.key_headers
    compiled = {KEY_PATH: kh.key, **{rule.path: rule.plan for rule in kh.headers}}
    for path, action in kh.actions.items():
        fp = compiled.get(path)
        op = fp.operator if fp is not None and isinstance(fp.operator, Encrypt) else None
        rows.append(FieldEntry(
            schema=plan.name, source_topic=plan.source_topic, path=path, action=action, annotated=True,
            basis=plan.basis, purposes=(), retention_days=op.retention_days if op else None,
            roles=tuple(op.roles) if op else (), key_scope=_scope(op) if op else None))
    return rows


def _outputs(plans: Sequence[Plan], access: Access) -> list[OutputTopic]:
    rows = []

    def add(topic: str, kind: OutputKind, plan: Plan, purpose: str | None, basis: str | None) -> None:
        readers = tuple(f"{a.permission} {a.principal} ({a.operation}, {a.pattern} {a.resource_name})"
                        for a in access.read_bindings(topic))
        rows.append(OutputTopic(topic, kind, plan.name, purpose, basis, access.groups_by_topic.get(topic, ()),
                                readers))

    for plan in plans:
        add(plan.sanitized_topic, OutputKind.SANITIZED, plan, None, plan.basis)
        for p in plan.purposes:
            add(p.topic, OutputKind.PURPOSE, plan, p.name, p.basis)
        for topic in sorted({a.output_topic for a in plan.aggregates}):
            add(topic, OutputKind.AGGREGATES, plan, None, None)
        add(plan.dlq_topic, OutputKind.DEAD_LETTERS, plan, None, None)
    return rows


def _access_summary(access: Access) -> AccessSummary:
    has = access.has_authorizer
    if has is False:
        statement = "no authorizer: every client may read every topic"
    elif has is None:
        statement = "unknown: the broker described neither its authorizer nor its ACLs" + (
            f" ({access.acl_error})" if access.acl_error else "")
    else:
        n = len(access.acls) if access.acls is not None else None
        statement = f"authorizer {access.authorizer}: " + (
            f"{n} ACL binding(s) decide who reads" if n is not None else f"ACLs not listed ({access.acl_error})")
    return AccessSummary(access.authorizer, len(access.acls) if access.acls is not None else None,
                         access.acl_error, access.groups_listed, statement)


def per_day(epsilon_cap: float, period_ms: int) -> float:
    """What a cap per period allows a subject to lose in a day (as `policy lint` reckons it)."""
    if not math.isfinite(epsilon_cap) or period_ms <= 0:
        return math.inf
    return epsilon_cap * math.ceil(DAY_S / (period_ms / 1000))


def _measures(plans: Sequence[Plan], inventory: Sequence[FieldEntry], r: dict[str, Any]) -> dict[str, Any]:
    encryption = [{"schema": e.schema, "field": e.path, "scope": e.key_scope, "roles": list(e.roles),
                   "retention_days": e.retention_days} for e in inventory if e.key_scope is not None]
    domains: dict[str, list[str]] = {}
    for e in inventory:
        for action in (e.action, *(u.action for u in e.purposes)):
            if action.startswith("tokenize:"):
                domains.setdefault(action.split(":", 1)[1].split(",", 1)[0], []).append(f"{e.schema}: {e.path}")
    spent = {b["budget"]: b for b in r["dp"]["budgets"]}
    budgets = [{**b, "epsilon_spent_report_period": spent.get(b["budget"], {}).get("epsilon_report_period", 0.0),
                "epsilon_peak_period": spent.get(b["budget"], {}).get("epsilon_peak_period", 0.0),
                "cap_used": spent.get(b["budget"], {}).get("cap_used")} for b in _budgets(plans)]
    quality = []
    for plan in plans:
        q = plan.quality
        risk = q.risk if q is not None else None
        quality.append({"schema": plan.name,
                        "rules": [{"name": s.name, "kind": s.kind, "action": s.action} for s in q.rules] if q else [],
                        "k_anonymity": {"quasi_identifiers": list(risk.quasi_identifiers), "k": risk.k,
                                        "l": risk.l_target, "mode": risk.mode} if risk else None})
    return {"encryption": encryption, "token_domains": {d: sorted(set(v)) for d, v in sorted(domains.items())},
            "token_key_ids": sorted(r["keys"]["token_keys"]),
            # the KEKs of v1 data keys used in the period and those wrapping the subject keys still held
            "kek_ids": sorted({*r["keys"]["kek_ids"], *r["keys"]["subject_keys"]["live_by_kek"]}),
            "dp_budgets": budgets, "quality": quality,
            "leak_sentinel": {p.name: p.leak_sentinel for p in plans},
            "timestamps": {p.name: p.timestamp.mode.value for p in plans}}


def _evidence(r: dict[str, Any]) -> dict[str, Any]:
    e = r["events"]
    k_anonymity = {source: s["risk"] for source, s in r["quality"]["sources"].items() if "risk" in s}
    return {"events": {"total": e["total"], "by_outcome": e["by_outcome"],
                       "dead_letter_reasons": e["dead_letter_reasons"], "withheld_reasons": e["withheld_reasons"],
                       "by_source": {t: s["by_outcome"] for t, s in e["by_source"].items()}},
            "forgotten": r["forgotten"], "subject_keys": r["keys"]["subject_keys"], "retention": r["retention"],
            "consent": r["consent"], "leaks": {"events": r["leaks"]["events"], "findings": r["leaks"]["findings"]},
            "redactions": {"events": r["redactions"]["events"], "by_entity": r["redactions"]["by_entity"]},
            "quality_failures": r["quality"]["failures_from_audit"], "k_anonymity": k_anonymity,
            "dp_releases": r["dp"]["releases"], "audit_chains": r["audit"]["chains"]}


def _risks(plans: Sequence[Plan], inventory: Sequence[FieldEntry], outputs: Sequence[OutputTopic], access: Access,
           audit_check: AuditCheck, scans: Mapping[str, Sequence[FieldReport]], r: dict[str, Any]) -> tuple[Risk, ...]:
    risks: list[Risk] = []

    def add(kind: RiskKind, schema: str | None, where: str | None, message: str) -> None:
        risks.append(Risk(kind, kind.severity, schema, where, message))

    by_plan = {p.name: p for p in plans}
    for name, fields in sorted(scans.items()):
        plan = by_plan.get(name)
        if plan is None:
            continue
        for f in fields:
            if f.covered_by is None and f.entities and plan.field_actions.get(f.field) == "keep":
                found = ", ".join(f"{entity} in {rate['rate']:.0%}" for entity, rate in f.entities.items())
                add(RiskKind.KEPT_PII, name, f.path, f"'{f.path}' is kept in clear on {plan.sanitized_topic}, but the "
                    f"scan of {plan.source_topic} finds {found} of its values (suggested: {_label(f.suggested)})")
    by_source = {p.source_topic: p.name for p in plans}
    for finding in r["leaks"]["findings"]:
        add(RiskKind.LEAK_FOUND, by_source.get(finding["source"]), finding["field"],
            f"the leak sentinel found {finding['entity']} in kept field '{finding['field']}' of {finding['source']} "
            f"in {finding['count']} event(s) of the period")
    if not audit_check.ran:
        add(RiskKind.AUDIT_UNVERIFIED, None, None, f"the audit was not verified: {audit_check.reason}")
    elif not audit_check.ok:
        add(RiskKind.AUDIT_UNVERIFIED, None, None, f"the audit verification found {audit_check.problems_total} "
            "problem(s): " + "; ".join(audit_check.problems[:3]))
    if access.has_authorizer is False:
        add(RiskKind.NO_AUTHORIZER, None, None, "the broker has no authorizer: every client may read every topic, "
            f"the {len(outputs)} output topic(s) and the raw topics included")
    for budget in _budgets(plans):
        if budget["epsilon_per_day"] > LINT_EPSILON_PER_DAY:
            add(RiskKind.DP_ABOVE_DOCUMENTED, budget["schema"], f"budget {budget['budget']}",
                f"budget '{budget['budget']}' allows up to {budget['epsilon_per_day']:g} epsilon per subject per day, "
                f"above the documented {LINT_EPSILON_PER_DAY:g} (docs/dp.md)")
    for plan in plans:
        if plan.basis is None and any(e.action != "drop" for e in inventory if e.schema == plan.name):
            add(RiskKind.NO_LEGAL_BASIS, plan.name, plan.sanitized_topic, f"no legal basis is declared for "
                f"{plan.sanitized_topic} (the record-level \"basis\" of {plan.name}): not declared")
    for e in inventory:
        if not e.annotated:
            add(RiskKind.UNANNOTATED_DROPPED, e.schema, e.path, f"'{e.path}' of {e.source_topic} carries no "
                "annotation and is dropped by default: decide and annotate it (\"drop\" to say so)")
    return tuple(risks)


def _budgets(plans: Sequence[Plan]) -> list[dict[str, Any]]:
    """Each DP budget declared: its caps and what they allow a subject to lose per day."""
    out = []
    for plan in plans:
        for spec in {a.budget: a for a in plan.aggregates}.values():
            out.append({"budget": spec.budget, "schema": plan.name, "period_s": spec.budget_period_ms // 1000,
                        "epsilon_cap": spec.budget_epsilon_cap, "delta_cap": spec.budget_delta_cap,
                        "epsilon_per_day": per_day(spec.budget_epsilon_cap, spec.budget_period_ms),
                        "aggregates": sorted(a.id for a in plan.aggregates if a.budget == spec.budget)})
    return out


def _label(annotation: Any) -> str:
    if isinstance(annotation, dict) and annotation:
        return next(iter(annotation))
    return str(annotation)


def _plain(value: Any) -> Any:
    """JSON-ready: enums as their values, infinities as null."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

