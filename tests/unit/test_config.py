"""Settings: environment, command-line overrides and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import GatewayConfig, env_name
from gateway.errors import ConfigError


def test_defaults_without_environment() -> None:
    config = GatewayConfig.load({}, environ={})
    assert config.bootstrap == "127.0.0.1:9092"
    assert config.batch_max_events == 1000
    assert config.create_topics is True
    assert config.instance_id


def test_env_name() -> None:
    assert env_name("batch_max_events") == "GATEWAY_BATCH_MAX_EVENTS"


def test_reads_gateway_environment_with_types() -> None:
    environ = {
        "GATEWAY_BOOTSTRAP": "broker-1:9092,broker-2:9093",
        "GATEWAY_SCHEMAS": "/etc/gateway/schemas",
        "GATEWAY_KEYRING": "/var/lib/gateway/k.json",
        "GATEWAY_BATCH_MAX_EVENTS": "250",
        "GATEWAY_BATCH_TIMEOUT_S": "0.5",
        "GATEWAY_CREATE_TOPICS": "false",
        "GATEWAY_INSTANCE_ID": "worker-7",
        "GATEWAY_LOG_LEVEL": "debug",
        "UNRELATED": "x",
    }
    config = GatewayConfig.load({}, environ=environ)
    assert config.bootstrap == "broker-1:9092,broker-2:9093"
    assert config.schemas == Path("/etc/gateway/schemas")
    assert config.keyring == Path("/var/lib/gateway/k.json")
    assert config.batch_max_events == 250
    assert config.batch_timeout_s == 0.5
    assert config.create_topics is False
    assert config.instance_id == "worker-7"


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_AUDIT_TOPIC", "audit.from.env")
    assert GatewayConfig.load().audit_topic == "audit.from.env"


def test_command_line_overrides_environment() -> None:
    environ = {"GATEWAY_BATCH_MAX_EVENTS": "250", "GATEWAY_BOOTSTRAP": "env-host:1", "GATEWAY_PARTITIONS": "3"}
    config = GatewayConfig.load({"batch_max_events": 10, "bootstrap": "cli-host:2", "partitions": None},
                                environ=environ)
    assert config.batch_max_events == 10
    assert config.bootstrap == "cli-host:2"
    assert config.partitions == 3  # None means "not given on the command line"


def test_falsy_overrides_still_win() -> None:
    config = GatewayConfig.load({"create_topics": False, "metrics_port": 0},
                                environ={"GATEWAY_CREATE_TOPICS": "yes", "GATEWAY_METRICS_PORT": "9100"})
    assert config.create_topics is False
    assert config.metrics_port == 0


@pytest.mark.parametrize("setting,value,fragment", [
    ("batch_max_events", "0", "between 1 and 100000"),
    ("batch_max_events", "100001", "between 1 and 100000"),
    ("bootstrap", "nohost", "'nohost' is not HOST:PORT"),
    ("bootstrap", "host:port", "is not HOST:PORT"),
    ("bootstrap", "ok:1,:2", "is not HOST:PORT"),
    ("batch_timeout_s", "0", "(0, 60]"),
    ("partitions", "0", "between 1 and 10000"),
    ("max_record_bytes", "10", "at least 64"),
    ("dek_max_uses", "0", "between 1 and 2^32"),
    ("session_timeout_ms", "500", "between 1000 and 300000"),
    ("metrics_port", "70000", "TCP port"),
    ("log_level", "LOUD", "DEBUG, INFO"),
    ("audit_topic", "bad topic", "valid Kafka topic"),
    ("group_id", "", "must not be empty"),
])
def test_invalid_environment_values_name_setting_and_variable(setting: str, value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        GatewayConfig.load({}, environ={env_name(setting): value})
    message = str(excinfo.value)
    assert f"'{setting}'" in message
    assert env_name(setting) in message
    assert fragment in message


@pytest.mark.parametrize("setting,value", [("batch_max_events", "many"), ("batch_timeout_s", "soon"),
                                           ("create_topics", "maybe"), ("metrics_port", "")])
def test_unparseable_values(setting: str, value: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        GatewayConfig.load({}, environ={env_name(setting): value})
    message = str(excinfo.value)
    assert f"'{setting}'" in message
    assert env_name(setting) in message
    assert "cannot read" in message


def test_invalid_override_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"'batch_max_events' \(GATEWAY_BATCH_MAX_EVENTS\)"):
        GatewayConfig.load({"batch_max_events": 0}, environ={})


def test_max_field_bytes_cannot_exceed_max_record_bytes() -> None:
    with pytest.raises(ConfigError, match="max_field_bytes"):
        GatewayConfig(max_record_bytes=1000, max_field_bytes=2000)
    assert GatewayConfig(max_record_bytes=1000, max_field_bytes=1000).max_field_bytes == 1000


def test_config_is_frozen() -> None:
    config = GatewayConfig.load({}, environ={})
    with pytest.raises(AttributeError):
        config.bootstrap = "x:1"  # type: ignore[misc]


def test_require_schemas_dir(tmp_path: Path) -> None:
    assert GatewayConfig(schemas=tmp_path).require_schemas_dir() == tmp_path
    with pytest.raises(ConfigError, match="GATEWAY_SCHEMAS"):
        GatewayConfig(schemas=tmp_path / "missing").require_schemas_dir()
