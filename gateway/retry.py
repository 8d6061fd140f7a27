"""The one retry helper, on tenacity: call again while the error is one the caller names as transient.

Every retry loop of the gateway is this call with its own rule: the KMS decorator (`ResilientKms`:
`KmsUnavailable`, a few attempts, jittered exponential backoff, then its circuit), the transactional loop
(`retry_retriable`: librdkafka's retriable errors, no delay) and the schema registry lookups
(`NewWriterIds`: transport errors, exponential backoff within a patience). What differs is data (which
errors, how many attempts, how long, which delays), so it is given, never written as another loop. The
last error is re-raised as it is, never wrapped, so callers keep catching what they caught.
Below everything but the errors: the keys and the runtime both use it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any

T = TypeVar("T")


def exponential(first_s: float, max_s: float, jitter: bool = False) -> Callable[[int], float]:
    """Delay after the n-th failed attempt (n from 1): first_s, 2 first_s, 4 first_s ... capped at max_s;
    with `jitter`, each drawn from [half, all] of that (many clients do not retry in step)."""

    def delay(attempt: int) -> float:
        step = min(max_s, first_s * 2 ** max(0, attempt - 1))
        return step * random.uniform(0.5, 1.0) if jitter else step

    return delay


def no_delay(_attempt: int) -> float:
    return 0.0


def retry_call(fn: Callable[[], T], *, retry_if: Callable[[BaseException], bool], attempts: int | None = None,
               within_s: float | None = None, delay: Callable[[int], float] = no_delay,
               on_retry: Callable[[int, BaseException, float], None] | None = None,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """`fn()`, called again after `delay(n)` seconds while it raises an error `retry_if` accepts: at most
    `attempts` calls, and none that would start later than `within_s` after the first. `on_retry(n, error,
    delay)` is told before each wait (to log it). An error not accepted, or the last one, is raised as is."""

    def past_patience(state: RetryCallState) -> bool:
        return within_s is not None and state.seconds_since_start + state.upcoming_sleep > within_s

    stops = [past_patience] + ([stop_after_attempt(attempts)] if attempts is not None else [])

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            on_retry(state.attempt_number, state.outcome.exception(), state.upcoming_sleep)  # type: ignore[arg-type]

    retrying = Retrying(retry=retry_if_exception(retry_if), stop=stop_any(*stops),
                        wait=lambda state: delay(state.attempt_number), reraise=True, before_sleep=before_sleep,
                        sleep=lambda seconds: sleep(float(seconds)) if seconds > 0 else None)
    return retrying(fn)
