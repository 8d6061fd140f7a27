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

import pytest

from .conftest import Deployment
from .example_apps import ExampleApp, sanitized_payments

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
    payments, _ = sanitized_payments(d, N, PARTITIONS, seed=23, instance="integrations")

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
