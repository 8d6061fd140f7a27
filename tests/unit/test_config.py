"""Settings: environment, command-line overrides and validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.settings import GatewayConfig, env_name


def test_defaults_without_environment() -> None:
    config = GatewayConfig.load({}, environ={})
    assert config.bootstrap == "127.0.0.1:9092"
    assert config.batch_max_events == 1000
    assert config.create_topics is True
    assert config.instance_id == ""  # claimed as HOST-<slot> when a job starts (gateway.runtime.instance)
    assert config.transaction_timeout_ms == 60_000


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
    ("output_compression", "brotli", "none, gzip, snappy, lz4, zstd"),
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


# ---- Kafka security (TLS, SASL) ------------------------------------------------------------------

SECRET = "hunter2-do-not-print"  # noqa: S105 - a test value, checked never to leak


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
        files[name] = str(tmp_path / name)
    return files


def test_plaintext_by_default_gives_only_bootstrap_and_protocol() -> None:
    config = GatewayConfig.load({"bootstrap": "k1:9092,k2:9092"}, environ={})
    assert config.security_protocol == "PLAINTEXT"
    assert config.kafka_client_config() == {"bootstrap.servers": "k1:9092,k2:9092", "security.protocol": "plaintext"}
    assert config.security_warnings() == []


def test_tls_with_ca_from_environment(pem_files: dict[str, str]) -> None:
    config = GatewayConfig.load({}, environ={"GATEWAY_SECURITY_PROTOCOL": "SSL",
                                             "GATEWAY_SSL_CA_LOCATION": pem_files["ca.pem"]})
    assert config.kafka_client_config() == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "ssl",
        "ssl.endpoint.identification.algorithm": "https", "ssl.ca.location": pem_files["ca.pem"]}


def test_mutual_tls_and_scram_over_tls(pem_files: dict[str, str]) -> None:
    environ = {"GATEWAY_SECURITY_PROTOCOL": "sasl_ssl", "GATEWAY_SSL_CA_LOCATION": pem_files["ca.pem"],
               "GATEWAY_SSL_CERTIFICATE_LOCATION": pem_files["client.pem"],
               "GATEWAY_SSL_KEY_LOCATION": pem_files["client.key"], "GATEWAY_SSL_KEY_PASSWORD": SECRET,
               "GATEWAY_SSL_ENDPOINT_IDENTIFICATION": "NONE", "GATEWAY_SASL_MECHANISM": "scram-sha-512",
               "GATEWAY_SASL_USERNAME": "gateway", "GATEWAY_SASL_PASSWORD": SECRET + "-sasl"}
    config = GatewayConfig.load({}, environ=environ)
    assert config.security_protocol == "SASL_SSL" and config.sasl_mechanism == "SCRAM-SHA-512"
    assert config.kafka_client_config() == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "sasl_ssl",
        "ssl.endpoint.identification.algorithm": "none", "ssl.ca.location": pem_files["ca.pem"],
        "ssl.certificate.location": pem_files["client.pem"], "ssl.key.location": pem_files["client.key"],
        "ssl.key.password": SECRET, "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "gateway",
        "sasl.password": SECRET + "-sasl"}
    assert config.security_warnings() == [
        "ssl_endpoint_identification=none: the broker's certificate is not checked against its name"]
    for text in (repr(config), str(config)):
        assert SECRET not in text
        assert "sasl_username='gateway'" in text


def test_command_line_overrides_security_settings(pem_files: dict[str, str]) -> None:
    config = GatewayConfig.load({"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN",
                                 "sasl_username": "cli-user"},
                                environ={"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SASL_USERNAME": "env-user",
                                         "GATEWAY_SASL_PASSWORD": SECRET})
    conf = config.kafka_client_config()
    assert conf["security.protocol"] == "sasl_plaintext" and conf["sasl.username"] == "cli-user"
    assert not any(k.startswith("ssl.") for k in conf)
    assert "in clear" in config.security_warnings()[0]


def test_passwords_are_not_command_line_options() -> None:
    from gateway.cli import build_parser

    for flag in ("--sasl-password", "--ssl-key-password"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["run", flag, SECRET])
    args = build_parser().parse_args(["run", "--security-protocol", "SASL_SSL", "--sasl-mechanism", "SCRAM-SHA-256",
                                      "--sasl-username", "u", "--ssl-ca-location", "/ca.pem",
                                      "--ssl-endpoint-identification", "none"])
    assert (args.security_protocol, args.sasl_mechanism, args.ssl_endpoint_identification) == \
        ("SASL_SSL", "SCRAM-SHA-256", "none")
    for command in (["dump", "--bootstrap", "k:1", "--topic", "t"], ["audit", "verify", "--bootstrap", "k:1"],
                    ["budget", "show", "--bootstrap", "k:1"], ["forget", "s", "--domain", "d", "--bootstrap", "k:1"],
                    ["keys", "rewrap", "--bootstrap", "k:1"], ["decrypt"], ["aggregate"]):
        assert build_parser().parse_args([*command, "--security-protocol", "SSL"]).security_protocol == "SSL"


@pytest.mark.parametrize("environ,setting,fragment", [
    ({"GATEWAY_SECURITY_PROTOCOL": "TLS"}, "security_protocol", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    ({"GATEWAY_SSL_CA_LOCATION": "<ca.pem>"}, "ssl_ca_location", "security_protocol is PLAINTEXT"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "GATEWAY_SASL_MECHANISM": "PLAIN",
      "GATEWAY_SASL_USERNAME": "u", "GATEWAY_SASL_PASSWORD": SECRET,
      "GATEWAY_SSL_CERTIFICATE_LOCATION": "<client.pem>"},
     "ssl_certificate_location", "security_protocol is SASL_PLAINTEXT; TLS settings need SSL or SASL_SSL"),
    ({"GATEWAY_SSL_ENDPOINT_IDENTIFICATION": "none"}, "ssl_endpoint_identification", "security_protocol is PLAINTEXT"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SSL_ENDPOINT_IDENTIFICATION": "sometimes"},
     "ssl_endpoint_identification", "must be https"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SSL_CA_LOCATION": "/nonexistent/ca.pem"},
     "ssl_ca_location", "'/nonexistent/ca.pem' is not a readable file or directory"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SSL_CERTIFICATE_LOCATION": "<dir>",
      "GATEWAY_SSL_KEY_LOCATION": "<client.key>"}, "ssl_certificate_location", "is not a readable file"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SSL_CERTIFICATE_LOCATION": "<client.pem>"},
     "ssl_key_location", "is required with ssl_certificate_location"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SSL_KEY_LOCATION": "<client.key>"},
     "ssl_certificate_location", "is required with ssl_key_location"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SSL_KEY_PASSWORD": SECRET},
     "ssl_key_password", "ssl_key_location is not"),
    ({"GATEWAY_SASL_USERNAME": "u"}, "sasl_username", "security_protocol is PLAINTEXT; SASL settings need"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SSL", "GATEWAY_SASL_PASSWORD": SECRET}, "sasl_password",
     "security_protocol is SSL"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SASL_SSL", "GATEWAY_SASL_USERNAME": "u", "GATEWAY_SASL_PASSWORD": SECRET},
     "sasl_mechanism", "is required with security_protocol=SASL_SSL"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SASL_SSL", "GATEWAY_SASL_MECHANISM": "GSSAPI", "GATEWAY_SASL_USERNAME": "u",
      "GATEWAY_SASL_PASSWORD": SECRET}, "sasl_mechanism", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "GATEWAY_SASL_MECHANISM": "SCRAM-SHA-256",
      "GATEWAY_SASL_PASSWORD": SECRET}, "sasl_username", "is required with security_protocol=SASL_PLAINTEXT"),
    ({"GATEWAY_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "GATEWAY_SASL_MECHANISM": "SCRAM-SHA-256",
      "GATEWAY_SASL_USERNAME": "u"}, "sasl_password", "set it in the environment, never on the command line"),
])
def test_invalid_security_settings_name_setting_and_variable(environ: dict[str, str], setting: str, fragment: str,
                                                             pem_files: dict[str, str], tmp_path: Path) -> None:
    places = {"<dir>": str(tmp_path), **{f"<{name}>": path for name, path in pem_files.items()}}
    environ = {k: places.get(v, v) for k, v in environ.items()}
    with pytest.raises(ConfigError) as excinfo:
        GatewayConfig.load({}, environ=environ)
    message = str(excinfo.value)
    assert f"'{setting}' ({env_name(setting)})" in message
    assert fragment in message
    assert SECRET not in message


def test_every_kafka_client_is_built_from_the_client_config() -> None:
    """No Producer, Consumer or AdminClient in gateway/ is given bootstrap.servers of its own (which
    would drop the TLS and SASL settings): each takes a mapping built by kafka_client_config()."""
    import ast

    root = Path(__file__).resolve().parents[2] / "gateway"
    clients = 0
    for path in sorted(root.rglob("*.py")):
        if "embedded" in path.parts:  # the embedded broker probes its own loopback PLAINTEXT listener
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict) and path.name != "settings.py":
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                assert "bootstrap.servers" not in keys, f"{path}:{node.lineno} sets bootstrap.servers itself"
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name in {"Producer", "Consumer", "AdminClient"} and node.args:
                    clients += 1
                    conf = node.args[0]
                    spread = isinstance(conf, ast.Dict) and any(k is None for k in conf.keys)
                    copied = isinstance(conf, ast.Call) and (getattr(conf.func, "id", None) == "dict" or
                                                             getattr(conf.func, "attr", None) == "kafka_client_config")
                    assert spread or copied, f"{path}:{node.lineno}: {name} not built from a client config"
    assert clients >= 5  # the walk found them: most are in gateway/runtime/clients.py
