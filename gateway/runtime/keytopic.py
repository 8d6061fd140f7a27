"""The key topic's I/O: a compacted topic of wrapped per-subject and period DEKs (see subject_keys.py
and period_keys.py).

`KeyTopic` keeps a `SubjectKeys` in step with the topic: at start it reads the topic to its end,
then a background consumer thread applies every new record within a poll interval, so a tombstone
written by `gateway forget` evicts the key from every running worker within seconds. New keys are
produced (idempotent, acks=all) and read back by that thread (read_committed) before the batch that
uses them commits (KeyTopic.publish says why: it is the workers' side of the forget's fence).

Erasure is final: no writer brings an erased key back. Workers only write new names; forget and
retention only tombstones; `rewrap_keys`, the one writer of existing names, commits only if nothing
touched its keys between its snapshot and its values. A forget fences every partition before it
scans for keys stored since its snapshot (see `forget_subject`).

`forget_subject` is the erasure: tombstones for every key of a subject under every version of its
token domain and for its consent history, and one `subject_forgotten` event on the audit topic that
names only the token(s).

The forget events form the audit chain ``keys:forget``. Its head (the last event's hash) is kept in
the key topic itself, as the record ``_audit-head/<audit topic>/keys:forget`` in partition 0 (a
bookkeeping record, not a key: see subject_keys.is_subject_key; compaction keeps its latest value).
One forget is one Kafka transaction under the stable transactional.id
``<group_id>-forget:<key topic>``:

1. init_transactions fences any earlier forget under that id (a concurrent one fails at its commit,
   a crashed one's open transaction is aborted) and waits until the previous one is complete;
2. the head is read from the key topic, read_committed (no head record: the chain starts at
   GENESIS, the event marked ``chain_restart``, which verify ignores for a new chain and reports
   as a restart, not a break, when earlier forget events exist, e.g. after an upgrade);
3. a fence record goes to every partition of the key and consent topics, and what was written since
   the snapshot up to the fences is scanned for the subject's keys and consent records;
4. tombstones, the new head record and the sealed audit event are produced and committed together,
   so readers (read_committed) see all of them or none.

`enforce_retention` is the other erasure: tombstones for every period key whose period ended more
than its retention ago (period_keys.due_keys), audited by one ``retention_enforced`` event per run
(periods and key ids, never a subject's token) on its own chain ``keys:retention``, the same way:
head ``_audit-head/<audit topic>/keys:retention``, transactional.id
``<group_id>-retention:<key topic>`` (the CLI and the worker's schedule share it, so they fence
each other and the chain has one writer at a time). A run erasing more than
MAX_KEYS_PER_TRANSACTION keys commits several such transactions, one event each, so no audit event
outgrows a Kafka record. A run with nothing due writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Producer, TopicPartition

from gateway.consent.table import ConsentTable
from gateway.consent.table import parse_key as parse_consent_key
from gateway.core.audit import GENESIS, AuditKeys, audit_partition, record_entries, seal_audit_event
from gateway.core.codec.sanitized import StoredRecord
from gateway.core.erasure import key_inventory, key_uses
from gateway.errors import GatewayError
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider
from gateway.keys.period_keys import (
    PeriodKeyName,
    PeriodKeys,
    day_label,
    due_keys,
    erase_at_ms,
    is_period_key,
    parse_period_key,
)
from gateway.keys.subject_keys import RESERVED_PREFIX, KeyRecord, SubjectKeys, is_key_record
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime import changelog, clients
from gateway.runtime.consent import STATE as CONSENT_STATE
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import AUDIT_TOPIC_CONFIG, admin_client, create_topics, partition_counts
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.keys")
KEY_TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    # compact soon after a tombstone, so an erased key's old value leaves the log quickly
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": "3600000",
    "segment.ms": "600000",
    "delete.retention.ms": "86400000",
    "min.cleanable.dirty.ratio": "0.01",
}
FORGET_CHAIN = "keys:forget"
RETENTION_CHAIN = "keys:retention"
MAX_KEYS_PER_TRANSACTION = 2_000  # about 200 KB of key ids in one audit event, far below a record's limit
HEAD_PREFIX = f"{RESERVED_PREFIX}audit-head/"
HEAD_FORMAT = 1
HEAD_PARTITION = 0  # stable when partitions are added (a key's hash partition would move)
FORGET_TRANSACTION_TIMEOUT_MS = 30_000  # bounds how long a crashed forget can hold the topics' stable end
FENCE_PREFIX = f"{RESERVED_PREFIX}fence/"
KEY_READ_BACK_TIMEOUT_S = FORGET_TRANSACTION_TIMEOUT_MS / 1000 + 30  # a forget's transaction, then a margin
REWRAP_ATTEMPTS = 3
_HASH_RE = re.compile(r"[0-9a-f]{64}")
# A test's seam: a callable run when a writer reaches the named point ("forget:fenced", "rewrap:snapshot"),
# so a test pauses one writer exactly there while another acts (no sleeps). Empty in production.
PAUSE_POINTS: dict[str, Callable[[], None]] = {}
_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def erased_topic(key_topic: str) -> str:
    """The erased-names topic of a key topic: one record per key name `gateway forget` erased, written in
    the forget's transaction; every reader of the key topic refuses a value under such a name, so
    not even a writer with Write on the key topic can bring the key back (only forget writes here)."""
    return f"{key_topic}.erased"


def ensure_key_topic(kafka: Mapping[str, str], topic: str, partitions: int) -> int:
    admin = admin_client(kafka)
    create_topics(admin, {topic: partitions}, configs={topic: KEY_TOPIC_CONFIG})
    changelog.ensure_changelog(kafka, erased_topic(topic), 1)  # compacted; waits until the metadata shows it
    count = partition_counts(admin).get(topic)
    if not count:
        raise GatewayError(f"key topic '{topic}' (setting key_topic) could not be created or read")
    return count


class KeyTopic:
    """A running worker's link to the key topic: restores it (gateway.runtime.changelog), follows
    it on a thread so a tombstone evicts its key within a poll, and stores new keys.

    Malformed records are skipped and counted (changelog.apply_records), at restore and while
    following. A follower that fails otherwise stops following and says so: `failure` names the
    error and `on_failure` is called, so the worker marks itself not ready and stops (a worker that
    goes on with a dead follower would keep an erased key for good)."""

    STATE = "keys"  # gateway_state_records_skipped_total{state}

    def __init__(self, config: GatewayConfig, keys: SubjectKeys, load_timeout_s: float = 60.0,
                 on_failure: Callable[[str], None] | None = None) -> None:
        self.topic = config.key_topic
        self.keys = keys
        self.failure: str | None = None
        self._on_failure = on_failure
        self._stop = threading.Event()
        kafka = config.kafka_client_config()
        self.partitions = ensure_key_topic(kafka, self.topic, config.partitions)
        self._producer = clients.plain_producer(kafka, **{"linger.ms": 0})
        # read_committed, as every changelog read: an aborted forget's tombstones never evict a key
        erased_from = _restore_erased(kafka, self.topic, keys, load_timeout_s)  # first: refused names stay out
        records, follow_from = changelog.restore(kafka, self.topic, timeout_s=load_timeout_s)
        skipped = changelog.apply_records(self.STATE, self.topic, ((r.key, r.value) for r in records), self._apply)
        self._erased = changelog.ChangelogFollower(kafka, erased_topic(self.topic), erased_from,
                                                   group_id=f"{config.group_id}.keys.{uuid.uuid4().hex[:8]}")
        self._follower = changelog.ChangelogFollower(kafka, self.topic, follow_from,
                                                     group_id=f"{config.group_id}.keys.{uuid.uuid4().hex[:8]}")
        self._seen = threading.Condition()
        self._positions: dict[int, int] = dict(follow_from)  # per partition: every record below it is applied
        # (began, stored, read back) of the latest publishes, monotonic: the latency trace's key stages
        self.read_backs: deque[tuple[float, float, float]] = deque(maxlen=64)
        self._thread = threading.Thread(target=self._follow, name="key-topic", daemon=True)
        self._thread.start()
        keys.publisher = self.publish
        log.info("key topic loaded", extra={"topic": self.topic, "subject_keys": len(keys), "skipped": skipped})

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or not is_key_record(key):  # not an audit chain's head
            return
        self.keys.apply(key, value)
        if value is None:
            kind = "period key erased" if is_period_key(key) else "subject key erased"
            log.info(kind, extra={"topic": self.topic})

    def _follow(self) -> None:
        try:
            while not self._stop.is_set():
                for key, value in self._erased.poll(500):
                    if value is not None:  # a tombstone there never un-erases
                        self.keys.refuse(key)
                records = self._follower.poll(500, 0.5)
                changelog.apply_records(self.STATE, self.topic, records, self._apply)
                if records:
                    positions = self._follower.positions()
                    with self._seen:
                        self._positions.update(positions)
                        self._seen.notify_all()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the follower is dead: said, never silent
            self.failure = _failure_name(exc)
            log.error("the key-topic follower died: erasures are no longer applied here", extra={
                "topic": self.topic, "error": self.failure})
            if self._on_failure is not None:
                self._on_failure(self.failure)
        finally:
            self._follower.close()
            self._erased.close()
            with self._seen:  # a publish waiting for a read-back fails now, not at its deadline
                self._seen.notify_all()

    def alive(self) -> bool:
        """Whether the follower still applies what the key topic commits."""
        return self.failure is None and self._thread.is_alive()

    def publish(self, records: list[KeyRecord]) -> None:
        """Produce, then wait until this worker's follower has read the new keys back (read_committed)
        before the transaction of any ciphertext under them commits. (The batch's slices may have put
        such ciphertexts into its open transaction already: no read_committed reader sees them, and if
        this raises, the transaction is never committed.)

        The read-back is the fence against `gateway forget`: a forget holds a transaction open on every
        partition of the key topic from the point its scan for the subject's keys starts until it
        commits, and a read_committed reader cannot pass an open transaction. A key written before that
        point is found by the forget and erased with the others; one written after it becomes readable
        only once the forget committed, so the batch that uses it commits after the forget too: a fresh
        key for events processed after the erasure, never one that outlives it while its ciphertexts
        were published before it."""
        began = time.monotonic()
        written = produce_records(self._producer, self.topic, records)
        stored = time.monotonic()
        deadline = time.monotonic() + KEY_READ_BACK_TIMEOUT_S
        with self._seen:
            while not all(self._positions.get(p, -1) > offset for p, offset in written.items()):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    raise GatewayError(f"{len(records)} new key record(s) on '{self.topic}' were written but not "
                                       f"read back within {KEY_READ_BACK_TIMEOUT_S:.0f}s (a transaction held "
                                       "open on the key topic, or its follower stopped): nothing under them is "
                                       "published")
                self._seen.wait(remaining)
        self.read_backs.append((began, stored, time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _failure_name(exc: Exception) -> str:
    """What failed, for logs and readiness: the error's type and Kafka code, never its message (which
    may quote a record)."""
    if isinstance(exc, KafkaException) and isinstance(exc.args[0], KafkaError):
        return f"{type(exc).__name__}:{exc.args[0].name()}"
    return type(exc).__name__


def produce_records(producer: Producer, topic: str, records: list[KeyRecord], timeout_s: float = 30.0,
                    delivered: set[tuple[int, int]] | None = None) -> dict[int, int]:
    """Produce and flush `records`; per partition written, the offset of the last one (and every
    (partition, offset) added to `delivered`)."""
    errors: list[str] = []
    written: dict[int, int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err.name())
        else:
            written[msg.partition()] = max(msg.offset(), written.get(msg.partition(), -1))
            if delivered is not None:
                delivered.add((msg.partition(), msg.offset()))

    for key, value in records:
        producer.produce(topic, value, key, on_delivery=on_delivery)
    if producer.flush(timeout_s) or errors:
        raise GatewayError(f"could not store {len(records)} key record(s) on '{topic}' "
                           f"({', '.join(sorted(set(errors))) or 'timeout'}): nothing under them is published")
    return written


def load_subject_keys(kafka: Mapping[str, str], topic: str, keys: SubjectKeys) -> SubjectKeys:
    """Read the whole key topic into `keys`, period keys included (for decrypt, forget and rewrap).

    `kafka`: bootstrap.servers and the security settings (GatewayConfig.kafka_client_config())."""
    snapshot_subject_keys(kafka, topic, keys)
    return keys



def snapshot_subject_keys(kafka: Mapping[str, str], topic: str, keys: SubjectKeys) -> dict[int, int]:
    """`load_subject_keys`, returning per partition the offset after the last record read: where a
    writer that acts on this snapshot (forget, rewrap) scans what was written since. Malformed records
    are skipped and counted (changelog.apply_records)."""
    records, read_to = changelog.restore(kafka, topic)
    changelog.apply_records(KeyTopic.STATE, topic, ((r.key, r.value) for r in records
                                                    if r.key is not None and is_key_record(r.key)), keys.apply)
    _restore_erased(kafka, topic, keys)  # after or before the values: a refused name ends up erased either way
    return read_to


def _restore_erased(kafka: Mapping[str, str], key_topic: str, keys: SubjectKeys, timeout_s: float = 60.0
                    ) -> dict[int, int]:
    """Apply the erased-names topic to `keys` (none yet: nothing); where a follower goes on."""
    records, read_to = changelog.restore(kafka, erased_topic(key_topic), timeout_s=timeout_s, missing_ok=True)
    for record in records:
        if record.key is not None and record.value is not None:  # a tombstone there never un-erases
            keys.refuse(record.key)
    return read_to


def load_period_keys(kafka: Mapping[str, str], topic: str) -> PeriodKeys:
    """The key topic's period keys only, without a KMS (to list or erase them: `gateway retention`)."""
    keys = PeriodKeys(None)
    changelog.apply_records(KeyTopic.STATE, topic, ((r.key, r.value) for r in read_topic(kafka, topic)
                                                    if r.key is not None and is_period_key(r.key)), keys.apply)
    return keys


def chain_head_key(audit_topic: str, chain: str) -> bytes:
    """Key of the key-topic record that holds the head of `audit_topic`'s chain `chain` (forget, retention)."""
    return f"{HEAD_PREFIX}{audit_topic}/{chain}".encode()


def chain_head_value(audit_topic: str, chain: str, last_hash: str) -> bytes:
    return orjson.dumps({"format": HEAD_FORMAT, "chain": chain, "audit_topic": audit_topic,
                         "hash": last_hash, "time": int(time.time() * 1000)})


def parse_chain_head(value: bytes | None, chain: str) -> str | None:
    """The last hash a head record holds; None for none (a tombstone) or an unreadable one."""
    if value is None:
        return None
    try:
        data = orjson.loads(value)
        last = data["hash"] if data.get("format") == HEAD_FORMAT else None
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        last = None
    if isinstance(last, str) and _HASH_RE.fullmatch(last):
        return last
    log.warning("an audit chain's head record is unreadable: the chain restarts from genesis", extra={"chain": chain})
    return None


def read_chain_head(kafka: Mapping[str, str], key_topic: str, audit_topic: str, chain: str) -> str | None:
    """The chain's last hash as the key topic holds it (committed records only), or None."""
    wanted = chain_head_key(audit_topic, chain)
    value: bytes | None = None
    for record in read_topic(kafka, key_topic, partitions={HEAD_PARTITION}):
        if record.key == wanted:
            value = record.value
    return parse_chain_head(value, chain)


def forget_head_key(audit_topic: str) -> bytes:
    """Key of the key-topic record that holds the head of `audit_topic`'s forget chain."""
    return chain_head_key(audit_topic, FORGET_CHAIN)


def forget_head_value(audit_topic: str, last_hash: str) -> bytes:
    return chain_head_value(audit_topic, FORGET_CHAIN, last_hash)


def parse_forget_head(value: bytes | None) -> str | None:
    """The last hash a forget head record holds; None for none (a tombstone) or an unreadable one."""
    return parse_chain_head(value, FORGET_CHAIN)


def read_forget_head(kafka: Mapping[str, str], key_topic: str, audit_topic: str) -> str | None:
    """The forget chain's last hash as the key topic holds it (committed records only), or None."""
    return read_chain_head(kafka, key_topic, audit_topic, FORGET_CHAIN)


def forget_transactional_id(config: GatewayConfig) -> str:
    """One id per key topic, so forgets of one chain fence each other. The ':' keeps it apart from every
    worker's ``<group>-<instance>`` (an instance id has no ':'); the group prefix matches their ACLs."""
    return f"{config.group_id}-forget:{config.key_topic}"


def retention_transactional_id(config: GatewayConfig) -> str:
    """One id per key topic for every retention run, the CLI's and the workers' (see forget_transactional_id)."""
    return f"{config.group_id}-retention:{config.key_topic}"


class NothingToForget(GatewayError):
    """`forget` found no key and no consent record of the subject: nothing was written."""


def forget_subject(config: GatewayConfig, subject: str, domain: str, token_keys: dict[str, bytes],
                   keys: SubjectKeys, since: Mapping[int, int] | None = None) -> dict[str, Any]:
    """`forget_subject_at` without the audit record's position."""
    return forget_subject_at(config, subject, domain, token_keys, keys, since)[0]


def forget_subject_at(config: GatewayConfig, subject: str, domain: str, token_keys: dict[str, bytes],
                      keys: SubjectKeys, since: Mapping[int, int] | None = None
                      ) -> tuple[dict[str, Any], tuple[str, int, int]]:
    """Tombstone every key of `subject` (under each token version of `domain`), its per-subject period keys
    included, and its consent history on the consent topic, and audit it, in one transaction with the
    forget chain's new head (see the module's docstring); return the event. Raises NothingToForget,
    writing nothing, when the subject has neither.

    `keys` is a snapshot of the key topic and `since` where it ended (snapshot_subject_keys; None: the
    topic is scanned from its beginning). Inside the transaction, before anything is erased, a fence
    record goes to every partition of the key topic and of the consent topic; then everything written
    between the snapshots and the fences is scanned, so a key a worker stored for the subject meanwhile
    (or a consent change it stored) is erased too. A worker waits until it can read a new key back,
    which it cannot past the open fences (KeyTopic.publish), so a key it stores later is a fresh one
    for events processed after the forget.

    The event lists the subject's key inventory (gateway.core.erasure.key_inventory: key ids, scopes and
    topics from the audit, read before the transaction); returned with the event's (audit topic,
    partition, offset), which its receipt names."""
    tokens = [DomainTokenizer(domain, version, key).token(subject) for version, key in sorted(token_keys.items())]
    wanted = {(domain, token) for token in tokens}
    names = {n for token in tokens for n in (*keys.keys_of(domain, token), *keys.periods.keys_of(domain, token))}
    kafka = config.kafka_client_config()
    changelog.ensure_changelog(kafka, erased_topic(config.key_topic), 1)
    consent, consent_since = _consent_snapshot(config)
    consent_keys = {k for token in tokens for k in consent.keys_of(domain, token)}
    audit_partitions = _audit_partitions(config)
    sealing = audit_keys(config)  # before the transaction: a keyring without audit keys erases nothing
    entries = record_entries(r.value for r in read_topic(kafka, config.audit_topic))  # the keys' uses
    transactional_id = forget_transactional_id(config)
    producer = _chain_producer(config, transactional_id, "forget")  # from here on this one owns the chain
    prev = read_forget_head(kafka, config.key_topic, config.audit_topic)
    try:
        producer.begin_transaction()
        fences = _fence(producer, config.key_topic, _partition_count(config, config.key_topic), FORGET_CHAIN)
        consent_fences = {} if consent_since is None else _fence(
            producer, config.consent_topic, _partition_count(config, config.consent_topic), FORGET_CHAIN)
        _pause("forget:fenced")
        names |= {r.key.decode() for r in _scan(kafka, config.key_topic, since or {}, fences)
                  if r.key is not None and r.value is not None and _subject_of(r.key.decode()) in wanted}
        consent_keys |= {r.key for r in _scan(kafka, config.consent_topic, consent_since or {}, consent_fences)
                         if r.key is not None and r.value is not None
                         and (parsed := parse_consent_key(r.key)) is not None and parsed[:2] in wanted}
        if not names and not consent_keys:
            raise NothingToForget(
                f"no key and no consent record of this subject in token domain '{domain}' on '{config.key_topic}' "
                f"and '{config.consent_topic}': nothing was erased. Check the identifier's spelling, --domain and "
                "the domain's normalizer (--schemas or --normalizer); a subject already forgotten has nothing left")
        for key in sorted(consent_keys):
            producer.produce(config.consent_topic, None, key)
        erased_value = orjson.dumps({"format": HEAD_FORMAT, "erased_by": "forget", "time": int(time.time() * 1000)})
        for name in sorted(names):
            producer.produce(erased_topic(config.key_topic), erased_value, name.encode())
    except KafkaException as exc:
        raise _transaction_failed(producer, exc.args[0], transactional_id, "forget") from None
    except GatewayError:
        _abort_quietly(producer)
        raise
    ordered = sorted(names)
    key_ids = [forgotten_key_id(n) for n in ordered]
    inventory = key_inventory(key_ids, key_uses(entries, key_ids))
    sealed = seal_audit_event(_forget_body(config, domain, tokens, ordered, len(consent_keys),
                                           restart=prev is None) | {"keys": [k.to_json() for k in inventory]},
                              prev or GENESIS, sealing)
    partition, offset = _erase_and_audit(producer, config, FORGET_CHAIN, ordered, sealed, audit_partitions,
                                         transactional_id, "forget", begun=True)
    for name in ordered:
        keys.apply(name.encode(), None)
    return sealed, (config.audit_topic, partition, offset)


def _consent_snapshot(config: GatewayConfig) -> tuple[ConsentTable, dict[int, int] | None]:
    """The consent topic's table and where its read ended (None: there is no consent topic)."""
    table = ConsentTable()
    kafka = config.kafka_client_config()
    if config.consent_topic not in partition_counts(admin_client(kafka)):
        return table, None
    records, read_to = changelog.restore(kafka, config.consent_topic)
    changelog.apply_records(CONSENT_STATE, config.consent_topic, ((r.key, r.value) for r in records), table.apply)
    return table, read_to


def _subject_of(name: str) -> tuple[str, str] | None:
    """(domain, token) of a subject key or per-subject period key; None for any other record."""
    period = parse_period_key(name)
    if period is not None:
        return (period.domain, period.token) if period.domain else None
    if not is_key_record(name) or is_period_key(name):
        return None
    parts = name.split("/")
    return (parts[0], parts[1]) if len(parts) == 3 else None


def _pause(point: str) -> None:
    hook = PAUSE_POINTS.get(point)
    if hook is not None:
        hook()


def _partition_count(config: GatewayConfig, topic: str) -> int:
    count = partition_counts(admin_client(config.kafka_client_config())).get(topic)
    if not count:
        raise GatewayError(f"topic '{topic}' does not exist (or has no partitions): nothing was erased")
    return count


def _fence(producer: Producer, topic: str, partitions: int, chain: str) -> dict[int, int]:
    """Inside the producer's open transaction: one bookkeeping record per partition of the key topic
    (compaction keeps one per partition); their offsets. Until the transaction ends, no read_committed
    reader of the key topic gets past them."""
    offsets: dict[int, int] = {}
    errors: list[KafkaError] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            offsets[msg.partition()] = msg.offset()

    value = orjson.dumps({"format": HEAD_FORMAT, "chain": chain, "time": int(time.time() * 1000)})
    for partition in range(partitions):
        producer.produce(topic, value, f"{FENCE_PREFIX}{chain}".encode(), partition=partition,
                         on_delivery=on_delivery)
    producer.flush(30)
    if errors:
        raise KafkaException(errors[0])
    if len(offsets) != partitions:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "fence records not delivered"))
    return offsets


def _scan(kafka: Mapping[str, str], topic: str, since: Mapping[int, int], until: Mapping[int, int],
          timeout_s: float = 60.0) -> list[StoredRecord]:
    """The records of `topic` from `since` (default: the beginning) up to, not including, `until`, per
    partition of `until`, read_uncommitted: what an open (or aborted) transaction wrote is seen too, so
    nothing written before `until` escapes, whether or not it is committed yet. `until` must be the
    offset of a record that exists (a fence, or the caller's own record)."""
    pending = {p: end for p, end in until.items() if since.get(p, 0) < end}
    out: list[StoredRecord] = []
    if not pending:
        return out
    consumer = clients.reader(dict(kafka), "privacy-gateway.key-scan",
                              **{"isolation.level": "read_uncommitted", "enable.partition.eof": False})
    try:
        consumer.assign([TopicPartition(topic, p, since.get(p, OFFSET_BEGINNING)) for p in sorted(pending)])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise GatewayError(f"scanning '{topic}' up to the fence did not finish within {timeout_s:.0f}s: "
                                   "nothing was written")
            for msg in clients.take(consumer, 1000, 0.5):
                partition = msg.partition()
                if msg.error() is not None or partition not in pending:
                    continue
                if msg.offset() < pending[partition]:
                    out.append(StoredRecord(msg.topic(), partition, msg.offset(), msg.key(), msg.value(), {}))
                else:
                    del pending[partition]
        return out
    finally:
        consumer.close()


def enforce_retention(config: GatewayConfig, periods: PeriodKeys, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Tombstone every period key of `periods` whose period ended more than its retention ago, and audit it
    on the retention chain (see the module's docstring); return the audit events (none: nothing was due).

    Running it twice is harmless: a key already erased is no longer in `periods` (a running worker's
    follower, or the key topic read again), so a second run finds nothing and writes nothing."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    due = due_keys(periods.names(), now_ms)
    if not due:
        return []
    kafka = config.kafka_client_config()
    audit_partitions = _audit_partitions(config)
    transactional_id = retention_transactional_id(config)
    producer = _chain_producer(config, transactional_id, "retention run")
    prev = read_chain_head(kafka, config.key_topic, config.audit_topic, RETENTION_CHAIN)
    restart = prev is None
    keys = audit_keys(config)
    events: list[dict[str, Any]] = []
    for start in range(0, len(due), MAX_KEYS_PER_TRANSACTION):
        chunk = due[start:start + MAX_KEYS_PER_TRANSACTION]
        names = [p.name for p in chunk]
        sealed = seal_audit_event(_retention_body(config, chunk, now_ms, restart), prev or GENESIS, keys)
        _erase_and_audit(producer, config, RETENTION_CHAIN, names, sealed, audit_partitions, transactional_id,
                         "retention run")
        for name in names:
            periods.apply(name.encode(), None)
        events.append(sealed)
        prev, restart = sealed["hash"], False  # this producer still owns the chain: a rival would have fenced it
    return events


def audit_keys(config: GatewayConfig) -> AuditKeys:
    """The audit MAC keys of the keyring at config.keyring (the workers'): forget and retention events
    are authenticated like the workers' records."""
    return AuditKeys(*Keyring.open(config.keyring, create=False).audit_keys())


def _chain_producer(config: GatewayConfig, transactional_id: str, what: str) -> Producer:
    """A transactional producer whose init_transactions fenced every earlier writer of its chain."""
    producer = clients.transactional_producer(config, transactional_id, **{
        "acks": "all", "linger.ms": 0, "transaction.timeout.ms": FORGET_TRANSACTION_TIMEOUT_MS})
    try:
        producer.init_transactions(60)
    except KafkaException as exc:
        raise GatewayError(f"cannot start the {what}'s transaction (transactional.id '{transactional_id}'): "
                           f"{exc.args[0].str()}; nothing was written") from None
    return producer


def _erase_and_audit(producer: Producer, config: GatewayConfig, chain: str, names: list[str],
                     sealed: dict[str, Any], audit_partitions: int, transactional_id: str, what: str,
                     begun: bool = False) -> tuple[int, int]:
    """One transaction (`begun`: already open): the tombstones, the chain's new head in the key topic and
    the sealed audit event; the event's (audit partition, offset)."""
    where: list[tuple[int, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is None:
            where.append((msg.partition(), msg.offset()))

    try:
        if not begun:
            producer.begin_transaction()
        for name in names:
            producer.produce(config.key_topic, None, name.encode())
        producer.produce(config.key_topic, chain_head_value(config.audit_topic, chain, sealed["hash"]),
                         chain_head_key(config.audit_topic, chain), partition=HEAD_PARTITION)
        producer.produce(config.audit_topic, orjson.dumps(sealed), chain.encode(),
                         partition=audit_partition(chain, audit_partitions), on_delivery=on_delivery)
        _commit(producer, 60)
    except KafkaException as exc:
        raise _transaction_failed(producer, exc.args[0], transactional_id, what) from None
    if not where:  # commit_transaction flushed: a committed record was delivered
        raise GatewayError(f"the {what}'s audit event on '{config.audit_topic}' was committed without a delivery "
                           "report: its position is unknown")
    return where[0]


def _audit_partitions(config: GatewayConfig) -> int:
    admin = admin_client(config.kafka_client_config())
    create_topics(admin, {config.audit_topic: config.partitions}, configs={config.audit_topic: AUDIT_TOPIC_CONFIG})
    return partition_counts(admin)[config.audit_topic]


def _forget_body(config: GatewayConfig, domain: str, tokens: list[str], names: list[str], consent_records: int,
                 restart: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "subject_forgotten",
        "chain": FORGET_CHAIN,
        "outcome": "subject_forgotten",
        "domain": domain,
        "subject_tokens": tokens,  # the subject's tokens, never the subject
        "keys_erased": len(names),
        "key_ids": [forgotten_key_id(n) for n in names],
        "consent_records_erased": consent_records,
        "key_topic": config.key_topic,
        "instance": config.instance_id,
        "time": int(time.time() * 1000),
    }
    if restart:  # no head in the key topic: a new chain, or one whose head was lost
        body["chain_restart"] = True
    return body


def forgotten_key_id(name: str) -> str:
    """The audit's id of an erased subject key ('subject:<domain>/<dek id>') or per-subject period key
    ('period:<days>/<day>/subject:<domain>/<dek id>'): never the token."""
    period = parse_period_key(name)
    if period is not None:
        return period.key_id
    return f"subject:{name.split('/', 1)[0]}/{name.rsplit('/', 1)[1]}"



def _retention_body(config: GatewayConfig, erased: list[PeriodKeyName], now_ms: int, restart: bool) -> dict[str, Any]:
    """The audit event of one retention transaction: per period (retention, day, scope) its key ids."""
    periods: dict[tuple[int, int, str], list[str]] = {}
    for key in erased:
        periods.setdefault((key.days, key.day, key.domain), []).append(key.key_id)
    body: dict[str, Any] = {
        "type": "retention_enforced",
        "chain": RETENTION_CHAIN,
        "outcome": "keys_erased",
        "periods": [{"retention_days": days, "period": day_label(day),
                     "scope": f"subject:{domain}" if domain else "shared",
                     "due_since": _iso_ms(erase_at_ms(days, day)),
                     "keys_erased": len(ids), "key_ids": sorted(ids)}
                    for (days, day, domain), ids in sorted(periods.items(), key=lambda p: (p[0][1], p[0][0], p[0][2]))],
        "keys_erased": len(erased),
        "key_topic": config.key_topic,
        "instance": config.instance_id,
        "time": now_ms,
    }
    if restart:  # no head in the key topic: a new chain, or one whose head was lost
        body["chain_restart"] = True
    return body


def _iso_ms(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _commit(producer: Producer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            producer.commit_transaction(max(1.0, deadline - time.monotonic()))
            return
        except KafkaException as exc:
            if not exc.args[0].retriable() or time.monotonic() >= deadline:
                raise


def _abort_quietly(producer: Producer) -> None:
    """Abort an open transaction now rather than leave it to its timeout (readers wait at it meanwhile)."""
    with contextlib.suppress(KafkaException):
        producer.abort_transaction(30)


def _transaction_failed(producer: Producer, err: KafkaError, transactional_id: str,
                        what: str = "forget") -> GatewayError:
    if err.txn_requires_abort():
        with contextlib.suppress(KafkaException):
            producer.abort_transaction(30)
    if err.code() in _FENCED:
        other = {"forget": "'gateway forget'", "rewrap": "'gateway keys rewrap'"}.get(
            what, "retention run (a worker's or 'gateway retention enforce')")
        return GatewayError(f"another {other} (transactional.id '{transactional_id}') started while this "
                            "one ran and fenced it: nothing of this one was written; run it again")
    if err.retriable():
        return GatewayError(f"the {what}'s commit did not complete ({err.str()}): it is all or nothing (tombstones, "
                            "chain head and audit event in one transaction); running it again is harmless")
    return GatewayError(f"the {what} could not be written ({err.str()}): nothing of it is visible to readers "
                        "(one transaction: tombstones, chain head and audit event); run it again")


def rewrap_transactional_id(config: GatewayConfig) -> str:
    """One id per key topic for every `gateway keys rewrap` (see forget_transactional_id)."""
    return f"{config.group_id}-rewrap:{config.key_topic}"


def rewrap_keys(config: GatewayConfig, kms: KmsProvider) -> tuple[int, int]:
    """Re-store every live key not wrapped under the active KEK under it; (rewrapped, live keys).

    A rewrap writes values for names that already exist, so it is the one writer that could bring an
    erased key back: a tombstone written between its snapshot and its values would be overwritten.
    So its values go out in a transaction, and before it commits, everything written to those
    partitions between the snapshot and its own values is scanned (read_uncommitted, so a forget or
    retention run still open is seen as well): if any record names one of its keys (a tombstone, or
    another value), the transaction is aborted and the rewrap starts again from a new snapshot. A
    tombstone written after its values simply erases them. Rewraps fence each other (one transactional id)."""
    kafka = config.kafka_client_config()
    producer: Producer | None = None
    transactional_id = rewrap_transactional_id(config)
    own: set[tuple[int, int]] = set()  # this rewrap's records, its aborted attempts' included
    for _attempt in range(REWRAP_ATTEMPTS):
        keys = SubjectKeys(kms)
        since = snapshot_subject_keys(kafka, config.key_topic, keys)
        records = keys.rewrap() + keys.periods.rewrap()
        live = len(keys) + len(keys.periods)
        if not records:
            return 0, live
        _pause("rewrap:snapshot")
        if producer is None:
            producer = _chain_producer(config, transactional_id, "rewrap")
        try:
            producer.begin_transaction()
            written = produce_records(producer, config.key_topic, records, delivered=own)
            ours = {key for key, _ in records}
            raced = {r.key for r in _scan(kafka, config.key_topic, since, written)
                     if r.key in ours and (r.partition, r.offset) not in own}
            if raced:
                producer.abort_transaction(30)
                log.info("keys changed during the rewrap: it starts again", extra={"keys": len(raced)})
                continue
            _commit(producer, 60)
        except KafkaException as exc:
            raise _transaction_failed(producer, exc.args[0], transactional_id, "rewrap") from None
        except GatewayError:
            _abort_quietly(producer)
            raise
        return len(records), live
    raise GatewayError(f"the key topic '{config.key_topic}' kept changing under the rewrap ({REWRAP_ATTEMPTS} "
                       "attempts, each aborted before it could overwrite an erased key): nothing was written; "
                       "run it again")
