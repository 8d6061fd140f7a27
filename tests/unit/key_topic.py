"""The key topic as the unit tests stand it in: its records in order, replayed into readers."""

from __future__ import annotations

from typing import Any

from gateway.keys.subject_keys import KeyRecord, SubjectKeys


class KeyTopic:
    """The key topic's records in order (what `gateway forget` and a consumer of the topic see)."""

    def __init__(self) -> None:
        self.records: list[KeyRecord] = []

    def publish(self, records: list[KeyRecord]) -> None:
        self.records += records

    def reader(self, kms: Any) -> SubjectKeys:
        keys = SubjectKeys(kms)
        for key, value in self.records:
            keys.apply(key, value)
        return keys

    def forget(self, domain: str, token: str) -> None:
        """Tombstones for the subject's keys, as forget_subject writes them."""
        names = {k for k, _ in self.records if k.decode().startswith(f"{domain}/{token}/")}
        self.records += [(name, None) for name in sorted(names)]
