"""The default instance id: HOST-<slot>, stable across restarts and unique among live workers.

A worker's transactional id is ``<group>-<instance>``. When a worker restarts under the id of its
dead predecessor, `init_transactions` fences that predecessor and aborts its open transaction at
once; under a new id (the old default HOST-PID) the dead transaction stays open until its timeout
and holds back its partitions. The slot is the lowest number whose lock file this process can
lock: a live worker holds its lock, a dead one's lock is released by the kernel.
"""

from __future__ import annotations

import fcntl
import socket
from dataclasses import replace
from pathlib import Path
from typing import IO

from gateway.settings import GatewayConfig, instance_lock_dir

_held: list[IO[str]] = []  # the lock files of this process, open for its lifetime


def lock_dir() -> Path:
    return instance_lock_dir()


def claim_slot(scope: str, directory: Path | None = None, max_slots: int = 1024) -> int:
    """The lowest slot of `scope` that no live process holds; held until this process exits."""
    directory = (directory or lock_dir()) / scope
    directory.mkdir(parents=True, exist_ok=True)
    for slot in range(max_slots):
        handle = open(directory / f"{slot}.lock", "a")  # noqa: SIM115 - kept open: the lock lives with it
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _held.append(handle)
        return slot
    raise RuntimeError(f"no free instance slot among {max_slots} in {directory}")


def with_instance_id(config: GatewayConfig, role: str) -> GatewayConfig:
    """`config` with its instance id set: as given, or HOST-<slot> for this job's role and group."""
    if config.instance_id:
        return config
    host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname()) or "host"
    slot = claim_slot(f"{config.group_id}.{role}")
    return replace(config, instance_id=f"{host}-{slot}")
