"""Kafka security for real, on the embedded Apache Kafka: TLS and SASL are terminated by the broker.

A broker of this module's own has three listeners: PLAINTEXT (inter-broker only; this module's
clients never use it except as a control), MTLS (SSL, ``ssl.client.auth=required``) and SECURE
(SASL_SSL, SCRAM-SHA-512 only, one SCRAM user written into the storage at format time). Each
listener advertises itself, so a client that bootstraps on a secured port makes every connection
(advertised broker, group and transaction coordinators) to that port, under that protocol.

Certificates are made here with `cryptography`: a CA, a broker certificate for 127.0.0.1 (IP SAN)
and localhost, a client certificate whose key is encrypted (PBES2; OpenSSL in librdkafka opens
it with GATEWAY_SSL_KEY_PASSWORD), and a second, unrelated CA. The broker reads its key and
certificate as a PEM keystore; the key is unencrypted PKCS#8 (mode 0600) because Java 17 cannot
open the PBES2-encrypted PKCS#8 that `cryptography` writes ("PBES2 SecretKeyFactory not available").

Proven: the gateway worker (`gateway run`, configured by flags plus passwords from the
environment) sanitizes events end to end over mutual TLS and over SASL_SSL; `gateway audit
verify` reads the audit chain over TLS with settings from the environment alone; clients with a
wrong CA or the system trust store, without a client certificate, with a wrong SCRAM password, or
in plaintext are refused; a worker with a wrong SCRAM password exits non-zero naming the
authentication failure; no password ever shows up in a log. The validation of the settings
themselves (missing files, settings that need another protocol) is in tests/unit/test_config.py.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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

from gateway.core.audit import verify_chains
from gateway.core.codec.sanitized import SanitizedDecoder, StoredRecord
from gateway.embedded.broker import EmbeddedBroker, Listener, ScramUser, free_port
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import CANARIES, SampleEvents
from gateway.runtime.reader import read_topic

from .conftest import ENV, REPO, Deployment, WorkerProcess

pytestmark = pytest.mark.integration
KEY_PASSWORD = "tls-key-pass-" + uuid.uuid4().hex  # must never show up in a log
SASL_USER = "gateway-svc"
SASL_PASSWORD = "sasl-pass-" + uuid.uuid4().hex  # likewise
EVENTS = 30


# ---- certificates ----------------------------------------------------------------------------------

@dataclass
class Pki:
    ca: Path
    other_ca: Path
    broker_keystore: Path  # PKCS#8 key + certificate, for ssl.keystore.type=PEM
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
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    ca_key, ca_cert = _ca("gateway test CA")
    _, other_cert = _ca("some other CA")
    broker_key, broker_cert = _leaf(ca_key, ca_cert, "localhost", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "privacy-gateway", server=False)
    return Pki(
        ca=_write(root / "ca.pem", ca_cert.public_bytes(pem)),
        other_ca=_write(root / "other-ca.pem", other_cert.public_bytes(pem)),
        broker_keystore=_write(root / "broker-keystore.pem", broker_key.private_bytes(
            pem, pkcs8, serialization.NoEncryption()) + broker_cert.public_bytes(pem)),
        client_cert=_write(root / "client.pem", client_cert.public_bytes(pem)),
        client_key=_write(root / "client.key", client_key.private_bytes(
            pem, pkcs8, serialization.BestAvailableEncryption(KEY_PASSWORD.encode()))),
    )


# ---- the secured broker ----------------------------------------------------------------------------

@dataclass
class Secured:
    pki: Pki
    broker: EmbeddedBroker
    mtls: str  # bootstrap of the SSL listener (client certificate required)
    sasl: str  # bootstrap of the SASL_SSL listener (SCRAM-SHA-512)

    def mtls_client(self) -> dict[str, str]:
        """What an mTLS client needs, written out here rather than taken from GatewayConfig."""
        return {"bootstrap.servers": self.mtls, "security.protocol": "ssl", "ssl.ca.location": str(self.pki.ca),
                "ssl.certificate.location": str(self.pki.client_cert),
                "ssl.key.location": str(self.pki.client_key), "ssl.key.password": KEY_PASSWORD}

    def sasl_client(self) -> dict[str, str]:
        return {"bootstrap.servers": self.sasl, "security.protocol": "sasl_ssl", "ssl.ca.location": str(self.pki.ca),
                "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": SASL_USER, "sasl.password": SASL_PASSWORD}

    def mtls_args(self) -> tuple[str, ...]:
        return ("--security-protocol", "SSL", "--ssl-ca-location", str(self.pki.ca),
                "--ssl-certificate-location", str(self.pki.client_cert), "--ssl-key-location", str(self.pki.client_key))

    def sasl_args(self) -> tuple[str, ...]:
        return ("--security-protocol", "SASL_SSL", "--ssl-ca-location", str(self.pki.ca),
                "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", SASL_USER)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("tls")
    pki = make_pki(root)
    stores = {"ssl.keystore.type": "PEM", "ssl.keystore.location": str(pki.broker_keystore),
              "ssl.truststore.type": "PEM", "ssl.truststore.location": str(pki.ca)}
    mtls = Listener("MTLS", free_port(), "SSL", {**stores, "ssl.client.auth": "required"})
    sasl = Listener("SECURE", free_port(), "SASL_SSL", {
        **stores, "sasl.enabled.mechanisms": "SCRAM-SHA-512",
        "scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;"})
    with EmbeddedBroker(log_path=root / "broker.log", listeners=[mtls, sasl],
                        scram_users=[ScramUser("SCRAM-SHA-512", SASL_USER, SASL_PASSWORD)]) as broker:
        yield Secured(pki, broker, f"127.0.0.1:{mtls.port}", f"127.0.0.1:{sasl.port}")


# ---- helpers ---------------------------------------------------------------------------------------

class _Collector:
    """librdkafka's error_cb and log lines, deduplicated, without the '(after 3ms in state …)' tail."""

    def __init__(self) -> None:
        self.lines: set[str] = set()

    def error(self, err: Any) -> None:
        self._add(err.str())

    def log(self, _level: int, fmt: str, *args: Any) -> None:
        self._add(fmt % args)

    def _add(self, line: str) -> None:
        self.lines.add(re.sub(r" \(after \d+ms in state \w+\)", "", line))

    def text(self) -> str:
        return "\n".join(sorted(self.lines))


def metadata_ok(conf: dict[str, str]) -> list[str]:
    """The brokers a client is told about (so: it connected, authenticated and got an answer)."""
    metadata = AdminClient({**conf, "log_level": 0}).list_topics(timeout=15)
    return [f"{b.host}:{b.port}" for b in metadata.brokers.values()]


def refused(case: str, conf: dict[str, str], reason: str, timeout_s: float = 4.0) -> str:
    """Ask for metadata and fail unless the client gets none and librdkafka says why, matching the
    regular expression `reason`; return what it said."""
    seen = _Collector()
    admin = AdminClient({**conf, "error_cb": seen.error, "logger": seen, "reconnect.backoff.ms": 200})
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        pass
    else:
        pytest.fail(f"{case}: not refused, the broker answered with {len(metadata.topics)} topics")
    deadline = time.monotonic() + 5
    while not re.search(reason, seen.text()) and time.monotonic() < deadline:
        admin.poll(0.2)  # serves error_cb and the logger
    assert re.search(reason, seen.text()), f"{case}: no /{reason}/ in:\n{seen.text()}"
    return seen.text()


def run_gateway(args: list[str], env: dict[str, str], log_path: Path) -> WorkerProcess:
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = subprocess.Popen([sys.executable, "-m", "gateway", *args], stdout=handle, stderr=subprocess.STDOUT,
                            env={**ENV, **env}, cwd=REPO)
    return WorkerProcess(proc, log_path, handle)


def worker_args(d: Deployment, instance: str, security: tuple[str, ...]) -> list[str]:
    """`Deployment.start_worker`'s command line, plus the security flags."""
    return ["run", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas), "--keyring", str(d.keyring),
            "--audit-topic", d.audit_topic, "--group-id", d.group_id, "--instance-id", instance,
            "--partitions", "1", "--session-timeout-ms", "6000", *security]


def wait_for_records(kafka: dict[str, str], topic: str, expected: int, timeout_s: float = 45) -> list[StoredRecord]:
    deadline = time.monotonic() + timeout_s
    records: list[StoredRecord] = []
    while time.monotonic() < deadline:
        try:
            records = read_topic(kafka, topic, timeout_s=10)
        except Exception:  # noqa: BLE001 - the topic may not have its first records yet
            records = []
        if len(records) >= expected:
            return records
        time.sleep(0.3)
    raise AssertionError(f"{len(records)} of {expected} records on {topic} after {timeout_s}s")


def sanitize_end_to_end(d: Deployment, kafka: dict[str, str], worker: WorkerProcess) -> None:
    """Produce raw payments (one with every canary) through `kafka`, read them back sanitized."""
    worker.wait_for_log('"msg":"partitions assigned"', timeout_s=60)
    samples = SampleEvents(seed=5)
    payments = [samples.payment(canary=i == 0) for i in range(EVENTS)]
    producer = Producer({**kafka, "linger.ms": 5})
    for record in payments:
        producer.produce(d.payments.source_topic, encode_raw(d.payments, record, "avro"))
    assert producer.flush(20) == 0
    sanitized = wait_for_records(kafka, d.payments.sanitized_topic, EVENTS)
    assert len(sanitized) == EVENTS
    decoder = SanitizedDecoder(list(d.plans.values()))
    records = [decoder.decode(r)[1] for r in sanitized]
    assert sorted(r["event_id"] for r in records) == sorted(p["event_id"] for p in payments)
    by_id = {p["event_id"]: p for p in payments}
    for record in records:  # sanitized, not copied: tokens and ciphertexts instead of the values
        raw = by_id[record["event_id"]]
        assert record["user_id"].startswith("tok_v1_") and record["user_id"] != raw["user_id"]
        assert record["card_number"] and record["card_number"] != raw["card_number"]
        assert "ip_address" not in record
    stored = b"".join((r.value or b"") + b"".join(r.headers.values()) for r in sanitized)
    for name, canary in CANARIES.items():
        assert canary.encode() not in stored, name
    assert not {p["card_number"].encode() for p in payments if p["card_number"].encode() in stored}
    audit = wait_for_records(kafka, d.audit_topic, 1)
    assert verify_chains((r.partition, r.offset, r.value or b"") for r in audit).ok


# ---- tests -----------------------------------------------------------------------------------------

def test_gateway_sanitizes_over_mutual_tls(secured: Secured, tmp_path: Path) -> None:
    kafka = secured.mtls_client()
    assert metadata_ok(kafka) == [secured.mtls]  # the broker advertises the TLS listener on it, nothing else
    d = Deployment(secured.mtls, tmp_path, uuid.uuid4().hex[:8])
    worker = run_gateway(worker_args(d, "tls-worker", secured.mtls_args()),
                         {"GATEWAY_SSL_KEY_PASSWORD": KEY_PASSWORD}, tmp_path / "worker.log")
    try:
        sanitize_end_to_end(d, kafka, worker)
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    # another command, configured by the environment alone, reads the audit chain over TLS too
    env = {"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SSL_CA_LOCATION": str(secured.pki.ca),
           "GATEWAY_SSL_CERTIFICATE_LOCATION": str(secured.pki.client_cert),
           "GATEWAY_SSL_KEY_LOCATION": str(secured.pki.client_key), "GATEWAY_SSL_KEY_PASSWORD": KEY_PASSWORD}
    result = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--bootstrap", secured.mtls,
                             "--topic", d.audit_topic, "--keyring", str(d.keyring), "--group-id", d.group_id],
                            capture_output=True, timeout=60, env={**ENV, **env}, cwd=REPO)
    assert result.returncode == 0 and b"audit chain OK" in result.stdout, result.stdout + result.stderr
    everything = worker.log() + result.stdout.decode() + result.stderr.decode()
    assert KEY_PASSWORD not in everything


def test_gateway_sanitizes_over_sasl_ssl_with_scram(secured: Secured, tmp_path: Path) -> None:
    kafka = secured.sasl_client()
    assert metadata_ok(kafka) == [secured.sasl]
    d = Deployment(secured.sasl, tmp_path, uuid.uuid4().hex[:8])
    worker = run_gateway(worker_args(d, "sasl-worker", secured.sasl_args()),
                         {"GATEWAY_SASL_PASSWORD": SASL_PASSWORD}, tmp_path / "worker.log")
    try:
        sanitize_end_to_end(d, kafka, worker)
    finally:
        code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    assert SASL_PASSWORD not in worker.log()


def test_wrong_ca_no_client_certificate_wrong_password_and_plaintext_are_refused(
        secured: Secured, tmp_path: Path) -> None:
    mtls, sasl = secured.mtls_client(), secured.sasl_client()
    # a worker with the wrong SCRAM password, started first: it takes the longest to give up
    wrong_password = "not-the-" + SASL_PASSWORD
    d = Deployment(secured.sasl, tmp_path, uuid.uuid4().hex[:8])
    worker = run_gateway(worker_args(d, "wrong-password", secured.sasl_args()),
                         {"GATEWAY_SASL_PASSWORD": wrong_password}, tmp_path / "worker.log")
    try:
        # controls: the right settings get metadata on each listener, a plaintext client on PLAINTEXT
        assert metadata_ok(mtls) == [secured.mtls]
        assert metadata_ok(sasl) == [secured.sasl]
        assert metadata_ok({"bootstrap.servers": secured.broker.bootstrap}) == [secured.broker.bootstrap]
        verify_failed = r"SSL handshake failed: .*certificate verify failed"
        closed = r"Disconnected: connection closed by peer|Disconnected while requesting ApiVersion"
        cases = {
            "wrong CA (mTLS)": ({**mtls, "ssl.ca.location": str(secured.pki.other_ca)}, verify_failed),
            "wrong CA (SASL_SSL)": ({**sasl, "ssl.ca.location": str(secured.pki.other_ca)}, verify_failed),
            "system trust store": ({k: v for k, v in mtls.items() if k != "ssl.ca.location"}, verify_failed),
            "no client certificate": ({k: v for k, v in mtls.items() if not k.startswith(("ssl.certificate",
                                                                                           "ssl.key"))},
                                      r"alert (bad certificate|certificate required)"),
            "wrong SCRAM password": ({**sasl, "sasl.password": wrong_password},
                                     r"SASL authentication error: Authentication failed .*invalid credentials "
                                     r"with SASL mechanism SCRAM-SHA-512"),
            "unknown SCRAM user": ({**sasl, "sasl.username": "nobody"}, r"SASL authentication error"),
            "TLS without SASL": ({k: v for k, v in sasl.items() if not k.startswith("sasl.")}
                                 | {"security.protocol": "ssl"}, r"Disconnected: SSL connection closed by peer"),
            "plaintext to mTLS": ({"bootstrap.servers": secured.mtls}, closed),
            "plaintext to SASL_SSL": ({"bootstrap.servers": secured.sasl}, closed),
        }
        with ThreadPoolExecutor(len(cases)) as pool:
            futures = {name: pool.submit(refused, name, conf, reason) for name, (conf, reason) in cases.items()}
            said = {name: future.result() for name, future in futures.items()}  # re-raises a failed case
        assert set(said) == set(cases)
        # and the worker gives up, naming the reason, without its password in the log
        code = worker.proc.wait(90)
    finally:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.stop()
    log = worker.log()
    assert code != 0, log[-3000:]
    assert "Authentication failed" in log and "SCRAM-SHA-512" in log, log[-3000:]
    assert wrong_password not in log and SASL_PASSWORD not in log
    # settings that cannot work stop the gateway before it touches Kafka (exit 2, the setting named)
    args = [a if a != str(secured.pki.ca) else "/nonexistent/ca.pem" for a in secured.mtls_args()]
    result = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--bootstrap", secured.mtls, *args],
                            capture_output=True, timeout=60, cwd=REPO,
                            env={**ENV, "GATEWAY_SSL_KEY_PASSWORD": KEY_PASSWORD})
    assert result.returncode == 2, result.stdout + result.stderr
    assert b"'/nonexistent/ca.pem' is not a readable file" in result.stderr, result.stderr
    assert KEY_PASSWORD.encode() not in result.stderr + result.stdout

