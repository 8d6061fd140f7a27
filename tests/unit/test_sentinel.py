"""The leak sentinel: PII in a kept field is counted and audited (never its value), and dead-lettered
when the policy enforces it."""

from __future__ import annotations

import gc
import random
from pathlib import Path
from typing import Any

import orjson

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.compiler import compile_plan
from gateway.core.sentinel import LeakSentinel
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

LEAK = "leaky.person@example.com"


def _schema(mode: str | None) -> dict[str, Any]:
    privacy: dict[str, Any] = {"source_topic": "n.raw", "sanitized_topic": "n.sanitized", "output": "json"}
    if mode is not None:
        privacy["leak_sentinel"] = mode
    return {"type": "record", "name": "Note", "namespace": "t", "privacy": privacy, "fields": [
        {"name": "comment", "type": "string", "privacy": "keep"},
        {"name": "amount", "type": "long", "privacy": "keep"},
        {"name": "lines", "privacy": "keep", "type": {"type": "array", "items": {
            "type": "record", "name": "Line", "fields": [{"name": "label", "type": "string", "privacy": "keep"}]}}},
    ]}


def _pipeline(write_schema: Any, tmp_path: Path, mode: str | None, rate: float) -> Pipeline:
    plan = compile_plan(load_schema_file(write_schema(_schema(mode))))
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t", leak_sample_rate=rate)
    ring = Keyring.open(tmp_path / "k.json")
    return Pipeline([plan], ring, config, 1, tokenizers(ring, [plan]))


def _events(records: list[dict[str, Any]]) -> list[RawEvent]:
    return [RawEvent("n.raw", 0, i, 0, None, orjson.dumps(r), None) for i, r in enumerate(records)]


CLEAN = {"comment": "all good", "amount": 5, "lines": [{"label": "coffee"}]}
LEAKY = {"comment": f"call me at {LEAK}", "amount": 5, "lines": [{"label": "tea"}]}
NESTED = {"comment": "fine", "amount": 5, "lines": [{"label": "x"}, {"label": f"to {LEAK}"}]}


def test_observe_mode_counts_and_audits_without_the_value(write_schema, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, None, rate=1.0)
    result = pipeline.process(_events([CLEAN, LEAKY, NESTED]))
    audit = record_entries(r.value for r in result.records if r.topic == "privacy.audit")
    assert [a["outcome"] for a in audit] == ["sanitized"] * 3  # observed, still published
    assert [a.get("leak_suspected") for a in audit] == [
        None, [{"field": "comment", "entity": "EMAIL"}], [{"field": "lines[].label", "entity": "EMAIL"}]]
    assert result.counts.leaks[("n.raw", "comment", "EMAIL")] == 1
    assert result.counts.leaks[("n.raw", "lines[].label", "EMAIL")] == 1
    assert LEAK.encode() not in b"".join(r.value for r in result.records if r.topic == "privacy.audit")


def test_enforce_mode_dead_letters_the_event(write_schema, tmp_path: Path) -> None:
    pipeline = _pipeline(write_schema, tmp_path, "enforce", rate=1.0)
    result = pipeline.process(_events([CLEAN, LEAKY]))
    by_topic = {t: [orjson.loads(r.value) for r in result.records if r.topic == t]
                for t in ("n.sanitized", "n.raw.dlq")}
    by_topic["privacy.audit"] = record_entries(r.value for r in result.records if r.topic == "privacy.audit")
    assert [s["comment"] for s in by_topic["n.sanitized"]] == ["all good"]
    assert [d["reason"] for d in by_topic["n.raw.dlq"]] == ["pii_in_kept_field"]
    assert "comment (EMAIL)" in by_topic["n.raw.dlq"][0]["message"]
    assert LEAK not in by_topic["n.raw.dlq"][0]["message"]
    assert [a["outcome"] for a in by_topic["privacy.audit"]] == ["sanitized", "rejected:pii_in_kept_field"]


def test_enforce_checks_every_event_whatever_the_sample_rate(write_schema, tmp_path: Path) -> None:
    # enforce on a sample would publish (1 - rate) of the leaking events: it must look at each one
    for rate in (0.0, 0.01, 0.5):
        result = _pipeline(write_schema, tmp_path, "enforce", rate=rate).process(_events([LEAKY, NESTED] * 150))
        assert not any(r.topic == "n.sanitized" for r in result.records), rate
        assert sum(r.topic == "n.raw.dlq" for r in result.records) == 300, rate
        audit = record_entries(r.value for r in result.records if r.topic == "privacy.audit")
        assert [a["outcome"] for a in audit] == ["rejected:pii_in_kept_field"] * 300
        assert all(a["leak_suspected"] for a in audit)


def test_observe_samples_at_the_rate_and_off_disables(write_schema, tmp_path: Path) -> None:
    none = _pipeline(write_schema, tmp_path, None, rate=0.0).process(_events([LEAKY] * 50))
    assert not any("leak_suspected" in a for a in record_entries(
        r.value for r in none.records if r.topic == "privacy.audit"))
    off = _pipeline(write_schema, tmp_path, "off", rate=1.0).process(_events([LEAKY] * 50))
    assert not any(r.topic == "n.raw.dlq" for r in off.records)
    assert not any("leak_suspected" in a for a in record_entries(
        r.value for r in off.records if r.topic == "privacy.audit"))
    some = _pipeline(write_schema, tmp_path, "observe", rate=0.5).process(_events([LEAKY] * 400))
    assert sum(r.topic == "n.sanitized" for r in some.records) == 400  # observed, all published
    audit = record_entries(r.value for r in some.records if r.topic == "privacy.audit")
    seen = sum("leak_suspected" in a for a in audit)
    assert 140 < seen < 260  # binomial(400, 0.5): mean 200, sd 10


def test_enforce_sentinel_is_active_at_rate_zero(write_schema, tmp_path: Path) -> None:
    plan = compile_plan(load_schema_file(write_schema(_schema("enforce"))))
    sentinel = LeakSentinel(plan, 0.0, random.Random(1))
    assert sentinel.active and all(sentinel.sampled() for _ in range(1000))
    observe = LeakSentinel(compile_plan(load_schema_file(write_schema(_schema("observe")))), 0.0)
    assert not observe.active


def _deep_schema() -> dict[str, Any]:
    line = {"type": "record", "name": "Line", "fields": [{"name": "label", "type": "string", "privacy": "keep"}]}
    return {"type": "record", "name": "Deep", "namespace": "t", "privacy": {
        "source_topic": "d.raw", "sanitized_topic": "d.sanitized", "output": "json", "leak_sentinel": "enforce"},
        "fields": [
            {"name": "address", "privacy": "keep", "type": {"type": "record", "name": "Address", "fields": [
                {"name": "street", "type": "string", "privacy": "keep"},
                {"name": "lines", "privacy": "keep", "type": {"type": "array", "items": line}}]}},
            {"name": "tags", "privacy": "keep", "type": {"type": "map", "values": "string"}},
            {"name": "by_name", "privacy": "keep", "type": {"type": "map", "values": "t.Line"}},
            {"name": "grid", "privacy": "keep",
             "type": {"type": "array", "items": {"type": "array", "items": "string"}}},
        ]}


def test_the_walk_reaches_every_nested_shape_and_leaves_no_reference_cycle(write_schema) -> None:
    """Nested records, arrays of records in them, maps of strings and of records, arrays of arrays: a
    leak in each is found under its path. The walkers are built once: checking thousands of events
    leaves nothing for the garbage collector (a closure built per nested record did, one cycle each)."""
    sentinel = LeakSentinel(compile_plan(load_schema_file(write_schema(_deep_schema()))), 1.0)
    clean: dict[str, Any] = {"address": {"street": "Main St", "lines": [{"label": "a"}]}, "tags": {"k": "v"},
                             "by_name": {"n": {"label": "b"}}, "grid": [["c", "d"]]}
    leaks = {"address.street": {**clean, "address": {"street": LEAK, "lines": []}},
             "address.lines[].label": {**clean, "address": {"street": "x", "lines": [{"label": "y"}, {"label": LEAK}]}},
             "tags": {**clean, "tags": {"k": "v", "j": LEAK}},
             "by_name{}.label": {**clean, "by_name": {"n": {"label": LEAK}}},
             "grid": {**clean, "grid": [["c"], ["d", LEAK]]}}
    assert sentinel.check(clean) == []
    for path, record in leaks.items():
        assert [hit_path for hit_path, _ in sentinel.check(record)] == [path]
    gc.collect()
    gc.disable()
    try:
        for _ in range(2000):
            sentinel.check(clean)
            sentinel.check(leaks["by_name{}.label"])
        assert gc.collect() == 0
    finally:
        gc.enable()
