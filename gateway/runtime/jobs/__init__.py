"""The gateway's jobs, each one transactional loop (or two) around pure logic."""

from __future__ import annotations

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
