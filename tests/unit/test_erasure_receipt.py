"""Erasure receipts and their judging (gateway.core.erasure): pure, no broker."""

from __future__ import annotations

import secrets
from pathlib import Path

import orjson
import pytest

from gateway import cli
from gateway.core.audit import _MAC_CONTEXT, GENESIS, AuditKeys, seal_audit_event
from gateway.core.erasure import (
    CompactionSettings,
    ExitCode,
    KeyRecordSeen,
    Status,
    Verdict,
    judge_audit_record,
    judge_key_topic,
    key_inventory,
    key_uses,
    parse_receipt,
    receipt_of,
    subject_commitment,
)
from gateway.errors import GatewayError

DEK_A, DEK_B, DEK_P = "a" * 32, "b" * 32, "c" * 32
TOKEN = "tok_v1_Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4cXV1eA"  # noqa: S105 - a token, not a password
KEYS = AuditKeys("audit-1", {"audit-1": secrets.token_bytes(32)})
IDS = [f"subject:patient/{DEK_A}", f"subject:patient/{DEK_B}", f"period:30/2026-12-01/subject:patient/{DEK_P}"]


def _entries() -> list[dict[str, object]]:
    return [
        {"type": "event", "outcome": "sanitized", "output": {"topic": "notes.sanitized"},
         "event": {"timestamp": 1_796_600_000_000}, "key_ids": ["token:patient/v1", f"subject:patient/{DEK_A}"]},
        {"type": "event", "outcome": "rejected:missing_field", "output": {"topic": "notes.dlq"},
         "event": {"timestamp": 1_796_600_000_000}, "key_ids": ["token:patient/v1", f"subject:patient/{DEK_B}"]},
        {"type": "event", "outcome": "sanitized", "output": {"topic": "notes.sanitized"},
         "event": {"timestamp": 1_796_600_000_000},
         "key_ids": [f"period:30/2026-12-01/subject:patient/{DEK_P}"]},
        {"type": "event", "outcome": "sanitized", "output": {"topic": "other.sanitized"},
         "event": {"timestamp": 1}, "key_ids": [f"subject:patient/{'d' * 32}"]},  # someone else's key
    ]


def _event() -> dict[str, object]:
    inventory = key_inventory(IDS, key_uses(_entries(), IDS))
    body = {"type": "subject_forgotten", "chain": "keys:forget", "domain": "patient", "subject_tokens": [TOKEN],
            "keys_erased": 3, "key_ids": IDS, "consent_records_erased": 1, "key_topic": "privacy.keys",
            "time": 1_796_600_100_000, "keys": [k.to_json() for k in inventory]}
    return seal_audit_event(body, GENESIS, KEYS)


def test_inventory_gives_each_key_its_scopes_and_topics_from_the_audit() -> None:
    inventory = {k.key_id: k for k in key_inventory(IDS + [f"subject:patient/{'e' * 32}"], key_uses(_entries(), IDS))}
    assert inventory[IDS[0]].scopes == ("field",) and inventory[IDS[0]].topics == ("notes.sanitized",)
    assert inventory[IDS[1]].scopes == ("dead-letter",) and inventory[IDS[1]].topics == ("notes.dlq",)
    assert inventory[IDS[2]].scopes == ("field", "period")
    assert inventory[f"subject:patient/{'e' * 32}"].scopes == ()  # never named by the audit: still listed
    assert "other.sanitized" not in {t for k in inventory.values() for t in k.topics}


def test_receipt_names_no_token_and_round_trips_authentic() -> None:
    receipt = receipt_of(_event(), ("privacy.audit", 2, 17), KEYS)
    data = receipt.to_json()
    assert TOKEN.encode() not in data and b"tok_v" not in data and TOKEN not in receipt.human()
    assert receipt.subject == (("1", subject_commitment(KEYS, "patient", TOKEN)),)
    parsed = parse_receipt(data)
    assert parsed == receipt and parsed.authentic(KEYS)
    assert parsed.scopes() == {"field": [IDS[2], IDS[0]], "dead-letter": [IDS[1]], "period": [IDS[2]]}
    other = AuditKeys("audit-1", {"audit-1": secrets.token_bytes(32)})  # a guess at the key: no test possible
    assert subject_commitment(other, "patient", TOKEN) != receipt.subject[0][1] and not parsed.authentic(other)
    edited = parse_receipt(orjson.dumps(orjson.loads(data) | {"consent_records_erased": 0}))
    assert not edited.authentic(KEYS)
    with pytest.raises(GatewayError, match="not a readable erasure receipt"):
        parse_receipt(b'{"type": "something else"}')


def test_a_tag_can_never_pass_for_a_record_mac() -> None:
    with pytest.raises(ValueError):
        KEYS.tag(_MAC_CONTEXT, b"x")


def _judge(committed: list[KeyRecordSeen], physical: list[KeyRecordSeen] | None = None,
           refused: set[str] | None = None) -> Verdict:
    verdict = Verdict()
    judge_key_topic(verdict, receipt_of(_event(), ("privacy.audit", 0, 0), KEYS),
                    committed if physical is None else physical, committed, set(IDS) if refused is None else refused,
                    CompactionSettings(600_000, 0, 3_600_000, 86_400_000))
    return verdict


def test_key_topic_verdicts_live_pending_refused_and_clean() -> None:
    tombstones = [KeyRecordSeen(k, 0, 10 + n, False) for n, k in enumerate(IDS)]
    assert _judge(tombstones).exit_code is ExitCode.VERIFIED
    assert _judge([]).status is Status.PASSED  # fully compacted, tombstones gone too

    old = [KeyRecordSeen(IDS[0], 0, 1, True)]
    pending = _judge(tombstones, physical=old + tombstones)
    assert pending.exit_code is ExitCode.PENDING
    message = next(c.message for c in pending.checks if c.name == "compacted")
    assert "2026-12-06T23:45:00Z" in message and "2026-12-07T00:35:00Z" in message  # time + segment.ms, + max lag

    restored = _judge(tombstones + [KeyRecordSeen(IDS[0], 0, 50, True)])
    assert restored.exit_code is ExitCode.FAILED
    assert "written again after the erasure" in next(c.message for c in restored.checks if c.name == "no live copy")

    unrefused = _judge(tombstones, refused=set(IDS[1:]))
    assert unrefused.status is Status.FAILED and IDS[0] in unrefused.human()


def test_audit_record_must_be_the_receipts_erasure_authentic_and_of_its_subject() -> None:
    event = _event()
    receipt = receipt_of(event, ("privacy.audit", 0, 5), KEYS)
    value = orjson.dumps(event)

    ok = Verdict()
    assert judge_audit_record(ok, receipt, KEYS, value, None) == [TOKEN]
    assert ok.status is Status.PASSED

    altered = Verdict()
    assert judge_audit_record(altered, receipt, KEYS, value.replace(b'"keys_erased":3', b'"keys_erased":2'),
                              None) == []
    assert altered.status is Status.FAILED

    forged_body = {k: v for k, v in _event().items() if k not in ("hash", "mac", "v", "mac_key_id", "prev_hash")}
    forged = seal_audit_event(forged_body | {"subject_tokens": ["tok_v1_someoneelse"]}, GENESIS, KEYS)
    other = Verdict()
    judge_audit_record(other, receipt, KEYS, orjson.dumps(forged), None)
    assert other.status is Status.FAILED  # another record (its hash is not the receipt's)

    missing, broken = Verdict(), Verdict()
    judge_audit_record(missing, receipt, KEYS, None, None)
    judge_audit_record(broken, receipt, KEYS, value, "the forget chain does not hold up to it: x")
    assert missing.status is broken.status is Status.FAILED


def test_erasure_verify_refuses_an_unreadable_receipt_before_any_broker(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "receipt.json"
    bad.write_bytes(b'{"type": "erasure_receipt", "format": 1}')
    assert cli.main(["erasure", "verify", str(bad), "--bootstrap", "127.0.0.1:9"]) == 2
    assert "not a readable erasure receipt" in capsys.readouterr().err
    assert cli.main(["erasure", "verify", str(tmp_path / "missing.json"), "--bootstrap", "127.0.0.1:9"]) == 2
    assert "cannot read it" in capsys.readouterr().err
