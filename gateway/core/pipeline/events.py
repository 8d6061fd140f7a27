"""A raw input event as the pipeline takes it (the runtime builds it from a Kafka message)."""

from __future__ import annotations

from typing import NamedTuple


class RawEvent(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
