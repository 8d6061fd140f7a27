"""Purposes a policy declares: each its own output topic, its own view of the record and a legal basis.

A purpose's view is a set of top-level fields with their actions (any action of the action table);
a field it does not list is dropped from that view. The legal basis is GDPR Art. 6(1)'s: `consent`
needs the subject's consent in force at the event's time and at every revocation the gateway knows of
(gateway.consent.table: `ConsentTable.allows`); every other basis needs none and is recorded in the
audit event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

LEGAL_BASES = ("consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests")
PURPOSE_NAME = re.compile(r"^[a-z0-9_-]{1,64}$")
PURPOSE_KEYS = {"topic", "basis", "fields", "output"}


@dataclass(frozen=True)
class PurposeSpec:
    """One declared purpose, before its view is compiled."""

    name: str
    topic: str
    basis: str
    fields: dict[str, Any]
    output: str | None

    @property
    def needs_consent(self) -> bool:
        return self.basis == "consent"


def parse_purposes(declared: Any, error: Any) -> list[PurposeSpec]:
    """The record-level "purposes": {name: {"topic": T, "basis": B, "fields": {field: action}}}."""
    if declared is None:
        return []
    if not isinstance(declared, dict) or not declared:
        error("(record)", "purposes must be an object: "
                          "{\"<purpose>\": {\"topic\": T, \"basis\": B, \"fields\": {...}}}")
        return []
    out = []
    for name, spec in declared.items():
        where = f"purpose '{name}'"
        if not PURPOSE_NAME.match(str(name)):
            error("(record)", f"{where}: a purpose name is 1-64 of a-z, 0-9, '_', '-'")
            continue
        if not isinstance(spec, dict):
            error("(record)", f"{where} must be an object with topic, basis and fields")
            continue
        for key in sorted(set(spec) - PURPOSE_KEYS):
            error("(record)", f"{where}: unknown setting '{key}' (known: {', '.join(sorted(PURPOSE_KEYS))})")
        topic, basis, fields = spec.get("topic"), spec.get("basis"), spec.get("fields")
        if not isinstance(topic, str):
            error("(record)", f"{where} needs \"topic\": the topic its view is published to")
            continue
        if basis not in LEGAL_BASES:
            error("(record)", f"{where}: basis must be one of {', '.join(LEGAL_BASES)} (GDPR Art. 6(1))")
            continue
        if not isinstance(fields, dict) or not fields:
            error("(record)", f"{where} needs \"fields\": the top-level fields of its view and their actions")
            continue
        output = spec.get("output")
        if output is not None and output not in ("same", "avro", "json", "single_object"):
            error("(record)", f"{where}: output must be same, avro, json or single_object")
            continue
        out.append(PurposeSpec(str(name), topic, basis, dict(fields), output))
    return out


def parse_basis(declared: Any, error: Any) -> str | None:
    """The record-level "basis": the legal basis of the sanitized topic's processing (optional; the
    DPIA lists a source without one as an open risk). Not `consent`: the sanitized topic is not gated
    by consent; a processing that needs consent is a purpose with basis consent."""
    if declared is None:
        return None
    if declared == "consent":
        error("(record)", "basis 'consent': the sanitized topic is not gated by consent; declare a purpose "
                          "with basis consent for that processing, and the sanitized topic's own basis here")
        return None
    if declared not in LEGAL_BASES:
        error("(record)", f"basis must be one of {', '.join(b for b in LEGAL_BASES if b != 'consent')} "
                          "(GDPR Art. 6(1))")
        return None
    return str(declared)
