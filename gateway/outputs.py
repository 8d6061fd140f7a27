"""What every job hands the transactional loop to publish: plain records, no Kafka client."""

from __future__ import annotations

from typing import NamedTuple


class OutRecord(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None
    timestamp_ms: int = 0  # 0: the producer stamps the time of sending
