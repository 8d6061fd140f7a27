"""Prometheus metrics and the health endpoints.

Labels hold topics, partitions, stages, outcomes, reason codes and aggregate names only: never a
field value, key or subject (tests scrape the endpoint and look for canary PII).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("gateway.health")

# ---- sanitize worker ----------------------------------------------------------------------------
EVENTS = Counter("gateway_events_total", "Input events by source topic and outcome (sanitized, rejected)",
                 ["source_topic", "outcome"])
DEAD_LETTERS = Counter("gateway_dead_letters_total", "Events sent to the dead-letter topic, by reason code",
                       ["source_topic", "reason"])
LEAKS = Counter("gateway_leak_suspected_total", "Checked events (all under enforce, a sample under observe) with PII "
                "detected in a field kept in clear (leak sentinel), by source topic, field path and entity type",
                ["topic", "field", "entity"])
QUALITY_FAILURES = Counter("gateway_quality_failures_total", "Events failing a data-quality rule, by source topic, "
                           "rule and the rule's action (reject, flag, measure)", ["source_topic", "rule", "action"])
PURPOSE_EVENTS = Counter("gateway_purpose_events_total", "Sanitized events per purpose view: published (its legal "
                         "basis allows it) or withheld (no consent in force at the event's time)",
                         ["topic", "purpose", "outcome"])
UNANNOTATED_FIELDS = Counter("gateway_unannotated_fields_total", "Sanitized events whose writer schema had a field "
                             "the policy does not annotate (dropped), by source topic and field path",
                             ["topic", "field"])
QUALITY_WINDOWS = Counter("gateway_quality_windows_total", "Quality windows closed (records on the quality topic)",
                          ["source_topic"])
QUALITY_COMPLETENESS = Gauge("gateway_quality_completeness", "Share of non-null values of a nullable field in the "
                             "last closed window of a source partition", ["source_topic", "partition", "field"])
RISK_K = Gauge("gateway_reid_k", "Smallest equivalence class of the quasi-identifiers in the last closed window "
               "of a source partition (k-anonymity)", ["source_topic", "partition"])
RISK_BELOW_K = Gauge("gateway_reid_below_k_share", "Share of records in classes smaller than the declared k, "
                     "last closed window of a source partition", ["source_topic", "partition"])
AUDITED = Counter("gateway_audit_events_total", "Audit events committed")
BATCHES = Counter("gateway_batches_total", "Batches committed")
ABORTS = Counter("gateway_transaction_aborts_total", "Transactions aborted and retried")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SECONDS = Histogram("gateway_batch_seconds", "Time from fetch to commit per batch", buckets=_LATENCY_BUCKETS)
STAGE_SECONDS = Histogram("gateway_stage_seconds", "Time per batch in each stage: process (decode, validate, "
                          "minimize, tokenize, encrypt, encode), wait (for the batch before it to commit), "
                          "produce, commit", ["stage"], buckets=_LATENCY_BUCKETS)
EVENT_QUEUED = Histogram("gateway_event_queued_seconds", "Event timestamp to the start of its batch: the "
                         "producer's linger, the hop to the broker, the fetch and the wait for a batch (sampled "
                         "like gateway_event_latency_seconds)", buckets=_LATENCY_BUCKETS + (30, 60, 300))
EVENT_LATENCY = Histogram("gateway_event_latency_seconds", "Event timestamp to committed sanitized record "
                          "(sampled: evenly spaced events, about 64 per batch)",
                          buckets=_LATENCY_BUCKETS + (30, 60, 300))
LATENCY_SAMPLES_PER_BATCH = 64
CONSUMER_LAG = Gauge("gateway_consumer_lag", "Records behind the partition end, per assigned source partition",
                     ["topic", "partition"])
STALLED = Gauge("gateway_stalled_partitions", "Assigned partitions whose committed position has not moved for "
                "stall_after_s while input waits", ["job"])
ASSIGNED = Gauge("gateway_assigned_partitions", "Source partitions assigned to this worker")
DEK_CACHE = Counter("gateway_dek_cache_total", "Data-key lookups: hit (cached DEK) or miss (new DEK, one KMS "
                    "wrap; the KMS requests themselves are gateway_kms_requests_total)", ["result"])
READY = Gauge("gateway_ready", "1 when the readiness checks pass", ["check"])
STATE_SKIPPED = Counter("gateway_state_records_skipped_total", "Records of a state topic this version cannot read "
                        "(malformed), skipped when restoring or following it, by state (keys, consent, dp-ledger, "
                        "dp-bound-state) and topic", ["state", "topic"])

# ---- KMS (gateway.keys.decorators.InstrumentedKms) -----------------------------------------------
KMS_REQUESTS = Counter("gateway_kms_requests_total", "Requests to a KMS provider",
                       ["provider", "operation", "outcome"])
KMS_SECONDS = Histogram("gateway_kms_request_seconds", "KMS request latency", ["provider", "operation"],
                        buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

# ---- DP aggregate worker ------------------------------------------------------------------------
# Nothing exact leaves the DP boundary: these count windows (data-independent: one per aggregate,
# window and stage-2 partition), the budget spent, and groups released (key selection is noisy, so
# that count is itself a DP output). Never the contributions bounded, accepted or dropped.
DP_RELEASES = Counter("gateway_dp_releases_total", "Window releases per aggregate and outcome (released, "
                      "refused:<reason>)", ["aggregate", "outcome"])
# a window's epsilon once, however many stage-2 partitions release it (the release whose ledger
# charge decided the window reports it), so the sum over workers is what the ledger says was spent
DP_EPSILON = Counter("gateway_dp_epsilon_spent_total", "Epsilon spent per the privacy ledger (each window once)",
                     ["aggregate"])
DP_GROUPS = Counter("gateway_dp_groups_released_total", "Groups published (passed key selection)", ["aggregate"])


class Health:
    """Liveness: the main loop turned recently. Readiness: every named check passes.

    A worker is ready once it is connected to Kafka, its KMS answers and the group gave it an
    assignment (possibly empty: more workers than partitions is a healthy state).
    """

    CHECKS = ("kafka", "kms", "assignment")

    def __init__(self, stall_after_s: float = 60.0, checks: tuple[str, ...] = CHECKS) -> None:
        self._last_beat = time.monotonic()
        self._stall_after_s = stall_after_s
        self._checks = {name: False for name in checks}
        self._stalled: dict[str, list[str]] = {}  # job -> its stalled partitions
        for name in checks:
            READY.labels(name).set(0)

    def beat(self) -> None:
        self._last_beat = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self._last_beat < self._stall_after_s

    def set(self, check: str, ok: bool) -> None:
        if self._checks.get(check) != ok:
            log.info("readiness check changed", extra={"check": check, "ok": ok})
        self._checks[check] = ok
        READY.labels(check).set(1 if ok else 0)

    def set_stalled(self, job: str, partitions: list[str]) -> None:
        self._stalled[job] = partitions

    def stalled(self) -> list[str]:
        return sorted(p for partitions in self._stalled.values() for p in partitions)

    def failing(self) -> list[str]:
        failing = [name for name, ok in self._checks.items() if not ok]
        stalled = self.stalled()
        if stalled:
            failing.append(f"stalled ({', '.join(stalled)})")
        return failing

    def stop(self) -> None:
        for name in self._checks:
            self.set(name, False)


class HealthProbe:
    """Re-checks Kafka and the KMS in the background, so a slow probe never stalls the hot loop."""

    def __init__(self, health: Health, checks: dict[str, Callable[[], bool]], every_s: float = 10.0) -> None:
        self._health = health
        self._checks = checks
        self._every_s = every_s
        self._stopped = threading.Event()

    def check_now(self) -> None:
        for name, check in self._checks.items():
            try:
                ok = bool(check())
            except Exception:  # a probe that raises is a failed probe; its message may quote config
                ok = False
            self._health.set(name, ok)

    def start(self) -> HealthProbe:
        self.check_now()
        threading.Thread(target=self._loop, name="health-probe", daemon=True).start()
        return self

    def _loop(self) -> None:
        while not self._stopped.wait(self._every_s):
            self.check_now()

    def stop(self) -> None:
        self._stopped.set()


Answer = tuple[int, bytes, str]  # (status, body, content type)
TEXT = "text/plain; charset=utf-8"


def serve(port: int, health: Health, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - kubelet probes
    """/metrics (Prometheus), /healthz (liveness) and /readyz (readiness, naming failing checks)."""

    def answer(path: str) -> Answer:
        if path == "/metrics":
            return 200, generate_latest(), CONTENT_TYPE_LATEST
        if path == "/healthz":
            ok = health.alive()
            return (200 if ok else 503), (b"ok\n" if ok else b"stalled\n"), TEXT
        if path == "/readyz":
            failing = health.failing()
            return (503 if failing else 200), (f"not ready: {', '.join(failing)}\n".encode() if failing
                                               else b"ready\n"), TEXT
        return 404, b"not found\n", TEXT

    return serve_http(port, host, answer)


def serve_http(port: int, host: str, answer: Callable[[str], Answer]) -> ThreadingHTTPServer:
    """A GET-only endpoint on a daemon thread: `answer(path)` says what each path returns (the worker's
    health and metrics above, the supervisor's union of its workers')."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            code, body, content_type = answer(self.path)
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=f"http-{port}", daemon=True).start()
    return server
