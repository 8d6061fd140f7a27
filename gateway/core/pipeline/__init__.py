"""One batch of raw events in, sanitized records, dead letters and audit events out.

No Kafka here: the worker feeds batches and publishes what comes back, so unit tests can drive
the whole decision path. Every input event yields exactly one of (sanitized record, dead letter)
plus exactly one audit entry, whatever the input holds; a batch's entries of one source partition
go out as one audit record (gateway.core.audit).
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import fastavro
import orjson

from gateway.consent.table import ConsentChange, ConsentEventError, ConsentTable, parse_raw_consent
from gateway.core.audit import (
    AuditKeys,
    ChainHeads,
    audit_partition,
    batch_body,
    canonical,
    chain_key,
    seal_audit_value,
)
from gateway.core.codec.encoding import SOURCE_HEADER as SOURCE_HEADER
from gateway.core.codec.encoding import Encoding, SchemaFormat, frame_confluent, output_headers
from gateway.core.codec.evolution import UNANNOTATED_ACTION, single_object_header
from gateway.core.codec.formats import RawDecoder, codec_for
from gateway.core.codec.raw import NO_FIELDS
from gateway.core.codec.writer import fast_record_encoder, json_bytes
from gateway.core.deadletter import QuarantineSealer
from gateway.core.operators.base import SanitizeResult
from gateway.core.pipeline.audit_entry import consent_entry, event_entry, withhold
from gateway.core.pipeline.dead_letters import DeadLetters, SubjectReader
from gateway.core.pipeline.events import RawEvent as RawEvent  # re-exported: the runtime builds these
from gateway.core.pipeline.outcome import (
    CONSENT_GRANTED,
    CONSENT_REVOKED,
    INTERNAL_ERROR,
    SANITIZED,
    BatchCounts,
    Outcome,
    PurposeDecision,
)
from gateway.core.pipeline.steps import (
    QUALITY_HEADER as QUALITY_HEADER,  # re-exported: tests and readers take it from here
)
from gateway.core.pipeline.steps import (
    leak_hits,
    leak_rejection,
    quality_failures,
    quality_published,
    quality_rejection,
)
from gateway.core.policy.plan import Plan, Purpose
from gateway.core.policy.timestamp import PATH as TIMESTAMP_PATH
from gateway.core.policy.timestamp import TimestampMode
from gateway.core.quality.dedup import DuplicateFilter, fingerprint_key, pack, parse_log_key
from gateway.core.quality.gate import QualityGate
from gateway.core.sanitizer import RecordSanitizer
from gateway.core.sentinel import LeakSentinel
from gateway.errors import GatewayError, RejectedEvent
from gateway.event_time import check_event_time
from gateway.keys.envelope import DekCache
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider
from gateway.keys.providers.local import keyring_kms
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.outputs import OutRecord
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.core.pipeline")
TIMESTAMP_HEADER = "gateway-timestamp"  # on an output whose record timestamp is not the raw event's: its treatment
DEDUP_DOMAIN = "_quality-dedup"  # the keyring's token domain whose first key derives the fingerprint key
AUDIT_ENTRIES_PER_RECORD = 500  # a batch's entries of one chain per audit record, at most (bounds its size)


def source_ref(topic: str, partition: int, offset: int) -> bytes:
    """The `gateway-source` header value (topic names hold no '/')."""
    return f"{topic}/{partition}/{offset}".encode()


def parse_source_ref(value: bytes) -> tuple[str, int, int] | None:
    topic, _, rest = value.decode(errors="replace").partition("/")
    partition, _, offset = rest.partition("/")
    if not (topic and partition.isdigit() and offset.isdigit()):
        return None
    return topic, int(partition), int(offset)


class Held(NamedTuple):
    """An event of an enforced window, processed but not yet published (its audit not yet sealed)."""

    event: RawEvent
    output: OutRecord
    audit: dict[str, Any]
    chain: AuditChain
    risk_class: int | None
    fingerprint: int | None


class Checked(NamedTuple):
    """A source event after the batch's first pass: decoded, its event time checked, its quality rules
    run (failed, reject and fingerprint None without a quality gate)."""

    record: dict[str, Any]
    encoding: str
    unannotated: tuple[str, ...]
    failed: Sequence[int] | None
    reject: int | None
    fingerprint: int | None


class AuditChain(NamedTuple):
    """A source partition's audit chain: its key, that key as record key bytes, its audit partition."""

    key: str
    key_bytes: bytes
    partition: int


@dataclass
class BatchResult:
    records: list[OutRecord]
    counts: BatchCounts


def dedup_topic(config: GatewayConfig) -> str:
    """The log of event-id fingerprints the sanitize workers of a group share (duplicate detection)."""
    return f"{config.group_id}.quality-dedup"


def max_message_bytes(config: GatewayConfig) -> int:
    """Producer limit: a sealed dead letter of a max-size event (base64 + JSON) must fit."""
    return max(1_000_000, config.max_record_bytes * 4 // 3 + 131_072)


def quality_key(topic: str, partition: int) -> bytes:
    """The quality topic's record key: one per source partition (its windows in order)."""
    return f"{topic}/{partition}".encode()


class TopicStage:
    """Everything compiled for one source topic: decoder, sanitizer, encoders, static audit parts."""

    def __init__(self, plan: Plan, sanitizer: RecordSanitizer, config: GatewayConfig,
                 dedup_key: bytes | None = None) -> None:
        self.plan = plan
        self.quality: QualityGate | None = None
        if plan.quality is not None:
            duplicates = plan.quality.duplicates
            dedup = DuplicateFilter(duplicates.horizon_ms, duplicates.max_ids) if duplicates is not None else None
            self.quality = QualityGate(plan.quality, plan.name, plan.policy_hash, plan.source_topic,
                                       plan.event_id_field, dedup, dedup_key)
        self.sentinel = LeakSentinel(plan, config.leak_sample_rate)
        # producer-controlled times that would move a window, mark or period (gateway/event_time.py)
        self.time_fields = tuple(sorted({a.time_field for a in plan.aggregates if a.time_field}))
        self.max_skew_ms = config.max_skew_s * 1000
        codec = codec_for(plan.schema.format)  # the schema's format family decodes its events
        self.decoder: RawDecoder = codec.decoder(plan.schema, plan.input_mode, plan.schema_id,
                                                 config.max_record_bytes, plan.writers_by_id,
                                                 plan.writers_by_fingerprint)
        # a non-Avro family writes its sanitized records in its own language (Avro's writer is below)
        self._native_encoder = (None if plan.schema.format is SchemaFormat.AVRO
                                else codec.encoder(plan.schema, plan.sanitized_schema))
        self.sanitizer = sanitizer
        # the record timestamp's treatment, when it is not the raw event's (gateway/core/policy/timestamp.py)
        kept = plan.timestamp.mode is TimestampMode.KEEP
        timestamp = [] if kept else [(TIMESTAMP_HEADER, plan.timestamp.label.encode())]
        self.headers = {
            enc: [*output_headers(plan.sanitized_schema["name"], enc, plan.policy_hash), *timestamp]
            for enc in Encoding
        }
        self._output = None if plan.output == "same" else plan.output
        self._writer_schema = plan.sanitized_parsed
        # the sanitized record's writer generated by gateway.core.codec.raw (about 0.47x fastavro's writer's time
        # for the shipped schemas), or None: then fastavro's writer encodes every record
        self._fast_writer = fast_record_encoder(plan.sanitized_parsed)
        self.views: list[PurposeView] = []  # the plan's purposes (set by the pipeline)
        framed = plan.sanitized_schema_id is not None and plan.sanitized_schema_id < 2**32
        self._confluent_header = frame_confluent(plan.sanitized_schema_id, b"") if framed else None
        self._single_object_header = single_object_header(plan.sanitized_schema)
        # audit body parts fixed per topic, serialized once: canonical JSON (sorted keys) that orjson
        # splices in verbatim as Fragments, so the canonical body is the same bytes as with the dicts
        self.audit_schema = plan.name
        self.field_actions = plan.field_actions if not timestamp else {**plan.field_actions,
                                                                         TIMESTAMP_PATH: plan.timestamp.label}
        self.audit_actions = orjson.Fragment(canonical(self.field_actions))
        # events of a writer version with fields the policy does not name: those fields dropped, and said
        self._writer_actions: dict[tuple[str, ...], orjson.Fragment] = {}
        self.audit_sanitized_output = orjson.Fragment(canonical({"topic": plan.sanitized_topic}))
        self.sanitized_topic, self.event_id_field = plan.sanitized_topic, plan.event_id_field
        self._key_ids: tuple[str | None, orjson.Fragment] | None = None  # the last DEK's, serialized once
        self.audit_dlq_output = orjson.Fragment(canonical({"topic": plan.dlq_topic}))

    def transform(self, value: bytes | None, max_output_bytes: int,
                  timestamp_ms: int = 0, source: str = "") -> tuple[bytes, str, SanitizeResult]:
        """One event's whole transform: decode and validate, sanitize, encode, check the size.
        `timestamp_ms` is the event's time (operators such as an age band read it).

        Returns (output value, its encoding, the sanitize result); raises RejectedEvent.
        """
        record, encoding, _ = self.decoder.decode_event(value)
        return self.finish(record, encoding, max_output_bytes, timestamp_ms, source)

    def key_ids(self, dek_key_id: str | None) -> orjson.Fragment:
        """The audit key_ids of an event encrypted under the shared DEK `dek_key_id` alone (or none):
        the token keys and that DEK, serialized once per DEK (a DEK serves many events)."""
        cached = self._key_ids
        if cached is None or cached[0] != dek_key_id:
            ids = [*self.sanitizer.token_key_ids, *filter(None, [dek_key_id])]
            cached = self._key_ids = (dek_key_id, orjson.Fragment(orjson.dumps(ids)))
        return cached[1]

    def actions_for(self, unannotated: tuple[str, ...]) -> orjson.Fragment:
        """The audit actions of an event whose writer schema had `unannotated` fields (built once per writer)."""
        if not unannotated:
            return self.audit_actions
        actions = self._writer_actions.get(unannotated)
        if actions is None:
            actions = orjson.Fragment(canonical({**self.field_actions,
                                                 **dict.fromkeys(unannotated, UNANNOTATED_ACTION)}))
            self._writer_actions[unannotated] = actions
        return actions

    def finish(self, record: dict[str, Any], encoding: str, max_output_bytes: int,
               timestamp_ms: int, source: str = "", key: bytes | None = None,
               headers: Sequence[tuple[str, Any]] | None = None) -> tuple[bytes, str, SanitizeResult]:
        """Sanitize and encode a decoded event (transform after the decode). `source`: its `gateway-source`
        value, which binds its ciphertexts to it where the view has no event id (format v5). `key`,
        `headers`: the raw record's, dropped unless the policy names them (core/policy/key_headers.py)."""
        result = self.sanitizer.sanitize(record, timestamp_ms, source, key, headers)
        out, out_encoding = self.encode(result.record, encoding)
        size = len(out)
        if result.out_headers:  # the named headers and key count towards the producer's limit too
            size += sum(len(name) + len(value or b"") for name, value in result.out_headers)
        if size > max_output_bytes:
            raise RejectedEvent("output_too_large", f"the sanitized record is {size} bytes, above "
                                f"the producer limit of {max_output_bytes}")
        return out, out_encoding, result

    def encode(self, record: dict[str, Any], encoding: str) -> tuple[bytes, str]:
        if self._output is not None:
            encoding = self._output
        if self._native_encoder is not None:  # Confluent-framed in the producer's family
            if self._confluent_header is None:  # a purpose's view has no registry id: plain JSON
                return json_bytes(record), Encoding.JSON
            return self._confluent_header + self._native_encoder(record), encoding
        if encoding == Encoding.JSON:
            return json_bytes(record), Encoding.JSON
        header = b""
        if encoding == Encoding.CONFLUENT:
            if self._confluent_header is None:  # a purpose's view has no registry id: bare Avro
                encoding = Encoding.AVRO
            else:
                header = self._confluent_header
        elif encoding == Encoding.SINGLE_OBJECT:
            header = self._single_object_header
        if self._fast_writer is not None:
            try:
                return header + self._fast_writer(record), encoding
            except Exception:  # noqa: S110 - a value the shortcut does not take: fastavro's writer decides
                pass
        buffer = io.BytesIO()
        buffer.write(header)
        fastavro.schemaless_writer(buffer, self._writer_schema, record)
        return buffer.getvalue(), encoding


class PurposeView(NamedTuple):
    """A purpose of a plan and the stage that sanitizes and encodes its view."""

    purpose: Purpose
    stage: TopicStage


class ConsentIntake:
    """Raw consent events (the consent input topic) become consent changes under the subject's token,
    tokenized with the subject's domain and normalizer as the events of its policies are."""

    def __init__(self, config: GatewayConfig, stages: dict[str, TopicStage]) -> None:
        self.topic = config.consent_input_topic
        self.consent_topic = config.consent_topic
        self.dlq_topic = f"{self.topic}.dlq"
        self.tokens: dict[str, Any] = {}  # domain -> the subject's token function
        self.purposes: dict[str, set[str]] = {}  # domain -> its consent purposes
        for stage in stages.values():
            plan = stage.plan
            if plan.consent_purposes and plan.subject_domain is not None:
                self.tokens.setdefault(plan.subject_domain, stage.sanitizer.subject_token)
                self.purposes.setdefault(plan.subject_domain, set()).update(plan.consent_purposes)
        self.default_domain = next(iter(self.purposes)) if len(self.purposes) == 1 else None
        self.audit_output = orjson.Fragment(canonical({"topic": self.consent_topic}))
        self.audit_dlq_output = orjson.Fragment(canonical({"topic": self.dlq_topic}))

    def change(self, event: RawEvent) -> ConsentChange:
        """The stored change of one raw consent event; raises ConsentEventError (never with a value)."""
        raw = parse_raw_consent(event.value, event.timestamp_ms, self.purposes, self.default_domain)
        try:
            token = self.tokens[raw.domain](raw.subject)
        except RejectedEvent as exc:
            raise ConsentEventError(exc.reason, exc.message) from None
        where = source_ref(event.topic, event.partition, event.offset).decode()
        return ConsentChange(raw.domain, token, raw.purpose, raw.at_ms, raw.granted, where)


class Pipeline:
    """Turns batches of raw events into output records. Holds the audit chain heads."""

    def __init__(self, plans: Sequence[Plan], keyring: Keyring, config: GatewayConfig,
                 audit_partitions: int, tokenizers: Mapping[str, DomainTokenizer],
                 kms: KmsProvider | None = None, subject_keys: SubjectKeys | None = None) -> None:
        """`tokenizers` (token domain -> its tokenizer under the active key) are given, as the KMS is:
        gateway.app builds them from the keyring (`app.tokenizers`); the core never builds them."""
        self.config = config
        self.audit_topic = config.audit_topic
        self.audit_partitions = audit_partitions
        self.instance = config.instance_id
        views = [purpose.plan for p in plans for purpose in p.purposes]  # each purpose's view is a plan too
        missing = sorted({d for p in (*plans, *views) for d in p.token_domains} - set(tokenizers))
        if missing:
            raise GatewayError(f"no tokenizer given for the token domains {missing} (gateway.app.tokenizers)")
        # the KMS is given (gateway.app builds and checks it at start-up); none given: the keyring, when it is the KMS
        self.kms = kms if kms is not None else keyring_kms(config.kms_settings(), keyring)
        self.dek_cache = DekCache(self.kms, config.dek_max_age_s, config.dek_max_uses)
        # per-subject keys (crypto-shredding): the sanitize job keeps them in step with the key topic
        if subject_keys is None and any(p.per_subject for p in (*plans, *views)):
            raise GatewayError("a policy encrypts per subject: the pipeline needs the subject keys "
                               "(gateway.runtime.keytopic follows the key topic into them)")
        self.subject_keys = subject_keys
        dedup_key = None
        if any(p.quality is not None and p.quality.duplicates is not None for p in plans):
            keyring.ensure_token_domains({DEDUP_DOMAIN})
            _, dedup_keys = keyring.token_keys(DEDUP_DOMAIN)
            dedup_key = fingerprint_key(dedup_keys[min(dedup_keys, key=lambda v: (len(v), v))])  # never rotates
        self.stages = {p.source_topic: TopicStage(p, RecordSanitizer(p, tokenizers, self.dek_cache,
                                                                      config.max_field_bytes, self.subject_keys),
                                  config, dedup_key)
                       for p in plans}
        self.has_quality = any(s.quality is not None for s in self.stages.values())  # fixed: checked per batch
        for stage in self.stages.values():
            stage.views = [PurposeView(purpose, TopicStage(purpose.plan, RecordSanitizer(
                purpose.plan, tokenizers, self.dek_cache, config.max_field_bytes, self.subject_keys), config))
                for purpose in stage.plan.purposes]
        # consent: the table the runtime keeps in step with the consent topic (None: nobody has consented)
        self.consent: ConsentTable | None = None
        self.consent_intake = ConsentIntake(config, self.stages) if config.consent_input_topic else None
        self.quality_topic = config.quality_topic
        self.dedup_topic = dedup_topic(config)
        # seals under the keyring's newest quarantine key, per-process seal keys within dek_max_uses
        self.sealer = QuarantineSealer.of_keyring(keyring, subject_keys, config.dek_max_uses)
        # dead letters whose subject can be read are sealed under the subject's key (erased by forget):
        # per source topic (subject field, token domain, the subject field's own value -> token, token key id)
        self._subject_readers: dict[str, SubjectReader] = {}
        for topic, stage in self.stages.items():
            plan = stage.plan
            if plan.subject_field is None or plan.subject_domain is None:
                continue
            if subject_keys is None:
                log.warning("no subject keys: dead letters are sealed under the quarantine key only, out of "
                            "gateway forget's reach", extra={"topic": topic})
                continue
            fp = next(f for f in plan.record.fields if f.name == plan.subject_field)
            self._subject_readers[topic] = SubjectReader(plan.subject_field, plan.subject_domain,
                                                         fp.operator.subject_value(fp, stage.sanitizer),
                                                         stage.sanitizer.tokenizer(plan.subject_domain).key_id)
        self.dead_letters = DeadLetters(self.sealer, self._subject_readers, config.max_record_bytes, self.instance)
        self.chains = ChainHeads()
        self.audit_keys = AuditKeys(*keyring.audit_keys())  # records are MACed: topic write access cannot forge
        self._audit_chains: dict[tuple[str, int], AuditChain] = {}  # per source partition, built once
        self._entries: dict[AuditChain, list[dict[str, Any]]] = {}  # this batch's audit entries, per chain
        self._slicing = False  # a batch's slices are being processed: their entries wait for finish_batch
        self.max_output_bytes = max_message_bytes(config)

    @property
    def source_topics(self) -> list[str]:
        intake = [self.consent_intake.topic] if self.consent_intake is not None else []
        return [*self.stages, *intake]

    @property
    def asks_consent(self) -> bool:
        return any(s.plan.consent_purposes for s in self.stages.values())

    def resume_chain(self, topic: str, partition: int, head: str | None, fresh: bool) -> None:
        """Continue a source partition's audit chain from `head` (committed with its offset). No head:
        a fresh partition starts at genesis; one processed before whose head is lost is marked restarted."""
        self.chains.resume(chain_key(topic, partition), head, restarted=head is None and not fresh)

    def forget_chain(self, topic: str, partition: int) -> None:
        self.chains.forget(chain_key(topic, partition))

    def chain_head(self, topic: str, partition: int) -> str | None:
        return self.chains.heads.get(chain_key(topic, partition))

    # ---- quality state per partition ------------------------------------------------------------
    def _quality_of(self, topic: str) -> QualityGate | None:
        """The source's quality gate (None: no quality rules, or the consent input topic)."""
        stage = self.stages.get(topic)
        return stage.quality if stage is not None else None

    def resume_quality(self, topic: str, partition: int, committed: Any) -> None:
        """Continue the partition's quality window from the counters committed with its offset."""
        quality = self._quality_of(topic)
        if quality is not None:
            quality.open(partition, committed, int(time.time() * 1000))

    def forget_quality(self, sources: Sequence[tuple[str, int]]) -> None:
        """Partitions closed (revoked, or rewound after an abort): their windows and unconfirmed ids go."""
        for topic, partition in sources:
            quality = self._quality_of(topic)
            if quality is not None:
                quality.close(partition)
                if quality.dedup is not None:
                    quality.dedup.drop_tentative([(topic, partition)])

    def commit_metadata(self, topic: str, partition: int) -> str | None:
        """What the partition's committed offset carries: its audit chain head and quality counters."""
        body: dict[str, Any] = {}
        key = chain_key(topic, partition)
        head = self.chains.heads.get(key)
        if head is not None:
            body["audit_head"] = head
        elif key not in self.chains.restarted:
            # no record yet (a held window): said explicitly, so the next owner starts the chain fresh
            # instead of marking it restarted, which the verifier would take for records lost before it
            body["audit_head"] = None
        quality = self._quality_of(topic)
        if quality is not None:
            counters = quality.metadata(partition)
            if counters is not None:
                body["quality"] = counters
        return orjson.dumps(body).decode() if body else None

    @property
    def enforced_windows(self) -> dict[str, tuple[int, int]]:
        """Source topics whose risk measure is enforced: (window ms, most events held per partition)."""
        return {topic: (s.quality.spec.window_ms, s.quality.spec.risk.max_held_events)  # type: ignore[union-attr]
                for topic, s in self.stages.items()
                if s.quality is not None and s.quality.spec.risk is not None and s.quality.spec.risk.mode == "enforce"}

    @property
    def checks_duplicates(self) -> bool:
        return any(s.quality is not None and s.quality.dedup is not None for s in self.stages.values())

    def apply_dedup_log(self, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
        """Fingerprints committed by any worker (read back from the dedup log) join the filters."""
        now_ms = int(time.time() * 1000)
        filters = [s.quality.dedup for s in self.stages.values()
                   if s.quality is not None and s.quality.dedup is not None]
        for dedup in filters:  # first: records older than the horizon are skipped, not held and evicted
            dedup.expire(now_ms)
        for key, value in records:
            parsed = parse_log_key(key or b"")
            stage = self.stages.get(parsed[0]) if parsed else None
            if stage is not None and stage.quality is not None and stage.quality.dedup is not None:
                stage.quality.dedup.apply(key or b"", value)

    def roll_windows(self, sources: Iterable[tuple[str, int]], now_ms: int | None = None,
                     force: bool = False) -> list[OutRecord]:
        """Quality records of the windows of `sources` that have ended (all of them with `force`); their
        counters reset: commit them with these records."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        out: list[OutRecord] = []
        for topic, partition in sources:
            quality = self._quality_of(topic)
            if quality is None or partition not in quality.partitions:
                continue
            if force or now_ms >= quality.partitions[partition].window.start_ms + quality.spec.window_ms:
                record = quality.roll(partition, now_ms, self.instance)
                if record is not None:
                    out.append(OutRecord(self.quality_topic, quality_key(topic, partition), orjson.dumps(record)))
        return out

    def _windows_to_roll(self, events: Sequence[RawEvent], now_ms: int, force: bool) -> set[tuple[str, int]]:
        """The partitions of `events` whose quality window has ended (all of them with `force`): what the
        batch rolls. The events' partitions are gathered only when some window has ended (seldom: a window
        spans many batches), not per batch: a set over every event cost the batch 0.05 us per event."""
        ended = {(topic, p) for topic, stage in self.stages.items() if stage.quality is not None
                 for p in stage.quality.ended(now_ms)}
        if not ended and not force:
            return ended
        touched = {(e.topic, e.partition) for e in events}
        return touched if force else touched & ended

    def windows_due(self, now_ms: int) -> list[tuple[str, int]]:
        return [(topic, p) for topic, stage in self.stages.items() if stage.quality is not None
                for p in stage.quality.due(now_ms)]

    def process(self, events: Sequence[RawEvent], withhold_since_ms: int | None = None,
                finish: bool = True) -> BatchResult:
        """`withhold_since_ms`: the events are one partition's held window of a source whose risk
        measure is enforced (gateway.runtime.jobs.sanitize holds them); records in classes smaller
        than k are withheld, every event audited, and the window's quality record written.
        `finish=False`: one slice of a batch. Its audit entries wait, and so do its new subject keys,
        for `finish_batch`, called once after the batch's last slice: one audit record per chain and
        batch, and one store and read-back of the keys."""
        out: list[OutRecord] = []
        counts = BatchCounts()
        sanitized: Counter[str] = Counter()  # per source topic, added to counts.outcomes once per batch
        now_ms = int(time.time() * 1000)
        audit_chains = self._audit_chains
        batch_ids: set[int] = set()  # event-id fingerprints published in this slice (any partition)
        new_ids: dict[tuple[str, int], tuple[int, list[int]]] = {}  # per partition: (first offset, fingerprints)
        held: list[Held] | None = [] if withhold_since_ms is not None else None
        if withhold_since_ms is not None:
            for topic, partition in {(e.topic, e.partition) for e in events}:
                self.stages[topic].quality.start_window(partition, withhold_since_ms)  # type: ignore[union-attr]
        intake = self.consent_intake
        firsts = iter(self._first_steps(events, now_ms))  # over the whole slice first: _first_steps says why
        if not self._slicing:  # a batch's first (or only) call
            self._entries = {}  # a batch that raised left its entries: it is aborted and read again
        self._slicing = not finish
        for event in events:
            chain = audit_chains.get((event.topic, event.partition)) or self._audit_chain(event.topic, event.partition)
            if intake is not None and event.topic == intake.topic:
                self._consent_event(intake, event, chain, now_ms, out, counts)
                continue
            output, audit, risk_class, fp = self._event(self.stages[event.topic], event, next(firsts), now_ms,
                                                        batch_ids, new_ids, out, counts, sanitized)
            if held is not None:
                held.append(Held(event, output, audit, chain, risk_class, fp))
                continue
            out.append(output)
            self._audit(audit, chain)
        for topic, n in sanitized.items():
            counts.outcomes[(topic, SANITIZED)] += n
        if held is not None:
            self._withhold_small_classes(held, counts, new_ids, out)
        if finish:
            self._seal_entries(now_ms, out)
            self.publish_new_keys()
        for (topic, partition), (first, ids) in new_ids.items():
            dedup = self.stages[topic].quality.dedup  # type: ignore[union-attr]
            log_key = dedup.add_tentative(topic, partition, first, now_ms, ids)  # type: ignore[union-attr]
            out.append(OutRecord(self.dedup_topic, log_key, pack(now_ms, ids), None, 0))
        if self.has_quality:
            out += self.roll_windows(self._windows_to_roll(events, now_ms, withhold_since_ms is not None), now_ms,
                                     force=withhold_since_ms is not None)
        return BatchResult(out, counts)

    def finish_batch(self, now_ms: int | None = None) -> list[OutRecord]:
        """The audit records of the batch's slices (`process(..., finish=False)`), one per chain, and
        its new subject keys stored: call once the last slice was processed, before its records are
        published. Returns the audit records, to publish with the slices' records."""
        out: list[OutRecord] = []
        self._seal_entries(int(time.time() * 1000) if now_ms is None else now_ms, out)
        self.publish_new_keys()
        self._slicing = False
        return out

    def discard_batch(self) -> None:
        """The slices processed so far are not published (rewound: they are read again)."""
        self._entries = {}
        self._slicing = False

    def publish_new_keys(self) -> None:
        """New subject keys are durable before the transaction of their ciphertexts commits
        (gateway/runtime/keytopic.py: stored, then read back)."""
        if self.subject_keys is not None:
            self.subject_keys.publish_pending()

    def _first_steps(self, events: Sequence[RawEvent], now_ms: int) -> list[Checked | Exception]:
        """Each source event decoded, its event time checked and its quality rules run, in order: what
        each gave (a consent event is left to its own step and gives nothing). The exception a step
        raised is kept and raised again in the event's own step, which dead-letters it as before.
        `process` runs them over the whole slice before the first event is sanitized: in one pass the
        decoder's and the rules' code and data stay in the CPU's caches. Timed paired in process (issue
        35), the shipped schemas cost 4% less per event over slices of 40 events (a slice at half of
        saturation) and the same over 1,000 (a drain), and ten quality rules add 13% to the payments
        path instead of 17% run event by event between the sanitize steps (benchmarks/quality.py)."""
        intake_topic = self.consent_intake.topic if self.consent_intake is not None else None
        stages = self.stages
        firsts: list[Checked | Exception] = []
        for event in events:
            if event.topic == intake_topic:
                continue
            stage = stages[event.topic]
            try:
                record, encoding, unannotated = stage.decoder.decode_event(event.value)
                check_event_time(event.timestamp_ms, record, stage.time_fields, now_ms, stage.max_skew_ms)
                quality = stage.quality
                if quality is None:
                    first: Checked | Exception = Checked(record, encoding, unannotated, None, None, None)
                else:
                    first = Checked(record, encoding, unannotated,
                                    *quality.check(event.partition, record, event.timestamp_ms, now_ms))
            except Exception as exc:  # noqa: BLE001 - raised again in the event's step, which handles it
                first = exc
            firsts.append(first)
        return firsts

    def _event(self, stage: TopicStage, event: RawEvent, first: Checked | Exception, now_ms: int,
               batch_ids: set[int], new_ids: dict[tuple[str, int], tuple[int, list[int]]],
               out: list[OutRecord], counts: BatchCounts, sanitized: Counter[str]
               ) -> tuple[OutRecord, dict[str, Any], int | None, int | None]:
        """One source event through the steps after the first pass (`first`: its decode, validation and
        quality checks, or what they raised): sanitize and encode, purposes, leak sentinel; then published
        (its purpose views appended to `out`) or dead-lettered. Returns (its output record, its audit entry,
        its risk class, its event-id fingerprint)."""
        source = (SOURCE_HEADER, source_ref(event.topic, event.partition, event.offset))
        quality = stage.quality
        failed: Sequence[int] | None = None
        risk_class: int | None = None
        fp: int | None = None
        unannotated = NO_FIELDS
        # what the steps decided, for the audit entry
        quality_names: list[str] | None = None
        leaks: list[tuple[str, str]] | None = None
        decisions: dict[str, str] | None = None
        try:
            # decode and validate (the first pass)
            if isinstance(first, Exception):
                raise first
            record, encoding, unannotated = first.record, first.encoding, first.unannotated
            # quality (the first pass checked it; an id published earlier in this slice is a duplicate too)
            if quality is not None:
                failed, reject, fp = first.failed, first.reject, first.fingerprint
                if fp is not None and fp in batch_ids:
                    failed, reject = quality.in_batch_duplicate(event.partition, failed, reject)  # type: ignore[arg-type]
                if failed:
                    quality_names = quality_failures(quality, event.topic, failed, counts)
                    if reject is not None:
                        raise quality_rejection(quality, reject, quality_names)
            # sanitize and encode
            value, out_encoding, result = stage.finish(record, encoding, self.max_output_bytes,
                                                       event.timestamp_ms, source[1].decode(), event.key,
                                                       event.headers)
            # purposes
            views = None
            if stage.views:
                views, decisions = self._purpose_outputs(stage, record, encoding, event, result, counts)
            # leak sentinel
            sentinel = stage.sentinel
            if sentinel.active and sentinel.sampled():
                leaks = leak_hits(sentinel, event.topic, result, counts)
                if leaks and sentinel.enforce:
                    raise leak_rejection(leaks)
        except RejectedEvent as rejected:
            outcome = Outcome.rejected(rejected.reason)
            output, audit = self._rejected(stage, event, quality, failed, outcome, rejected.message, now_ms,
                                           source, quality_names, leaks, decisions, counts)
        except Exception as exc:  # a bug must not stop the partition or leak the event
            log.error("unexpected error sanitizing an event", extra={"topic": event.topic,
                      "partition": event.partition, "offset": event.offset, "error": type(exc).__name__})
            message = f"unexpected {type(exc).__name__} while sanitizing (a gateway bug; replay after fixing)"
            output, audit = self._rejected(stage, event, quality, failed, INTERNAL_ERROR, message, now_ms,
                                           source, quality_names, leaks, decisions, counts)
        else:
            subject_key = result.subject.encode() if result.subject else None
            key = result.out_key if stage.plan.key_headers.replaces_key else subject_key
            if not result.out_timestamp_ms:  # processing time: the batch's, one value for all its records
                result.out_timestamp_ms = now_ms
            # the named headers after their actions (never a raw gateway-* one: core/policy/key_headers.py)
            headers = [*stage.headers[out_encoding], *(result.out_headers or ()), source]
            if quality is not None:  # counted as sanitized by check(); flags, the risk class, the id
                if failed or quality.risk_measured:
                    risk_class = quality_published(quality, event.partition, result, failed, headers)
                # (not a duplicate: neither the filter nor this slice held its id)
                if fp is not None and not (failed and quality.is_duplicate(failed)):
                    batch_ids.add(fp)
                    ids = new_ids.get((event.topic, event.partition))
                    if ids is None:
                        new_ids[(event.topic, event.partition)] = (event.offset, [fp])
                    else:
                        ids[1].append(fp)
            # the record timestamp is data: the policy's treatment of it (gateway/core/policy/timestamp.py)
            output = OutRecord(stage.sanitized_topic, key, value, headers, None, result.out_timestamp_ms)
            if views:  # the purposes' views of the event, published with it (keyed by the subject, same source)
                out += [OutRecord(topic, subject_key, data, [*vheaders, source], None, timestamp_ms or now_ms)
                        for topic, data, vheaders, timestamp_ms in views]
            if result.other_key_ids:  # per-subject and role keys, each named once
                key_ids: Any = [*stage.sanitizer.token_key_ids, *filter(None, [result.dek_key_id]),
                                *sorted(result.other_key_ids)]
            else:
                key_ids = stage.key_ids(result.dek_key_id)
            event_id_field = stage.event_id_field
            audit = event_entry(event.topic, event.partition, event.offset, event.timestamp_ms,
                                stage.audit_schema, stage.plan.policy_hash, SANITIZED,
                                stage.audit_sanitized_output, key_ids,
                                actions=stage.actions_for(unannotated) if unannotated else stage.audit_actions,
                                event_id=result.record.get(event_id_field) if event_id_field else None,
                                redacted=result.entities, quality=quality_names, leaks=leaks,
                                purposes=decisions)
            sanitized[event.topic] += 1
            for path in unannotated:  # a newer producer's field no annotation covers: dropped, counted
                counts.unannotated[(event.topic, path)] += 1
        return output, audit, risk_class, fp

    def _rejected(self, stage: TopicStage, event: RawEvent, quality: QualityGate | None, failed: Sequence[int] | None,
                  outcome: Outcome, message: str, now_ms: int, source: tuple[str, bytes],
                  quality_names: list[str] | None, leaks: list[tuple[str, str]] | None,
                  decisions: dict[str, str] | None, counts: BatchCounts) -> tuple[OutRecord, dict[str, Any]]:
        """A rejected event: its dead letter and its audit entry, counted."""
        if failed is not None and quality is not None:  # checked (and counted as sanitized): it is not
            quality.not_published(event.partition)
        output, key_ids = self.dead_letters.letter(stage.plan, stage.decoder, event, outcome.reason, message, now_ms,
                                                   source, self.max_output_bytes)
        counts.outcomes[(event.topic, outcome)] += 1
        return output, event_entry(event.topic, event.partition, event.offset, event.timestamp_ms,
                                   stage.audit_schema, stage.plan.policy_hash, outcome, stage.audit_dlq_output,
                                   key_ids, quality=quality_names, leaks=leaks, purposes=decisions)

    def _purpose_outputs(self, stage: TopicStage, record: dict[str, Any], encoding: str, event: RawEvent,
                         result: SanitizeResult, counts: BatchCounts
                         ) -> tuple[list[tuple[str, bytes, list[tuple[str, bytes]], int]], dict[str, str]]:
        """Each purpose's view of a sanitized event, where its legal basis allows it: a consent purpose
        only while the subject's consent allows it (ConsentTable.allows: in force at the event's time, and
        never behind a revocation the worker knows of). The decisions (for the audit event) say, per
        purpose, `published:<basis>` or `withheld:no_consent:<purpose>`. Raises RejectedEvent (a view
        that cannot be made dead-letters the whole event: one outcome per event)."""
        decisions: dict[str, str] = {}
        outputs = []
        for view in stage.views:
            purpose = view.purpose
            if purpose.needs_consent and not self._consented(stage.plan.subject_domain, result.subject,
                                                             purpose.name, event.timestamp_ms):
                decisions[purpose.name] = f"withheld:no_consent:{purpose.name}"
                counts.purposes[(event.topic, purpose.name, PurposeDecision.WITHHELD)] += 1
                continue
            data, view_encoding, view_result = view.stage.finish(
                record, encoding, self.max_output_bytes, event.timestamp_ms,
                source_ref(event.topic, event.partition, event.offset).decode())
            outputs.append((purpose.topic, data, view.stage.headers[view_encoding], view_result.out_timestamp_ms))
            decisions[purpose.name] = f"published:{purpose.basis}"
            counts.purposes[(event.topic, purpose.name, PurposeDecision.PUBLISHED)] += 1
        return outputs, decisions

    def _consent_event(self, intake: ConsentIntake, event: RawEvent, chain: AuditChain, now_ms: int,
                       out: list[OutRecord], counts: BatchCounts) -> None:
        """A raw consent event: its change stored on the consent topic under the subject's token, or
        dead-lettered (sealed) with its reason; audited either way, in the batch's transaction."""
        try:
            change = intake.change(event)
        except ConsentEventError as exc:
            source = (SOURCE_HEADER, source_ref(event.topic, event.partition, event.offset))
            out.append(self.dead_letters.consent_letter(intake.dlq_topic, event, exc.reason, str(exc), now_ms, source))
            outcome = Outcome.rejected(exc.reason)
            audit = consent_entry(event.topic, event.partition, event.offset, event.timestamp_ms, outcome,
                                  intake.audit_dlq_output, key_ids=self.dead_letters.quarantine_key_ids())
        else:
            out.append(OutRecord(intake.consent_topic, change.key(), change.value()))
            if not change.granted and self.consent is not None:  # learned now: binds this batch's later events too
                self.consent.apply(change.key(), change.value())
            outcome = CONSENT_GRANTED if change.granted else CONSENT_REVOKED
            audit = consent_entry(event.topic, event.partition, event.offset, event.timestamp_ms, outcome,
                                  intake.audit_output, change={"domain": change.domain, "subject": change.token,
                                                               "purpose": change.purpose, "at": change.at_ms})
        counts.outcomes[(event.topic, outcome)] += 1
        self._audit(audit, chain)

    def _consented(self, domain: str | None, token: str, purpose: str, at_ms: int) -> bool:
        table = self.consent
        return table is not None and domain is not None and bool(token) and table.allows(domain, token, purpose,
                                                                                           at_ms)

    def _withhold_small_classes(self, held: list[Held], counts: BatchCounts,
                                new_ids: dict[tuple[str, int], tuple[int, list[int]]], out: list[OutRecord]) -> None:
        """A held window is complete: records of classes below k (or l) are withheld, the rest published,
        and every audit event sealed in offset order."""
        small: dict[tuple[str, int], dict[int, str]] = {}
        for entry in held:
            event = entry.event
            where = (event.topic, event.partition)
            if where not in small:
                small[where] = self.stages[event.topic].quality.withheld_classes(event.partition)  # type: ignore[union-attr]
            reason = small[where].get(entry.risk_class) if entry.risk_class is not None else None
            if reason is None or entry.output.topic != self.stages[event.topic].plan.sanitized_topic:
                out.append(entry.output)
                self._audit(entry.audit, entry.chain)
                continue
            outcome = Outcome.withheld(reason)
            withhold(entry.audit, outcome)
            counts.outcomes[(event.topic, SANITIZED)] -= 1
            counts.outcomes[(event.topic, outcome)] += 1
            self.stages[event.topic].quality.withheld(event.partition)  # type: ignore[union-attr]
            if entry.fingerprint is not None and where in new_ids:  # never published: not a duplicate later
                ids = new_ids[where][1]
                if entry.fingerprint in ids:
                    ids.remove(entry.fingerprint)
            self._audit(entry.audit, entry.chain)
        for where in [w for w, (_, ids) in new_ids.items() if not ids]:
            del new_ids[where]

    def _audit_chain(self, topic: str, partition: int) -> AuditChain:
        """The chain of a source partition, computed on its first event (the partition count is fixed)."""
        key = chain_key(topic, partition)
        chain = AuditChain(key, key.encode(), audit_partition(key, self.audit_partitions))
        self._audit_chains[(topic, partition)] = chain
        return chain

    def _audit(self, entry: dict[str, Any], chain: AuditChain) -> None:
        """Keep an event's audit entry for its chain's record of this batch (`_seal_entries`)."""
        entries = self._entries.get(chain)
        if entries is None:
            self._entries[chain] = [entry]
        else:
            entries.append(entry)

    def _seal_entries(self, now_ms: int, out: list[OutRecord]) -> None:
        """This batch's audit records: per chain, its entries in order, AUDIT_ENTRIES_PER_RECORD at most
        per record (fewer when a record would pass the producer's limit), each record chained to the
        last. One serialization, one hash and one Kafka record per chain and batch instead of per event."""
        for chain, entries in self._entries.items():
            for start in range(0, len(entries), AUDIT_ENTRIES_PER_RECORD):
                self._seal_chunk(chain, entries[start:start + AUDIT_ENTRIES_PER_RECORD], now_ms, out)
        self._entries = {}

    def _seal_chunk(self, chain: AuditChain, entries: list[dict[str, Any]], now_ms: int,
                    out: list[OutRecord]) -> None:
        prev, restart = self.chains.next_prev(chain.key)
        body = batch_body(chain.key, self.instance, now_ms, entries)
        if restart:
            body["chain_restart"] = True
        value, digest = seal_audit_value(body, prev, self.audit_keys)
        if len(value) > self.max_output_bytes and len(entries) > 1:  # halve until each record fits
            half = len(entries) // 2
            self._seal_chunk(chain, entries[:half], now_ms, out)
            self._seal_chunk(chain, entries[half:], now_ms, out)
            return
        if restart:
            self.chains.restarted.discard(chain.key)
        self.chains.heads[chain.key] = digest
        out.append(OutRecord(self.audit_topic, chain.key_bytes, value, None, chain.partition))
