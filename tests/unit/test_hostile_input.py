"""Property-based: whatever arrives, every event gets exactly one outcome and one audit event, the
pipeline never raises, and canaries never reach a dead letter, an audit event or (when they sit
in PII fields) a sanitized record."""

from __future__ import annotations

import json
import random
from pathlib import Path

import fastavro
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import tokenizers
from gateway.core.audit import record_entries
from gateway.core.codec.encoding import frame_confluent
from gateway.core.codec.raw import strip_logical_types
from gateway.core.codec.writer import avro_bytes, json_bytes
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan
from gateway.embedded.samples import CANARIES
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig
from tests.hostile import avro_values, mutate

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
PLANS = {p.source_topic: p for p in load_plans(SCHEMAS)}
CANARY_BYTES = [c.encode() for c in CANARIES.values()]
_PIPELINES: dict[str, Pipeline] = {}


def pipeline(tmp_dir: Path) -> Pipeline:
    key = str(tmp_dir)
    if key not in _PIPELINES:
        config = GatewayConfig(keyring=tmp_dir / "k.json", instance_id="prop", max_field_bytes=4096,
                               max_record_bytes=65536)
        ring = Keyring.open(config.keyring)
        _PIPELINES[key] = Pipeline(list(PLANS.values()), ring, config, 3, tokenizers(ring, list(PLANS.values())))
    return _PIPELINES[key]


def _pii_paths(plan: Plan) -> frozenset[str]:
    return frozenset(p for p, a in plan.field_actions.items() if a != "keep")


def _record_strategy(plan: Plan) -> st.SearchStrategy[dict]:
    stripped = fastavro.parse_schema(strip_logical_types(plan.schema.raw))
    return avro_values(stripped, stripped["__named_schemas"], _pii_paths(plan))


def _encode(plan: Plan, record: dict, encoding: str) -> bytes:
    stripped = fastavro.parse_schema(strip_logical_types(plan.schema.raw))
    if encoding == "json":
        return json_bytes(record)
    payload = avro_bytes(stripped, record)
    return frame_confluent(plan.schema_id, payload) if encoding == "confluent" and plan.schema_id else payload


def _check(pipe: Pipeline, events: list[RawEvent], sanitized_may_hold_canaries: bool) -> None:
    result = pipe.process(events)
    audits = [r for r in result.records if r.topic == pipe.audit_topic]
    outcomes = [r for r in result.records if r.topic != pipe.audit_topic]
    entries = record_entries(a.value for a in audits)
    assert len(entries) == len(events) and len(outcomes) == len(events)
    assert len(audits) == len({(e.topic, e.partition) for e in events})  # one audit record per source partition
    for record in result.records:
        is_sanitized = record.topic.endswith(".sanitized")
        if is_sanitized and sanitized_may_hold_canaries:
            continue
        blob = record.value + (record.key or b"") + b"".join(v for _, v in record.headers or [])
        assert not any(c in blob for c in CANARY_BYTES), record.topic
    refs = [(e["event"]["partition"], e["event"]["offset"]) for e in entries]
    assert sorted(refs) == sorted((e.partition, e.offset) for e in events)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), topic=st.sampled_from(sorted(PLANS)), encoding=st.sampled_from(["confluent", "avro", "json"]))
def test_valid_records_with_canaries_in_pii_fields_never_leak(tmp_path_factory, data, topic, encoding) -> None:
    pipe = pipeline(tmp_path_factory.getbasetemp())
    plan = PLANS[topic]
    record = data.draw(_record_strategy(plan))
    value = _encode(plan, record, encoding)
    _check(pipe, [RawEvent(topic, 0, 0, 0, None, value, None)], sanitized_may_hold_canaries=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), topic=st.sampled_from(sorted(PLANS)), seed=st.integers(0, 2**32 - 1),
       encoding=st.sampled_from(["confluent", "avro", "json"]))
def test_corrupted_records_get_exactly_one_outcome(tmp_path_factory, data, topic, seed, encoding) -> None:
    pipe = pipeline(tmp_path_factory.getbasetemp())
    plan = PLANS[topic]
    rng = random.Random(seed)
    value = _encode(plan, data.draw(_record_strategy(plan)), encoding)
    for _ in range(rng.randint(1, 3)):
        value = mutate(value, rng)
    # a corruption can move canary bytes into a kept field of a still-valid record: only dead
    # letters and audit events are held to "no canary" here
    _check(pipe, [RawEvent(topic, 0, 0, 0, None, value, [("h", b"x")])], sanitized_may_hold_canaries=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda b, c: b + c.encode(), st.binary(max_size=50), st.sampled_from(sorted(CANARIES.values()))),
    st.dictionaries(st.text(max_size=12), st.one_of(st.integers(), st.text(max_size=20), st.none(),
                                                   st.sampled_from(sorted(CANARIES.values())))).map(
        lambda d: json.dumps(d).encode()),  # stdlib json: big integers included
), min_size=1, max_size=20), topic=st.sampled_from(sorted(PLANS)))
def test_random_bytes_and_json_junk_never_stop_the_pipeline(tmp_path_factory, values, topic) -> None:
    pipe = pipeline(tmp_path_factory.getbasetemp())
    events = [RawEvent(topic, 1, i, 0, b"key", v, None) for i, v in enumerate(values)]
    _check(pipe, events, sanitized_may_hold_canaries=True)


def test_a_dead_letter_always_fits_the_producer_limit(tmp_path: Path) -> None:
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="size", max_record_bytes=65_536)
    ring = Keyring.open(config.keyring)
    pipe = Pipeline(list(PLANS.values()), ring, config, 3, tokenizers(ring, list(PLANS.values())))
    rng = random.Random(1)
    for size in (60_000, 63_436, 63_437, 500_000):  # sealed, at the limit, just over, far over
        value = b"\x07" + rng.randbytes(size - 1)
        headers = [("h", rng.randbytes(2_000))]
        dead = pipe.process([RawEvent("payments.raw", 0, size, 0, rng.randbytes(100), value, headers)]).records[0]
        assert dead.topic == "payments.raw.dlq" and len(dead.value) <= pipe.max_output_bytes
        letter = orjson.loads(dead.value)
        assert (letter["sealed"] is None) == (size + 2_100 > config.max_record_bytes)
