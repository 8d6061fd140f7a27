"""The stall rule (gateway.stall) and the default instance id's slots (gateway.runtime.instance)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.runtime.instance import claim_slot, with_instance_id
from gateway.stall import StallDetector

P0, P1 = ("raw", 0), ("raw", 1)


def test_a_partition_is_stalled_only_while_input_waits_and_its_offset_stands_still() -> None:
    detector = StallDetector(stall_after_s=10)
    owned = {P0, P1}
    ends = {P0: (0, 100), P1: (0, 50)}
    assert detector.observe(owned, {P0: 40, P1: 50}, ends, now=0) == set()
    assert detector.observe(owned, {P0: 40, P1: 50}, ends, now=9.9) == set()  # not yet for long enough
    assert detector.observe(owned, {P0: 40, P1: 50}, ends, now=10) == {P0}  # P1 is idle: at its end
    assert detector.observe(owned, {P0: 41, P1: 50}, ends, now=11) == set()  # P0 moved: the clock restarts
    assert detector.observe(owned, {P0: 41, P1: 50}, ends, now=20.9) == set()
    assert detector.observe(owned, {P0: 41, P1: 50}, ends, now=21) == {P0}


def test_no_committed_offset_counts_from_the_partition_start_and_idle_time_does_not_count() -> None:
    detector = StallDetector(stall_after_s=5)
    owned = {P0}
    # idle for a long time (nothing to read), then input arrives: the clock starts only then
    assert detector.observe(owned, {P0: -1001}, {P0: (7, 7)}, now=0) == set()
    assert detector.observe(owned, {P0: -1001}, {P0: (7, 7)}, now=100) == set()
    assert detector.observe(owned, {P0: -1001}, {P0: (7, 9)}, now=101) == set()
    assert detector.observe(owned, {P0: -1001}, {P0: (7, 9)}, now=106) == {P0}


def test_a_partition_given_up_is_forgotten() -> None:
    detector = StallDetector(stall_after_s=1)
    detector.observe({P0}, {P0: 1}, {P0: (0, 5)}, now=0)
    assert detector.observe(set(), {}, {}, now=5) == set()
    assert detector.observe({P0}, {P0: 1}, {P0: (0, 5)}, now=6) == set()  # taken back: a fresh clock


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
