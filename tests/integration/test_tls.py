"""Kafka security for real: a gateway worker configured only through GATEWAY_SECURITY_PROTOCOL and
GATEWAY_SSL_* connects over mutual TLS and sanitizes events; clients without the CA, without a
client certificate, or in plaintext are refused; SASL settings reach a broker that demands SASL.

TLS is terminated by a small proxy in this test, not by Tansu: the bundled Tansu (0.6.0) declares
``--cert``/``--key`` but refuses the two together ("the argument '--cert <CERT>' cannot be used
with '--key <KEY>'") and listens in plaintext with either one alone. The broker advertises the
proxy's port, so every connection librdkafka makes (bootstrap, then the advertised broker, the
group and transaction coordinators) goes through TLS. Certificates are made here with
`cryptography`: a CA, a server certificate for 127.0.0.1 (IP SAN) and localhost, a client
certificate with an encrypted key, and a second, unrelated CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.audit import verify_chains
from gateway.broker import EmbeddedBroker, free_port
from gateway.config import GatewayConfig
from gateway.consume import SanitizedDecoder, read_topic
from gateway.demo import encode_raw
from gateway.samples import SampleEvents

from .conftest import ENV, REPO, Deployment, WorkerProcess

pytestmark = pytest.mark.integration
KEY_PASSWORD = "tls-key-pass-" + uuid.uuid4().hex  # must never show up in a log
SASL_PASSWORD = "sasl-pass-" + uuid.uuid4().hex
EVENTS = 30


# ---- certificates ----------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path  # encrypted with KEY_PASSWORD


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str,
          server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_pki(root: Path) -> Pki:
    pem = serialization.Encoding.PEM
    ca_key, ca_cert = _ca("gateway test CA")
    _, other_cert = _ca("some other CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "privacy-gateway", server=False)
    return Pki(
        ca=_write(root / "ca.pem", ca_cert.public_bytes(pem)),
        other_ca=_write(root / "other-ca.pem", other_cert.public_bytes(pem)),
        server_cert=_write(root / "server.pem", server_cert.public_bytes(pem)),
        server_key=_write(root / "server.key", server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())),
        client_cert=_write(root / "client.pem", client_cert.public_bytes(pem)),
        client_key=_write(root / "client.key", client_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(KEY_PASSWORD.encode()))),
    )


# ---- a TLS-terminating proxy in front of the plaintext broker --------------------------------------

class TlsTerminator:
    """Accepts TLS on 127.0.0.1:port (server certificate; client certificate required, signed by the
    CA) and forwards the plaintext to the broker. Records every refused handshake's reason."""

    def __init__(self, port: int, target_port: int, pki: Pki) -> None:
        self.port, self.target_port = port, target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
        self.context.load_cert_chain(str(pki.server_cert), str(pki.server_key))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.refused: list[str] = []
        self.accepted = 0
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, _context: None)  # refused handshakes are expected
        self._thread = threading.Thread(target=self.loop.run_forever, name="tls-terminator", daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> TlsTerminator:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._server is not None:
            self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=10)
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            self.refused.append(getattr(exc, "reason", None) or type(exc).__name__)
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()


# ---- fixtures and helpers --------------------------------------------------------------------------

@dataclass
class TlsSetup:
    pki: Pki
    bootstrap: str  # the TLS port
    terminator: TlsTerminator
    env: dict[str, str]  # the gateway's settings, as an operator would set them

    def client_config(self) -> dict[str, str]:
        return GatewayConfig.load({}, environ=self.env).kafka_client_config()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSetup]:
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root)
    tls_port = free_port()
    with EmbeddedBroker(log_path=root / "broker.log", advertised_port=tls_port) as broker, \
            TlsTerminator(tls_port, broker.port, pki) as terminator:
        bootstrap = f"127.0.0.1:{tls_port}"
        env = {"GATEWAY_BOOTSTRAP": bootstrap, "GATEWAY_SECURITY_PROTOCOL": "SSL",
               "GATEWAY_SSL_CA_LOCATION": str(pki.ca), "GATEWAY_SSL_CERTIFICATE_LOCATION": str(pki.client_cert),
               "GATEWAY_SSL_KEY_LOCATION": str(pki.client_key), "GATEWAY_SSL_KEY_PASSWORD": KEY_PASSWORD}
        yield TlsSetup(pki, bootstrap, terminator, env)


def refusal(conf: dict[str, Any], timeout_s: float = 4.0) -> str:
    """Ask for metadata; return the errors librdkafka reported, failing the test if it got an answer."""
    errors: list[str] = []
    admin = AdminClient({**conf, "error_cb": lambda err: errors.append(err.str()),
                         "log_level": 0, "reconnect.backoff.ms": 200})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=timeout_s)
    admin.poll(0.5)  # serves error_cb
    return " | ".join(errors)


def run_gateway(args: list[str], env: dict[str, str], log_path: Path) -> WorkerProcess:
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=handle, stderr=subprocess.STDOUT,
                            env={**ENV, **env}, cwd=REPO)
    return WorkerProcess(proc, log_path, handle)


# ---- tests -----------------------------------------------------------------------------------------

def test_gateway_sanitizes_over_mutual_tls(tls: TlsSetup, tmp_path: Path) -> None:
    d = Deployment(tls.bootstrap, tmp_path, uuid.uuid4().hex[:8])
    log_path = tmp_path / "worker.log"
    worker = run_gateway(["run", "--schemas", str(d.schemas), "--keyring", str(d.keyring), "--audit-topic",
                          d.audit_topic, "--group-id", d.group_id, "--instance-id", "tls-worker", "--partitions",
                          "1", "--session-timeout-ms", "6000"], tls.env, log_path)
    try:
        worker.wait_for_log('"msg":"partitions assigned"', timeout_s=40)
        kafka = tls.client_config()  # the test's own clients: the same settings, over TLS too
        assert kafka["security.protocol"] == "ssl" and kafka["ssl.key.password"] == KEY_PASSWORD
        samples = SampleEvents(seed=5)
        payments = [samples.payment() for _ in range(EVENTS)]
        producer = Producer({**kafka, "linger.ms": 5})
        for record in payments:
            producer.produce(d.payments.source_topic, encode_raw(d.payments, record, "avro"))
        assert producer.flush(20) == 0
        deadline = time.monotonic() + 40
        sanitized = []
        while len(sanitized) < EVENTS and time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the topic may not have its first records yet
                sanitized = read_topic(kafka, d.payments.sanitized_topic, timeout_s=10)
            time.sleep(0.3)
        decoder = SanitizedDecoder(list(d.plans.values()))
        records = [decoder.decode(r)[1] for r in sanitized]
        assert sorted(r["event_id"] for r in records) == sorted(p["event_id"] for p in payments)
        by_id = {p["event_id"]: p for p in payments}
        for record in records:  # sanitized, not copied: tokens and ciphertexts instead of the values
            raw = by_id[record["event_id"]]
            assert record["user_id"].startswith("tok_v1_") and record["user_id"] != raw["user_id"]
            assert record["card_number"] and record["card_number"] != raw["card_number"]
            assert "ip_address" not in record
        audit = read_topic(kafka, d.audit_topic)
        assert verify_chains((r.partition, r.offset, r.value or b"") for r in audit).ok
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    # the CLI reads over TLS from the same environment
    result = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--bootstrap", tls.bootstrap,
                             "--topic", d.audit_topic], capture_output=True, timeout=60, env={**ENV, **tls.env},
                            cwd=REPO)
    assert result.returncode == 0 and b"audit chain OK" in result.stdout, result.stdout + result.stderr
    assert tls.terminator.accepted >= 3  # bootstrap, advertised broker, coordinators: all through TLS
    everything = worker.log() + result.stdout.decode() + result.stderr.decode()
    assert KEY_PASSWORD not in everything


def test_clients_without_the_ca_a_client_certificate_or_tls_are_refused(tls: TlsSetup) -> None:
    good = tls.client_config()
    assert "ssl.ca.location" in good
    before = len(tls.terminator.refused)
    no_ca = {k: v for k, v in good.items() if k != "ssl.ca.location"}  # the system trust store only
    other_ca = {**good, "ssl.ca.location": str(tls.pki.other_ca)}
    no_client_cert = {k: v for k, v in good.items() if not k.startswith(("ssl.certificate", "ssl.key"))}
    plaintext = {"bootstrap.servers": tls.bootstrap}
    results: dict[str, str] = {}
    threads = [threading.Thread(target=lambda n=name, c=conf: results.__setitem__(n, refusal(c)))
               for name, conf in (("no_ca", no_ca), ("other_ca", other_ca), ("no_client_cert", no_client_cert),
                                  ("plaintext", plaintext))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert set(results) == {"no_ca", "other_ca", "no_client_cert", "plaintext"}, results
    assert "certificate verify failed" in results["no_ca"], results["no_ca"]
    assert "certificate verify failed" in results["other_ca"], results["other_ca"]
    refused = " ".join(tls.terminator.refused[before:])
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in refused, refused  # mTLS: no client certificate, no entry
    assert "WRONG_VERSION_NUMBER" in refused or "HTTP_REQUEST" in refused, refused  # plaintext bytes
    # and the settings themselves: a CA that does not exist stops the gateway before it touches Kafka
    result = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--bootstrap", tls.bootstrap],
                            capture_output=True, timeout=60, cwd=REPO,
                            env={**ENV, **tls.env, "GATEWAY_SSL_CA_LOCATION": "/nonexistent/ca.pem"})
    assert result.returncode == 2
    assert b"'ssl_ca_location' (GATEWAY_SSL_CA_LOCATION): '/nonexistent/ca.pem' is not a readable file" \
        in result.stderr
    assert KEY_PASSWORD.encode() not in result.stderr + result.stdout


def test_sasl_settings_reach_a_broker_that_requires_authentication(tmp_path: Path) -> None:
    """Tansu's --authentication demands SASL (SCRAM). It has no user here (`tansu user create` needs an
    authenticated connection, and storage is in memory), so the point is what the broker answers:
    the gateway's mechanism and user name arrived, and its password was never logged."""
    with EmbeddedBroker(log_path=tmp_path / "broker.log", authentication=True) as broker:
        refusal({"bootstrap.servers": broker.bootstrap}, timeout_s=3)  # no SASL, no metadata
        env = {"GATEWAY_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "GATEWAY_SASL_MECHANISM": "SCRAM-SHA-256",
               "GATEWAY_SASL_USERNAME": "gateway-svc", "GATEWAY_SASL_PASSWORD": SASL_PASSWORD}
        schemas = REPO / "schemas"
        log_path = tmp_path / "worker.log"
        worker = run_gateway(["run", "--bootstrap", broker.bootstrap, "--schemas", str(schemas), "--keyring",
                              str(tmp_path / "keyring.json"), "--instance-id", "sasl-worker"], env, log_path)
        try:
            code = worker.proc.wait(60)
        finally:
            if worker.proc.poll() is None:
                worker.proc.kill()
            worker.stop()
        log = worker.log()
        assert code == 2, log[-3000:]
        assert "cannot reach Kafka" in log
        assert "SASL SCRAM authentication failed" in log and "unknown-user" in log, log[-3000:]
        assert SASL_PASSWORD not in log
