"""The KMS provider is decided once, from typed settings: `KmsSettings` (gateway.settings) validates the KMS
settings naming the setting, the registry (gateway.keys.providers) maps every provider to its builder, and
nothing but gateway.app builds a remote KMS (the pipeline and the sanitize job only take the keyring as the KMS
when the settings make it so). Environment variables outside the settings are declared there too."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from gateway.app import tokenizers
from gateway.core.pipeline import Pipeline
from gateway.core.policy.plan import Plan
from gateway.errors import ConfigError
from gateway.keys.errors import KmsConfigError
from gateway.keys.keyring import Keyring
from gateway.keys.providers import REMOTE, build_kms
from gateway.keys.providers.local import keyring_kms
from gateway.settings import (
    ENVIRONMENT,
    GatewayConfig,
    KmsProvider,
    KmsSettings,
    instance_lock_dir,
    kafka_cache_dir,
    reveal,
    settings_table,
)

ROOT = Path(__file__).resolve().parents[2] / "gateway"
VAULT = {"kms_provider": "vault", "vault_addr": "http://127.0.0.1:1", "vault_token": "s3cr3t-t0ken",
         "vault_transit_key": "gw"}


@pytest.mark.parametrize("environ, names", [
    ({"GATEWAY_KMS_PROVIDER": "gcp"}, "setting 'kms_provider' (GATEWAY_KMS_PROVIDER): must be local, aws or vault"),
    ({"GATEWAY_KMS_PROVIDER": "LOCAL"}, "setting 'kms_provider' (GATEWAY_KMS_PROVIDER)"),  # no case folding
    ({"GATEWAY_KMS_PROVIDER": "aws"}, "setting 'aws_kms_key_id' (GATEWAY_AWS_KMS_KEY_ID): is required"),
    ({"GATEWAY_KMS_PROVIDER": "vault", "GATEWAY_VAULT_ADDR": "http://v:1", "GATEWAY_VAULT_TRANSIT_KEY": "k"},
     "setting 'vault_token' (GATEWAY_VAULT_TOKEN): is required"),
    ({"GATEWAY_KMS_TIMEOUT_S": "0"}, "setting 'kms_timeout_s' (GATEWAY_KMS_TIMEOUT_S)"),
    ({"GATEWAY_ROLE_KMS_KEYS": "support"}, "setting 'role_kms_keys' (GATEWAY_ROLE_KMS_KEYS)"),
])
def test_a_bad_or_missing_kms_setting_is_named(environ: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        GatewayConfig.load(environ=environ)
    assert names in str(excinfo.value)


def test_kms_settings_are_typed_frozen_and_keep_the_token_out_of_reprs() -> None:
    settings = GatewayConfig(**VAULT, role_kms_keys="support=gw-support").kms_settings()
    assert isinstance(settings, KmsSettings)
    assert settings.provider is KmsProvider.VAULT and not settings.local
    assert settings.key_setting == "vault_transit_key" and settings.key == "gw"
    assert dict(settings.role_keys) == {"support": "gw-support"}
    with pytest.raises(TypeError):
        settings.role_keys["fraud"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.provider = KmsProvider.LOCAL  # type: ignore[misc]
    assert "s3cr3t-t0ken" not in repr(settings) and "s3cr3t-t0ken" not in f"{settings.vault_token}"
    assert reveal(settings.vault_token) == "s3cr3t-t0ken"  # the provider gets the token itself, not its mask
    local = GatewayConfig().kms_settings()
    assert local.provider is KmsProvider.LOCAL and local.local and local.key_setting is None and local.key == ""


def test_the_registry_has_a_builder_for_every_remote_provider_and_only_those() -> None:
    assert set(REMOTE) == {p for p in KmsProvider if p is not KmsProvider.LOCAL}
    assert set(REMOTE) == {KmsProvider.AWS, KmsProvider.VAULT}


def test_the_local_provider_is_the_keyring_given(tmp_path: Path) -> None:
    keyring = Keyring.open(tmp_path / "k.json")
    router = build_kms(GatewayConfig(keyring=keyring.path), keyring)
    assert router.active is keyring and router.providers == {"local": keyring}
    with pytest.raises(KmsConfigError, match="setting keyring|set keyring"):
        build_kms(GatewayConfig(keyring=keyring.path), None)


def test_without_a_given_kms_the_core_never_builds_a_remote_one(tmp_path: Path, payments_plan: Plan) -> None:
    """The keyring is the KMS only when the settings say so; a remote KMS comes from gateway.app, never from
    the pipeline (no client, no network call, a clear error instead)."""
    keyring = Keyring.open(tmp_path / "k.json")
    config = GatewayConfig(keyring=keyring.path, instance_id="t", **VAULT)
    with pytest.raises(KmsConfigError, match="gateway.app.build_kms"):
        keyring_kms(config.kms_settings(), keyring)
    with pytest.raises(KmsConfigError, match="gateway.app.build_kms"):
        Pipeline([payments_plan], keyring, config, audit_partitions=1, tokenizers=tokenizers(keyring, [payments_plan]))
    assert keyring_kms(GatewayConfig(keyring=keyring.path).kms_settings(), keyring).active is keyring


def test_process_environment_variables_are_declared_in_the_settings(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    names = {v.name for v in ENVIRONMENT}
    assert names == {"GATEWAY_INSTANCE_LOCK_DIR", "GATEWAY_KAFKA_CACHE"}
    table = settings_table("environment")
    assert all(f"`{name}`" in table for name in names)
    monkeypatch.setenv("GATEWAY_INSTANCE_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("GATEWAY_KAFKA_CACHE", str(tmp_path / "cache"))
    assert instance_lock_dir() == tmp_path / "locks" and kafka_cache_dir() == tmp_path / "cache"


def test_no_module_reads_a_gateway_variable_outside_the_settings() -> None:
    """Every GATEWAY_* variable is declared in gateway/settings.py: no other module names one in code."""
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "settings.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and node.value.startswith("GATEWAY_")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert not offenders, offenders
