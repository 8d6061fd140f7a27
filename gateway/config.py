"""Settings, declared once and validated at start-up.

Every setting has one name: the dataclass field. It can come from the command line
(``--batch-max-events``) or the environment (``GATEWAY_BATCH_MAX_EVENTS``); the command
line wins. Validation errors name the setting and the environment variable.

Kafka security (every Producer, Consumer and AdminClient the gateway creates gets these, through
``GatewayConfig.kafka_client_config()``):

=============================  ===========  ====================================================
setting                        default      meaning (librdkafka property)
=============================  ===========  ====================================================
security_protocol              PLAINTEXT    PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
                                            (``security.protocol``)
ssl_ca_location                (system)     CA certificate(s) that sign the brokers' certificates
                                            (``ssl.ca.location``)
ssl_certificate_location       (none)       client certificate for mTLS (``ssl.certificate.location``)
ssl_key_location               (none)       its private key (``ssl.key.location``)
ssl_key_password               (none)       the key's password; GATEWAY_SSL_KEY_PASSWORD only
ssl_endpoint_identification    https        ``https`` checks the broker's name against its
                                            certificate, ``none`` does not
                                            (``ssl.endpoint.identification.algorithm``)
sasl_mechanism                 (none)       PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (``sasl.mechanisms``)
sasl_username                  (none)       ``sasl.username``
sasl_password                  (none)       ``sasl.password``; GATEWAY_SASL_PASSWORD only
=============================  ===========  ====================================================

The ssl_* settings need SSL or SASL_SSL, the sasl_* settings SASL_PLAINTEXT or SASL_SSL; SASL needs
all three of mechanism, username and password, and a client certificate needs its key. Secrets are
read from the environment only and never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENDPOINT_IDENTIFICATION = ("https", "none")


def env_name(setting: str) -> str:
    return "GATEWAY_" + setting.upper()


@dataclass(frozen=True)
class GatewayConfig:
    bootstrap: str = "127.0.0.1:9092"
    schemas: Path = Path("schemas")
    keyring: Path = Path(".gateway/keyring.json")
    group_id: str = "privacy-gateway"
    # empty: HOST-<slot>, the lowest slot free on this host (gateway.runtime.instance), so a restarted
    # worker takes its predecessor's transactional id (fencing its dead transaction at once) and two
    # workers on one host never share one
    instance_id: str = ""
    audit_topic: str = "privacy.audit"
    quality_topic: str = "privacy.quality"  # one record per quality window and source partition (counts only)
    # Partitions for topics the gateway creates (sanitized, dead-letter, audit) when the
    # source topic does not exist yet; otherwise the source topic's count is reused.
    partitions: int = 6
    create_topics: bool = True
    batch_max_events: int = 1000
    batch_timeout_s: float = 0.02  # longest wait for a batch to fill: bounds latency at low rates
    # upper bound of prefetched, not yet processed input per worker (librdkafka's queue)
    fetch_queue_kbytes: int = 16_384
    max_record_bytes: int = 1_048_576
    max_field_bytes: int = 65_536
    dek_max_age_s: float = 3600.0
    dek_max_uses: int = 4_000_000
    session_timeout_ms: int = 10_000
    # how long a transaction may stay open before the broker aborts it: bounds how long a crashed
    # worker's partitions wait before another worker can take them over
    transaction_timeout_ms: int = 60_000
    # a partition whose committed position has not moved for this long while input waits is "stalled"
    # (a warning, gateway_stalled_partitions, /readyz not ready)
    stall_after_s: float = 60.0
    # leak sentinel: the fraction of events whose kept (clear) string fields are scanned for PII
    leak_sample_rate: float = 0.01
    metrics_port: int = 0  # 0: no HTTP endpoint; else /metrics, /healthz, /readyz on metrics_host:metrics_port
    metrics_host: str = "127.0.0.1"  # containers set 0.0.0.0 (Dockerfile) so probes and Prometheus reach it
    log_level: str = "INFO"
    # differentially private aggregates (`gateway aggregate`, `gateway budget show`)
    ledger_topic: str = "privacy.ledger"
    dp_idle_close_s: float = 10.0
    # KMS for KEKs (see gateway/keys/providers.py). Secrets come from the environment only.
    kms_provider: str = "local"  # local | aws | vault
    kms_timeout_s: float = 5.0
    aws_kms_key_id: str = ""  # key id, ARN or alias/NAME; credentials from the standard AWS chain
    aws_region: str = ""
    aws_endpoint_url: str = ""
    vault_addr: str = ""
    vault_token: str = field(default="", repr=False)  # GATEWAY_VAULT_TOKEN only; never on the command line
    vault_transit_key: str = ""
    vault_mount: str = "transit"
    key_topic: str = "privacy.keys"  # compacted topic of wrapped per-subject keys (crypto-shredding)
    # Kafka security (see the table above). Secrets come from the environment only.
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    ssl_ca_location: str = ""  # PEM file (or directory) of the CA(s); empty: the system's trust store
    ssl_certificate_location: str = ""  # client certificate (PEM) for mTLS
    ssl_key_location: str = ""  # its private key (PEM)
    ssl_key_password: str = field(default="", repr=False)  # GATEWAY_SSL_KEY_PASSWORD only
    ssl_endpoint_identification: str = "https"  # https | none
    sasl_mechanism: str = ""  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)  # GATEWAY_SASL_PASSWORD only; never on the command line

    def __post_init__(self) -> None:
        self._check(bool(self.bootstrap.strip()), "bootstrap", "must be HOST:PORT[,HOST:PORT...]")
        for part in self.bootstrap.split(","):
            host, sep, port = part.strip().rpartition(":")
            self._check(bool(sep and host and port.isdigit()), "bootstrap",
                        f"'{part}' is not HOST:PORT")
        self._check(bool(self.group_id), "group_id", "must not be empty")
        self._check(self.instance_id == "" or bool(re.match(r"^[A-Za-z0-9._-]{1,200}$", self.instance_id)),
                    "instance_id", "must be letters, digits, '.', '_' or '-' (or empty: HOST-<slot>)")
        self._check(bool(_TOPIC_RE.match(self.audit_topic)), "audit_topic",
                    "must be a valid Kafka topic name")
        self._check(bool(_TOPIC_RE.match(self.quality_topic)), "quality_topic",
                    "must be a valid Kafka topic name")
        self._check(1 <= self.partitions <= 10_000, "partitions", "must be between 1 and 10000")
        self._check(1 <= self.batch_max_events <= 100_000, "batch_max_events",
                    "must be between 1 and 100000")
        self._check(0 < self.batch_timeout_s <= 60, "batch_timeout_s", "must be in (0, 60] seconds")
        self._check(1024 <= self.fetch_queue_kbytes <= 2_097_151, "fetch_queue_kbytes",
                    "must be between 1024 and 2097151")
        self._check(self.max_record_bytes >= 64, "max_record_bytes", "must be at least 64")
        self._check(1 <= self.max_field_bytes <= self.max_record_bytes, "max_field_bytes",
                    "must be between 1 and max_record_bytes")
        self._check(self.dek_max_age_s > 0, "dek_max_age_s", "must be positive")
        self._check(0.0 <= self.leak_sample_rate <= 1.0, "leak_sample_rate", "must be between 0 and 1")
        self._check(1 <= self.dek_max_uses <= 2**32, "dek_max_uses",
                    "must be between 1 and 2^32 (random 96-bit nonces stay safe below that)")
        self._check(1000 <= self.session_timeout_ms <= 300_000, "session_timeout_ms",
                    "must be between 1000 and 300000")
        self._check(1000 <= self.transaction_timeout_ms <= 900_000, "transaction_timeout_ms",
                    "must be between 1000 and 900000 (the broker's transaction.max.timeout.ms default)")
        self._check(1 <= self.stall_after_s <= 86_400, "stall_after_s", "must be between 1 and 86400 seconds")
        self._check(0 <= self.metrics_port <= 65535, "metrics_port", "must be 0 (off) or a TCP port")
        self._check(bool(self.metrics_host.strip()), "metrics_host", "must be an address to bind, e.g. 0.0.0.0")
        self._check(bool(_TOPIC_RE.match(self.ledger_topic)), "ledger_topic", "must be a valid Kafka topic name")
        self._check(0 < self.dp_idle_close_s <= 86_400, "dp_idle_close_s", "must be in (0, 86400] seconds")
        self._check(self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"}, "log_level",
                    "must be DEBUG, INFO, WARNING or ERROR")
        self._check(bool(_TOPIC_RE.match(self.key_topic)), "key_topic", "must be a valid Kafka topic name")
        self._check_kms()
        self._check_kafka_security()

    def _check_kafka_security(self) -> None:
        # normalized spellings (librdkafka takes either case; the checks below compare exactly)
        object.__setattr__(self, "security_protocol", self.security_protocol.strip().upper())
        object.__setattr__(self, "sasl_mechanism", self.sasl_mechanism.strip().upper())
        object.__setattr__(self, "ssl_endpoint_identification", self.ssl_endpoint_identification.strip().lower())
        protocol = self.security_protocol
        self._check(protocol in SECURITY_PROTOCOLS, "security_protocol",
                    "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
        self._check(self.ssl_endpoint_identification in ENDPOINT_IDENTIFICATION, "ssl_endpoint_identification",
                    "must be https (check the broker's name against its certificate) or none")
        tls = protocol in ("SSL", "SASL_SSL")
        for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location", "ssl_key_password"):
            self._check(tls or not getattr(self, name), name,
                        f"is set but security_protocol is {protocol}; TLS settings need SSL or SASL_SSL")
        self._check(tls or self.ssl_endpoint_identification == "https", "ssl_endpoint_identification",
                    f"is set but security_protocol is {protocol}; TLS settings need SSL or SASL_SSL")
        if self.ssl_ca_location != "probe":  # librdkafka's "probe": look in the usual system places
            self._check_readable("ssl_ca_location", directory_ok=True)
        self._check_readable("ssl_certificate_location")
        self._check_readable("ssl_key_location")
        self._check(bool(self.ssl_key_location) or not self.ssl_certificate_location, "ssl_key_location",
                    "is required with ssl_certificate_location (the client certificate's private key)")
        self._check(bool(self.ssl_certificate_location) or not self.ssl_key_location, "ssl_certificate_location",
                    "is required with ssl_key_location (the certificate of that private key)")
        self._check(bool(self.ssl_key_location) or not self.ssl_key_password, "ssl_key_password",
                    "is set but ssl_key_location is not")
        sasl = protocol in ("SASL_PLAINTEXT", "SASL_SSL")
        for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
            self._check(sasl or not getattr(self, name), name,
                        f"is set but security_protocol is {protocol}; SASL settings need SASL_PLAINTEXT or SASL_SSL")
        if sasl:
            self._check(self.sasl_mechanism in SASL_MECHANISMS, "sasl_mechanism",
                        f"is required with security_protocol={protocol}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
            self._check(bool(self.sasl_username), "sasl_username", f"is required with security_protocol={protocol}")
            self._check(bool(self.sasl_password), "sasl_password",
                        f"is required with security_protocol={protocol}; set it in the environment, "
                        "never on the command line")

    def _check_readable(self, setting: str, directory_ok: bool = False) -> None:
        value = getattr(self, setting)
        if not value:
            return
        path = Path(value)
        kind_ok = path.is_file() or (directory_ok and path.is_dir())
        self._check(kind_ok and os.access(path, os.R_OK), setting,
                    f"'{value}' is not a readable file" + (" or directory" if directory_ok else ""))

    def security_warnings(self) -> list[str]:
        """Allowed but risky combinations, for the caller to log once at start-up."""
        if self.security_protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
            return ["sasl_mechanism=PLAIN over security_protocol=SASL_PLAINTEXT sends the password in clear; "
                    "use SASL_SSL or SCRAM"]
        if self.security_protocol in ("SSL", "SASL_SSL") and self.ssl_endpoint_identification == "none":
            return ["ssl_endpoint_identification=none: the broker's certificate is not checked against its name"]
        return []

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings every client needs: bootstrap.servers plus the security settings.

        Holds secrets (passwords): pass it to confluent-kafka, never to a log or an exception message.
        """
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol.lower()}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            conf["ssl.endpoint.identification.algorithm"] = self.ssl_endpoint_identification
            for setting, key in (("ssl_ca_location", "ssl.ca.location"),
                                 ("ssl_certificate_location", "ssl.certificate.location"),
                                 ("ssl_key_location", "ssl.key.location"),
                                 ("ssl_key_password", "ssl.key.password")):
                if getattr(self, setting):
                    conf[key] = getattr(self, setting)
        if self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            conf.update({"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password})
        return conf

    def _check_kms(self) -> None:
        self._check(self.kms_provider in {"local", "aws", "vault"}, "kms_provider", "must be local, aws or vault")
        self._check(0 < self.kms_timeout_s <= 60, "kms_timeout_s", "must be in (0, 60] seconds")
        if self.kms_provider == "aws":
            self._check(bool(self.aws_kms_key_id), "aws_kms_key_id",
                        "is required with kms_provider=aws (key id, ARN or alias/NAME)")
            self._check(not self.aws_endpoint_url or self.aws_endpoint_url.startswith(("http://", "https://")),
                        "aws_endpoint_url", "must start with http:// or https://")
        if self.kms_provider == "vault":
            self._check(self.vault_addr.startswith(("http://", "https://")), "vault_addr",
                        "is required with kms_provider=vault, as http(s)://HOST:PORT")
            self._check(bool(self.vault_token), "vault_token",
                        "is required with kms_provider=vault; set it in the environment, never on the command line")
            self._check(bool(self.vault_transit_key), "vault_transit_key",
                        "is required with kms_provider=vault (the name of an aes256-gcm96 transit key)")
            self._check(bool(self.vault_mount.strip("/")), "vault_mount", "must name the transit mount")

    @staticmethod
    def _check(ok: bool, setting: str, problem: str) -> None:
        if not ok:
            raise ConfigError(f"setting '{setting}' ({env_name(setting)}): {problem}")

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """Build from environment variables, then command-line overrides (None means unset)."""
        environ = os.environ if environ is None else environ
        overrides = overrides or {}
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw: Any = overrides.get(f.name)
            if raw is None:
                raw = environ.get(env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, f.type, raw)
        return cls(**values)

    def require_schemas_dir(self) -> Path:
        if not self.schemas.is_dir():
            raise ConfigError(f"setting 'schemas' ({env_name('schemas')}): '{self.schemas}' is not a directory")
        return self.schemas


def _coerce(name: str, type_name: Any, raw: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if kind == "Path":
            return Path(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        return str(raw)
    except ValueError:
        raise ConfigError(f"setting '{name}' ({env_name(name)}): cannot read '{raw}' as {kind}") from None
