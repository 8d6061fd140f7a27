"""The consumer example apps (examples/faust_*.py, examples/faststream_*.py) as subprocesses, for the
integration tests: each writes its report (counts per country, outcomes per encrypted field, opened
names) to a JSON file after every record, and stops on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from gateway.core.codec.sanitized import StoredRecord
from gateway.core.codec.writer import avro_bytes
from gateway.embedded.samples import SampleEvents

from .conftest import ENV, REPO, Deployment


class ExampleApp:
    """One example app: `command` run from the checkout with the gateway's settings and `env` added."""

    def __init__(self, d: Deployment, name: str, keyring: Path | None, command: Sequence[str],
                 env: dict[str, str]) -> None:
        self.name = name
        self.out = d.root / f"{name}.json"
        self.log_path = d.root / f"{name}.log"
        full_env = {k: v for k, v in ENV.items() if k != "GATEWAY_KEYRING"}
        # PYTHONFAULTHANDLER: an app that does not stop on SIGTERM is sent SIGABRT, and writes every thread's
        # stack to its log before it dies (where it hung is then in the failure's message)
        full_env.update(GATEWAY_SCHEMAS=str(d.schemas), EXAMPLE_TOPIC=d.payments.sanitized_topic,
                        EXAMPLE_OUT=str(self.out), PYTHONFAULTHANDLER="1", **env)
        if keyring is not None:
            full_env["GATEWAY_KEYRING"] = str(keyring)
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed by wait()
        self.proc = subprocess.Popen(list(command), stdout=self.log, stderr=subprocess.STDOUT, env=full_env,
                                     cwd=REPO)

    def report(self) -> dict[str, Any] | None:
        return orjson.loads(self.out.read_bytes()) if self.out.exists() else None

    def wait_for_count(self, expected: int, deadline: float) -> dict[str, Any]:
        report = None
        while time.monotonic() < deadline:
            report = self.report()
            if report is not None and sum(report["counts"].values()) >= expected:
                return report
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{self.name} counted {report and report['counts']} (want {expected} payments), "
                             f"exit {self.proc.poll()}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self) -> int | None:
        """Its exit code after SIGTERM, None if it had to be stopped with SIGABRT (its stacks are then in
        its log) or killed."""
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            return None
        finally:
            self.log.close()


def write_in_transaction(bootstrap: str, records: Sequence[tuple[str, int, bytes | None, bytes | None,
                                                                 list[tuple[str, bytes]]]], commit: bool) -> None:
    """(topic, partition, key, value, headers) records in one transaction, committed or aborted (what a
    gateway abort leaves in the log: a read_uncommitted reader would count those copies)."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"example-copies-{time.time_ns()}"})
    producer.init_transactions(30)
    producer.begin_transaction()
    for topic, partition, key, value, headers in records:
        producer.produce(topic, value, key, partition=partition, headers=headers)
    assert producer.flush(30) == 0
    if commit:
        producer.commit_transaction(30)
    else:
        producer.abort_transaction(30)


def sanitized_payments(d: Deployment, count: int, partitions: int, seed: int,
                       instance: str) -> tuple[list[dict[str, Any]], list[StoredRecord]]:
    """`count` payments, half bare Avro and half JSON (so the sanitized topic mixes both encodings),
    through a real `gateway run`; then copies of every sanitized record in an aborted transaction (what a
    gateway abort leaves in the log: a read_uncommitted reader would count them twice). Returns the
    published payments (the ground truth) and the sanitized records."""
    plan = d.payments
    samples = SampleEvents(seed=seed)
    payments = [samples.payment() for _ in range(count)]
    values = [orjson.dumps(p) if i % 2 else avro_bytes(plan.schema.parsed, p) for i, p in enumerate(payments)]
    worker = d.start_worker(instance, partitions=partitions)
    try:
        d.produce(plan.source_topic, values)
        d.wait_for_audit(count)
    finally:
        assert worker.stop() == 0
    sanitized = d.read(plan.sanitized_topic)
    assert len(sanitized) == count
    assert Counter(r.headers["gateway-encoding"] for r in sanitized) == {b"avro": count // 2, b"json": count // 2}
    write_in_transaction(d.bootstrap, [(r.topic, r.partition, r.key, r.value, list(r.headers.items()))
                                       for r in sanitized], commit=False)
    return payments, sanitized


def reports_with_and_without_keys(apps: dict[str, ExampleApp], expected: int, timeout_s: float
                                  ) -> dict[str, dict[str, Any]]:
    """Both apps' reports once each counted `expected` payments, then both stopped with SIGTERM (at once:
    each takes a second or two to leave its group), each exiting 0."""
    try:
        deadline = time.monotonic() + timeout_s
        reports = {name: app.wait_for_count(expected, deadline) for name, app in apps.items()}
    finally:
        for app in apps.values():
            app.stop()
        codes = {name: app.wait() for name, app in apps.items()}
    assert codes == dict.fromkeys(apps, 0), (codes, {name: app.log_tail(12_000) for name, app in apps.items()
                                                     if codes[name] != 0})
    return reports


def assert_counted_and_opened(reports: dict[str, dict[str, Any]], payments: list[dict[str, Any]]) -> None:
    """The ground truth is what was published, never what the gateway wrote: both apps counted every
    payment per country; with the keyring every customer name opened to the published one, without it
    every encrypted field was reported not opened."""
    countries = Counter(p["country"] for p in payments)
    names = {p["event_id"]: p["customer_name"] for p in payments}
    assert len(countries) > 1 and len(names) == len(payments)
    for report in reports.values():
        assert report["counts"] == dict(countries)
    keys, nokeys = reports["keys"], reports["nokeys"]
    n = len(payments)
    assert keys["opened"] == names
    assert keys["fields"]["customer_name"] == {"decrypted": n}
    assert keys["fields"]["billing_address.street"] == {"decrypted": n}
    assert nokeys["opened"] == {}
    assert nokeys["fields"]["customer_name"] == {"key_not_held": n}
    assert nokeys["fields"]["card_number"] == {"key_not_held": n}
    assert sum(nokeys["fields"].get("card_expiry", {}).values()) == sum(p["card_expiry"] is not None
                                                                         for p in payments)
