"""The privacy ledger's Kafka side: a compacted one-partition topic, restored whole at start-up and
followed while running (the accounting itself is pure: gateway.dp.ledger)."""

from __future__ import annotations

import time
from collections.abc import Mapping

from gateway.dp.ledger import Ledger
from gateway.errors import GatewayError
from gateway.runtime.changelog import COMPACTED, ChangelogFollower, apply_records, ensure_changelog, restore

LEDGER_CONFIG = COMPACTED
STATE = "dp-ledger"  # gateway_state_records_skipped_total{state}


def ensure_ledger_topic(kafka: Mapping[str, str], topic: str) -> None:
    """One partition (a small, totally ordered log), compacted: the latest entry per key survives."""
    ensure_changelog(kafka, topic, 1, LEDGER_CONFIG)


def load_ledger(kafka: Mapping[str, str], topic: str) -> Ledger:
    """Every committed entry of the ledger topic (empty ledger if the topic does not exist yet)."""
    return read_ledger(kafka, topic)[0]


def read_ledger(kafka: Mapping[str, str], topic: str) -> tuple[Ledger, dict[int, int]]:
    """The ledger from every committed entry, and per partition the offset after the last entry
    read: where a LedgerFollower goes on, so that an entry committed meanwhile is neither missed
    nor applied twice."""
    records, follow_from = restore(kafka, topic, missing_ok=True)
    ledger = Ledger()
    apply_records(STATE, topic, ((r.key, r.value) for r in records), ledger.apply_record)
    return ledger, follow_from


class LedgerFollower:
    """Applies entries other workers commit after start-up, from where read_ledger stopped."""

    def __init__(self, kafka: Mapping[str, str], topic: str, ledger: Ledger, follow_from: Mapping[int, int]) -> None:
        self.ledger = ledger
        self.follower = ChangelogFollower(kafka, topic, follow_from, "privacy-gateway.ledger-follower")

    def poll(self) -> int:
        records = self.follower.poll()
        apply_records(STATE, self.follower.topic, records, self.ledger.apply_record)
        return len(records)

    def wait_for(self, keys: set[bytes], timeout_s: float = 30.0) -> None:
        """Follow the ledger until it holds every charge in `keys` (decided in log order)."""
        deadline = time.monotonic() + timeout_s
        while not keys <= set(self.ledger.charges):
            if time.monotonic() > deadline:
                raise GatewayError(f"{len(keys - set(self.ledger.charges))} ledger charge(s) not read back "
                                   f"within {timeout_s:.0f}s")
            if not self.poll():
                time.sleep(0.01)

    def close(self) -> None:
        self.follower.close()
