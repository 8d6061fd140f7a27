"""The gateway's jobs, each one transactional loop (or two) around pure logic."""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable
from types import FrameType

from gateway.ops import metrics
from gateway.settings import GatewayConfig


def start_process(config: GatewayConfig, health: metrics.Health,
                  request_stop: Callable[[int, FrameType | None], None]) -> None:
    """What every job process does first: SIGTERM and SIGINT finish the batch in flight and stop,
    and /metrics, /healthz and /readyz are served when metrics_port is set."""
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    if config.metrics_port:
        metrics.serve(config.metrics_port, health, config.metrics_host)


def settle_heap() -> None:
    """Put what start-up built (modules, plans, schemas, pipelines, clients) out of the garbage
    collector's reach, once, right before the loop starts. A full collection walks every tracked
    object: over the ~230,000 a sanitize worker holds after start-up one took 160 ms on the reference
    host, stalling the batch in hand and every event queued behind it, a p99 of its own at high rates
    (`make bench`, issue 35). Frozen objects are never scanned again and still freed by reference
    counting; what the loop allocates is collected as before."""
    gc.collect()
    gc.freeze()
