"""Readiness names the failing checks; a probe that raises counts as failing; liveness needs a beat."""

from __future__ import annotations

from gateway.embedded.broker import free_port
from gateway.ops.metrics import Health, HealthProbe, serve
from tests.http_get import http_get


def test_readyz_reports_each_failing_check_until_all_pass() -> None:
    health = Health()
    port = free_port()
    server = serve(port, health, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port}"
        assert http_get(f"{url}/readyz") == (503, "not ready: kafka, kms, assignment\n")
        kms_up = {"ok": False}

        def broken_kafka() -> bool:
            raise RuntimeError("broker 10.0.0.1 refused")  # a raising probe is a failed probe

        probe = HealthProbe(health, {"kafka": broken_kafka, "kms": lambda: kms_up["ok"]})
        probe.check_now()
        health.set("assignment", True)
        assert http_get(f"{url}/readyz") == (503, "not ready: kafka, kms\n")
        probe = HealthProbe(health, {"kafka": lambda: True, "kms": lambda: kms_up["ok"]})
        probe.check_now()
        assert http_get(f"{url}/readyz") == (503, "not ready: kms\n")
        kms_up["ok"] = True
        probe.check_now()
        assert http_get(f"{url}/readyz") == (200, "ready\n")
        assert "gateway_ready{check=\"kms\"} 1.0" in http_get(f"{url}/metrics")[1]
        health.stop()
        assert http_get(f"{url}/readyz")[0] == 503
    finally:
        server.shutdown()


def test_liveness_fails_when_the_loop_stops_beating() -> None:
    health = Health(stall_after_s=0.05)
    assert health.alive()
    import time

    time.sleep(0.1)
    assert not health.alive()
    health.beat()
    assert health.alive()
