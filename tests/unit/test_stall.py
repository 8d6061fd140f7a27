"""The stall rule (gateway.ops.stall) and the default instance id's slots (gateway.runtime.instance)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.ops.stall import Ends, Source, StallDetector
from gateway.runtime.instance import claim_slot, with_instance_id
from gateway.settings import GatewayConfig

P0, P1 = ("raw", 0), ("raw", 1)


def _ends(low: int, high: int, stable: int | None = None) -> Ends:
    return Ends(low, high, high if stable is None else stable)


def _records_everywhere(_source: Source, _start: int, _stable: int) -> bool:
    return True  # input written by a plain producer: every offset below the end is a record


def test_a_partition_is_stalled_only_while_input_waits_and_its_offset_stands_still() -> None:
    detector = StallDetector(stall_after_s=10)
    owned = {P0, P1}
    ends = {P0: _ends(0, 100), P1: _ends(0, 50)}
    fetch = _records_everywhere
    assert detector.observe(owned, {P0: 40, P1: 50}, ends, 0, fetch) == set()
    assert detector.observe(owned, {P0: 40, P1: 50}, ends, 9.9, fetch) == set()  # not yet for long enough
    assert detector.observe(owned, {P0: 40, P1: 50}, ends, 10, fetch) == {P0}  # P1 is idle: at its end
    assert detector.observe(owned, {P0: 41, P1: 50}, ends, 11, fetch) == set()  # P0 moved: the clock restarts
    assert detector.observe(owned, {P0: 41, P1: 50}, ends, 20.9, fetch) == set()
    assert detector.observe(owned, {P0: 41, P1: 50}, ends, 21, fetch) == {P0}


def test_no_committed_offset_counts_from_the_partition_start_and_idle_time_does_not_count() -> None:
    detector = StallDetector(stall_after_s=5)
    owned = {P0}
    fetch = _records_everywhere
    # idle for a long time (nothing to read), then input arrives: the clock starts only then
    assert detector.observe(owned, {P0: -1001}, {P0: _ends(7, 7)}, 0, fetch) == set()
    assert detector.observe(owned, {P0: -1001}, {P0: _ends(7, 7)}, 100, fetch) == set()
    assert detector.observe(owned, {P0: -1001}, {P0: _ends(7, 9)}, 101, fetch) == set()
    assert detector.observe(owned, {P0: -1001}, {P0: _ends(7, 9)}, 106, fetch) == {P0}


def test_a_partition_given_up_is_forgotten() -> None:
    detector = StallDetector(stall_after_s=1)
    detector.observe({P0}, {P0: 1}, {P0: _ends(0, 5)}, 0, _records_everywhere)
    assert detector.observe(set(), {}, {}, 5, _records_everywhere) == set()
    assert detector.observe({P0}, {P0: 1}, {P0: _ends(0, 5)}, 6, _records_everywhere) == set()  # a fresh clock


def test_a_commit_marker_past_the_committed_offset_is_not_input_waiting() -> None:
    """Transactional input: the end is one past the last record (the commit marker no consumer
    receives). The broker says nothing is fetchable there: idle, however long it stays so."""
    detector = StallDetector(stall_after_s=5)
    asked: list[tuple[Source, int, int]] = []

    def only_markers(source: Source, start: int, stable: int) -> bool:
        asked.append((source, start, stable))
        return False

    ends = {P0: _ends(0, 14)}
    for now in (0, 5, 60, 3600):
        assert detector.observe({P0}, {P0: 13}, ends, now, only_markers) == set()
    assert asked == [(P0, 13, 14)]  # asked once for that position, only once the offset stood still
    # a record arrives in a new transaction and nobody consumes it: the position changed, ask again
    ends = {P0: _ends(0, 16)}
    stuck = {P0: 13}
    assert detector.observe({P0}, stuck, ends, 3601, _records_everywhere) == set()
    assert detector.observe({P0}, stuck, ends, 3606, _records_everywhere) == {P0}


def test_a_moving_offset_never_asks_the_broker() -> None:
    detector = StallDetector(stall_after_s=5)

    def never(_source: Source, _start: int, _stable: int) -> bool:
        raise AssertionError("a partition whose committed offset moves needs no fetch")

    for step in range(10):
        assert detector.observe({P0}, {P0: 10 * step}, {P0: _ends(0, 10 * step + 7)}, step * 10, never) == set()


def test_records_held_behind_an_open_transaction_wait() -> None:
    """The last stable offset is below the high watermark: the consumer gets those records only once
    the transaction ends. That waits, whatever a fetch from the committed offset returns."""
    detector = StallDetector(stall_after_s=5)

    def nothing(_source: Source, _start: int, _stable: int) -> bool:
        return False

    ends = {P0: _ends(0, 30, stable=20)}
    assert detector.observe({P0}, {P0: 20}, ends, 0, nothing) == set()
    assert detector.observe({P0}, {P0: 20}, ends, 5, nothing) == {P0}
    ends = {P0: _ends(0, 31)}  # the transaction aborted: only aborted records and the marker are left
    assert detector.observe({P0}, {P0: 20}, ends, 6, nothing) == set()


def test_unknown_ends_are_never_a_stall() -> None:
    detector = StallDetector(stall_after_s=1)
    assert detector.observe({P0}, {P0: 3}, {}, 0, _records_everywhere) == set()
    assert detector.observe({P0}, {P0: 3}, {}, 10, _records_everywhere) == set()


def test_slots_are_unique_among_live_holders_and_free_again_when_the_holder_exits(tmp_path: Path) -> None:
    assert claim_slot("g.sanitize", tmp_path) == 0
    assert claim_slot("g.sanitize", tmp_path) == 1  # held by this process: the next one is free
    assert claim_slot("g.aggregate", tmp_path) == 0  # another job's slots are its own
    probe = ("import sys; from pathlib import Path; from gateway.runtime.instance import claim_slot; "
             "print(claim_slot(sys.argv[1], Path(sys.argv[2])))")
    other = subprocess.run([sys.executable, "-c", probe, "g.sanitize", str(tmp_path)], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert other.stdout.strip() == "2"  # a second live process never shares a slot
    again = subprocess.run([sys.executable, "-c", probe, "g.sanitize", str(tmp_path)], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).resolve().parents[2])
    assert again.stdout.strip() == "2"  # the first one exited: its slot is free for its successor


def test_an_explicit_instance_id_is_kept_and_the_default_is_host_and_slot(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GATEWAY_INSTANCE_LOCK_DIR", str(tmp_path))
    assert with_instance_id(GatewayConfig(instance_id="worker-7"), "sanitize").instance_id == "worker-7"
    claimed = with_instance_id(GatewayConfig(group_id="g"), "sanitize").instance_id
    host, _, slot = claimed.rpartition("-")
    assert host and slot == "0"
    assert GatewayConfig(instance_id=claimed).instance_id == claimed  # a valid setting as it is
