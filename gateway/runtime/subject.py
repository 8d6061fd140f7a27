"""`gateway subject report`'s Kafka side: read what the gateway holds about one subject (the report
itself is gateway.core.subject_report's, pure).

Read, all read_committed from the beginning: the key topic (the subject's live keys, by its tokens),
the audit topic (where its records went, per topic and day; its erasures), the consent topic (its
changes per purpose) and stage 1's DP bounding state (the aggregates and windows it contributed to;
that topic is inside the DP boundary, so only the aggregate and window leave it).
"""

from __future__ import annotations

import time

import orjson

from gateway.core.audit import record_entries
from gateway.core.subject_report import SubjectReport, build_report
from gateway.keys.subject_keys import SubjectKeys, is_key_record
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime import changelog
from gateway.runtime.consent import restore_table
from gateway.runtime.jobs.aggregate import bound_state_topic
from gateway.runtime.keytopic import KeyTopic, forgotten_key_id
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import admin_client, partition_counts
from gateway.settings import GatewayConfig


def subject_report(config: GatewayConfig, subject: str, domain: str, token_keys: dict[str, bytes]) -> SubjectReport:
    """The report of `subject` (its identifier, normalized as the domain's tokenizer takes it)."""
    kafka = config.kafka_client_config()
    topics = partition_counts(admin_client(kafka))
    tokens = [DomainTokenizer(domain, version, key).token(subject) for version, key in sorted(token_keys.items())]
    live: list[str] = []
    if config.key_topic in topics:
        keys = SubjectKeys(None)  # type: ignore[arg-type] - listed only, never opened (no KMS needed)
        changelog.apply_records(KeyTopic.STATE, config.key_topic,
                                ((r.key, r.value) for r in read_topic(kafka, config.key_topic)
                                 if r.key is not None and is_key_record(r.key)), keys.apply)
        live = [forgotten_key_id(n) for t in tokens for n in (*keys.keys_of(domain, t),
                                                               *keys.periods.keys_of(domain, t))]
    entries = record_entries(r.value for r in read_topic(kafka, config.audit_topic)) \
        if config.audit_topic in topics else []
    history: dict[str, list[tuple[int, bool]]] = {}
    in_force: dict[str, bool] = {}
    if config.consent_topic in topics:
        table, _ = restore_table(config, create=False)
        now = int(time.time() * 1000)
        for token in tokens:
            for purpose, changes in table.history(domain, token).items():
                history.setdefault(purpose, []).extend(changes)
                in_force[purpose] = in_force.get(purpose, False) or table.in_force(domain, token, purpose, now)
    return build_report(domain, tokens, live, entries, {p: sorted(h) for p, h in history.items()}, in_force,
                        _dp_windows(config, topics, set(tokens)))


def _dp_windows(config: GatewayConfig, topics: dict[str, int], tokens: set[str]) -> list[tuple[str, int]]:
    """(aggregate id, window start) of every bounding-state record of the subject still in the log (a
    window's record is tombstoned when it closes and the tombstone kept delete.retention.ms: recent
    windows only)."""
    topic = bound_state_topic(config)
    if topic not in topics:
        return []
    out: list[tuple[str, int]] = []
    for record in read_topic(config.kafka_client_config(), topic):
        try:
            key = orjson.loads(record.key or b"")
        except orjson.JSONDecodeError:
            continue
        # [sanitized topic, partition, "s", aggregate, window start, subject]
        if isinstance(key, list) and len(key) == 6 and key[2] == "s" and key[5] in tokens \
                and isinstance(key[3], str) and isinstance(key[4], int):
            out.append((key[3], key[4]))
    return out
