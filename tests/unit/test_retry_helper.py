"""The one retry helper (gateway/retry.py): which errors are retried, how often, for how long and after which
delays are the caller's; the last error is raised as it is."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.retry import exponential, retry_call
from gateway.runtime.registry import NewWriterIds
from gateway.runtime.supervisor import backoff_s


class Flaky:
    def __init__(self, errors: list[BaseException]) -> None:
        self.errors = errors
        self.calls = 0

    def __call__(self, *_args: object) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_accepted_errors_are_retried_with_the_given_delays_and_told() -> None:
    flaky = Flaky([TimeoutError("a"), TimeoutError("b")])
    sleeps: list[float] = []
    told: list[tuple[int, str, float]] = []
    result = retry_call(flaky, retry_if=lambda e: isinstance(e, TimeoutError), attempts=5,
                        delay=exponential(1.0, 3.0), sleep=sleeps.append,
                        on_retry=lambda n, e, d: told.append((n, str(e), d)))
    assert result == "ok" and flaky.calls == 3
    assert sleeps == [1.0, 2.0] and told == [(1, "a", 1.0), (2, "b", 2.0)]


def test_other_errors_and_the_last_one_are_raised_as_they_are() -> None:
    refused = Flaky([ValueError("refused")])
    with pytest.raises(ValueError, match="refused"):
        retry_call(refused, retry_if=lambda e: isinstance(e, TimeoutError), attempts=5)
    assert refused.calls == 1
    down = Flaky([TimeoutError(str(i)) for i in range(10)])
    with pytest.raises(TimeoutError, match="^2$"):
        retry_call(down, retry_if=lambda e: isinstance(e, TimeoutError), attempts=3, sleep=lambda _s: None)
    assert down.calls == 3


def test_no_call_starts_past_the_patience() -> None:
    down = Flaky([TimeoutError("x")] * 5)
    sleeps: list[float] = []
    with pytest.raises(TimeoutError):
        retry_call(down, retry_if=lambda e: isinstance(e, TimeoutError), within_s=0.5, delay=exponential(1.0, 8.0),
                   sleep=sleeps.append)
    assert down.calls == 1 and sleeps == []  # the next call would start 1 s after the first: past 0.5 s


def test_exponential_delays_double_up_to_the_cap_and_jitter_stays_within_half() -> None:
    assert [exponential(0.5, 8.0)(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert all(0.5 * d <= exponential(0.1, 1.0, jitter=True)(n) <= d
               for n, d in ((1, 0.1), (2, 0.2), (5, 1.0), (9, 1.0)) for _ in range(20))
    assert [backoff_s(n) for n in (0, 1, 2, 3)] == [1.0, 1.0, 2.0, 4.0]


def test_a_registry_lookup_stops_retrying_at_its_patience() -> None:
    lookup = Flaky([GatewayError("registry down")] * 3)
    writer_ids = NewWriterIds([], lookup, patience_s=0.1)
    with pytest.raises(GatewayError, match="registry down"):
        writer_ids._lookup(7)
    assert lookup.calls == 1  # the first backoff (0.5 s) would pass the patience
