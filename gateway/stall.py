"""Which assigned partitions make no progress: pure bookkeeping, fed by gateway.runtime.stall.

A partition is stalled when its committed offset has not moved for `stall_after_s` while input
waits behind it (its end is past the committed offset). An idle partition is never stalled: the
clock starts when input is waiting and the committed offset stops moving.
"""

from __future__ import annotations

Source = tuple[str, int]


class StallDetector:
    def __init__(self, stall_after_s: float) -> None:
        self.stall_after_s = stall_after_s
        self._since: dict[Source, tuple[int, float]] = {}  # committed offset, when it was last seen moving

    def observe(self, owned: set[Source], committed: dict[Source, int], ends: dict[Source, tuple[int, int]],
                now: float) -> set[Source]:
        """The stalled partitions among `owned`, given committed offsets (< 0: none) and (low, high) ends."""
        stalled: set[Source] = set()
        for source in owned:
            offset = committed.get(source, -1)
            low, high = ends.get(source, (-1, -1))
            waiting = high > (offset if offset >= 0 else max(low, 0))
            seen = self._since.get(source)
            if not waiting or seen is None or seen[0] != offset:
                self._since[source] = (offset, now)
                continue
            if now - seen[1] >= self.stall_after_s:
                stalled.add(source)
        for source in set(self._since) - owned:
            del self._since[source]
        return stalled
