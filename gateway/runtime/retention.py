"""Retention by key expiry: which period keys are due, the worker's schedule, and the rows `gateway retention` prints.

The erasure itself (tombstones + one audited transaction per run) is keytopic.enforce_retention;
which keys are due is period_keys.due_keys (pure). Here:

- `RetentionSchedule`: a worker runs the erasure every `retention_check_s` on a thread of its own
  (the sanitize loop never waits on it), and only while it holds partition 0 of the first source
  topic with a retention, so one worker of the group does it. During a rebalance two may briefly
  both run; the runs share one transactional.id (the later fences the earlier) and a key already
  erased is gone from each worker's state within a poll of the key topic, so the later run finds
  nothing and writes no event. Tombstoning a key twice would be harmless anyway.
- `summary_row`, `summary_lines`: what `gateway retention show` (gateway/cli/retention.py) prints: periods,
  key ids, when each is erased.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from gateway.core.policy.plan import Plan, plan_retentions
from gateway.keys.period_keys import PeriodKeys, PeriodSummary
from gateway.runtime.keytopic import enforce_retention
from gateway.settings import GatewayConfig

log = logging.getLogger("gateway.retention")
Source = tuple[str, int]
SHOWN_KEY_IDS = 5  # per period in the text listing (--json lists every one)


class RetentionSchedule:
    """Runs `enforce_retention` at most every `interval_s` while this worker holds `owner`."""

    def __init__(self, config: GatewayConfig, periods: PeriodKeys, owner: Source, interval_s: float) -> None:
        self.config = config
        self.periods = periods
        self.owner = owner
        self.interval_s = interval_s
        self._next = time.monotonic()  # the first check as soon as this worker holds the owner partition
        self._thread: threading.Thread | None = None
        self.runs = 0

    def __repr__(self) -> str:
        return f"<RetentionSchedule owner={self.owner} every={self.interval_s}s runs={self.runs}>"

    def tick(self, owned: set[Source]) -> bool:
        """Called from the worker's loop: start a run when due and this worker holds the owner partition
        (and no run is still going). Returns whether one started."""
        if self.owner not in owned or (self._thread is not None and self._thread.is_alive()):
            return False
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval_s
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()
        return True

    def _run(self) -> None:
        self.runs += 1
        try:
            events = enforce_retention(self.config, self.periods)
        except Exception as exc:  # by type only (a library's message may quote anything): retried next interval
            log.warning("retention run failed: it is retried at the next check", extra={"error": type(exc).__name__})
            return
        if events:
            log.info("retention enforced", extra={"keys_erased": sum(e["keys_erased"] for e in events),
                                                  "periods": sum(len(e["periods"]) for e in events),
                                                  "audit_events": len(events)})

    def close(self, timeout_s: float = 30.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)


def retention_owner(plans: Sequence[Plan]) -> Source | None:
    """The partition whose holder enforces retention: partition 0 of the first source topic (by name)
    whose plan has a retention; None when no plan has one. Every worker of the group computes the same."""
    topics = sorted(p.source_topic for p in plans if plan_retentions(p))
    return (topics[0], 0) if topics else None


def schedule_for(config: GatewayConfig, plans: Sequence[Plan], periods: PeriodKeys | None) -> RetentionSchedule | None:
    """The worker's schedule, or None: retention_check_s is 0, no plan has a retention, or no key topic."""
    owner = retention_owner(plans)
    if config.retention_check_s <= 0 or owner is None or periods is None:
        return None
    return RetentionSchedule(config, periods, owner, config.retention_check_s)


# ---- gateway retention show | enforce ---------------------------------------------------------
def summary_row(s: PeriodSummary, now_ms: int) -> dict[str, Any]:
    return {"retention_days": s.days, "period": s.period, "scope": f"subject:{s.domain}" if s.domain else "shared",
            "keys": len(s.key_ids), "key_ids": list(s.key_ids), "erase_at": _iso(s.erase_at_ms), "due": s.due(now_ms)}


def summary_lines(summaries: Sequence[PeriodSummary], now_ms: int) -> list[str]:
    """One line per period (retention, day, scope) with when it is erased, then its key ids (the first few)."""
    lines = [f"{'retention':<11}{'period':<12}{'scope':<24}{'keys':>6}  erased at"]
    for s in summaries:
        scope = f"subject:{s.domain}" if s.domain else "shared"
        when = _iso(s.erase_at_ms) + ("  (due: gateway retention enforce)" if s.due(now_ms) else "")
        lines.append(f"{str(s.days) + ' day(s)':<11}{s.period:<12}{scope:<24}{len(s.key_ids):>6}  {when}")
        lines += [f"    {key_id}" for key_id in s.key_ids[:SHOWN_KEY_IDS]]
        if len(s.key_ids) > SHOWN_KEY_IDS:
            lines.append(f"    ... and {len(s.key_ids) - SHOWN_KEY_IDS} more (--json lists every one)")
    return lines


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
