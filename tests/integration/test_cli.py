"""The command-line promises: policy lint/show, and `gateway demo` end to end (its own broker)."""

from __future__ import annotations

import re
from pathlib import Path

import fastavro
import orjson
import pytest

from .conftest import REPO, Deployment, cli


def test_policy_lint_passes_the_examples_and_names_dropped_fields() -> None:
    result = cli("policy", "lint", str(REPO / "schemas"))
    assert result.returncode == 0, result.stdout
    assert b"payments.avsc: user_agent: no privacy annotation" in result.stdout
    assert b"0 error(s)" in result.stdout


def test_policy_lint_lists_every_error_and_fails(tmp_path: Path) -> None:
    schema = {
        "type": "record", "name": "Bad", "namespace": "t",
        "privacy": {"subject": "nobody", "sanitized_topic": "bad.out", "colour": "blue"},
        "fields": [
            {"name": "amount", "type": "long", "privacy": {"tokenize": {"domain": "x"}}},
            {"name": "email", "type": "string", "privacy": "scramble"},
            {"name": "name", "type": "string", "privacy": {"tokenize": {}}},
        ],
    }
    (tmp_path / "bad.avsc").write_bytes(orjson.dumps(schema))
    result = cli("policy", "lint", str(tmp_path))
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "unknown privacy setting 'colour'" in out
    assert "amount: tokenize applies to strings" in out
    assert "email: unknown action 'scramble'" in out
    assert "name: tokenize needs a domain" in out
    assert "subject field 'nobody' does not exist" in out
    assert re.search(r"^5 error\(s\)", out, re.M)


def test_policy_show_prints_plan_and_a_valid_sanitized_schema() -> None:
    result = cli("policy", "show", str(REPO / "schemas" / "clinical_visits.avsc"))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert re.search(r"procedures\[\]\.notes\s+encrypt", out)
    assert re.search(r"patient_id\s+tokenize:patient", out)
    schema = orjson.loads(out.split("sanitized schema:\n", 1)[1])
    parsed = fastavro.parse_schema(schema)
    names = [f["name"] for f in parsed["fields"]]
    assert "patient_name" not in names and "patient_id" in names


@pytest.mark.integration
def test_demo_runs_end_to_end_and_loses_nothing() -> None:
    result = cli("demo", "--events", "30", timeout=300)
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert re.search(r"published\s+73\b", out) and re.search(r"sanitized\s+60\b", out)
    assert re.search(r"dead-lettered\s+13\b", out) and re.search(r"lost\s+0\b", out)
    assert "hash chains: verified" in out and "decrypted      60/60" in out
    assert "RAW (producer)" in out and "stopped the gateway (exit 0)" in out


def test_produce_samples_sends_current_events_and_a_broken_one_per_thousand(fresh_deployment: Deployment) -> None:
    """The compose stack's sample producer: N valid events per schema stamped with the current
    time (so DP windows close), one broken payment per 1,000, all decodable with the raw schemas."""
    import time

    from gateway.schema import EventDecoder

    d = fresh_deployment
    started_ms = int(time.time() * 1000)
    result = cli("produce-samples", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas), "--count", "1000")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert b'"msg":"samples produced"' in result.stderr
    for plan, time_field in ((d.payments, "occurred_at"), (d.clinical, "visit_time")):
        records = d.read(plan.source_topic)
        decoder = EventDecoder(plan.schema, plan.input_mode, plan.schema_id, 1_048_576)
        decoded, failed = [], 0
        for r in records:
            try:
                decoded.append(decoder.decode(r.value or b"")[0])
            except Exception:
                failed += 1
        assert len(decoded) == 1000
        assert failed == (1 if plan is d.payments else 0)
        assert all(started_ms - 1000 <= rec[time_field] <= int(time.time() * 1000) for rec in decoded)
