"""The benchmarks' shared data: the example schemas' events, made the same way for every measurement. Below
bench.py and the measurements it runs (microbench, dp_stages, quality), so none imports another's runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.core.policy.plan import Plan
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

REPO = Path(__file__).resolve().parents[1]
SEED = 20261123


def make_events(plans: dict[str, Plan], count: int) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(schema short name, Avro bytes, record): half payments (Confluent framing), half visits."""
    samples = SampleEvents(seed=SEED)
    events = []
    for i in range(count):
        if i % 2 == 0:
            record = samples.payment()
            events.append(("Payment", encode_raw(plans["Payment"], record, "confluent"), record))
        else:
            record = samples.clinical_visit()
            events.append(("ClinicalVisit", encode_raw(plans["ClinicalVisit"], record, "avro"), record))
    return events


def by_short_name(plans: list[Plan]) -> dict[str, Plan]:
    return {p.name.rsplit(".", 1)[-1]: p for p in plans}
