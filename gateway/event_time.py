"""Event time comes from producers: the range in which it may move anything.

A producer controls its records' timestamps and time fields. One event stamped in the year 3000
would otherwise move the DP stages' marks past every later event (making them all late, for good:
the marks are persisted), and skew the quality windows' lag. So an event time later than now +
``max_skew_s`` (gateway/settings.py) is out of range: the sanitize pipeline dead-letters the event with
reason ``event_time_out_of_range`` before any quality window, period key or DP stage sees it, and
stage 1 of the DP aggregates drops (and audits) any record of the sanitized topic still out of range
(or dated before EARLIEST_MS, absurdly old), without moving a mark.

An old event time is not rejected by the pipeline (a backfill is valid input): it cannot move a mark
forward (marks are maxima; stage 2 closes windows on the wall clock), its DP contribution is late, its
quality lag is real, and its retention day is its own (gateway/keys/period_keys.py clamps only
future days to today).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.errors import RejectedEvent

OUT_OF_RANGE = "event_time_out_of_range"
EARLIEST_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: before it, an event time is not a real one


def in_range(t_ms: int, now_ms: int, max_skew_ms: int) -> bool:
    """What the DP stages accept: neither later than now + max_skew nor absurdly old."""
    return EARLIEST_MS <= t_ms <= now_ms + max_skew_ms


def too_late(t_ms: int, now_ms: int, max_skew_ms: int) -> bool:
    """Later than now + max_skew: what the sanitize pipeline dead-letters."""
    return t_ms > now_ms + max_skew_ms


def check_event_time(timestamp_ms: int, record: dict[str, Any], time_fields: Iterable[str], now_ms: int,
                     max_skew_ms: int) -> None:
    """Raise RejectedEvent(event_time_out_of_range) if the record's timestamp or a time field is later
    than now + max_skew. The message names the field, never its value."""
    if too_late(timestamp_ms, now_ms, max_skew_ms):
        raise RejectedEvent(OUT_OF_RANGE, "the record timestamp is later than now + max_skew_s")
    for name in time_fields:
        value = record.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and too_late(value, now_ms, max_skew_ms):
            raise RejectedEvent(OUT_OF_RANGE, f"field '{name}' is later than now + max_skew_s")
