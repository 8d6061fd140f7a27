"""The stream-processor integrations against the real broker and a real gateway worker.

Raw payments (half bare Avro, half JSON, so the sanitized topic mixes both encodings) go through
`gateway run`; the faust example app then counts the sanitized topic per country, once with the
keyring and once without, after copies of the sanitized records were written in a transaction that
aborted (as a gateway abort leaves them). The counts must equal those of what was published, the opened customer
names the published ones, and without the keyring every encrypted field must be reported not opened.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import Deployment
from .example_apps import ExampleApp, assert_counted_and_opened, reports_with_and_without_keys, sanitized_payments

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

    apps = {"keys": faust_example(d, "keys", d.keyring), "nokeys": faust_example(d, "nokeys", None)}
    assert_counted_and_opened(reports_with_and_without_keys(apps, N, timeout_s=40), payments)
