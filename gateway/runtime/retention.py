"""Retention by key expiry: which period keys are due, the worker's schedule, and `gateway retention`.

The erasure itself (tombstones + one audited transaction per run) is keytopic.enforce_retention;
which keys are due is period_keys.due_keys (pure). Here:

- `RetentionSchedule`: a worker runs the erasure every `retention_check_s` on a thread of its own
  (the sanitize loop never waits on it), and only while it holds partition 0 of the first source
  topic with a retention, so one worker of the group does it. During a rebalance two may briefly
  both run; the runs share one transactional.id (the later fences the earlier) and a key already
  erased is gone from each worker's state within a poll of the key topic, so the later run finds
  nothing and writes no event. Tombstoning a key twice would be harmless anyway.
- `cmd_retention`: `gateway retention show` (periods, key ids, when each is erased) and
  `gateway retention enforce [--dry-run]`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.core.operators.encrypt import plan_retentions
from gateway.core.policy.compiler import Plan
from gateway.keys.period_keys import PeriodKeys, PeriodSummary, due_keys, summarize
from gateway.runtime.keytopic import enforce_retention, load_period_keys
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


def cmd_retention(args: argparse.Namespace, config: GatewayConfig) -> int:
    now_ms = int(time.time() * 1000)
    periods = load_period_keys(config.kafka_client_config(), config.key_topic)
    if args.retention_cmd == "show":
        summaries = summarize(periods.names())
        if args.json:
            for s in summaries:
                sys.stdout.buffer.write(orjson.dumps(summary_row(s, now_ms)) + b"\n")
            return 0
        if not summaries:
            print(f"no period keys on '{config.key_topic}' (no field with a retention has been encrypted)")
            return 0
        print(f"period keys on '{config.key_topic}' at {_iso(now_ms)}; each period's keys are erased once it ended "
              "more than its retention ago")
        print("\n".join(summary_lines(summaries, now_ms)))
        return 0
    if args.dry_run:
        due = summarize(p.name for p in due_keys(periods.names(), now_ms))
        if not due:
            print(f"nothing to erase: no period key on '{config.key_topic}' is past its retention")
            return 0
        print(f"would erase {sum(len(s.key_ids) for s in due)} period key(s) of {len(due)} period(s) on "
              f"'{config.key_topic}' (dry run: nothing written)")
        print("\n".join(summary_lines(due, now_ms)))
        return 0
    events = enforce_retention(config, periods, now_ms)
    if not events:
        print(f"nothing to erase: no period key on '{config.key_topic}' is past its retention")
        return 0
    erased = [period for event in events for period in event["periods"]]
    print(f"erased {sum(e['keys_erased'] for e in events)} period key(s) of {len(erased)} period(s) on "
          f"'{config.key_topic}' (tombstones), {len(events)} audit event(s) on '{config.audit_topic}'. Running workers "
          "evict the keys within seconds; the ciphertexts of those periods can no longer be decrypted")
    for period in erased:
        print(f"  {period['retention_days']} day(s)  {period['period']}  {period['scope']}  "
              f"{period['keys_erased']} key(s)")
    return 0


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
