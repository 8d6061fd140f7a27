"""`gateway scan` on the real broker: a raw topic with planted PII, sampled from its end and its
beginning; the report names the right fields and entities and never a value; --write-policy writes
a policy that lints, and a worker running it leaves no planted value in clear."""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from gateway.core.detectors import detector
from gateway.embedded.broker import free_port
from gateway.runtime.reader import read_topic

from .conftest import _STARTED, ENV, REPO, cli

pytestmark = pytest.mark.integration
N_EVENTS = 300
PARTITIONS = 3
CANARIES = {
    "email": "canary.scan.person@example.org",
    "card": "4111111111111111",
    "ip": "203.0.113.77",
    "phone": "+1 415 267 0199",
    "note": "Quillfeather",  # a word only the first note holds
}
_WORDS = ["parcel", "arrived", "late", "customer", "asked", "for", "a", "refund", "box", "was", "damaged"]
# the end-to-end part needs the operators the written policy uses (mask, redact, tokenize
# normalizers) in the worker; set to False to skip it where they have not landed
OPERATORS_LANDED = True
# gateway.core.detectors misses a phone number at the very start of a value (see tests/unit/test_scan.py)
WHOLE_VALUE_PHONES = bool(detector().find("+1 650 253 0000"))


def _luhn(rng: random.Random) -> str:
    digits = [4] + [rng.randint(0, 9) for _ in range(14)]
    total = sum((d * 2 - 9 if d * 2 > 9 else d * 2) if i % 2 == 0 else d for i, d in enumerate(reversed(digits)))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def _event(rng: random.Random, i: int) -> dict[str, Any]:
    email = f"{rng.choice(['ada', 'alan', 'grace'])}.{rng.randint(1, 99_999)}@example.com"
    note = " ".join(rng.sample(_WORDS, 7))
    if i % 5 == 0:
        note += f" - reach me at {CANARIES['email'] if i == 0 else email}"
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "email": CANARIES["email"] if i == 0 else email,
        "phone": CANARIES["phone"] if i == 0 else f"+1 415 2{rng.randint(10, 99)} {rng.randint(1000, 9999)}",
        "card": CANARIES["card"] if i == 0 else _luhn(rng),
        "client_ip": CANARIES["ip"] if i == 0 else f"198.51.100.{rng.randint(1, 254)}",
        "notes": f"{CANARIES['note']} {note}" if i == 0 else note,
        "country": rng.choice(["DE", "FR", "PT", "IE"]),
        "amount_minor": rng.randint(100, 90_000),
        "address": {"city": rng.choice(["Berlin", "Paris", "Lisbon"]),
                    "contact": CANARIES["email"] if i == 0 else email},
        "tags": {"campaign": rng.choice(["spring", "summer"])},
    }


def _schema(topic: str) -> dict[str, Any]:
    return {"type": "record", "name": "Signup", "namespace": "test.scan",
            "privacy": {"source_topic": topic, "sanitized_topic": f"{topic}.sanitized", "event_id": "event_id"},
            "fields": [
                {"name": "event_id", "type": "string", "privacy": "keep"},
                {"name": "email", "type": "string"},
                {"name": "phone", "type": ["null", "string"], "default": None},
                {"name": "card", "type": "string"},
                {"name": "client_ip", "type": "string"},
                {"name": "notes", "type": ["null", "string"], "default": None},
                {"name": "country", "type": "string", "privacy": "keep"},
                {"name": "amount_minor", "type": "long"},
                {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
                    {"name": "city", "type": "string"}, {"name": "contact", "type": "string", "privacy": "keep"}]}},
                {"name": "tags", "type": {"type": "map", "values": "string"}},
            ]}


class Raw:
    def __init__(self, bootstrap: str, root: Path) -> None:
        self.bootstrap = bootstrap
        self.suffix = uuid.uuid4().hex[:8]
        self.topic = f"signups.raw.{self.suffix}"
        self.schemas = root / "schemas"
        self.schemas.mkdir()
        (self.schemas / "signup.avsc").write_bytes(orjson.dumps(_schema(self.topic), option=orjson.OPT_INDENT_2))
        other = dict(_schema(f"other.raw.{self.suffix}"), name="Other")  # a second schema the scan must not pick
        (self.schemas / "other.avsc").write_bytes(orjson.dumps(other))
        self.root = root


@pytest.fixture(scope="module")
def raw(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Raw:
    r = Raw(bootstrap, tmp_path_factory.mktemp("scan"))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(r.topic, PARTITIONS, 1)]).values():
        future.result(30)
    rng = random.Random(21)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    failed: list[str] = []
    for i in range(N_EVENTS):
        value = orjson.dumps(_event(rng, i))
        producer.produce(r.topic, value, partition=i % PARTITIONS,
                         on_delivery=lambda err, _m: failed.append(err.name()) if err else None)
    producer.produce(r.topic, b'{"not": "a signup"}', partition=0)  # counted as undecodable, never shown
    assert producer.flush(30) == 0 and not failed
    return r


def _no_canary(*outputs: bytes) -> None:
    for out in outputs:
        for canary in CANARIES.values():
            assert canary.encode() not in out, canary
        assert b"example.com" not in out and b"198.51.100." not in out


def test_scan_json_names_the_pii_fields_and_writes_a_policy_that_lints(raw: Raw) -> None:
    policy = raw.root / "written" / "signup.avsc"
    policy.parent.mkdir()
    result = cli("scan", "--bootstrap", raw.bootstrap, "--topic", raw.topic, "--schemas", str(raw.schemas),
                 "--from", "beginning", "--json", "--write-policy", str(policy))
    assert result.returncode == 0, result.stderr.decode()
    _no_canary(result.stdout, result.stderr)
    report = orjson.loads(result.stdout)
    assert report["schema"] == "test.scan.Signup" and report["topic"] == raw.topic
    assert report["sample"]["read"] == N_EVENTS + 1 and report["sample"]["events"] == N_EVENTS
    assert report["sample"]["undecodable"] == 1 and report["sample"]["partitions"] == PARTITIONS
    rows = {row["path"]: row for row in report["fields"]}
    assert rows["email"]["entities"]["EMAIL"]["whole"] == 1.0
    assert rows["email"]["policy"] == {"tokenize": {"domain": "email", "normalizer": "email"}}
    if WHOLE_VALUE_PHONES:  # see tests/unit/test_scan.py: a detector bug misses phones at the start of a value
        assert rows["phone"]["policy"] == {"tokenize": {"domain": "phone", "normalizer": "phone"}}
    assert rows["card"]["entities"]["CARD"]["whole"] > 0.99 and rows["card"]["policy"] == {"mask": {"keep_last": 4}}
    assert rows["client_ip"]["policy"] == {"tokenize": {"domain": "ip"}}
    assert rows["notes"]["free_text"] and rows["notes"]["policy"] == {"redact": {}}
    assert 0.15 < rows["notes"]["entities"]["EMAIL"]["rate"] < 0.25
    assert rows["event_id"]["identifier_like"] and rows["event_id"]["change"] == "kept"  # no PII: keep stays
    assert rows["country"]["entities"] == {} and rows["country"]["policy"] == "keep"
    assert rows["address.contact"]["change"] == "replaced"  # annotated keep, holds emails
    assert rows["address.city"]["policy"] == "keep" and rows["tags{}"]["policy"] == "keep"
    assert rows["amount_minor"]["policy"] == "keep"
    assert "policy written to" in result.stderr.decode()
    lint = cli("policy", "lint", str(policy.parent))
    assert lint.returncode == 0, lint.stdout.decode()
    assert "0 error(s)" in lint.stdout.decode()


def test_scan_from_the_end_reads_the_last_events_of_each_partition(raw: Raw) -> None:
    result = cli("scan", "--bootstrap", raw.bootstrap, "--topic", raw.topic, "--schemas", str(raw.schemas),
                 "--sample", "30", "--json")
    assert result.returncode == 0, result.stderr.decode()
    report = orjson.loads(result.stdout)
    assert report["sample"]["from"] == "end" and report["sample"]["read"] == 30  # 10 of each of 3 partitions
    table = cli("scan", "--bootstrap", raw.bootstrap, "--topic", raw.topic, "--schemas", str(raw.schemas),
                "--sample", "50")
    assert table.returncode == 0, table.stderr.decode()
    _no_canary(result.stdout, result.stderr, table.stdout, table.stderr)
    text = table.stdout.decode()
    assert "address.contact" in text and "EMAIL" in text and "tokenize:email (email)" in text


def test_scan_errors_are_one_clear_line(raw: Raw) -> None:
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = cli("scan", "--bootstrap", dead, "--topic", raw.topic, "--schemas", str(raw.schemas),
                 "--timeout-s", "3")
    assert result.returncode == 2 and time.monotonic() - started < 30
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gateway scan: cannot read metadata") and raw.topic in lines[0]
    missing = cli("scan", "--bootstrap", raw.bootstrap, "--topic", "no.such.topic", "--schemas", str(raw.schemas))
    assert missing.returncode == 2 and "no schema in" in missing.stderr.decode()
    absent = cli("scan", "--bootstrap", raw.bootstrap, "--topic", f"absent.{raw.suffix}",
                 "--schema", str(raw.schemas / "signup.avsc"))
    assert absent.returncode == 2 and "does not exist" in absent.stderr.decode()


@pytest.mark.skipif(not OPERATORS_LANDED, reason="the worker does not run mask/redact/normalizers yet")
def test_a_worker_running_the_written_policy_leaves_no_canary_in_clear(raw: Raw) -> None:
    """END TO END (needs the mask, redact and tokenize-normalizer operators in the worker)."""
    schemas = raw.root / "e2e"
    schemas.mkdir()
    policy = schemas / "signup.avsc"
    result = cli("scan", "--bootstrap", raw.bootstrap, "--topic", raw.topic, "--schema",
                 str(raw.schemas / "signup.avsc"), "--from", "beginning", "--json", "--write-policy", str(policy))
    assert result.returncode == 0, result.stderr.decode()
    log_path = raw.root / "worker.log"
    with open(log_path, "ab") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--bootstrap", raw.bootstrap, "--schemas", str(schemas),
             "--keyring", str(raw.root / "keyring.json"), "--audit-topic", f"privacy.audit.{raw.suffix}",
             "--group-id", f"scan-{raw.suffix}", "--instance-id", "scan-worker", "--partitions", str(PARTITIONS),
             "--session-timeout-ms", "6000"], stdout=handle, stderr=subprocess.STDOUT, env=ENV, cwd=REPO)
        _STARTED.append(proc)
        try:
            sanitized_topic = f"{raw.topic}.sanitized"
            deadline = time.monotonic() + 60
            records: list[Any] = []
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    records = read_topic({"bootstrap.servers": raw.bootstrap}, sanitized_topic, timeout_s=10)
                except Exception:  # noqa: S112 - the topic appears once the worker created it
                    records = []
                if len(records) >= N_EVENTS:
                    break
                time.sleep(0.5)
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert len(records) == N_EVENTS, f"{len(records)} sanitized"
        finally:
            proc.terminate()
            proc.wait(30)
    values = b"\n".join(r.value or b"" for r in records)
    for name, canary in CANARIES.items():
        if name == "note" or name == "phone" and not WHOLE_VALUE_PHONES:
            continue  # free text outside the entities is kept by redact, by design; phones: see above
        assert canary.encode() not in values, canary
    assert CANARIES["card"][-4:].encode() in values  # the mask keeps the last four digits
    _no_canary(log_path.read_bytes())
