"""What `gateway report` reads: the audit, key and quality topics and the ledger, read together (each read waits
for its partitions' ends, so the four wait at once), handed to gateway.report.collect, which stays pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.core.audit import entries, verify_chains
from gateway.core.codec.sanitized import StoredRecord
from gateway.core.policy.plan import Plan
from gateway.dp.ledger import Ledger
from gateway.errors import GatewayError
from gateway.report.collect import PrivacyReport, collect, decode_json, key_record
from gateway.runtime import clients
from gateway.runtime.ledger import load_ledger
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import partition_counts
from gateway.settings import GatewayConfig

READ = ("audit", "keys", "quality")  # the topics read whole; the ledger is restored as its state


@dataclass(frozen=True)
class ReportInputs:
    records: dict[str, list[StoredRecord]]  # "audit" | "keys" | "quality" -> its records (only topics that exist)
    ledger: Ledger


def read_report_inputs(kafka: Mapping[str, str], topics: Mapping[str, str], existing: Collection[str],
                       ledger_topic: str) -> ReportInputs:
    with ThreadPoolExecutor(4) as pool:  # each read waits for its partitions' ends: the four wait together
        reads = {name: pool.submit(read_topic, kafka, topics[name]) for name in READ if topics[name] in existing}
        ledger = pool.submit(load_ledger, kafka, ledger_topic)
        records = {name: future.result() for name, future in reads.items()}
        return ReportInputs(records, ledger.result())


def period_report(config: GatewayConfig, plans: Sequence[Plan], since_ms: int, until_ms: int, now_ms: int,
                  notes: list[str]) -> PrivacyReport:
    """The report of [since_ms, until_ms) from the configured topics (`gateway report`, the demo's
    last step); `notes` gains a line per topic that does not exist. Fails when the audit topic is missing."""
    kafka = config.kafka_client_config()
    existing = partition_counts(clients.admin(kafka))
    if config.audit_topic not in existing:
        raise GatewayError(f"audit topic '{config.audit_topic}' does not exist on {config.bootstrap} "
                           "(pass --audit-topic)")
    topics = {"audit": config.audit_topic, "ledger": config.ledger_topic, "keys": config.key_topic,
              "quality": config.quality_topic}  # CONSENT (a later issue): the consent topic is read here too
    for name in ("keys", "quality"):
        if topics[name] not in existing:
            notes.append(f"no {name} topic '{topics[name]}' on {config.bootstrap}: nothing from it in this report")
    inputs = read_report_inputs(kafka, topics, existing, config.ledger_topic)
    records, ledger_state = inputs.records, inputs.ledger
    audit_records = records["audit"]
    chains = verify_chains((r.partition, r.offset, r.value or b"") for r in audit_records)
    return collect(
        since_ms=since_ms, until_ms=until_ms, generated_ms=now_ms, plans=plans, chains=chains, topics=topics,
        audit=(e for r in audit_records for e in entries(decode_json(r.value))), ledger=ledger_state,
        keys=(key_record(r.key, r.value) for r in records.get("keys", [])),
        quality=(decode_json(r.value) for r in records.get("quality", [])),
        notes=notes)
