"""Which assigned partitions make no progress: pure bookkeeping, fed by gateway.runtime.stall.

A partition is stalled when its committed offset has not moved for `stall_after_s` while input
waits behind it, input the job's read_committed consumer has not consumed:

- a record it can fetch from the committed offset, before the partition's last stable offset; or
- records held behind an open transaction (the last stable offset is below the high watermark):
  the consumer gets them only once that transaction ends.

The end of a partition is not the test. Input written in transactions (always the case for the
sanitized topic `gateway aggregate` reads) ends with a commit marker, which takes an offset and
which no consumer receives: an idle partition's end is one past its last record, so "committed
below the end" is true of every idle partition. Whether a record lies between the committed offset
and the stable end is asked of the broker (`fetchable`, a read_committed fetch), only for a
partition whose committed offset stood still since the last look, and once per position.
An idle partition is never stalled: the clock starts when input is waiting and the committed
offset stops moving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Source = tuple[str, int]


@dataclass(frozen=True)
class Ends:
    """A partition's offsets as the broker reports them."""

    low: int  # first offset still in the log
    high: int  # high watermark: one past the last offset written (records, markers, open transactions)
    stable: int  # last stable offset: a read_committed consumer reads up to here (== high: no open transaction)


# (source, from offset, stable end): does a read_committed fetch from the offset return a record before the end
Fetchable = Callable[[Source, int, int], bool]


class StallDetector:
    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self._since: dict[Source, tuple[int, float]] = {}  # committed offset, when it was last seen moving
        self._asked: dict[Source, tuple[int, int, bool]] = {}  # the last fetchable answer: (from, stable end, answer)

    def observe(self, owned: set[Source], committed: dict[Source, int], ends: dict[Source, Ends],
                now: float, fetchable: Fetchable) -> set[Source]:
        """The stalled partitions among `owned`, given committed offsets (< 0: none) and ends."""
        stalled: set[Source] = set()
        for source in owned:
            offset = committed.get(source, -1)
            seen = self._since.get(source)
            if seen is None or seen[0] != offset or not self._waiting(source, offset, ends.get(source), fetchable):
                self._since[source] = (offset, now)
                continue
            if now - seen[1] >= self.stall_after_s:
                stalled.add(source)
        for source in set(self._since) - owned:
            del self._since[source]
            self._asked.pop(source, None)
        return stalled

    def _waiting(self, source: Source, offset: int, ends: Ends | None, fetchable: Fetchable) -> bool:
        """Whether input waits behind `offset`: held by an open transaction, or a record the consumer can fetch."""
        if ends is None or ends.high < 0:
            return False  # not known: never a stall on a guess
        if ends.stable < ends.high:
            return True
        start = offset if offset >= 0 else max(ends.low, 0)  # none committed: the consumer starts at the log start
        if start >= ends.stable:
            return False
        asked = self._asked.get(source)
        if asked is None or asked[:2] != (start, ends.stable):
            asked = (start, ends.stable, fetchable(source, start, ends.stable))
            self._asked[source] = asked
        return asked[2]
