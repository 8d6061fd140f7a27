"""Prometheus metrics and health endpoints. Labels are topics, outcomes and reason codes only."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

EVENTS = Counter("gateway_events_total", "Input events by source topic and outcome",
                 ["source_topic", "outcome"])
BATCHES = Counter("gateway_batches_total", "Batches committed")
ABORTS = Counter("gateway_transaction_aborts_total", "Transactions aborted and retried")
BATCH_SECONDS = Histogram("gateway_batch_seconds", "Time from fetch to commit per batch",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
KMS_CALLS = Gauge("gateway_kms_calls", "KMS wrap calls made for new DEKs since start")
ASSIGNED = Gauge("gateway_assigned_partitions", "Source partitions assigned to this worker")


class Health:
    """Liveness: the main loop turned recently. Readiness: subscribed with a working producer."""

    def __init__(self, stall_after_s: float = 60.0) -> None:
        self.ready = False
        self._last_beat = time.monotonic()
        self._stall_after_s = stall_after_s

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last_beat < self._stall_after_s


def serve(port: int, health: Health) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path == "/metrics":
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                ok = health.alive()
                self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
            elif self.path == "/readyz":
                self._send(200 if health.ready else 503, b"ready\n" if health.ready else b"starting\n")
            else:
                self._send(404, b"not found\n")

        def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - probes come from the kubelet
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
