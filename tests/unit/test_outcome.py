"""The typed outcome and its audit string (the wire format does not change), and a batch's counts."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.core.pipeline.outcome import (
    CONSENT_GRANTED,
    CONSENT_REVOKED,
    INTERNAL_ERROR,
    SANITIZED,
    BatchCounts,
    Outcome,
    OutcomeKind,
    PurposeDecision,
)

WIRE = ["sanitized", "rejected:json_invalid", "rejected:internal_error", "rejected:quality:email.required",
        "withheld:k_anonymity", "withheld:l_diversity", "consent:granted", "consent:revoked",
        "rejected:unknown_purpose"]


@pytest.mark.parametrize("text", WIRE)
def test_the_audit_string_round_trips(text: str) -> None:
    outcome = Outcome.parse(text)
    assert outcome is not None
    assert outcome.wire == str(outcome) == text
    assert Outcome.parse(outcome.wire) == outcome
    assert hash(Outcome.parse(outcome.wire)) == hash(outcome)  # a count key read back is the same key


def test_the_constants_write_what_the_audit_always_said() -> None:
    assert SANITIZED.wire == "sanitized" and SANITIZED.reason == ""
    assert INTERNAL_ERROR.wire == "rejected:internal_error"
    assert (CONSENT_GRANTED.wire, CONSENT_REVOKED.wire) == ("consent:granted", "consent:revoked")
    assert Outcome.rejected("bad_framing") == Outcome(OutcomeKind.REJECTED, "bad_framing")
    assert Outcome.withheld("k_anonymity").wire == "withheld:k_anonymity"


def test_a_reason_keeps_its_own_colons() -> None:
    """`quality:<rule>` is one reason: only the first colon separates the kind."""
    outcome = Outcome.parse("rejected:quality:email.required")
    assert outcome == Outcome.rejected("quality:email.required")
    assert outcome is not None and outcome.kind is OutcomeKind.REJECTED


@pytest.mark.parametrize("text", [None, 3, "", "published", "refused:period_epsilon_cap", "Sanitized",
                                  ["sanitized"]])
def test_what_this_version_does_not_write_is_none_not_an_error(text: object) -> None:
    assert Outcome.parse(text) is None


def test_the_wire_string_is_not_part_of_equality_and_the_outcome_is_frozen() -> None:
    outcome = Outcome.rejected("empty_value")
    with pytest.raises(AttributeError):
        outcome.reason = "other"  # type: ignore[misc]
    assert outcome != Outcome.rejected("other") and outcome != SANITIZED
    assert "wire" not in repr(outcome)


def test_batch_counts_add_up_per_kind() -> None:
    a = BatchCounts()
    a.outcomes[("t", SANITIZED)] += 2
    a.outcomes[("t", Outcome.rejected("empty_value"))] += 1
    a.leaks[("t", "comment", "EMAIL")] += 1
    b = BatchCounts(outcomes=Counter({("t", Outcome.parse("sanitized")): 3, ("u", INTERNAL_ERROR): 1}),
                    quality=Counter({("t", "email.required", "reject"): 1}),
                    purposes=Counter({("t", "fraud", PurposeDecision.WITHHELD): 2}),
                    unannotated=Counter({("t", "note"): 4}))
    a.update(b)
    assert a.outcomes == Counter({("t", SANITIZED): 5, ("t", Outcome.rejected("empty_value")): 1,
                                  ("u", INTERNAL_ERROR): 1})
    assert a.events == 7
    assert a.leaks == Counter({("t", "comment", "EMAIL"): 1})
    assert a.quality == Counter({("t", "email.required", "reject"): 1})
    assert a.purposes == Counter({("t", "fraud", PurposeDecision.WITHHELD): 2})
    assert a.unannotated == Counter({("t", "note"): 4})
    assert b.events == 4  # update() leaves its argument alone
    assert BatchCounts().events == 0 and BatchCounts() == BatchCounts()
