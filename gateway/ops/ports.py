"""A free local TCP port, for listeners the gateway starts itself (the supervisor's children's metrics
endpoints, the embedded broker and registry)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free on 127.0.0.1 now (another process may still take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
