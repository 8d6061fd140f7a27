"""The stream-processor integrations against the real broker and a real gateway worker.

Raw payments (half bare Avro, half JSON, so the sanitized topic mixes both encodings) go through
`gateway run`; the faust example app then counts the sanitized topic per country, once with the
keyring and once without, after copies of the sanitized records were written in a transaction that
aborted (as a gateway abort leaves them). The counts must equal those of what was published, the opened customer
names the published ones, and without the keyring every encrypted field must be reported not opened.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from gateway.core.codec.writer import avro_bytes
from gateway.embedded.samples import SampleEvents

from .conftest import Deployment
from .example_apps import ExampleApp, write_in_transaction

pytestmark = pytest.mark.integration
# the `faust` extra: it cannot sit in `test` (faust-streaming caps click below 8.4, check-jsonschema needs 8.5)
pytest.importorskip("faust", reason="faust-streaming is not installed: pip install -e '.[faust]'")

N = 40
PARTITIONS = 3


def faust_example(d: Deployment, name: str, keyring: Path | None) -> ExampleApp:
    """examples/faust_payments_by_country.py as a `faust worker` subprocess."""
    app_id = f"faust-{name}-{d.suffix}"
    return ExampleApp(d, f"faust-{name}", keyring,
                      [sys.executable, "-m", "faust", "-A", "examples.faust_payments_by_country", "worker",
                       "-l", "info", "--without-web"],
                      {"EXAMPLE_BROKER": f"kafka://{d.bootstrap}", "EXAMPLE_APP_ID": app_id,
                       "EXAMPLE_PARTITIONS": str(PARTITIONS),
                       "EXAMPLE_DATADIR": str(d.root / f"faust-{name}-data")})  # not the checkout (faust's default)


def test_faust_example_counts_the_sanitized_payments_per_country(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    plan = d.payments
    samples = SampleEvents(seed=23)
    payments = [samples.payment() for _ in range(N)]
    values = [orjson.dumps(p) if i % 2 else avro_bytes(plan.schema.parsed, p) for i, p in enumerate(payments)]
    worker = d.start_worker("integrations", partitions=PARTITIONS)
    try:
        d.produce(plan.source_topic, values)
        d.wait_for_audit(N)
    finally:
        assert worker.stop() == 0
    sanitized = d.read(plan.sanitized_topic)
    assert len(sanitized) == N
    assert Counter(r.headers["gateway-encoding"] for r in sanitized) == {b"avro": N // 2, b"json": N // 2}
    # what a gateway abort leaves in the log (a failed commit, then the batch again): copies of records in an
    # aborted transaction, which a read_uncommitted consumer would count a second time
    write_in_transaction(d.bootstrap, [(r.topic, r.partition, r.key, r.value, list(r.headers.items()))
                                       for r in sanitized], commit=False)

    # ground truth: what was published, never what the gateway wrote
    countries = Counter(p["country"] for p in payments)
    names = {p["event_id"]: p["customer_name"] for p in payments}
    assert len(countries) > 1 and len(names) == N

    apps = {"keys": faust_example(d, "keys", d.keyring), "nokeys": faust_example(d, "nokeys", None)}
    try:
        deadline = time.monotonic() + 40
        reports = {name: app.wait_for_count(N, deadline) for name, app in apps.items()}
    finally:
        for app in apps.values():
            app.stop()  # both at once: each takes a second or two to leave its group
        codes = {name: app.wait() for name, app in apps.items()}
    assert codes == {"keys": 0, "nokeys": 0}, codes

    for report in reports.values():
        assert report["counts"] == dict(countries)
    keys, nokeys = reports["keys"], reports["nokeys"]
    assert keys["opened"] == names
    assert keys["fields"]["customer_name"] == {"decrypted": N}
    assert keys["fields"]["billing_address.street"] == {"decrypted": N}
    assert nokeys["opened"] == {}
    assert nokeys["fields"]["customer_name"] == {"key_not_held": N}
    assert nokeys["fields"]["card_number"] == {"key_not_held": N}
    assert sum(nokeys["fields"].get("card_expiry", {}).values()) == sum(p["card_expiry"] is not None
                                                                         for p in payments)
