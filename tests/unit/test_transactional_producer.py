"""Every transactional producer the gateway builds (clients.transactional_producer: the sanitize and
aggregate loops, forget, retention, rewrap) asks again soon when the coordinator answers
CONCURRENT_TRANSACTIONS (the previous transaction's markers are still being written), instead of after
librdkafka's 100 ms (doubling up to 1 s): that wait was sanitize's constant extra ~100 ms of p99.
tests/integration/test_transaction_retry.py shows the effect on the real broker."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.runtime import clients
from gateway.settings import GatewayConfig


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    configs: list[dict[str, Any]] = []
    monkeypatch.setattr(clients, "Producer", lambda conf: configs.append(conf) or conf)
    return configs


def test_the_retry_backoff_is_short_and_capped(built: list[dict[str, Any]]) -> None:
    clients.transactional_producer(GatewayConfig(), "g-1")
    conf = built[0]
    assert conf["transactional.id"] == "g-1"
    assert conf["retry.backoff.ms"] <= 20  # the Java producer's figure for this error (KAFKA-5477)
    assert conf["retry.backoff.ms"] <= conf["retry.backoff.max.ms"] <= 100  # never longer than the old first wait


def test_a_callers_override_still_wins(built: list[dict[str, Any]]) -> None:
    clients.transactional_producer(GatewayConfig(), "g-1", **{"retry.backoff.ms": 30, "linger.ms": 0})
    assert built[0]["retry.backoff.ms"] == 30 and built[0]["linger.ms"] == 0
