"""The leak sentinel through the real worker and broker, at the default `leak_sample_rate` (0.01).

`"leak_sentinel": "enforce"` is a promise about every event: 300 events that carry an e-mail canary
in a kept field must all be dead-lettered (`pii_in_kept_field`) and audited, none published, even
though the worker samples only 1% of events for the observing sentinel. A second source in the same
worker keeps `observe`: it publishes every event and checks a sample of them.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from .conftest import Deployment

pytestmark = pytest.mark.integration

N_LEAKY, N_CLEAN = 300, 20


def _schema(suffix: str, name: str, mode: str) -> dict[str, Any]:
    return {
        "type": "record", "name": name, "namespace": "t.sentinel",
        "privacy": {"source_topic": f"{name.lower()}.raw.{suffix}", "sanitized_topic": f"{name.lower()}.{suffix}",
                    "input": "json", "output": "json", "leak_sentinel": mode},
        "fields": [
            {"name": "event_id", "type": "string", "privacy": "keep"},
            {"name": "comment", "type": "string", "privacy": "keep"},
        ],
    }


def _canary(i: int) -> str:
    return f"leak.canary{i:04d}@example.net"


def _events(prefix: str) -> list[bytes]:
    leaky = [orjson.dumps({"event_id": f"{prefix}{i}", "comment": f"please write to {_canary(i)} today"})
             for i in range(N_LEAKY)]
    clean = [orjson.dumps({"event_id": f"{prefix}c{i}", "comment": "resolved on first contact"})
             for i in range(N_CLEAN)]
    return leaky + clean


def test_enforce_withholds_every_leaking_event_observe_samples(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    enforced, observed = _schema(d.suffix, "Enforced", "enforce"), _schema(d.suffix, "Observed", "observe")
    for schema in (enforced, observed):
        (d.schemas / f"{schema['name'].lower()}.avsc").write_bytes(orjson.dumps(schema))
    worker = d.start_worker("sentinel", partitions=2)  # no --leak-sample-rate: the default 0.01
    try:
        d.produce(enforced["privacy"]["source_topic"], _events("e"))
        d.produce(observed["privacy"]["source_topic"], _events("o"))
        audit = d.wait_for_audit(2 * (N_LEAKY + N_CLEAN))
    finally:
        assert worker.stop() == 0

    source = enforced["privacy"]["source_topic"]
    published = [orjson.loads(r.value) for r in d.read(enforced["privacy"]["sanitized_topic"])]
    dead = [orjson.loads(r.value) for r in d.read(f"{source}.dlq")]
    assert sorted(p["event_id"] for p in published) == sorted(f"ec{i}" for i in range(N_CLEAN))
    assert len(dead) == N_LEAKY and {x["reason"] for x in dead} == {"pii_in_kept_field"}
    mine = [a for a in audit if a.get("event", {}).get("topic") == source]
    assert len(mine) == N_LEAKY + N_CLEAN and len({(a["event"]["partition"], a["event"]["offset"]) for a in mine}) \
        == N_LEAKY + N_CLEAN  # each event audited once
    rejected = [a for a in mine if a["outcome"] == "rejected:pii_in_kept_field"]
    assert len(rejected) == N_LEAKY
    assert all(a["leak_suspected"] == [{"field": "comment", "entity": "EMAIL"}] for a in rejected)

    # observe publishes every event and checks only a sample (binomial(300, 0.01): mean 3)
    observed_out = d.read(observed["privacy"]["sanitized_topic"])
    assert len(observed_out) == N_LEAKY + N_CLEAN
    theirs = [a for a in audit if a.get("event", {}).get("topic") == observed["privacy"]["source_topic"]]
    assert len(theirs) == N_LEAKY + N_CLEAN and {a["outcome"] for a in theirs} == {"sanitized"}
    assert sum(1 for a in theirs if a.get("leak_suspected")) < 30

    # the canaries are nowhere but in the sealed originals: not in the dead letters' clear fields or the audit
    clear = b"".join(orjson.dumps({k: v for k, v in x.items() if k != "original"}) for x in dead)
    clear += b"".join(r.value for r in d.read(d.audit_topic))
    assert not any(_canary(i).encode() in clear for i in range(N_LEAKY))
