# ruff: noqa: F811 - the session fixtures imported from conftest_kms are parameters here
"""KMS providers against real servers on 127.0.0.1: AWS KMS (moto server, boto3 over HTTP) and Vault
Transit (OpenBao dev server, hvac). Round trips, routing by KEK id, start-up failures that name the
provider and the setting, an outage while running (dead letters, never plaintext), and a worker on
the real broker encrypting under Vault."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import tokenizers
from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline, RawEvent
from gateway.core.policy.plan import Plan
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import SampleEvents
from gateway.errors import DecryptError
from gateway.keys.decorators import InstrumentedKms, ResilientKms
from gateway.keys.envelope import DekCache, FieldDecryptor, encrypt_field, parse_ciphertext
from gateway.keys.errors import KmsConfigError
from gateway.keys.keyring import Keyring
from gateway.keys.providers import KmsRouter, build_kms
from gateway.settings import GatewayConfig

from .conftest import ENV, REPO, Deployment, WorkerProcess, cli
from .conftest_kms import MotoKms, OpenBao, TcpProxy, moto_kms, openbao  # noqa: F401

pytestmark = pytest.mark.integration
CTX = b"topic\x00field\x00subject"


def aws_config(server: MotoKms, tmp_path: Path, **extra: Any) -> GatewayConfig:
    values = dict(keyring=tmp_path / "k.json", kms_provider="aws", aws_kms_key_id=server.alias,
                  aws_endpoint_url=server.endpoint, aws_region="us-east-1", kms_timeout_s=2.0)
    values.update(extra)
    return GatewayConfig(**values)


def vault_config(server: OpenBao, tmp_path: Path, **extra: Any) -> GatewayConfig:
    values = dict(keyring=tmp_path / "k.json", kms_provider="vault", vault_addr=server.addr,
                  vault_token=server.token, vault_transit_key=server.key, kms_timeout_s=2.0)
    values.update(extra)
    return GatewayConfig(**values)


def _instrumented(kms: KmsRouter) -> InstrumentedKms:
    resilient = kms.active
    assert isinstance(resilient, ResilientKms) and isinstance(resilient.inner, InstrumentedKms)
    return resilient.inner


# ---- round trips ---------------------------------------------------------------------------------
@pytest.mark.parametrize("provider", ["aws", "vault"])
def test_provider_round_trip_names_the_key_and_calls_the_kms_once_per_dek(
        provider: str, moto_kms: MotoKms, openbao: OpenBao, tmp_path: Path) -> None:
    config = aws_config(moto_kms, tmp_path) if provider == "aws" else vault_config(openbao, tmp_path)
    kms = build_kms(config, Keyring.open(config.keyring))
    counts = _instrumented(kms).counts
    cache = DekCache(kms, max_age_s=3600, max_uses=1000)
    ciphertexts = [encrypt_field(cache.current(), f"secret {i}".encode(), CTX) for i in range(5)]
    assert counts[("wrap", "ok")] == 1  # one DEK for five fields (the start-up probe is not counted)
    kek_id = parse_ciphertext(ciphertexts[0]).kek_id
    expected = f"aws:{moto_kms.key_arn}" if provider == "aws" else f"vault:transit/{openbao.key}"
    assert kek_id == expected  # an alias is resolved to the key's ARN once, at start-up
    decryptor = FieldDecryptor(build_kms(config, None))
    assert [decryptor.decrypt(c, CTX) for c in ciphertexts] == [f"secret {i}".encode() for i in range(5)]


@pytest.mark.parametrize("provider", ["aws", "vault"])
def test_a_wrapped_dek_is_bound_to_its_dek_id(provider: str, moto_kms: MotoKms, openbao: OpenBao,
                                              tmp_path: Path) -> None:
    config = aws_config(moto_kms, tmp_path) if provider == "aws" else vault_config(openbao, tmp_path)
    kms = build_kms(config, Keyring.open(config.keyring))
    wrapped = kms.wrap(b"k" * 32, b"context-one")
    assert kms.unwrap(wrapped, b"context-one") == b"k" * 32
    with pytest.raises(DecryptError) as excinfo:
        kms.unwrap(wrapped, b"context-two")
    assert excinfo.value.reason == "tampered"


def test_router_opens_local_ciphertexts_after_moving_to_aws_and_names_a_missing_provider(
        moto_kms: MotoKms, tmp_path: Path) -> None:
    config = aws_config(moto_kms, tmp_path)
    keyring = Keyring.open(config.keyring)
    old = encrypt_field(DekCache(keyring, 60, 10).current(), b"before the move", CTX)
    kms = build_kms(config, keyring)
    new = encrypt_field(DekCache(kms, 60, 10).current(), b"after the move", CTX)
    both = FieldDecryptor(kms)
    assert both.decrypt(old, CTX) == b"before the move" and both.decrypt(new, CTX) == b"after the move"
    local_only = FieldDecryptor(build_kms(GatewayConfig(keyring=config.keyring), keyring))
    with pytest.raises(DecryptError) as excinfo:
        local_only.decrypt(new, CTX)
    assert excinfo.value.reason == "key_not_held"
    assert "provider 'aws'" in excinfo.value.message and "kms_provider=aws" in excinfo.value.message


def test_vault_key_rotation_keeps_old_deks_readable(openbao: OpenBao, tmp_path: Path) -> None:
    from gateway.keys.providers.vault import VaultTransitKms

    config = vault_config(openbao, tmp_path)
    kms = build_kms(config, Keyring.open(config.keyring))
    before = encrypt_field(DekCache(kms, 60, 10).current(), b"v-before", CTX)
    rotated = VaultTransitKms(openbao.addr, openbao.token, openbao.key).rotate()
    after = encrypt_field(DekCache(kms, 60, 10).current(), b"v-after", CTX)
    version = int(rotated.rsplit(" v", 1)[1])
    assert parse_ciphertext(after).wrapped.startswith(f"vault:v{version}:".encode())
    assert not parse_ciphertext(before).wrapped.startswith(f"vault:v{version}:".encode())
    decryptor = FieldDecryptor(kms)
    assert decryptor.decrypt(before, CTX) == b"v-before" and decryptor.decrypt(after, CTX) == b"v-after"


# ---- start-up failures -----------------------------------------------------------------------------
def _startup_error(config: GatewayConfig) -> str:
    with pytest.raises(KmsConfigError) as excinfo:
        build_kms(config, Keyring.open(config.keyring))
    return str(excinfo.value)


def test_aws_unknown_key_fails_start_up_naming_the_setting(moto_kms: MotoKms, tmp_path: Path) -> None:
    message = _startup_error(aws_config(moto_kms, tmp_path, aws_kms_key_id="alias/no-such-key"))
    assert "KMS provider 'aws'" in message and "aws_kms_key_id" in message and "not found" in message


def test_aws_unreachable_fails_start_up_naming_the_endpoint_setting(moto_kms: MotoKms, tmp_path: Path) -> None:
    from gateway.embedded.broker import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    message = _startup_error(aws_config(moto_kms, tmp_path, aws_endpoint_url=dead))
    assert "KMS provider 'aws'" in message and "unreachable" in message and "aws_endpoint_url" in message


def test_vault_failures_name_the_setting_and_never_the_token(openbao: OpenBao, tmp_path: Path) -> None:
    from gateway.embedded.broker import free_port

    wrong_token = "s.this-token-must-not-appear"  # noqa: S105
    message = _startup_error(vault_config(openbao, tmp_path, vault_token=wrong_token))
    assert "KMS provider 'vault'" in message and "GATEWAY_VAULT_TOKEN" in message
    assert wrong_token not in message
    assert wrong_token not in repr(vault_config(openbao, tmp_path, vault_token=wrong_token))
    message = _startup_error(vault_config(openbao, tmp_path, vault_transit_key="missing-key"))
    assert "vault_transit_key" in message and "not found" in message
    message = _startup_error(vault_config(openbao, tmp_path, vault_addr=f"http://127.0.0.1:{free_port()}"))
    assert "unreachable" in message and "vault_addr" in message


def test_gateway_run_with_the_kms_down_exits_before_touching_kafka(openbao: OpenBao, tmp_path: Path) -> None:
    from gateway.embedded.broker import free_port

    env = {**ENV, "GATEWAY_VAULT_TOKEN": openbao.token}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", f"127.0.0.1:{free_port()}",
         "--schemas", str(REPO / "schemas"), "--keyring", str(tmp_path / "k.json"), "--kms-provider", "vault",
         "--vault-addr", f"http://127.0.0.1:{free_port()}", "--vault-transit-key", openbao.key],
        capture_output=True, timeout=60, env=env, cwd=REPO)
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert "KMS provider 'vault'" in stderr and "unreachable" in stderr and "vault_addr" in stderr
    assert openbao.token not in stderr + result.stdout.decode()


# ---- outage while running ----------------------------------------------------------------------------
def _payment_events(plan: Plan, n: int, start: int) -> list[RawEvent]:
    samples = SampleEvents(seed=start)
    return [RawEvent(plan.source_topic, 0, start + i, 0, None, encode_raw(plan, samples.payment(), "avro"), None)
            for i in range(n)]


def test_kms_outage_dead_letters_with_kms_unavailable_and_resumes(moto_kms: MotoKms, payments_plan_file: Plan,
                                                                  tmp_path: Path) -> None:
    proxy = TcpProxy(int(moto_kms.endpoint.rsplit(":", 1)[1]))
    config = aws_config(moto_kms, tmp_path, aws_endpoint_url=proxy.url, dek_max_uses=1, kms_timeout_s=1.0)
    keyring = Keyring.open(config.keyring)  # the KMS is built at start-up (gateway.app) and given to the pipeline
    pipeline = Pipeline([payments_plan_file], keyring, config, audit_partitions=1,
                        tokenizers=tokenizers(keyring, [payments_plan_file]), kms=build_kms(config, keyring))
    plan = payments_plan_file

    def outcome(events: list[RawEvent]) -> tuple[int, list[str]]:
        result = pipeline.process(events)
        sanitized = sum(r.topic == plan.sanitized_topic for r in result.records)
        reasons = [dict(r.headers or [])["gateway-reason"].decode()
                   for r in result.records if r.topic == plan.dlq_topic]
        return sanitized, reasons

    assert outcome(_payment_events(plan, 3, 0)) == (3, [])
    proxy.cut()
    started = time.monotonic()
    sanitized, reasons = outcome(_payment_events(plan, 20, 100))
    assert sanitized == 0 and reasons == ["kms_unavailable"] * 20  # never published without encryption
    assert time.monotonic() - started < 15  # the circuit opens: the outage does not stall each event
    assert isinstance(pipeline.kms, KmsRouter)
    circuit = pipeline.kms.active
    assert isinstance(circuit, ResilientKms)
    assert circuit.circuit_tripped()  # the outage opened the circuit (and no success has closed it)
    proxy.restore()
    # a time-based breaker: it fails fast until its deadline, then lets the next call through (half
    # open) and closes on success. Wait for that deadline itself, bounded by the configured cool-down
    deadline = time.monotonic() + circuit.cooldown_s + 5
    while circuit.circuit_open():
        assert time.monotonic() < deadline, "the circuit stayed open past its cool-down"
        time.sleep(0.05)
    assert outcome(_payment_events(plan, 3, 200)) == (3, [])
    assert not circuit.circuit_tripped()  # the successful call closed the circuit


@pytest.fixture
def payments_plan_file() -> Plan:
    from gateway.core.codec.raw import load_schema_file
    from gateway.core.policy.compiler import compile_plan

    return compile_plan(load_schema_file(REPO / "schemas" / "payments.avsc"))


# ---- a worker on the real broker under Vault ------------------------------------------------------------
def test_worker_encrypts_under_vault_and_gateway_decrypt_opens_it(bootstrap: str, openbao: OpenBao,
                                                                 tmp_path: Path) -> None:
    import uuid

    d = Deployment(bootstrap, tmp_path, uuid.uuid4().hex[:8])
    env = {**ENV, "GATEWAY_VAULT_TOKEN": openbao.token}
    log_path = tmp_path / "worker.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", bootstrap, "--schemas", str(d.schemas),
         "--keyring", str(d.keyring), "--audit-topic", d.audit_topic, "--group-id", d.group_id,
         "--instance-id", "vault-worker", "--partitions", "1", "--session-timeout-ms", "6000",
         "--kms-provider", "vault", "--vault-addr", openbao.addr, "--vault-transit-key", openbao.key],
        stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    worker = WorkerProcess(proc, log_path, handle)
    try:
        worker.wait_for_log('"msg":"partitions assigned"')
        samples = SampleEvents(seed=5)
        payments = [samples.payment() for _ in range(10)]
        d.produce(d.payments.source_topic, [encode_raw(d.payments, p, "avro") for p in payments])
        d.wait_for_audit(10)
    finally:
        assert worker.stop() == 0
    assert openbao.token not in worker.log()
    records = d.read(d.payments.sanitized_topic)
    decoder = SanitizedDecoder(list(d.plans.values()))
    sanitized = [decoder.decode(r)[1] for r in records]
    assert len(sanitized) == 10
    assert all(parse_ciphertext(s["card_number"]).kek_id == f"vault:transit/{openbao.key}" for s in sanitized)
    kms = build_kms(vault_config(openbao, tmp_path, keyring=d.keyring), None)
    opened = [decrypt_record(s, d.payments, FieldDecryptor(kms)) for s in sanitized]
    assert all(report.ok for _, report in opened)
    assert sorted(o["card_number"] for o, _ in opened) == sorted(p["card_number"] for p in payments)
    # the CLI path: JSON lines in, with the token from the environment only
    lines = b"".join(orjson.dumps(_jsonable(s)) + b"\n" for s in sanitized)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "decrypt", "--schemas", str(d.schemas), "--topic",
         d.payments.sanitized_topic, "--kms-provider", "vault", "--vault-addr", openbao.addr,
         "--vault-transit-key", openbao.key], input=lines, capture_output=True, timeout=60, env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr.decode()
    cards = sorted(orjson.loads(line)["card_number"] for line in result.stdout.splitlines())
    assert cards == sorted(p["card_number"] for p in payments)
    assert cli("decrypt", "--schemas", str(d.schemas), "--topic", d.payments.sanitized_topic,
               "--keyring", str(d.keyring), stdin=lines).returncode == 1  # the local keyring alone cannot


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    from gateway.core.codec.raw import decoded_for_json

    return decoded_for_json(record)


