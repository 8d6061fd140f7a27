"""One aggregate, one name (issue #32): a published release record names its aggregate exactly as
the ledger entry and the audit event of the same release do (`<schema full name>/<name>`), so a
reader joins the three on `aggregate` alone; the short name stays in the record as `name`."""

from __future__ import annotations

import datetime
from pathlib import Path

import orjson
import pytest

from gateway.core.audit import AuditKeys, ChainHeads
from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import Ledger
from gateway.dp.mechanisms import AggregateMechanism
from gateway.dp.windows import WindowState
from gateway.runtime.jobs.aggregate import Releaser
from gateway.settings import GatewayConfig

START = int(datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC).timestamp() * 1000)
MINUTE = 60_000
COMMON = dict(schema="t.Payment", group_by=("country",), window_ms=MINUTE, grace_ms=0, epsilon=1.0, delta=1e-6,
              max_groups_per_subject=1, max_records_per_group=3, time_field=None, output_topic="out",
              source_topic="src", sanitized_topic="san", period_ms=86_400_000, period_epsilon_cap=10.0,
              period_delta_cap=1.0)
PER_WINDOW = AggregateSpec(name="spend", metric="sum", field="amount", clamp=(0, 100), **COMMON)
CONTINUAL = AggregateSpec(name="running", metric="count", field=None, clamp=None, continual_windows=8,
                          continual_start_ms=START, continual_groups=('["DE"]',), **COMMON)


@pytest.mark.parametrize("spec", [PER_WINDOW, CONTINUAL], ids=["per-window", "continual"])
def test_a_release_record_names_its_aggregate_as_the_ledger_and_the_audit_do(spec: AggregateSpec,
                                                                              tmp_path: Path) -> None:
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test")
    releaser = Releaser(config, {spec.id: AggregateMechanism(spec)}, Ledger(), 1, ChainHeads(),
                        audit_keys=AuditKeys("audit-unit", {"audit-unit": bytes(range(32))}))
    # far above the threshold, so key selection keeps the group and a record is published
    state = WindowState(counts={'["DE"]': 10**6}, sums={'["DE"]': 10**6})
    release = releaser.release((spec.id, START, 0), None, state, START + MINUTE)
    assert release.outcome == "released" and release.entry is not None
    published = [orjson.loads(r.value) for r in release.records if r.topic == spec.output_topic]
    (audit,) = [orjson.loads(r.value) for r in release.records if r.topic == config.audit_topic]
    assert published
    for record in published:
        assert record["aggregate"] == release.entry.aggregate == audit["aggregate"] == "t.Payment/" + spec.name
        assert record["schema"] == "t.Payment" and record["name"] == spec.name
