"""The compiled plan: what the hot path needs for one raw schema (Plan, its purpose views, the problems the
compiler found), and walks of it that other layers need (the roles it names, its retentions). The plan's leaf
types (FieldPlan, RecordPlan, Shape) are in gateway.core.operators.base, below the operators that use them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from gateway.consent.purposes import PurposeSpec
from gateway.core.codec.evolution import WriterSchema
from gateway.core.codec.raw import SchemaFile
from gateway.core.operators.base import RecordPlan
from gateway.core.operators.encrypt import Encrypt
from gateway.core.policy.key_headers import NOTHING as NO_KEY_HEADERS
from gateway.core.policy.key_headers import KeyHeadersPlan
from gateway.core.policy.timestamp import KEEP, TimestampPlan
from gateway.core.quality.spec import QualitySpec
from gateway.dp.declarations import AggregateSpec


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" or "warning"
    schema: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.schema}: {self.where}: {self.message}"


# ---- the compiled plan -----------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """Everything the hot path needs for one raw schema, compiled once."""

    schema: SchemaFile
    record: RecordPlan
    source_topic: str
    sanitized_topic: str
    dlq_topic: str
    subject_field: str | None
    subject_tokenized: bool
    event_id_field: str | None
    input_mode: str
    output: str  # "same" or an encoding
    schema_id: int | None
    sanitized_schema_id: int | None
    sanitized_schema: dict[str, Any]
    sanitized_parsed: Any
    policy_hash: str
    field_actions: dict[str, str]
    token_domains: frozenset[str]
    warnings: tuple[Problem, ...] = field(default=())
    aggregates: tuple[AggregateSpec, ...] = field(default=())  # DP aggregates (gateway/dp/declarations.py)
    subject_domain: str | None = None  # token domain of the subject when it is tokenized
    per_subject: bool = False  # some field is encrypted under the subject's own key
    token_normalizers: dict[str, str | None] = field(default_factory=dict)  # domain -> normalizer spec
    key_uses: dict[str, str] = field(default_factory=dict)  # domain -> what its key makes (tokens, shift_date)
    leak_sentinel: str = "observe"  # observe | enforce | off: PII found in a kept field is counted (and dead-lettered)
    quality: QualitySpec | None = None  # data-quality rules and the re-identification risk measure (core/quality/)
    schema_id_from_registry: bool = False  # "schema_id": "registry": looked up at start-up
    sanitized_schema_id_from_registry: bool = False  # "sanitized_schema_id": "registry": registered at start-up
    # other versions of the schema producers write with (gateway/core/codec/evolution.py): by single-object
    # fingerprint and by Confluent schema id (from "writer_schemas", and from the registry at start-up)
    writers_by_fingerprint: dict[bytes, WriterSchema] = field(default_factory=dict)
    writers_by_id: dict[int, WriterSchema] = field(default_factory=dict)
    # purposes (gateway/consent/): each a view compiled as a plan of its own, published to its topic
    purposes: tuple[Purpose, ...] = field(default=())
    # the output record's Kafka timestamp: kept, truncated, shifted or processing time (core/policy/timestamp.py)
    timestamp: TimestampPlan = KEEP
    # the raw record's key and headers: dropped unless named (core/policy/key_headers.py)
    key_headers: KeyHeadersPlan = NO_KEY_HEADERS
    # the legal basis (GDPR Art. 6(1)) of the sanitized topic's processing; None: not declared (the DPIA says so)
    basis: str | None = None

    @property
    def consent_purposes(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.purposes if p.needs_consent)

    @property
    def name(self) -> str:
        return self.schema.fullname


@dataclass(frozen=True)
class Purpose:
    """A compiled purpose: its declaration and the plan of its view (topic, fields, sanitized schema)."""

    spec: PurposeSpec
    plan: Plan

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def topic(self) -> str:
        return self.spec.topic

    @property
    def basis(self) -> str:
        return self.spec.basis

    @property
    def needs_consent(self) -> bool:
        return self.spec.needs_consent


# ---- what a set of plans needs from the keys (walks of the compiled plan) -----------------------------
def plan_retentions(plan: Plan) -> frozenset[int]:
    """The retentions (days) of every encrypted field of a plan, nested records and purpose views
    included: a worker with any needs the key topic and enforces retention."""
    found: set[int] = set()

    def walk(record: RecordPlan) -> None:
        for fp in record.fields:
            op = fp.operator
            if isinstance(op, Encrypt) and op.retention_days is not None:
                found.add(op.retention_days)
            shape = fp.shape
            while shape is not None:
                if shape.record is not None:
                    walk(shape.record)
                shape = shape.inner

    walk(plan.record)
    found |= {op.retention_days for op in plan.key_headers.operators
              if isinstance(op, Encrypt) and op.retention_days is not None}
    for purpose in plan.purposes:
        found |= plan_retentions(purpose.plan)
    return frozenset(found)


def _record_roles(record: RecordPlan) -> Iterator[str]:
    for fp in record.fields:
        yield from getattr(fp.operator, "roles", ())
        shape = fp.shape
        while shape is not None:
            if shape.record is not None:
                yield from _record_roles(shape.record)
            shape = shape.inner


def policy_roles(plans: Iterable[Plan]) -> set[str]:
    """Every role some encrypted field of these policies names (nested records and purpose views included)."""
    plans = list(plans)
    records = [r for plan in plans for r in (plan.record, *(p.plan.record for p in getattr(plan, "purposes", ())))]
    key_headers = {role for plan in plans for op in getattr(plan, "key_headers", NO_KEY_HEADERS).operators
                   for role in getattr(op, "roles", ())}
    return {role for record in records for role in _record_roles(record)} | key_headers
