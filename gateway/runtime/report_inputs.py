"""What `gateway report` reads: the audit, key and quality topics and the ledger, read together (each read waits
for its partitions' ends, so the four wait at once), handed to gateway.report.collect, which stays pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.core.codec.sanitized import StoredRecord
from gateway.dp.ledger import Ledger
from gateway.runtime.ledger import load_ledger
from gateway.runtime.reader import read_topic

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
