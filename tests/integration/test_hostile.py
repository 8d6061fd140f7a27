"""Hostile input through a real worker: a fixed-seed corpus of corrupted events, random bytes and
JSON junk interleaved with canary-bearing valid events. Every one ends in exactly one place, is
audited, no canary appears anywhere, and the worker stays up."""

from __future__ import annotations

import json
import random

import pytest

from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import CANARIES, SampleEvents
from tests.hostile import mutate

from .conftest import Deployment

pytestmark = pytest.mark.integration


def test_hostile_corpus_on_the_real_broker(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    worker = d.start_worker("hostile")
    rng = random.Random(2026)
    samples = SampleEvents(seed=3)
    canaries = sorted(CANARIES.values())
    corpus: dict[str, list[bytes]] = {d.payments.source_topic: [], d.clinical.source_topic: []}
    for i in range(400):
        plan = d.payments if i % 2 else d.clinical
        make = samples.payment if plan is d.payments else samples.clinical_visit
        kind = i % 5
        if kind == 0:  # valid, canaries in PII fields
            value = encode_raw(plan, make(canary=True), rng.choice(["avro", "json"]))
        elif kind == 1:  # corrupted valid event (no canaries: a corruption may shift bytes into kept fields)
            value = encode_raw(plan, make(), rng.choice(["avro", "json"]))
            for _ in range(rng.randint(1, 3)):
                value = mutate(value, rng)
        elif kind == 2:  # random bytes around a canary
            value = rng.randbytes(rng.randint(0, 80)) + rng.choice(canaries).encode() + rng.randbytes(8)
        elif kind == 3:  # JSON of the wrong shape, canaries as values
            value = json.dumps({rng.choice(["email", "x", "amount_minor", "card_number"]): rng.choice(
                [rng.choice(canaries), 2**70, None, [1, 2], {"a": rng.choice(canaries)}]) for _ in range(3)}).encode()
        else:  # empty and oversized
            value = b"" if rng.random() < 0.5 else b"{" + rng.choice(canaries).encode() * 80_000
        corpus[plan.source_topic].append(value)
    for topic, values in corpus.items():
        d.produce(topic, values)
    total = sum(len(v) for v in corpus.values())
    audit = d.wait_for_audit(total, timeout_s=120)
    try:
        assert worker.alive()
        for plan in (d.payments, d.clinical):
            sanitized, dead = d.read(plan.sanitized_topic), d.read(plan.dlq_topic)
            assert len(sanitized) + len(dead) == len(corpus[plan.source_topic])
            assert len(sanitized) >= 30 and len(dead) >= 120  # both paths exercised
        refs = {(e["event"]["topic"], e["event"]["offset"], e["event"]["partition"])
                for e in audit}
        assert len(refs) == total == len(audit)
        blobs = [worker.log().encode()]
        for topic in (d.audit_topic, d.payments.sanitized_topic, d.payments.dlq_topic,
                      d.clinical.sanitized_topic, d.clinical.dlq_topic):
            blobs += [(r.value or b"") + (r.key or b"") for r in d.read(topic)]
        haystack = b"\n".join(blobs)
        assert not [c for c in canaries if c.encode() in haystack]
    finally:
        assert worker.stop() == 0
