"""How many CPUs this process may use, and how many worker processes `gateway run --processes auto`
starts: one per CPU, or one when the broker shares this machine (`auto_processes`)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container's
    limit, which os.cpu_count() does not see), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "::1", "[::1]"})


def broker_on_this_host(bootstrap: str, hostname: str | None = None) -> bool:
    """Whether every bootstrap server is this machine: a loopback address or name (the embedded broker,
    the demo, a broker started beside the gateway), or this host's own name. Names are not resolved:
    the rule must not wait on DNS, and a remote name never counts as local."""
    own = {hostname if hostname is not None else socket.gethostname()} - {""}
    hosts = [part.strip().rpartition(":")[0].lower() for part in bootstrap.split(",") if part.strip()]
    return bool(hosts) and all(h in LOOPBACK_NAMES or h.startswith("127.") or h in own for h in hosts)


def auto_processes(bootstrap: str, cpus: int, hostname: str | None = None) -> tuple[int, str]:
    """`--processes auto`: how many worker processes, and why (said in `gateway run`'s start-up log).

    One per usable CPU when the broker runs elsewhere: a Python worker uses one core. One when the
    broker shares this machine: the broker needs cores of its own (every batch is a transaction), and
    on the reference 2-core host two processes drained a backlog at 0.63x of one (benchmarks/bench.py,
    "1 vs 2 processes"), as they took the broker's share."""
    if broker_on_this_host(bootstrap, hostname):
        return 1, "the broker runs on this host (bootstrap on loopback): one process, the other cores left to it"
    return cpus, f"one per usable CPU ({cpus}): the broker runs elsewhere"
