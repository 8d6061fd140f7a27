"""The `gateway forget` audit chain as logic: its head is a bookkeeping record in the key topic, and
each forget is one transaction (tombstones, new head, audit event). The broker is faked here; the
real one is in tests/integration/test_shredding.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from gateway.audit import GENESIS, audit_partition, verify_chains
from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys import keytopic
from gateway.keys.keyring import Keyring
from gateway.keys.keytopic import (
    FORGET_CHAIN,
    HEAD_PARTITION,
    forget_head_key,
    forget_head_value,
    forget_subject,
    parse_forget_head,
)
from gateway.keys.subject_keys import SubjectKeys, is_subject_key
from gateway.keys.tokens import DomainTokenizer
from gateway.policy import _DOMAIN_RE

ALICE, BOB = "alice.unit-1", "bob.unit-2"
AUDIT_PARTITIONS = 3


class Cluster:
    """Committed records per topic, as a read_committed reader sees them (aborted ones never land)."""

    def __init__(self) -> None:
        self.topics: dict[str, list[tuple[int, bytes | None, bytes | None]]] = {}
        self.log: list[Any] = []  # every producer call and head read, in order

    def committed(self, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
        return self.topics.setdefault(topic, [])


class FakeProducer:
    cluster: Cluster
    fail_commit: KafkaError | None = None
    configs: list[dict[str, Any]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        FakeProducer.configs.append(conf)
        self._txn: list[tuple[str, int, bytes | None, bytes | None]] | None = None

    def init_transactions(self, _timeout: float) -> None:
        self.cluster.log.append("init")

    def begin_transaction(self) -> None:
        self.cluster.log.append("begin")
        self._txn = []

    def produce(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                partition: int = -1) -> None:
        assert self._txn is not None, "produced outside a transaction"
        self.cluster.log.append(("produce", topic, key))
        self._txn.append((topic, partition, key, value))

    def commit_transaction(self, _timeout: float) -> None:
        if self.fail_commit is not None:
            raise KafkaException(self.fail_commit)
        self.cluster.log.append("commit")
        for topic, partition, key, value in self._txn or []:
            self.cluster.committed(topic).append((partition, key, value))
        self._txn = None

    def abort_transaction(self, _timeout: float) -> None:
        self.cluster.log.append("abort")
        self._txn = None


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    cluster = Cluster()
    FakeProducer.cluster = cluster
    FakeProducer.fail_commit = None
    FakeProducer.configs = []
    monkeypatch.setattr(keytopic, "Producer", FakeProducer)
    monkeypatch.setattr(keytopic, "_audit_partitions", lambda _config: AUDIT_PARTITIONS)

    def read_head(_kafka: Any, key_topic: str, audit_topic: str) -> str | None:
        cluster.log.append("read head")
        value = None
        for partition, key, record_value in cluster.committed(key_topic):
            if key == forget_head_key(audit_topic):
                assert partition == HEAD_PARTITION
                value = record_value
        return parse_forget_head(value)

    monkeypatch.setattr(keytopic, "read_forget_head", read_head)
    return cluster


@pytest.fixture
def forget_config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test", group_id="gw-unit",
                         key_topic="keys.unit", audit_topic="audit.unit")


def _keys_with(keyring: Keyring, *subjects: str) -> tuple[SubjectKeys, dict[str, bytes]]:
    keyring.ensure_token_domains({"patient"})
    _, token_keys = keyring.token_keys("patient")
    keys = SubjectKeys(keyring)
    for subject in subjects:
        for version, key in token_keys.items():
            keys.current("patient", DomainTokenizer("patient", version, key).token(subject))
    keys.drain_pending()
    return keys, token_keys


def _audit(cluster: Cluster, config: GatewayConfig) -> list[tuple[int, int, bytes]]:
    return [(p, i, v or b"") for i, (p, _k, v) in enumerate(cluster.committed(config.audit_topic))]


def test_head_records_are_bookkeeping_never_keys(keyring: Keyring) -> None:
    keys, _ = _keys_with(keyring, ALICE)
    assert len(keys) == 1
    head = forget_head_key("privacy.audit")
    assert head == b"_audit-head/privacy.audit/keys:forget"
    assert not is_subject_key(head) and is_subject_key(keys.entries()[0][0])
    assert not _DOMAIN_RE.match(head.decode().split("/", 1)[0])  # no token domain can look like it
    keys.apply(head, forget_head_value("privacy.audit", "a" * 64))
    keys.apply(head, None)  # a head's tombstone erases nothing either
    assert len(keys) == 1 and keys.erased == 0


def test_head_value_round_trips_and_a_damaged_one_reads_as_no_head() -> None:
    assert parse_forget_head(forget_head_value("a", "0f" * 32)) == "0f" * 32
    assert parse_forget_head(None) is None
    for damaged in (b"not json", b"[]", b"{}", orjson.dumps({"format": 2, "hash": "0f" * 32}),
                    orjson.dumps({"format": 1, "hash": "0F" * 32}), orjson.dumps({"format": 1, "hash": "0f" * 31})):
        assert parse_forget_head(damaged) is None


def test_forgets_chain_through_the_head_in_the_key_topic_one_transaction_each(
        cluster: Cluster, forget_config: GatewayConfig, keyring: Keyring) -> None:
    keys, token_keys = _keys_with(keyring, ALICE, BOB)
    events = [forget_subject(forget_config, subject, "patient", token_keys, keys) for subject in (ALICE, BOB, ALICE)]

    assert [e["keys_erased"] for e in events] == [1, 1, 0]  # the repeated forget finds nothing left
    assert len(keys) == 0
    assert events[0]["prev_hash"] == GENESIS and events[0]["chain_restart"] is True  # the first: a new chain
    assert events[1]["prev_hash"] == events[0]["hash"] and "chain_restart" not in events[1]
    assert events[2]["prev_hash"] == events[1]["hash"] and "chain_restart" not in events[2]
    report = verify_chains(_audit(cluster, forget_config))
    assert report.ok and report.events == 3 and report.chains == 1 and not report.restarts
    assert all(p == audit_partition(FORGET_CHAIN, AUDIT_PARTITIONS) for p, _, _ in _audit(cluster, forget_config))

    # the head is the last event's hash; the forget read it after fencing and before its transaction
    heads = [v for _p, k, v in cluster.committed(forget_config.key_topic) if k == forget_head_key("audit.unit")]
    assert [parse_forget_head(v) for v in heads] == [e["hash"] for e in events]
    per_forget = " ".join(c if isinstance(c, str) else c[0] for c in cluster.log).split("init")[1:]
    assert [s.split() for s in per_forget] == [
        ["read", "head", "begin", "produce", "produce", "produce", "commit"],
        ["read", "head", "begin", "produce", "produce", "produce", "commit"],
        ["read", "head", "begin", "produce", "produce", "commit"]]
    assert {c["transactional.id"] for c in FakeProducer.configs} == {"gw-unit-forget:keys.unit"}
    everything = orjson.dumps(events) + b"".join(
        (k or b"") + (v or b"") for records in cluster.topics.values() for _p, k, v in records)
    assert ALICE.encode() not in everything and BOB.encode() not in everything
    assert all(t.startswith("tok_v1_") for e in events for t in e["subject_tokens"])


def test_a_fenced_forget_writes_nothing_and_keeps_the_keys(cluster: Cluster, forget_config: GatewayConfig,
                                                          keyring: Keyring) -> None:
    keys, token_keys = _keys_with(keyring, ALICE)
    FakeProducer.fail_commit = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    with pytest.raises(GatewayError, match="fenced it: nothing of this one was written"):
        forget_subject(forget_config, ALICE, "patient", token_keys, keys)
    assert not any(cluster.topics.values()) and len(keys) == 1
    assert "abort" not in cluster.log  # a fenced producer cannot abort; the broker aborted its transaction

    FakeProducer.fail_commit = KafkaError(KafkaError._MSG_TIMED_OUT, "delivery failed", txn_requires_abort=True)
    with pytest.raises(GatewayError, match="nothing of it is visible"):
        forget_subject(forget_config, ALICE, "patient", token_keys, keys)
    assert cluster.log[-1] == "abort" and not any(cluster.topics.values()) and len(keys) == 1

    FakeProducer.fail_commit = None  # run again: the chain still starts at genesis, intact
    event = forget_subject(forget_config, ALICE, "patient", token_keys, keys)
    assert event["prev_hash"] == GENESIS and event["keys_erased"] == 1 and len(keys) == 0
    assert verify_chains(_audit(cluster, forget_config)).ok


def test_a_lost_head_restarts_the_chain_as_a_reported_restart_not_a_break(
        cluster: Cluster, forget_config: GatewayConfig, keyring: Keyring) -> None:
    keys, token_keys = _keys_with(keyring, ALICE, BOB)
    forget_subject(forget_config, ALICE, "patient", token_keys, keys)
    # the head is lost (e.g. a key topic from before heads were stored there): the next forget restarts
    cluster.committed(forget_config.key_topic).append((HEAD_PARTITION, forget_head_key("audit.unit"), None))
    event = forget_subject(forget_config, BOB, "patient", token_keys, keys)
    assert event["prev_hash"] == GENESIS and event["chain_restart"] is True
    report = verify_chains(_audit(cluster, forget_config))
    assert report.ok and len(report.restarts) == 1
