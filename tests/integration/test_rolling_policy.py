"""A rolling restart between two policy versions under load, on the real broker: every event is
sanitized exactly once under one of them and audited with that policy's hash.

Policy v1 is the deployment's payments schema as it is; policy v2 is a compatible change of it
(`user_agent`, dropped by default under v1, is kept under v2: a nullable field with default null,
so the sanitized schema evolves with full compatibility). Worker A runs v1, a bounded load starts,
worker B joins the same consumer group with v2, A leaves with SIGTERM while events still flow, and
B finishes the load. What this proves, from what landed in the topics:

- exactly once across the handover: one sanitized record per produced source offset (by the
  `gateway-source` header), none missing, none twice, no dead letters; one `sanitized` audit event
  per source offset;
- one policy per event, said truthfully: each audit event names v1 or v2, each sanitized record's
  `gateway-policy` header is the policy of its own audit event, and the record's content follows
  that policy (v2 records carry `user_agent`, v1 ones do not), while both versions did some work
  and each worker used only its own;
- the audit hash chains survive the handover (`gateway audit verify` passes, no chain restarted):
  the chain heads moved with the partitions in the offset-commit metadata.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, Message, Producer

from gateway.core.codec.evolution import evolution_problems
from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment, cli, group_progress, wait_for

pytestmark = pytest.mark.integration
EVENTS = 3_000
RATE_PER_S = 250  # 3,000 events over ~12 s: the rolling restart happens while they flow
V2_FIELD = "user_agent"  # dropped (unannotated) under v1, kept under v2

Source = tuple[int, int]  # (partition, offset) of a raw payment


class BoundedLoad:
    """Produces `count` payments at `rate_per_s` on a thread, then flushes. Records where each event
    landed (from the delivery reports) and every delivery error."""

    def __init__(self, d: Deployment, count: int, rate_per_s: int, seed: int) -> None:
        self.d, self.count, self.rate = d, count, rate_per_s
        samples = SampleEvents(seed=seed)
        self.records = [samples.payment() for _ in range(count)]
        self.user_agents = {r["event_id"]: r[V2_FIELD] for r in self.records}
        self.event_ids: dict[Source, str] = {}  # where each event landed -> its event_id
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        producer = Producer({"bootstrap.servers": self.d.bootstrap, "linger.ms": 5, "enable.idempotence": True})

        def delivered(err: KafkaError | None, msg: Message, event_id: str) -> None:
            if err is not None:
                self.errors.append(err.name())
            else:
                self.event_ids[(msg.partition(), msg.offset())] = event_id

        started = time.monotonic()
        step = max(1, self.rate // 50)  # 50 small bursts a second
        for i in range(0, self.count, step):
            for record in self.records[i:i + step]:
                producer.produce(self.d.payments.source_topic, encode_raw(self.d.payments, record, "confluent"),
                                 on_delivery=lambda err, msg, eid=record["event_id"]: delivered(err, msg, eid))
            producer.poll(0)
            time.sleep(max(0.0, started + (i + step) / self.rate - time.monotonic()))  # pacing, not a wait
        remaining = producer.flush(30)
        if remaining:
            self.errors.append(f"{remaining} not flushed")

    def running(self) -> bool:
        return self.thread.is_alive()


def _write_v2(d: Deployment) -> Path:
    """A copy of the deployment's payments schema (same topics, same ids) with `user_agent` kept."""
    v2 = d.root / "schemas-v2"
    v2.mkdir()
    schema = orjson.loads((d.schemas / "payments.avsc").read_bytes())
    (field,) = [f for f in schema["fields"] if f["name"] == V2_FIELD]
    assert "privacy" not in field and field["type"] == ["null", "string"] and field["default"] is None
    field["privacy"] = "keep"
    (v2 / "payments.avsc").write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    return v2


def _payments_plan(directory: Path) -> Plan:
    (plan,) = load_plans(directory)
    return plan


def _source(header: bytes, topic: str) -> Source:
    source_topic, partition, offset = header.decode().rsplit("/", 2)
    assert source_topic == topic, header
    return int(partition), int(offset)


@pytest.mark.alone  # the restart must happen while a fixed-rate load of ~12 s still flows
def test_rolling_restart_between_two_policy_versions_sanitizes_each_event_once(
        fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    (d.schemas / "clinical_visits.avsc").unlink()  # payments only: the assignor balances partitions, not topics
    v2_dir = _write_v2(d)
    lint = cli("policy", "lint", str(v2_dir))
    assert lint.returncode == 0 and b"0 error(s)" in lint.stdout, lint.stdout + lint.stderr
    v1, v2 = _payments_plan(d.schemas), _payments_plan(v2_dir)
    assert v1.policy_hash != v2.policy_hash
    assert (v1.source_topic, v1.sanitized_topic, v1.dlq_topic) == (v2.source_topic, v2.sanitized_topic, v2.dlq_topic)
    assert v1.field_actions[V2_FIELD] == "drop" and v2.field_actions[V2_FIELD] == "keep"
    assert evolution_problems(v2.sanitized_schema, [("v1", v1.sanitized_schema)], "full") == []
    topic = v1.source_topic

    started = time.monotonic()
    a = d.start_worker("roll-a")  # v1: --schemas d.schemas
    workers = [a]
    load = BoundedLoad(d, EVENTS, RATE_PER_S, seed=2024)
    try:
        load.thread.start()
        wait_for(lambda: group_progress(d.bootstrap, d.group_id, topic)[0] >= 300, "worker A to commit 300 events")
        # v2 in the same group: argparse keeps the last --schemas
        b = d.start_worker("roll-b", wait=False, extra=("--schemas", str(v2_dir)))
        workers.append(b)
        wait_for(lambda: b.owned(topic), "worker B to own a payments partition")
        assert load.running(), "the load ended before the rolling restart: nothing would flow under B alone"
        assert a.stop() == 0  # SIGTERM: A finishes its batch, commits, hands its partitions over
        assert '"msg":"worker stopped"' in a.log()
        wait_for(lambda: len(b.owned(topic)) == 3, "worker B to own every payments partition")
        load.thread.join(60)
        assert not load.running() and not load.errors, load.errors
        assert len(load.event_ids) == EVENTS
        wait_for(lambda: group_progress(d.bootstrap, d.group_id, topic) == (EVENTS, EVENTS),
                 "the group's committed offsets to reach the end of the source topic")
        assert b.stop() == 0
    finally:
        for w in workers:  # a failure above leaves them running
            if w.alive():
                w.stop()
    print(f"\nrolling policy restart: {EVENTS} events in {time.monotonic() - started:.1f}s")

    produced: set[Source] = set(load.event_ids)
    audit = d.audit_entries()  # one entry per event (a record holds a batch's of one partition)
    sanitized = d.read(v1.sanitized_topic)
    assert d.read(v1.dlq_topic) == []

    # exactly once: one sanitized record and one `sanitized` audit event per produced source offset
    by_source = Counter(_source(r.headers["gateway-source"], topic) for r in sanitized)
    missing = sorted(produced - set(by_source))
    audited_sources = {(e["event"]["partition"], e["event"]["offset"]) for e in audit}
    assert set(by_source) == produced and max(by_source.values()) == 1, (
        f"missing {len(missing)} {missing[:10]} (of them audited: {sorted(set(missing) & audited_sources)[:10]}), "
        f"unexpected {len(set(by_source) - produced)}, duplicated {sum(n > 1 for n in by_source.values())}; "
        f"sanitized records {len(sanitized)}, audit events {len(audit)}")
    assert len(audit) == EVENTS
    assert {e["outcome"] for e in audit} == {"sanitized"}
    audited: dict[Source, dict[str, Any]] = {}
    for e in audit:
        assert e["event"]["topic"] == topic
        source = (e["event"]["partition"], e["event"]["offset"])
        assert source not in audited, f"audited twice: {source}"
        audited[source] = e
    assert set(audited) == produced

    # one policy per event: the audit names it, the record's header agrees, the content follows it
    hashes = {v1.policy_hash: "v1", v2.policy_hash: "v2"}
    assert {e["policy"] for e in audit} <= set(hashes)
    decoders = {v1.policy_hash: SanitizedDecoder([v1]), v2.policy_hash: SanitizedDecoder([v2])}
    under: Counter[str] = Counter()
    for record in sanitized:
        source = _source(record.headers["gateway-source"], topic)
        policy = record.headers["gateway-policy"].decode()
        assert policy == audited[source]["policy"], (source, policy, audited[source]["policy"])
        _plan, value = decoders[policy].decode(record)
        assert value["event_id"] == load.event_ids[source]
        if policy == v2.policy_hash:
            assert value.get(V2_FIELD) == load.user_agents[value["event_id"]]
        else:
            assert V2_FIELD not in value
        under[hashes[policy]] += 1
    print(f"rolling policy restart: sanitized under v1 {under['v1']}, under v2 {under['v2']}")
    assert under["v1"] > 0 and under["v2"] > 0 and under["v1"] + under["v2"] == EVENTS
    by_instance: dict[str, set[str]] = {}
    for e in audit:
        by_instance.setdefault(e["instance"], set()).add(hashes[e["policy"]])
    assert by_instance == {"roll-a": {"v1"}, "roll-b": {"v2"}}, by_instance

    # the hash chains went through the handover intact: heads resumed, none restarted from genesis
    verify = cli("audit", "verify", "--bootstrap", d.bootstrap, "--topic", d.audit_topic, "--keyring", str(d.keyring),
                 "--group-id", d.group_id)
    assert verify.returncode == 0 and b"audit chain OK" in verify.stdout, verify.stdout + verify.stderr
    assert b"restarted" not in verify.stdout, verify.stdout
