"""What `gateway report --dpia` reads besides the report's topics: who reads the outputs (the consumer
groups and ACLs, gateway.runtime.access), the audit's verification as `gateway audit verify` runs it
(gateway.runtime.audit_check), and a scan of each source topic's latest events (gateway scan's
classifier: counts and entity names only). Each part that cannot be read becomes a note, not a failure:
the DPIA then says what it could not see."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.core.access import Access
from gateway.core.audit import ChainReport
from gateway.core.policy.plan import Plan
from gateway.core.scan import FieldReport
from gateway.errors import GatewayError
from gateway.runtime.access import read_access
from gateway.runtime.audit_check import verify_audit_topic
from gateway.runtime.sample import scan_plan_source
from gateway.settings import GatewayConfig

SCAN_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DpiaInputs:
    access: Access
    audit: ChainReport | None  # None: not verified (`audit_reason` says why)
    audit_reason: str | None
    scans: dict[str, list[FieldReport]]  # schema full name -> the scan of its source topic
    notes: list[str] = field(default_factory=list)


def output_topics(plans: Sequence[Plan]) -> list[str]:
    """Every topic the gateway writes for these policies: sanitized, purpose views, aggregates, dead letters."""
    topics = set()
    for plan in plans:
        topics |= {plan.sanitized_topic, plan.dlq_topic, *(p.topic for p in plan.purposes),
                   *(a.output_topic for a in plan.aggregates)}
    return sorted(topics)


def read_dpia_inputs(config: GatewayConfig, plans: Sequence[Plan], audit_topic: str, sample: int) -> DpiaInputs:
    kafka = config.kafka_client_config()
    notes: list[str] = []
    access = read_access(kafka, output_topics(plans))
    notes += [f"readers of the outputs not fully known: {e}" for e in access.errors]
    audit: ChainReport | None = None
    reason: str | None = None
    if not config.keyring.exists():
        reason = f"no keyring at '{config.keyring}' (pass --keyring): the audit's MACs and coverage were not checked"
    else:
        try:
            audit = verify_audit_topic(config, audit_topic, config.group_id)
        except GatewayError as exc:
            reason = str(exc)
    scans: dict[str, list[FieldReport]] = {}
    for plan in plans if sample > 0 else ():
        try:
            scans[plan.name] = scan_plan_source(kafka, plan, sample, SCAN_TIMEOUT_S, config.max_record_bytes).fields()
        except GatewayError as exc:
            notes.append(f"{plan.source_topic} was not scanned for PII in kept fields: {exc}")
    if sample <= 0:
        notes.append("no source topic was scanned (--sample 0): kept fields were not classified")
    return DpiaInputs(access, audit, reason, scans, notes)
