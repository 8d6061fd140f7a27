"""The FastStream adapter against the real broker and a real gateway worker.

Raw payments (half bare Avro, half JSON, so the sanitized topic mixes both encodings) go through
`gateway run`; the FastStream example app then counts the sanitized topic per country, once with the
keyring and once without. Before it starts, copies of the sanitized records are written in a transaction
that aborted (as a gateway abort leaves them) and one record no policy can decode is committed: the
counts must equal what was published (the app reads read_committed and goes on past the bad record),
the opened customer names the published ones, and without the keyring every encrypted field must be
reported not opened.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import Deployment
from .example_apps import (
    ExampleApp,
    assert_counted_and_opened,
    reports_with_and_without_keys,
    sanitized_payments,
    write_in_transaction,
)

pytestmark = pytest.mark.integration
pytest.importorskip("faststream", reason="FastStream is not installed: pip install -e '.[faststream]'")

N = 40
PARTITIONS = 3


def faststream_example(d: Deployment, name: str, keyring: Path | None) -> ExampleApp:
    """examples/faststream_payments_by_country.py as a subprocess."""
    return ExampleApp(d, f"faststream-{name}", keyring,
                      [sys.executable, "-m", "examples.faststream_payments_by_country"],
                      {"EXAMPLE_BROKER": d.bootstrap, "EXAMPLE_GROUP": f"faststream-{name}-{d.suffix}"})


def test_faststream_example_counts_the_sanitized_payments_per_country(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    plan = d.payments
    payments, _ = sanitized_payments(d, N, PARTITIONS, seed=29, instance="faststream")
    # and a committed record that no policy decodes: logged and passed over, never a crash loop
    write_in_transaction(d.bootstrap, [(plan.sanitized_topic, 0, None, b"\xff not a sanitized record",
                                        [("gateway-encoding", b"avro")])], commit=True)

    apps = {"keys": faststream_example(d, "keys", d.keyring), "nokeys": faststream_example(d, "nokeys", None)}
    reports = reports_with_and_without_keys(apps, N, timeout_s=60)
    assert_counted_and_opened(reports, payments)
    for app in apps.values():
        log = app.log_path.read_text(errors="replace")
        assert "UndecodableRecord" in log  # the bad record was reported, and the app went on
        for p in payments:  # the decoder's error names no value of any record
            assert p["customer_name"] not in log and p["card_number"] not in log
