"""The supervisor's pure parts: the CPUs it counts, the backoff, the arguments its children get."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.ops.cpus import auto_processes, usable_cpus
from gateway.runtime.supervisor import BACKOFF_MAX_S, Supervisor, backoff_s, child_arguments
from gateway.settings import GatewayConfig


def test_a_cgroup_cpu_quota_caps_the_affinity(tmp_path: Path) -> None:
    unlimited = usable_cpus(tmp_path)  # no cpu.max: the affinity alone
    assert unlimited >= 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two processes
    assert usable_cpus(tmp_path) == min(unlimited, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == unlimited
    (tmp_path / "cpu.max").write_text("10000 100000\n")  # a tenth of a CPU is still one process
    assert usable_cpus(tmp_path) == 1


def test_the_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, BACKOFF_MAX_S, BACKOFF_MAX_S]


def test_children_get_the_command_line_without_the_options_the_supervisor_sets() -> None:
    argv = ["--bootstrap", "b:9092", "--processes", "4", "--metrics-port=9108", "--instance-id", "w",
            "--metrics-host", "10.0.0.1", "--group-id", "g"]
    assert child_arguments(argv) == ["--bootstrap", "b:9092", "--group-id", "g"]
    supervisor = Supervisor(child_arguments(argv), 2, metrics_port=9108, instance_id="w")
    first, second = (c.command for c in supervisor.children)
    assert first[-2:] == ["--instance-id", "w-0"] and second[-2:] == ["--instance-id", "w-1"]
    for command in (first, second):
        assert command[command.index("--processes") + 1] == "1"  # a child never supervises in turn
    ports = {c.metrics_port for c in supervisor.children}
    assert len(ports) == 2 and 9108 not in ports


def test_one_process_needs_no_supervisor() -> None:
    with pytest.raises(ValueError, match="two or more"):
        Supervisor([], 1)


@pytest.mark.parametrize("bootstrap", ["127.0.0.1:19092", "localhost:9092", "[::1]:9092", "127.0.0.1:1,localhost:2",
                                       "myhost:9092", " LOCALHOST:9092"])
def test_auto_starts_one_process_where_the_broker_shares_the_machine(bootstrap: str) -> None:
    count, why = auto_processes(bootstrap, cpus=8, hostname="myhost")
    assert count == 1
    assert "this host" in why


@pytest.mark.parametrize("bootstrap", ["kafka-0.kafka:9092", "10.0.0.5:9092", "127.0.0.1:9092,kafka-1:9092",
                                       "localhost.example.com:9092", "127example:9092"])
def test_auto_starts_one_per_cpu_where_the_broker_runs_elsewhere(bootstrap: str) -> None:
    assert auto_processes(bootstrap, cpus=8, hostname="myhost") == (8, "one per usable CPU (8): the broker runs "
                                                                        "elsewhere")


def test_an_explicit_processes_setting_wins_over_the_rule() -> None:
    assert GatewayConfig(bootstrap="127.0.0.1:9092", processes="3").process_choice() == (3, "set by processes")
    assert GatewayConfig(bootstrap="127.0.0.1:9092").process_count() == 1
