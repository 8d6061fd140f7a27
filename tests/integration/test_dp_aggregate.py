"""DP aggregates end to end on the real broker: raw events -> `gateway run` -> sanitized topic ->
`gateway aggregate` (two stages) -> aggregates topic, with an audit event per release, late events
audited, and the privacy ledger surviving a restart and refusing an over-cap release."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from gateway.core.audit import record_entries, verify_chains
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents
from gateway.keys.keyring import Keyring

from .conftest import _STARTED, ENV, REPO, Deployment, WorkerProcess, cli

pytestmark = pytest.mark.integration
WINDOW_S = 10
PER_COUNTRY = {"DE": 260, "FR": 220, "LU": 1}  # LU: a single subject, must not be released


# windows of a few seconds close on the clock, each spending its epsilon: a budget sized for tests
TEST_BUDGET = {"period_s": 3600, "epsilon_cap": 1000.0, "delta_cap": 1e-2}


def enable_aggregates(d: Deployment, aggregates: list[dict[str, Any]],
                      budget: dict[str, Any] | None = None) -> None:
    path = d.schemas / "payments.avsc"
    schema = orjson.loads(path.read_bytes())
    schema["privacy"]["aggregates"] = aggregates
    schema["privacy"]["budget"] = budget or TEST_BUDGET
    path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    from gateway.core.policy.lint import load_plans

    d.plans = {p.name.rsplit(".", 1)[-1]: p for p in load_plans(d.schemas)}


GATEWAY_AGGREGATE = ("gateway", "aggregate")
NOISE_FREE_WORKER = ("tests.dp_worker",)  # the same arguments, the noise-free double (tests/dp_doubles.py)


def start_aggregator(d: Deployment, instance: str, ledger_topic: str, *extra: str,
                     env: dict[str, str] | None = None, idle_s: float = 1.0,
                     command: tuple[str, ...] = GATEWAY_AGGREGATE) -> WorkerProcess:
    log_path = d.root / f"aggregate-{instance}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    audit_keys = d.root / "audit-keys.json"  # the audit keys alone, as a deployment gives them
    if not audit_keys.exists():
        Keyring.open(d.keyring).export_audit(audit_keys)
    proc = subprocess.Popen(
        [sys.executable, "-m", *command, "--bootstrap", d.bootstrap, "--schemas", str(d.schemas),
         "--keyring", str(audit_keys), "--audit-topic", d.audit_topic, "--group-id", d.group_id,
         "--instance-id", instance,
         "--partitions", "3", "--session-timeout-ms", "6000", "--ledger-topic", ledger_topic,
         "--dp-idle-close-s", str(idle_s), *extra],
        stdout=handle, stderr=subprocess.STDOUT, env=env or ENV, cwd=REPO)
    _STARTED.append(proc)  # killed at the end of the session if a failing test left it running
    worker = WorkerProcess(proc, log_path, handle)
    worker.wait_for_log('"stage":"release"')
    worker.wait_for_log('"stage":"bound"')
    return worker


def wait_for(predicate: Any, timeout_s: float = 60.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def committed_offsets(bootstrap: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (negative: none)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def consumed_all(d: Deployment, group_id: str, topic: str) -> bool:
    """`group_id` has consumed every committed record of `topic` and committed past it: per partition,
    its committed offset is one past the last record a read_committed reader sees. (The partition ends
    of a topic written in transactions count the commit markers too, so they are no measure here.)"""
    committed = committed_offsets(d.bootstrap, group_id, topic)  # first: a record written after shows
    last = {r.partition: r.offset for r in d.read(topic)}  # records in offset order: the last one wins
    return all(committed.get(p, -1) == offset + 1 for p, offset in last.items())


def stages_drained(d: Deployment) -> bool:
    """Nothing is in flight in either DP stage: stage 1 committed every sanitized record (together
    with the contributions and late audits it made of them: one transaction), and then stage 2 every
    contribution. Stage 2 commits behind the first contribution of a window still open, so its
    offsets reach the end only once every window they fed is released or was never opened (the
    contribution was late, audited in the transaction that commits its offset)."""
    return (consumed_all(d, f"{d.group_id}.dp-bound", d.payments.sanitized_topic)
            and consumed_all(d, f"{d.group_id}.dp-release", f"{d.group_id}.dp-contributions"))


def audit_bodies(d: Deployment, kind: str) -> list[dict[str, Any]]:
    try:
        records = d.read(d.audit_topic)
    except Exception:
        return []
    return [b for b in record_entries(r.value for r in records) if b.get("type") == kind]


@pytest.fixture(scope="module")
def dp(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = Deployment(bootstrap, tmp_path_factory.mktemp("dp"), uuid.uuid4().hex[:8])
    enable_aggregates(d, [
        {"name": "spend_by_country", "metric": "sum", "field": "amount_minor", "group_by": ["country"],
         "time_field": "occurred_at", "window_s": WINDOW_S, "grace_s": 2, "epsilon": 1.0, "delta": 1e-6,
         "max_groups_per_subject": 1, "max_records_per_group": 5, "clamp": [0, 100000],
         "period_s": 3600, "period_epsilon_cap": 1000.0},
        {"name": "payments_by_country", "metric": "count", "group_by": ["country"], "time_field": "occurred_at",
         "window_s": WINDOW_S, "grace_s": 2, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 1,
         "max_records_per_group": 5}])
    ledger_topic = f"privacy.ledger.{d.suffix}"
    sanitizer = d.start_worker("sanitizer")
    plan = d.payments
    # windows close on the wall clock, data or not: the aggregator runs first, the events fall in a
    # window starting shortly after
    aggregator = start_aggregator(d, "agg-1", ledger_topic)
    base = (int(time.time() * 1000) + 5_000) // (WINDOW_S * 1000) * (WINDOW_S * 1000) + WINDOW_S * 1000
    samples = SampleEvents(seed=5)
    truth: dict[str, int] = defaultdict(int)
    events = []
    for country, n in PER_COUNTRY.items():
        for i in range(n):
            e = samples.payment()
            # one subject per event: the bounds (k = 1 group per subject) then drop nothing
            e.update(user_id=f"subject-{country}-{i}", country=country, occurred_at=base + 1000 + i % 5000,
                     amount_minor=1000 + i)
            truth[country] += e["amount_minor"]
            events.append(encode_raw(plan, e, "avro"))
    d.produce(plan.source_topic, events)
    output = plan.aggregates[0].output_topic
    state = {"d": d, "base": base, "truth": truth, "output": output, "ledger": ledger_topic,
             "sanitizer": sanitizer, "aggregator": aggregator, "plan": plan}
    try:
        wait_for(lambda: sum(r["groups_released"] for r in audit_bodies(d, "dp_release")) >= 4, 120,
                 "dp_release audit events for 2 groups x 2 aggregates")
        yield state
    finally:
        for worker in (state["aggregator"], sanitizer):
            if worker.alive():
                worker.stop()


def _aggregates(dp: dict[str, Any]) -> list[dict[str, Any]]:
    return [orjson.loads(r.value or b"") for r in dp["d"].read(dp["output"])]


def test_aggregates_are_released_with_their_metadata(dp: dict[str, Any]) -> None:
    released = _aggregates(dp)
    # named as the ledger, the audit and the metrics name it: <schema full name>/<name>
    spend = {r["group"]["country"]: r for r in released
             if r["aggregate"] == "example.payments.Payment/spend_by_country" and r["name"] == "spend_by_country"}
    count = {r["group"]["country"]: r for r in released
             if r["aggregate"] == "example.payments.Payment/payments_by_country" and r["name"] == "payments_by_country"}
    assert set(spend) == set(count) == {"DE", "FR"}  # LU (one subject) is not released
    for country, r in spend.items():
        assert r["window"] == {"start": dp["base"], "end": dp["base"] + WINDOW_S * 1000}
        assert r["mechanism"].startswith("discrete_laplace") and r["epsilon"] == 1.0 and r["delta"] == 1e-6
        assert r["bounds"] == {"max_groups_per_subject": 1, "max_records_per_group": 5, "clamp": [0, 100000]}
        # the noise is real but bounded: 5x the 95% bound is exceeded with probability ~ 0.05^5
        assert r["value"] != dp["truth"][country] or r["noisy_count"] != PER_COUNTRY[country]
        assert abs(r["value"] - dp["truth"][country]) <= 5 * r["error_95"]
        assert abs(count[country]["value"] - PER_COUNTRY[country]) <= 5 * count[country]["error_95"]


def test_every_release_is_audited_and_charged_to_the_ledger(dp: dict[str, Any]) -> None:
    d = dp["d"]
    releases = [r for r in audit_bodies(d, "dp_release") if r["window"]["start"] == dp["base"]]
    assert releases and all(r["outcome"] == "released" and r["epsilon"] == 1.0 for r in releases)
    released_groups = Counter()
    for r in releases:
        released_groups[r["aggregate"]] += r["groups_released"]
    assert released_groups == {"example.payments.Payment/spend_by_country": 2,
                               "example.payments.Payment/payments_by_country": 2}
    ledger = [orjson.loads(r.value or b"") for r in d.read(dp["ledger"])]
    assert {(e["aggregate"], e["window_start"], e["partition"]) for e in ledger if e["window_start"] == dp["base"]} == \
        {(r["aggregate"], r["window"]["start"], r["partition"]) for r in releases}
    verify = cli("audit", "verify", "--bootstrap", d.bootstrap, "--topic", d.audit_topic, "--keyring", str(d.keyring),
                 "--group-id", d.group_id)
    assert verify.returncode == 0, verify.stdout


def test_late_event_is_audited_not_folded_in(dp: dict[str, Any]) -> None:
    d, plan = dp["d"], dp["plan"]
    before = len(_aggregates(dp))
    e = SampleEvents(seed=99).payment()
    e.update(country="DE", occurred_at=dp["base"] + 500)
    d.produce(plan.source_topic, [encode_raw(plan, e, "json")])

    def late() -> list[dict[str, Any]]:
        return [b for b in audit_bodies(d, "dp_late") if b["window"]["start"] == dp["base"]]

    wait_for(late, 60, "a dp_late audit event")  # the event went through the sanitizer into the stages
    # every decision made of it is committed: nothing it could still feed is in flight
    wait_for(lambda: stages_drained(d), 60, "both DP stages to commit their whole input")
    events = late()
    assert {b["aggregate"] for b in events} == {"example.payments.Payment/spend_by_country",
                                                "example.payments.Payment/payments_by_country"}
    assert all(b["outcome"] == "late" and b"\"DE\"" not in orjson.dumps(b) for b in events)  # no values
    assert len(_aggregates(dp)) == before


def test_the_ledger_survives_a_restart_and_the_schedule_goes_on_from_it(dp: dict[str, Any]) -> None:
    """A restarted worker reads the ledger and closes every window after the last one released on
    each partition: none twice, none skipped (the windows while no worker ran are caught up)."""
    d = dp["d"]
    assert dp["aggregator"].stop() == 0
    before = {(b["aggregate"], b["window"]["start"], b["partition"]) for b in audit_bodies(d, "dp_release")}
    last = max(start for _, start, _ in before)
    aggregator = dp["aggregator"] = start_aggregator(d, "agg-2", dp["ledger"])
    try:
        assert '"ledger_entries":0' not in aggregator.log()
        later = last + 2 * WINDOW_S * 1000
        wait_for(lambda: any(b["window"]["start"] >= later for b in audit_bodies(d, "dp_release")), 60,
                 "agg-2's releases after the restart")
    finally:
        assert aggregator.stop() == 0
    bodies = audit_bodies(d, "dp_release")
    keys = [(b["aggregate"], b["window"]["start"], b["partition"]) for b in bodies]
    assert len(keys) == len(set(keys))  # no window released twice on a partition
    for aggregate in {k[0] for k in keys}:
        for partition in range(3):
            starts = sorted(k[1] for k in keys if k[0] == aggregate and k[2] == partition)
            assert starts == list(range(starts[0], starts[-1] + 1, WINDOW_S * 1000))  # no gap
    assert {b["instance"] for b in bodies if b["window"]["start"] > last} == {"agg-2"}
    shown = cli("budget", "show", "--bootstrap", d.bootstrap, "--ledger-topic", dp["ledger"],
                "--schemas", str(d.schemas))
    assert shown.returncode == 0, shown.stderr
    windows = len({k[1] for k in keys if k[0].endswith("spend_by_country")})
    assert f"example.payments.Payment/spend_by_country: {windows} window(s)" in shown.stdout.decode()


def test_audit_chains_go_on_across_restarts_from_the_committed_metadata(dp: dict[str, Any]) -> None:
    """Each chain's head rides in its partition's offset-commit metadata, not in a scan of the audit
    topic: after a restart, a release continues a stage-2 chain an earlier worker wrote to, a late
    event continues the stage-1 chain the worker before wrote to, none restarts, and all verify."""
    d, plan = dp["d"], dp["plan"]
    window_ms = WINDOW_S * 1000
    count_id = "example.payments.Payment/payments_by_country"
    # a later window whose DE group lands (librdkafka's default partitioner: CRC32 of the key) on a
    # contributions partition where an earlier worker already released this aggregate's windows
    released_on = {b["partition"] for b in audit_bodies(d, "dp_release") if b["aggregate"] == count_id}
    ahead_of_now = (int(time.time() * 1000) + 15_000) // window_ms * window_ms  # closes on the clock later
    window = next(w for w in (ahead_of_now + k * window_ms for k in range(0, 200))
                  if zlib.crc32(f'{count_id}|{w}|["DE"]'.encode()) % 3 in released_on)
    samples = SampleEvents(seed=7)
    ahead = samples.payment()  # moves its partition's stage-1 watermark past the first window ...
    ahead.update(user_id="subject-chains", country="DE", occurred_at=window + 100)
    late = samples.payment()  # ... so this one, the same subject (partition) after it, is late in stage 1
    late.update(user_id="subject-chains", country="DE", occurred_at=dp["base"] + 500)

    def stage1_late(instance: str) -> list[dict[str, Any]]:
        return [b for b in audit_bodies(d, "dp_late") if b["stage"] == "bound" and b["instance"] == instance]

    aggregator = dp["aggregator"] = start_aggregator(d, "agg-3", dp["ledger"])
    try:
        d.produce(plan.source_topic, [encode_raw(plan, ahead, "json"), encode_raw(plan, late, "json")], partition=0)
        wait_for(lambda: len(stage1_late("agg-3")) == 2, 60, "agg-3's stage-1 late events")
        on = zlib.crc32(f'{count_id}|{window}|["DE"]'.encode()) % 3  # every partition closes it: DE's
        release = wait_for(lambda: [b for b in audit_bodies(d, "dp_release") if b["aggregate"] == count_id
                                    and b["window"]["start"] == window and b["partition"] == on], 60,
                           "the later window's release")
        assert [b["instance"] for b in release] == ["agg-3"]
    finally:
        assert aggregator.stop() == 0
    aggregator = dp["aggregator"] = start_aggregator(d, "agg-4", dp["ledger"])
    try:
        d.produce(plan.source_topic, [encode_raw(plan, late, "json")], partition=0)
        wait_for(lambda: len(stage1_late("agg-4")) == 2, 60, "agg-4's stage-1 late events")
    finally:
        assert aggregator.stop() == 0
    bodies = audit_bodies(d, "dp_late") + audit_bodies(d, "dp_release")
    by_chain: dict[str, list[str]] = defaultdict(list)
    for b in bodies:
        by_chain[b["chain"]].append(b["instance"])
    release_chain = f"dp-release:{count_id}:{release[0]['partition']}"
    assert {"agg-1", "agg-2", "agg-3"} <= set(by_chain[release_chain])
    (bound_chain,) = {b["chain"] for b in stage1_late("agg-4")}
    assert by_chain[bound_chain] == ["agg-3", "agg-3", "agg-4", "agg-4"]
    assert not any(b.get("chain_restart") for b in bodies)
    report = verify_chains((r.partition, r.offset, r.value or b"") for r in d.read(d.audit_topic))
    assert report.ok, report.breaks
    assert report.restarts == []


def test_no_pii_in_worker_logs(dp: dict[str, Any]) -> None:
    logs = "".join(p.read_text(errors="replace") for p in Path(dp["d"].root).glob("aggregate-*.log"))
    assert "aggregate worker started" in logs
    assert "@" not in logs  # no e-mail addresses (every sample subject has one)
