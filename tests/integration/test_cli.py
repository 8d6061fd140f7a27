"""The command-line promises: policy lint/show, dump, one-line errors against an unreachable broker,
and `gateway demo` end to end (its own broker)."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fastavro
import orjson
import pytest

from gateway.embedded.broker import free_port
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents

from .conftest import ENV, REPO, Deployment, cli


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
def test_demo_runs_end_to_end_and_loses_nothing(tmp_path: Path) -> None:
    """... shows each step of the tour with what the gateway really did (consent gating a purpose
    view, a DP release and the budget's refusal, forget and decrypt, audit verify and the HTML
    report), prints no log line of the gateway or librdkafka (they go to the kept demo.log), and,
    having succeeded, leaves nothing behind in the temporary directory (its folder, the broker's
    data and log) and names no log it has removed."""
    tmp, kept = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    env = dict(ENV, TMPDIR=str(tmp))  # the demo's temporary files go here, and only here
    result = subprocess.run([sys.executable, "-m", "gateway", "demo", "--events", "120", "--out", str(kept)],
                            capture_output=True, timeout=300, env=env, cwd=REPO)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, out + err
    # 2 x 120 valid sample events, 13 broken payments, 3 subjects x 6 payments in the consent step
    assert re.search(r"published\s+271\b", out) and re.search(r"sanitized\s+258\b", out)
    assert re.search(r"dead-lettered\s+13\b", out) and re.search(r"lost\s+0\b", out)
    assert re.search(r"audited\s+271\s+\(hash chains: verified", out)
    assert "decrypted      252/258" in out and "(6 of the forgotten subject: key_erased)" in out
    assert "RAW (producer)" in out and "stopped the gateway (exit 0), the aggregate worker (exit 0)" in out
    # progress: the phases and the final count, one line each on a pipe (no carriage returns)
    assert "\r" not in out and re.search(r"^  253/253 events audited", out, re.M)  # the samples (step 4)
    # consent: the revoker's view stops at the revocation, the others' do not; subjects as tokens
    assert re.search(r"^     user-90001 = tok_v1_\S+  6 of 6$", out, re.M)
    assert re.search(r"^     user-90002 = tok_v1_\S+  3 of 6  <- revoked mid-run: 3 withheld \(audited\)$", out, re.M)
    assert re.search(r"^     user-90003 = tok_v1_\S+  6 of 6$", out, re.M)
    # DP: a noisy release with its epsilon and the budget left, then the refusal and the spent budget
    assert re.search(r"released on 'payments.raw.aggregates': (\w+ -?\d+, )*\w+ -?\d+ \(noisy counts, \+/-\d+ at 95%, "
                     r"epsilon 1, discrete_laplace", out), out
    assert re.search(r"ledger: \d+ window\(s\) charged through this one .*: \d+ of cap 10 spent, [1-9]\d* left", out)
    assert re.search(r": refused:budget_epsilon_cap \(audited; nothing published\)", out)
    assert ("gateway budget show: budget subject:customer: latest 3600 s period: 10 of cap 10, remaining 0"
            in out)
    # forget: the forgotten subject's per-subject field is erased, everyone else's opens
    assert "1 key(s) erased; user-90001's customer_name: 6 key_erased; everyone else's: 132 decrypted" in out
    # audit verify and the report, kept
    assert re.search(r"audit chain OK: \d+ events in \d+ records, \d+ chains", out)
    assert f"report written to {kept / 'report.html'}" in out
    assert (kept / "report.html").read_text().lstrip().lower().startswith("<!doctype html")
    # no library or gateway log line on the terminal: they are in the kept log file
    for text in (out, err):
        assert not re.search(r"^%\d+\|", text, re.M), text  # librdkafka's own format
        assert not re.search(r'^\{"', text, re.M), text  # the gateway's JSON log lines ({"time": ...)
    assert '"msg":"created topics"' in (kept / "demo.log").read_text()
    tail = out.split("9. stopped", 1)[1]
    assert f"kept in {kept}: report.html" in tail and "log" not in tail.replace("demo.log", "")
    assert "gateway-demo-" not in out
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in kept.iterdir()) == ["demo.log", "report.html"]


def test_produce_samples_sends_current_events_and_a_broken_one_per_thousand(fresh_deployment: Deployment) -> None:
    """The compose stack's sample producer: N valid events per schema stamped with the current
    time (so DP windows close), one broken payment per 1,000, all decodable with the raw schemas."""
    import time

    from gateway.core.codec.raw import EventDecoder

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


def test_policy_lint_takes_a_file_and_show_lists_the_aggregates() -> None:
    lint = cli("policy", "lint", str(REPO / "schemas" / "payments.avsc"))
    assert lint.returncode == 0, lint.stdout
    out = lint.stdout.decode()
    assert "user_agent: no privacy annotation" in out and 'annotate it "keep", {"tokenize": {"domain": D}}' in out
    assert "0 error(s), 1 warning(s)" in out
    show = cli("policy", "show", str(REPO / "schemas" / "payments.avsc"))
    assert show.returncode == 0, show.stderr
    aggregates = show.stdout.decode().split("aggregates:\n", 1)[1].split("sanitized schema:", 1)[0]
    assert re.search(r"spend_by_country: sum\(amount_minor\) by country", aggregates)
    assert "epsilon 1, delta 1e-06 per window" in aggregates and "budget subject:customer" in aggregates


def _run_in(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, timeout=timeout, env=ENV,
                          cwd=cwd)


def test_an_unreachable_broker_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    """No librdkafka FAIL lines, no traceback: the broker named, the cause said, exit 2."""
    dead = f"127.0.0.1:{free_port()}"
    schemas = tmp_path / "schemas"
    schemas.mkdir()
    (schemas / "thing.avsc").write_bytes(orjson.dumps({  # no lint warning: run prints nothing else
        "type": "record", "name": "Thing", "namespace": "t",
        "privacy": {"source_topic": "things.raw", "subject": "uid", "output": "avro"},
        "fields": [{"name": "uid", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
                   {"name": "n", "type": "long", "privacy": "keep"}]}))
    keyring = tmp_path / "keyring.json"
    assert _run_in(tmp_path, "keys", "init", "--keyring", str(keyring), "--schemas", str(schemas)).returncode == 0
    identifier = tmp_path / "subject.txt"  # forget reads the identifier from a file or stdin, never argv
    identifier.write_text("someone\n")
    commands = {
        "dump": ["dump", "--bootstrap", dead, "--topic", "things.raw"],
        "audit": ["audit", "verify", "--bootstrap", dead, "--keyring", str(keyring)],
        "forget": ["forget", "--file", str(identifier), "--domain", "customer", "--bootstrap", dead,
                   "--keyring", str(keyring), "--schemas", str(schemas)],
        "run": ["run", "--bootstrap", dead, "--schemas", str(schemas), "--keyring", str(keyring)],
    }
    with ThreadPoolExecutor(len(commands)) as pool:
        results = dict(zip(commands, pool.map(lambda a: _run_in(tmp_path, *a), commands.values()), strict=True))
    for name, result in results.items():
        lines = result.stderr.decode().strip().splitlines()
        assert result.returncode == 2, (name, result.stderr.decode()[-2000:])
        assert len(lines) == 1, (name, lines[:5])
        assert lines[0].startswith(f"gateway {name}: cannot reach Kafka at {dead}: "), lines[0]
        assert "Connection refused" in lines[0] and "Traceback" not in lines[0]


def test_dump_without_schemas_and_of_binary_values(fresh_deployment: Deployment, tmp_path: Path) -> None:
    """The Compose example (docs/operations/deploy.md) omits --schemas: JSON sanitized records print as they are, Avro
    ones base64-encoded with one note; a raw topic's binary values print base64-encoded, never raw."""
    d = fresh_deployment
    worker = d.start_worker("dump")
    samples = SampleEvents(seed=9)
    payments = [samples.payment() for _ in range(6)]
    encodings = ["avro", "json"] * 3
    d.produce(d.payments.source_topic, [encode_raw(d.payments, r, e) for r, e in zip(payments, encodings,
                                                                                      strict=True)], partition=0)
    try:
        d.wait_for_audit(6)
    finally:
        assert worker.stop() == 0
    log = worker.log()
    assert f'"msg":"waiting for partition assignment","loop":"sanitize","group_id":"{d.group_id}"' in log
    assert re.search(r'"msg":"partitions assigned".*"waited_s":', log)
    nowhere = tmp_path / "elsewhere"  # no ./schemas: the default directory does not exist
    nowhere.mkdir()
    topic = d.payments.sanitized_topic
    bare = _run_in(nowhere, "dump", "--bootstrap", d.bootstrap, "--topic", topic)
    assert bare.returncode == 0, bare.stderr.decode()
    lines = [orjson.loads(line) for line in bare.stdout.splitlines()]
    assert len(lines) == 6
    as_json = [line for line in lines if "event_id" in line]
    encoded = [line for line in lines if line.get("value_encoding") == "base64"]
    assert {r["event_id"] for r in as_json} == {p["event_id"] for p, e in zip(payments, encodings, strict=True)
                                               if e == "json"}
    assert len(encoded) == 3 and {r["schema"] for r in encoded} == {d.payments.sanitized_schema["name"]}
    note = bare.stderr.decode().strip().splitlines()
    assert len(note) == 1 and note[0].startswith(f"note: 3 Avro record(s) of '{topic}'") and "--schemas" in note[0]
    full = _run_in(nowhere, "dump", "--bootstrap", d.bootstrap, "--topic", topic, "--schemas", str(d.schemas))
    assert full.returncode == 0 and not full.stderr, full.stderr.decode()
    decoded = [orjson.loads(line) for line in full.stdout.splitlines()]
    assert sorted(r["event_id"] for r in decoded) == sorted(p["event_id"] for p in payments)
    raw = _run_in(nowhere, "dump", "--bootstrap", d.bootstrap, "--topic", d.payments.source_topic)
    assert raw.returncode == 0, raw.stderr.decode()
    values = [orjson.loads(line) for line in raw.stdout.splitlines()]  # every line is JSON: no raw bytes
    assert [v.get("value_encoding") == "base64" for v in values] == [e == "avro" for e in encodings]
    originals = [encode_raw(d.payments, r, e) for r, e in zip(payments, encodings, strict=True)]
    assert [base64.b64decode(v["value"]) for v in values if "value_encoding" in v] == \
        [o for o, e in zip(originals, encodings, strict=True) if e == "avro"]
