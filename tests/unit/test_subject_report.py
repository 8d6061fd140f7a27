"""`gateway subject report`'s pure part (gateway.core.subject_report)."""

from __future__ import annotations

import orjson

from gateway.core.erasure import key_inventory, key_uses
from gateway.core.subject_report import build_report

TOKEN, OTHER = "tok_v2_alice", "tok_v2_someone"
A, B, C = (f"subject:patient/{ch * 32}" for ch in "abc")
DAY = 1_796_601_600_000  # 2026-12-07


def _entries() -> list[dict[str, object]]:
    return [
        {"type": "event", "outcome": "sanitized", "output": {"topic": "notes.s"}, "event": {"timestamp": DAY},
         "key_ids": ["token:patient/v2", A]},
        {"type": "event", "outcome": "sanitized", "output": {"topic": "notes.s"}, "event": {"timestamp": DAY + 5},
         "key_ids": ["token:patient/v2", A, f"roles:x/{A}"]},  # one event, counted once
        {"type": "event", "outcome": "rejected:missing_field", "output": {"topic": "notes.dlq"},
         "event": {"timestamp": DAY - 1}, "key_ids": ["token:patient/v2", B]},
        {"type": "event", "outcome": "sanitized", "output": {"topic": "notes.s"}, "event": {"timestamp": DAY},
         "key_ids": [C]},  # someone else's
        {"type": "consent", "outcome": "consent:granted", "output": {"topic": "privacy.consent"},
         "event": {"timestamp": DAY}, "consent": {"domain": "patient", "subject": TOKEN, "purpose": "research"}},
        {"type": "consent", "outcome": "consent:granted", "output": {"topic": "privacy.consent"},
         "event": {"timestamp": DAY}, "consent": {"domain": "patient", "subject": OTHER, "purpose": "research"}},
        {"type": "subject_forgotten", "domain": "patient", "subject_tokens": [TOKEN], "key_ids": [B], "time": DAY,
         "consent_records_erased": 0},
    ]


def test_report_counts_per_topic_and_day_lists_keys_by_state_and_what_forget_would_erase() -> None:
    report = build_report("patient", [TOKEN], [A], _entries(), {"research": [(1, True)]}, {"research": True},
                          [("s/agg", DAY), ("s/agg", DAY)])
    assert report.tokens == (("2", TOKEN),)
    assert report.records == (("notes.dlq", "2026-12-06", 1), ("notes.s", "2026-12-07", 2),
                              ("privacy.consent", "2026-12-07", 1))
    assert [(k.key_id, k.scopes, k.topics) for k in report.keys] == [(A, ("field",), ("notes.s",))]
    assert [(k.key_id, k.scopes) for k in report.erased_keys] == [(B, ("dead-letter",))]
    assert report.dp == (("s/agg", DAY),) and report.consent_records == 1
    # the same inventory forget puts in its audit event and receipt
    assert list(report.keys) == key_inventory([A], key_uses(_entries(), [A]))
    data = orjson.loads(report.to_json())
    assert data["forget_would_erase"] == {"keys": [{"key_id": A, "scopes": ["field"], "topics": ["notes.s"]}],
                                          "consent_records": 1}
    assert OTHER not in report.to_json().decode() and C not in report.human()
    assert "gateway forget would erase: 1 key(s) and 1 consent record(s)" in report.human()


def test_report_of_a_forgotten_subject_has_nothing_left_to_erase() -> None:
    report = build_report("patient", [TOKEN], [], _entries(), {}, {}, [])
    assert report.keys == () and report.consent_records == 0
    assert "gateway forget would erase: nothing" in report.human() and "no consent record" in report.human()
