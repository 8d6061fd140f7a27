"""KMS interface, routing, decorators and settings (pure logic; real servers are in tests/integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import tokenizers
from gateway.errors import ConfigError, DecryptError
from gateway.keys.decorators import InstrumentedKms, ResilientKms
from gateway.keys.envelope import DekCache, FieldDecryptor, encrypt_field
from gateway.keys.errors import KmsUnavailable
from gateway.keys.keyring import Keyring
from gateway.keys.kms import WrappedKey, provider_of
from gateway.keys.providers import KmsRouter, build_kms
from gateway.settings import GatewayConfig

CTX = b"ctx"


class Outage:
    """The real keyring behind a switch: while `down`, every call fails as an unreachable KMS would."""

    def __init__(self, keyring: Keyring, down: int = 0) -> None:
        self.keyring = keyring
        self.name = "local"
        self.down = down  # calls that fail before the KMS is back (-1: forever)
        self.calls = 0

    def active_key_id(self) -> str:
        return self.keyring.active_key_id()

    def healthy(self) -> bool:
        return self.down == 0

    def _gate(self) -> None:
        self.calls += 1
        if self.down != 0:
            self.down -= 1 if self.down > 0 else 0
            raise KmsUnavailable("KMS provider 'local' unreachable (test outage)")

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        self._gate()
        return self.keyring.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        self._gate()
        return self.keyring.unwrap(wrapped, context)


# ---- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("values", "fragment"), [
    ({"kms_provider": "gcp"}, "setting 'kms_provider' (GATEWAY_KMS_PROVIDER): must be local, aws or vault"),
    ({"kms_provider": "aws"}, "setting 'aws_kms_key_id' (GATEWAY_AWS_KMS_KEY_ID): is required"),
    ({"kms_provider": "aws", "aws_kms_key_id": "k", "aws_endpoint_url": "127.0.0.1:1"}, "'aws_endpoint_url'"),
    ({"kms_provider": "vault", "vault_token": "t", "vault_transit_key": "k"}, "setting 'vault_addr'"),
    ({"kms_provider": "vault", "vault_addr": "http://127.0.0.1:1", "vault_transit_key": "k"},
     "setting 'vault_token' (GATEWAY_VAULT_TOKEN): is required with kms_provider=vault; set it in the environment"),
    ({"kms_provider": "vault", "vault_addr": "http://127.0.0.1:1", "vault_token": "t"}, "'vault_transit_key'"),
    ({"kms_timeout_s": 0}, "setting 'kms_timeout_s'"),
])
def test_kms_settings_are_validated_naming_the_setting(values: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        GatewayConfig(**values)  # type: ignore[arg-type]
    assert fragment in str(excinfo.value)


def test_vault_token_comes_from_the_environment_and_never_shows_in_repr() -> None:
    secret = "hvs.canary-token-value"  # noqa: S105
    config = GatewayConfig.load({}, {"GATEWAY_KMS_PROVIDER": "vault", "GATEWAY_VAULT_ADDR": "http://127.0.0.1:8200",
                                     "GATEWAY_VAULT_TOKEN": secret, "GATEWAY_VAULT_TRANSIT_KEY": "gw"})
    assert config.vault_token == secret and config.vault_mount == "transit"
    assert secret not in repr(config) and secret not in str(config)


def test_the_cli_has_no_vault_token_option() -> None:
    from gateway.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--vault-token", "x"])


# ---- routing -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kek_id", "provider"), [
    ("kek-0a1b2c3d4e5f", "local"), ("aws:arn:aws:kms:eu-west-1:1:key/abc", "aws"),
    ("vault:transit/gw", "vault"), ("gcp:projects/x", "local"), ("weird", "local"),
])
def test_provider_of_reads_the_kek_id_prefix(kek_id: str, provider: str) -> None:
    assert provider_of(kek_id) == provider


def test_default_config_builds_the_local_keyring(keyring: Keyring, config: GatewayConfig) -> None:
    kms = build_kms(config, keyring)
    assert kms.name == "local" and kms.active_key_id() == keyring.active_key_id()
    ciphertext = encrypt_field(DekCache(kms, 60, 10).current(), b"v", CTX)
    assert FieldDecryptor(keyring).decrypt(ciphertext, CTX) == b"v"


def test_router_refuses_a_kek_of_an_unconfigured_provider_naming_it(keyring: Keyring) -> None:
    router = KmsRouter(keyring, {"local": keyring})
    with pytest.raises(DecryptError) as excinfo:
        router.unwrap(WrappedKey("vault:transit/gw", b"vault:v1:" + b"x" * 40), CTX)
    assert excinfo.value.reason == "key_not_held"
    assert "provider 'vault'" in excinfo.value.message and "GATEWAY_KMS_PROVIDER" in excinfo.value.message


def test_wrapped_key_repr_hides_the_blob() -> None:
    blob = bytes(range(48))
    assert repr(blob) not in repr(WrappedKey("kek-1", blob)) and "48 bytes" in repr(WrappedKey("kek-1", blob))


# ---- decorators ----------------------------------------------------------------------------------
def test_resilient_retries_transient_failures_with_growing_backoff(keyring: Keyring) -> None:
    outage = Outage(keyring, down=2)
    sleeps: list[float] = []
    kms = ResilientKms(outage, attempts=3, base_delay_s=0.1, max_delay_s=1.0, sleep=sleeps.append)
    wrapped = kms.wrap(b"k" * 32, CTX)
    assert outage.calls == 3 and len(sleeps) == 2
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2
    assert kms.unwrap(wrapped, CTX) == b"k" * 32


def test_resilient_opens_the_circuit_then_recovers(keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    outage = Outage(keyring, down=-1)
    kms = ResilientKms(outage, attempts=2, cooldown_s=30, sleep=lambda _s: None)
    with pytest.raises(KmsUnavailable):
        kms.wrap(b"k" * 32, CTX)
    assert outage.calls == 2
    with pytest.raises(KmsUnavailable, match="failing fast"):
        kms.wrap(b"k" * 32, CTX)
    assert outage.calls == 2  # the open circuit did not call the KMS
    outage.down = 0
    import gateway.keys.decorators as decorators

    real = decorators.time.monotonic
    monkeypatch.setattr(decorators.time, "monotonic", lambda: real() + 31)
    assert len(kms.wrap(b"k" * 32, CTX).blob) > 32


def test_resilient_does_not_retry_a_refusal(keyring: Keyring) -> None:
    outage = Outage(keyring)
    kms = ResilientKms(outage, attempts=5, sleep=lambda _s: None)
    wrapped = kms.wrap(b"k" * 32, CTX)
    with pytest.raises(DecryptError):
        kms.unwrap(wrapped, b"other context")
    assert outage.calls == 2


def test_instrumented_counts_each_request_by_outcome(keyring: Keyring) -> None:
    outage = Outage(keyring)
    kms = InstrumentedKms(outage)
    wrapped = kms.wrap(b"k" * 32, CTX)
    kms.unwrap(wrapped, CTX)
    with pytest.raises(DecryptError):
        kms.unwrap(wrapped, b"moved")
    outage.down = 1
    with pytest.raises(KmsUnavailable):
        kms.wrap(b"k" * 32, CTX)
    assert dict(kms.counts) == {("wrap", "ok"): 1, ("unwrap", "ok"): 1, ("unwrap", "refused"): 1,
                                ("wrap", "unavailable"): 1}


def test_kms_outage_dead_letters_instead_of_publishing(payments_plan, keyring: Keyring, tmp_path: Path) -> None:
    from gateway.core.pipeline import Pipeline, RawEvent
    from gateway.embedded.demo import encode_raw
    from gateway.embedded.samples import SampleEvents

    outage = Outage(keyring, down=-1)
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t", dek_max_uses=1)
    pipeline = Pipeline([payments_plan], keyring, config, 1,
                        tokenizers(keyring, [payments_plan]),
                        kms=ResilientKms(outage, attempts=2, sleep=lambda _s: None))
    sample = SampleEvents(seed=3).payment(canary=True)
    event = RawEvent(payments_plan.source_topic, 0, 7, 0, None, encode_raw(payments_plan, sample, "avro"), None)
    result = pipeline.process([event])
    topics = [r.topic for r in result.records]
    assert payments_plan.sanitized_topic not in topics and payments_plan.dlq_topic in topics
    dead = next(r for r in result.records if r.topic == payments_plan.dlq_topic)
    assert b'"reason":"kms_unavailable"' in dead.value
    assert sample["card_number"].encode() not in dead.value and sample["email"].encode() not in dead.value
