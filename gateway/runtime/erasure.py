"""Erasure receipts on the broker: `gateway forget`'s receipt and `gateway erasure verify` (the judging
is gateway.core.erasure's, pure).

The verifier trusts nothing the gateway says about itself beyond the receipt and the keyring's audit
keys: it reads the audit record at the receipt's position, the key topic and its erased-names topic
from the beginning, and the subject's records on the topics the receipt names, from the broker.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaException
from confluent_kafka.admin import ConfigResource, ResourceType

from gateway.core.audit import AuditKeys, verify_chains
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord
from gateway.core.erasure import (
    CompactionSettings,
    ErasureReceipt,
    KeyRecordSeen,
    Scope,
    Status,
    Verdict,
    dek_of,
    judge_audit_record,
    judge_key_topic,
    receipt_of,
    subject_commitment,
)
from gateway.core.policy.plan import Plan
from gateway.errors import DecryptError, GatewayError
from gateway.keys.envelope import FieldDecryptor, Format, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider
from gateway.keys.subject_keys import SubjectKeys, is_key_record
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime import changelog, clients
from gateway.runtime.keytopic import (
    FORGET_CHAIN,
    KeyTopic,
    audit_keys,
    erased_topic,
    forget_subject_at,
    forgotten_key_id,
)
from gateway.runtime.reader import read_topic
from gateway.runtime.topics import partition_counts
from gateway.settings import GatewayConfig

SAMPLE_SIZE = 20  # ciphertexts tried per verification: enough to catch a key that still opens, bounded


def forget_with_receipt(config: GatewayConfig, subject: str, domain: str, token_keys: dict[str, bytes],
                        keys: SubjectKeys, since: Mapping[int, int] | None = None) -> ErasureReceipt:
    """`keytopic.forget_subject`, and the receipt of its audit event (sealed with the same audit key)."""
    event, position = forget_subject_at(config, subject, domain, token_keys, keys, since)
    return receipt_of(event, position, audit_keys(config))


def subject_tokens(keyring: Keyring, domain: str, subject: str) -> list[str]:
    """The subject's token under every version of the domain's key (the normalized identifier given)."""
    _, token_keys = keyring.token_keys(domain)
    return [DomainTokenizer(domain, version, key).token(subject) for version, key in sorted(token_keys.items())]


def verify_erasure(config: GatewayConfig, receipt: ErasureReceipt, plans: Sequence[Plan], kms: KmsProvider,
                   subject: str | None = None) -> Verdict:
    """Every check of `gateway erasure verify` (see the module's docstring); `subject`: the normalized
    identifier the person supplied, to check the receipt is theirs."""
    keyring = Keyring.open(config.keyring, create=False)
    keys = AuditKeys(*keyring.audit_keys(create=False))
    kafka = config.kafka_client_config()
    verdict = Verdict()
    tokens = judge_audit_record(verdict, receipt, keys, *_audit_record(kafka, receipt, keys))
    if subject is not None:
        _judge_subject(verdict, receipt, keys, subject_tokens(keyring, receipt.domain, subject))
    committed = _check_key_topic(verdict, kafka, receipt)
    # the key topic as it stands, the erased-names refusals NOT applied: a key written back opens its
    # ciphertexts for anyone who reads the topic, whether or not the gateway's readers refuse it
    stands = SubjectKeys(kms)
    changelog.apply_records(KeyTopic.STATE, receipt.key_topic, ((r.key, r.value) for r in committed
                                                                  if r.key is not None and is_key_record(r.key)),
                            stands.apply)
    _check_ciphertexts(verdict, kafka, receipt, plans, stands, FieldDecryptor(kms, subject_keys=stands), tokens)
    return verdict


def _audit_record(kafka: Mapping[str, str], receipt: ErasureReceipt,
                  keys: AuditKeys) -> tuple[bytes | None, str | None]:
    """(the value at the receipt's audit position, None or why the forget chain does not hold up to it)."""
    where = receipt.audit
    if where.topic not in partition_counts(clients.admin(kafka)):
        return None, None
    records = read_topic(kafka, where.topic, partitions={where.partition})
    value = next((r.value for r in records if r.offset == where.offset), None)
    chain = [(r.partition, r.offset, r.value or b"") for r in records
             if r.key == FORGET_CHAIN.encode() and r.offset <= where.offset]
    report = verify_chains(chain, keys)
    problems = [f.message for f in report.problems]
    return value, (f"the forget chain does not hold up to it: {problems[0]}" if problems else None)


def _judge_subject(verdict: Verdict, receipt: ErasureReceipt, keys: AuditKeys, tokens: list[str]) -> None:
    if not keys.held(receipt.mac_key_id):
        verdict.add("subject", Status.FAILED, f"audit key '{receipt.mac_key_id}' is not in this keyring: the "
                    "identifier cannot be checked against the receipt")
        return
    ours = {subject_commitment(keys, receipt.domain, t, receipt.mac_key_id) for t in tokens}
    if ours & {c for _, c in receipt.subject}:
        verdict.add("subject", Status.PASSED, "the identifier supplied is this receipt's subject")
    else:
        verdict.add("subject", Status.FAILED, "the identifier supplied is not this receipt's subject (check its "
                    "spelling and the domain's normalizer)")


def _seen(records: Sequence[Any]) -> Iterator[KeyRecordSeen]:
    for r in records:
        if r.key is None or not is_key_record(r.key):
            continue
        try:
            key_id = forgotten_key_id(r.key.decode())
        except (UnicodeDecodeError, IndexError):
            continue
        yield KeyRecordSeen(key_id, r.partition, r.offset, r.value is not None)


def _check_key_topic(verdict: Verdict, kafka: Mapping[str, str], receipt: ErasureReceipt) -> list[StoredRecord]:
    """The key topic's checks; its committed records."""
    topic = receipt.key_topic
    if topic not in partition_counts(clients.admin(kafka)):
        verdict.add("key topic", Status.FAILED, f"key topic '{topic}' does not exist on the cluster")
        return []
    physical = list(_seen(read_topic(kafka, topic, committed_only=False)))
    records = read_topic(kafka, topic)
    committed = list(_seen(records))
    refused: set[str] = set()
    if erased_topic(topic) in partition_counts(clients.admin(kafka)):
        refused = {s.key_id for s in _seen(read_topic(kafka, erased_topic(topic))) if s.has_value}
    judge_key_topic(verdict, receipt, physical, committed, refused, _compaction_settings(kafka, topic))
    return records


def _compaction_settings(kafka: Mapping[str, str], topic: str) -> CompactionSettings | None:
    """The key topic's cleaner settings as the broker reports them (None: it did not say)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        admin = clients.admin(kafka)  # kept until the answer came: a dropped client cancels its requests
        entries = admin.describe_configs([resource], request_timeout=15)[resource].result(20)
        value = {name: int(entry.value) for name, entry in entries.items() if name in (
            "segment.ms", "min.compaction.lag.ms", "max.compaction.lag.ms", "delete.retention.ms")}
        return CompactionSettings(value["segment.ms"], value["min.compaction.lag.ms"], value["max.compaction.lag.ms"],
                                  value["delete.retention.ms"])
    except (KafkaException, KeyError, ValueError, TypeError):
        return None


def _ciphertexts(value: Any) -> Iterator[bytes]:
    """Every value of a decoded record that could be a ciphertext (bytes, or base64 in JSON)."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _ciphertexts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _ciphertexts(item)
    elif isinstance(value, bytes):
        yield value
    elif isinstance(value, str) and len(value) >= 24:
        try:
            yield base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return


def _check_ciphertexts(verdict: Verdict, kafka: Mapping[str, str], receipt: ErasureReceipt, plans: Sequence[Plan],
                       stands: SubjectKeys, decryptor: FieldDecryptor, tokens: list[str]) -> None:
    """Up to SAMPLE_SIZE of the subject's ciphertexts under the erased keys, found by token on the topics the
    receipt names (sanitized records by their subject field, dead letters by their seal's subject): each
    must answer key_erased when opened with the key topic's keys as they stand. Any other answer (even
    "tampered": opened without its record's context) means the key was found."""
    deks = {dek_of(k.key_id) for k in receipt.keys}
    if not tokens or not deks:
        verdict.add("ciphertexts", Status.PASSED, "nothing to sample (no subject token in the audit record, or "
                    "no key erased)")
        return
    existing = partition_counts(clients.admin(kafka))
    readable = {p.sanitized_topic: p for p in plans}
    # a topic a policy publishes sanitized records to is read as such; any other (dead-letter topics) is
    # read for dead letters sealed under the subject's key
    letters = {t for k in receipt.keys if Scope.DEAD_LETTER.value in k.scopes for t in k.topics} - set(readable)
    topics = [t for t in receipt.topics() if t in existing and (t in readable or t in letters)]
    decoder = SanitizedDecoder(list(plans))
    answers: dict[str, int] = {}
    opened: list[str] = []
    for topic in topics:
        for record in read_topic(kafka, topic):
            if sum(answers.values()) >= SAMPLE_SIZE:
                break
            found = (_sealed_of(record, tokens, deks) if topic in letters
                     else _fields_of(decoder, readable[topic], record, tokens, deks))
            for answer in (_answer(stands, decryptor, t, data) for t, data in found):
                answers[answer] = answers.get(answer, 0) + 1
                if answer != "key_erased":
                    opened.append(f"{topic} partition {record.partition} offset {record.offset}: {answer}")
    total = sum(answers.values())
    if opened:
        verdict.add("ciphertexts", Status.FAILED, f"{len(opened)} of {total} sampled ciphertext(s) under erased keys "
                    f"did not answer key_erased (the key is still available): {'; '.join(opened[:5])}")
    elif total:
        verdict.add("ciphertexts", Status.PASSED, f"{total} of the subject's ciphertext(s) found by token on "
                    f"{', '.join(topics)} answer key_erased (opened with the key topic as it stands)")
    else:
        verdict.add("ciphertexts", Status.PASSED, "no ciphertext of the subject under the erased keys is left on "
                    f"the topics the receipt names that can be read here ({', '.join(topics) or 'none'}; "
                    "sanitized topics need their policies in --schemas): nothing to sample")


def _fields_of(decoder: SanitizedDecoder, plan: Plan, record: StoredRecord, tokens: list[str],
               deks: set[str]) -> list[tuple[str, bytes | tuple[str, str, bytes]]]:
    """(token, ciphertext) of a sanitized record of the subject, under one of `deks`."""
    try:
        _, decoded = decoder.decode(record)
    except GatewayError:
        return []
    subject = decoded.get(plan.subject_field) if isinstance(decoded, dict) and plan.subject_field else None
    if subject not in tokens:
        return []
    out: list[tuple[str, bytes | tuple[str, str, bytes]]] = []
    for data in _ciphertexts(decoded):
        try:
            if parse_ciphertext(data).dek_id.hex() in deks:
                out.append((str(subject), data))
        except (DecryptError, IndexError, ValueError, struct.error, UnicodeDecodeError):
            continue
    return out


def _sealed_of(record: StoredRecord, tokens: list[str], deks: set[str]
               ) -> list[tuple[str, bytes | tuple[str, str, bytes]]]:
    """(token, (domain, token, dek id)) of a dead letter sealed under the subject's key (format 2)."""
    try:
        name = orjson.loads(record.value or b"")["sealed"]["key"]
        domain, token, dek = str(name["domain"]), str(name["subject"]), str(name["dek"])
        wanted = token in tokens and dek in deks
        return [(token, (domain, token, bytes.fromhex(dek)))] if wanted else []
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return []


def _answer(stands: SubjectKeys, decryptor: FieldDecryptor, token: str,
            found: bytes | tuple[str, str, bytes]) -> str:
    """What opening one ciphertext (or a dead letter's seal) answers: a DecryptError's reason, or "opened"."""
    try:
        if isinstance(found, tuple):  # a dead letter: its seal names the key
            stands.aead_for(*found)
        elif found[:1] == bytes([Format.ROLE_KEYED]) or found[2:3] == bytes([Format.ROLE_KEYED]):
            parsed = parse_ciphertext(found)  # a role's key is needed to unwrap: is the key there at all?
            if not any(n.endswith(parsed.dek_id.hex()) for n in (*stands.keys_of(parsed.kek_id, token),
                                                                 *stands.periods.keys_of(parsed.kek_id, token))):
                raise DecryptError("key_erased", "not in the key topic")
        else:
            decryptor.decrypt(found, b"", subject=token)
        return "opened"
    except DecryptError as exc:
        return exc.reason
