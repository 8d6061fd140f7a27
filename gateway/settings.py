"""Settings, declared once and validated at start-up.

Every setting is one dataclass field, declared with `setting(default, help, group=...)`: its name,
type, default and help text. It can come from the command line (``--batch-max-events``, derived
from the declaration by `gateway.cli.add_settings` for the commands that use its group) or the
environment (``GATEWAY_BATCH_MAX_EVENTS``); the command line wins. The settings tables of the docs
(docs/reference/settings.md) are `settings_table(group)` (a unit test keeps them equal). Validation
errors name the setting and the environment variable.

Every Producer, Consumer and AdminClient the gateway creates gets the Kafka security settings
through ``GatewayConfig.kafka_client_config()``.

The ssl_* settings need SSL or SASL_SSL, the sasl_* settings SASL_PLAINTEXT or SASL_SSL; SASL needs
all three of mechanism, username and password, and a client certificate needs its key. Secrets are
read from the environment only and never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from gateway.errors import ConfigError
from gateway.role_names import parse_role_kms_keys
from gateway.values import TOPIC_NAME

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENDPOINT_IDENTIFICATION = ("https", "none")


def env_name(setting: str) -> str:
    return "GATEWAY_" + setting.upper()


class Secret(str):
    """A secret setting's value: the str itself for the clients that need it (librdkafka reads the
    characters, not `str()`), but `repr`, `str` and f-strings print a mask, so a log line, an error
    message or a config dump cannot carry it. `reveal()` says so where the plain value is needed."""

    def __repr__(self) -> str:
        return "Secret('***')" if self else "Secret('')"

    def __str__(self) -> str:
        return "***" if self else ""

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def reveal(self) -> str:
        return reveal(self)


def reveal(value: str) -> str:
    """The plain characters of a setting's value, Secret or not (never `str(secret)`: that is the mask,
    and so is `Secret(secret)`)."""
    return str.__str__(value)


def setting(default: Any, help: str, *, group: str, choices: tuple[str, ...] | None = None,  # noqa: A002
            secret: bool = False, shown: str | None = None) -> Any:
    """One setting, declared once: its default, help text and group. The command line
    (`gateway.cli.add_settings`: `--name-with-dashes`, only for the commands whose groups it is in)
    and the docs' tables (`settings_table`) are derived from this; the environment variable is
    GATEWAY_<NAME>. A secret is read from the environment only and never printed. `shown`: the
    default as the docs state it, when the value itself says less (an empty string)."""
    return field(default=default, repr=not secret,
                 metadata={"help": help, "group": group, "choices": choices, "secret": secret, "shown": shown})


OUTPUT_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")  # librdkafka's compression.type


class KmsProvider(Enum):
    """Where the KEK lives: the closed set of KMS providers, decided once from the setting kms_provider
    (`KmsSettings`); `gateway.keys.providers` maps each to its builder. Callers ask `KmsSettings`, never
    compare the setting's string."""

    LOCAL = "local"  # the keyring file: KEKs and role keys beside the token and quarantine keys
    AWS = "aws"  # AWS KMS
    VAULT = "vault"  # Vault/OpenBao Transit


KMS_PROVIDERS = tuple(p.value for p in KmsProvider)

# The groups a command takes its settings from (gateway/cli/__init__.py). Each group is one table in the docs
# (docs/reference/settings.md).
GROUPS = {
    "kafka": "Kafka connection",
    "worker": "Worker (consumer-group member)",
    "processes": "Processes",
    "topics": "Topics",
    "sanitize": "Sanitize path",
    "keys": "Keyring and KMS",
    "dp": "Differentially private aggregates",
    "ops": "Health, metrics and logs",
    "security": "Kafka security (TLS, SASL)",
}


@dataclass(frozen=True)
class GatewayConfig:
    bootstrap: str = setting("127.0.0.1:9092", "Kafka bootstrap servers, HOST:PORT[,HOST:PORT...]", group="kafka")
    schema_registry_url: str = setting("", "Schema Registry (Confluent API) for policies whose schema ids are "
                                       "\"registry\": the raw ids are looked up and the sanitized schemas "
                                       "registered, compatibility checked, at start-up", group="kafka")
    sanitized_compatibility: str = setting(
        "full", "how a new policy's sanitized schema must relate to the versions registered before it, checked "
        "against every one at start-up (refused: the worker does not start): backward (read old records with "
        "the new schema), forward (consumers holding an old version read the new records), full (both), none",
        group="kafka", choices=("backward", "forward", "full", "none"))
    schemas: Path = setting(Path("schemas"), "directory of annotated schemas, the policies (*.avsc Avro, "
                            "*.schema.json JSON Schema, *.proto Protobuf)", group="worker")
    keyring: Path = setting(Path(".gateway/keyring.json"), "local keyring (KEK, token keys, quarantine key), "
                            "created with mode 0600 on first run", group="keys")
    group_id: str = setting("privacy-gateway", "consumer group id; also prefixes the transactional ids and the "
                            "group's internal topics", group="worker")
    # empty: HOST-<slot>, the lowest slot free on this host (gateway.runtime.instance), so a restarted
    # worker takes its predecessor's transactional id (fencing its dead transaction at once) and two
    # workers on one host never share one
    instance_id: str = setting("", "this worker's id; names its transactional producer (<group_id>-<instance_id>). "
                               "Empty: HOST-<slot>, the host name and the lowest slot no live worker of the same "
                               "group and job holds on this host (lock files in GATEWAY_INSTANCE_LOCK_DIR, else "
                               "$TMPDIR/privacy-gateway): stable across restarts, unique on the host", group="worker",
                               shown="HOST-<slot>")
    audit_topic: str = setting("privacy.audit", "the hash-chained audit topic", group="topics")
    quality_topic: str = setting("privacy.quality", "one record per quality window and source partition (counts "
                                 "and rates only)", group="topics")
    key_topic: str = setting("privacy.keys", "compacted topic of wrapped per-subject keys (crypto-shredding)",
                             group="topics")
    ledger_topic: str = setting("privacy.ledger", "the privacy ledger: DP budget charged per aggregate and period",
                                group="dp")
    # Partitions for topics the gateway creates (sanitized, dead-letter, audit) when the
    # source topic does not exist yet; otherwise the source topic's count is reused.
    partitions: int = setting(6, "partitions of the topics the gateway creates when missing (outputs copy their "
                              "source's count)", group="topics")
    create_topics: bool = setting(True, "create missing topics (off: fail naming them)", group="topics")
    consent_topic: str = setting("privacy.consent", "compacted topic of consent grants and revocations, keyed by "
                                 "subject token (never the identifier); workers follow it", group="topics")
    consent_input_topic: str = setting("", "topic of raw consent events ({\"subject\", \"purpose\", \"granted\", "
                                       "\"at\"}) the worker tokenizes into the consent topic; empty: none",
                                       group="topics", shown="(none)")
    dlq_retention_days: int = setting(30, "retention of the dead-letter topics the gateway creates (retention.ms): "
                                      "bounds how long sealed originals, and the quarantine key's reach, last",
                                      group="topics")
    processes: str = setting("auto", "worker processes `gateway run` starts under one supervisor (one per core: "
                             "one Python process uses one); auto: the CPUs this process may use (its affinity, "
                             "capped by a cgroup CPU quota), but 1 when every bootstrap server is on this host "
                             "(loopback): the broker needs the other cores (2 processes beside it drained a "
                             "backlog at 0.63x of 1 on 2 cores)", group="processes")
    batch_max_events: int = setting(1000, "most events per batch (one transaction)", group="worker")
    batch_timeout_s: float = setting(0.02, "longest wait for a batch to fill: bounds latency at low rates",
                                     group="worker")
    batch_slice_s: float = setting(0.005, "the sanitize worker transforms what arrived during a batch's fill "
                                   "this often, so only the last slice's work is left when the fill ends "
                                   "(a batch is still one transaction); at most batch_timeout_s",
                                   group="worker")
    output_compression: str = setting("lz4", "compression of the batches the sanitize worker writes (sanitized, "
                                      "purpose, dead-letter and audit topics): lz4 cut what the broker stores "
                                      "about 5x and its CPU to 0.6x (benchmarks/compression.py); zstd "
                                      "stores a fifth less again. Consumers need the codec: librdkafka and Java "
                                      "clients have them all; aiokafka (faust) needs cramjam, in the faust extra",
                                      group="sanitize", choices=OUTPUT_COMPRESSIONS)
    # upper bound of prefetched, not yet processed input per worker (librdkafka's queue)
    fetch_queue_kbytes: int = setting(16_384, "bound on prefetched, unprocessed input per worker (backpressure)",
                                      group="worker")
    max_record_bytes: int = setting(1_048_576, "larger events are dead-lettered (record_too_large)",
                                    group="sanitize")
    max_field_bytes: int = setting(65_536, "events with a larger field are dead-lettered (field_too_large)",
                                   group="sanitize")
    dek_max_age_s: float = setting(3600.0, "a data key is replaced after this many seconds (one KMS call)",
                                   group="keys")
    dek_max_uses: int = setting(4_000_000, "... or after this many encryptions", group="keys")
    retention_check_s: float = setting(3600.0, "how often a worker erases the period keys past their retention "
                                       "(fields with retention_days): only the worker holding partition 0 of the "
                                       "first source topic with a retention does; 0: never (run gateway retention "
                                       "enforce)", group="keys")
    session_timeout_ms: int = setting(10_000, "consumer-group session timeout", group="worker")
    # how long a transaction may stay open before the broker aborts it: bounds how long a crashed
    # worker's partitions wait before another worker can take them over
    transaction_timeout_ms: int = setting(60_000, "the broker aborts a transaction open longer than this; bounds "
                                          "how long a dead worker's partitions wait when nobody restarts under "
                                          "its instance id (1000 to 900000)", group="worker")
    # a partition whose committed position has not moved for this long while input waits is "stalled"
    # (a warning, gateway_stalled_partitions, /readyz not ready)
    stall_after_s: float = setting(60.0, "a partition whose committed position has not moved for this long while "
                                   "input waits is reported stalled", group="ops")
    leak_sample_rate: float = setting(0.01, "fraction of events whose kept string fields the leak sentinel scans "
                                      "for PII in observe mode (enforce scans every event)", group="sanitize")
    metrics_port: int = setting(0, "serve /metrics, /healthz and /readyz on this port (0: off)", group="ops")
    metrics_host: str = setting("127.0.0.1", "address of the metrics port (containers set 0.0.0.0)", group="ops")
    latency_trace: str = setting("", "the sanitize worker (gateway run) appends one JSON line per committed batch "
                                 "to this file: its stage times, the garbage collector's pauses and its events' "
                                 "timestamps, never a value (benchmarks/bench.py decomposes the slowest events with "
                                 "it); empty: off",
                                 group="ops", shown="(off)")
    log_level: str = setting("INFO", "DEBUG, INFO, WARNING or ERROR", group="ops",
                             choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    dp_idle_close_s: float = setting(10.0, "close each DP window this many seconds after its end + grace (wall "
                                     "clock), whether or not data arrived: time for contributions in flight",
                                     group="dp")
    max_skew_s: int = setting(300, "an event time (record timestamp, an aggregate's time field) later than now + "
                              "this many seconds is out of range: the event is dead-lettered (event_time_out_of_range) "
                              "and moves no window, mark or period", group="worker")
    # KMS for KEKs (see gateway/keys/providers/__init__.py). Secrets come from the environment only.
    kms_provider: str = setting("local", "where the KEK lives: local (the keyring), aws (AWS KMS) or vault "
                                "(Vault/OpenBao Transit)", group="keys", choices=KMS_PROVIDERS)
    kms_timeout_s: float = setting(5.0, "timeout of one KMS request", group="keys")
    aws_kms_key_id: str = setting("", "AWS KMS key id, ARN or alias/NAME (credentials: the standard AWS chain)",
                                  group="keys")
    aws_region: str = setting("", "AWS region of the key", group="keys")
    aws_endpoint_url: str = setting("", "AWS KMS endpoint (a local KMS, a VPC endpoint)", group="keys")
    vault_addr: str = setting("", "Vault/OpenBao address, http(s)://HOST:PORT", group="keys")
    vault_token: str = setting("", "Vault/OpenBao token", group="keys", secret=True)
    vault_transit_key: str = setting("", "name of the aes256-gcm96 transit key", group="keys")
    vault_mount: str = setting("transit", "the transit engine's mount", group="keys")
    # role-scoped fields (gateway/keys/roles.py): with kms_provider=local the role keys live in the keyring
    role_kms_keys: str = setting("", "the KMS key of each role of role-scoped fields, ROLE=KEY[,ROLE=KEY...] "
                                 "(support=alias/gw-support,fraud=alias/gw-fraud): for aws a key id, ARN or "
                                 "alias, for vault a transit key under vault_mount. Not used with kms_provider=local "
                                 "(role keys live in the keyring)", group="keys")
    # Kafka security. Secrets come from the environment only.
    security_protocol: str = setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", group="security",
                                     choices=SECURITY_PROTOCOLS)
    ssl_ca_location: str = setting("", "PEM file (or directory) of the CA(s) that sign the brokers' certificates",
                                   group="security", shown="system trust store")
    ssl_certificate_location: str = setting("", "client certificate (PEM) for mutual TLS", group="security")
    ssl_key_location: str = setting("", "its private key (PEM)", group="security")
    ssl_key_password: str = setting("", "the private key's password", group="security", secret=True)
    ssl_endpoint_identification: str = setting("https", "https checks the broker's name against its certificate; "
                                               "none does not", group="security", choices=ENDPOINT_IDENTIFICATION)
    sasl_mechanism: str = setting("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", group="security",
                                  choices=SASL_MECHANISMS)
    sasl_username: str = setting("", "SASL user", group="security")
    sasl_password: str = setting("", "SASL password", group="security", secret=True)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and not isinstance(value, Secret):
                object.__setattr__(self, f.name, Secret(value))
        self._check(bool(self.bootstrap.strip()), "bootstrap", "must be HOST:PORT[,HOST:PORT...]")
        for part in self.bootstrap.split(","):
            host, sep, port = part.strip().rpartition(":")
            self._check(bool(sep and host and port.isdigit()), "bootstrap",
                        f"'{part}' is not HOST:PORT")
        self._check(bool(self.group_id), "group_id", "must not be empty")
        self._check(not self.schema_registry_url or self.schema_registry_url.startswith(("http://", "https://")),
                    "schema_registry_url", "must start with http:// or https://")
        self._check(self.sanitized_compatibility in {"backward", "forward", "full", "none"},
                    "sanitized_compatibility", "must be backward, forward, full or none")
        self._check(self.instance_id == "" or bool(re.match(r"^[A-Za-z0-9._-]{1,200}$", self.instance_id)),
                    "instance_id", "must be letters, digits, '.', '_' or '-' (or empty: HOST-<slot>)")
        self._check(bool(TOPIC_NAME.match(self.audit_topic)), "audit_topic",
                    "must be a valid Kafka topic name")
        self._check(bool(TOPIC_NAME.match(self.quality_topic)), "quality_topic",
                    "must be a valid Kafka topic name")
        self._check(1 <= self.partitions <= 10_000, "partitions", "must be between 1 and 10000")
        self._check(1 <= self.dlq_retention_days <= 3650, "dlq_retention_days", "must be between 1 and 3650 days")
        self._check(self.processes == "auto" or (self.processes.isdigit() and 1 <= int(self.processes) <= 256),
                    "processes", "must be auto or a number of processes between 1 and 256")
        self._check(1 <= self.batch_max_events <= 100_000, "batch_max_events",
                    "must be between 1 and 100000")
        self._check(0 < self.batch_timeout_s <= 60, "batch_timeout_s", "must be in (0, 60] seconds")
        self._check(0 < self.batch_slice_s <= self.batch_timeout_s, "batch_slice_s",
                    f"must be in (0, batch_timeout_s = {self.batch_timeout_s}] seconds")
        self._check(self.output_compression in OUTPUT_COMPRESSIONS, "output_compression",
                    f"must be one of {', '.join(OUTPUT_COMPRESSIONS)}")
        self._check(1024 <= self.fetch_queue_kbytes <= 2_097_151, "fetch_queue_kbytes",
                    "must be between 1024 and 2097151")
        self._check(self.max_record_bytes >= 64, "max_record_bytes", "must be at least 64")
        self._check(1 <= self.max_field_bytes <= self.max_record_bytes, "max_field_bytes",
                    "must be between 1 and max_record_bytes")
        self._check(self.dek_max_age_s > 0, "dek_max_age_s", "must be positive")
        self._check(self.retention_check_s == 0 or 1 <= self.retention_check_s <= 86_400, "retention_check_s",
                    "must be 0 (off) or between 1 and 86400 seconds")
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
        self._check(bool(TOPIC_NAME.match(self.ledger_topic)), "ledger_topic", "must be a valid Kafka topic name")
        self._check(0 < self.dp_idle_close_s <= 86_400, "dp_idle_close_s", "must be in (0, 86400] seconds")
        self._check(isinstance(self.max_skew_s, int) and 0 <= self.max_skew_s <= 7 * 86_400, "max_skew_s",
                    "must be a whole number of seconds in [0, 604800]")
        self._check(self.log_level.upper() in {"DEBUG", "INFO", "WARNING", "ERROR"}, "log_level",
                    "must be DEBUG, INFO, WARNING or ERROR")
        self._check(bool(TOPIC_NAME.match(self.key_topic)), "key_topic", "must be a valid Kafka topic name")
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
                value = getattr(self, setting)
                if value:
                    conf[key] = reveal(value)
        if self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            conf.update({"sasl.mechanisms": self.sasl_mechanism, "sasl.username": self.sasl_username,
                         "sasl.password": reveal(self.sasl_password)})
        return conf

    def _check_kms(self) -> None:
        KmsSettings.of(self)

    def kms_settings(self) -> KmsSettings:
        """The KMS settings, typed (the provider an enum, role keys a mapping); checked when the settings
        were made."""
        return KmsSettings.of(self)

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

    def role_kms_key_map(self) -> dict[str, str]:
        """`role_kms_keys` as {role: KMS key name} (checked when the settings were made)."""
        return dict(self.kms_settings().role_keys)

    def process_count(self) -> int:
        return self.process_choice()[0]

    def process_choice(self) -> tuple[int, str]:
        """How many worker processes `gateway run` starts, and why (its start-up log says so)."""
        from gateway.ops.cpus import auto_processes, usable_cpus

        if self.processes != "auto":
            return int(self.processes), "set by processes"
        return auto_processes(self.bootstrap, usable_cpus())

    def require_schemas_dir(self) -> Path:
        if not self.schemas.is_dir():
            raise ConfigError(f"setting 'schemas' ({env_name('schemas')}): '{self.schemas}' is not a directory")
        return self.schemas


@dataclass(frozen=True)
class KmsSettings:
    """The KMS settings as one typed, frozen value: what `gateway.keys.providers` builds the KMS from,
    decided once at start-up. `of` validates them, each error naming the setting and its variable."""

    provider: KmsProvider
    timeout_s: float
    aws_kms_key_id: str
    aws_region: str
    aws_endpoint_url: str
    vault_addr: str
    vault_token: Secret = field(repr=False)
    vault_transit_key: str
    vault_mount: str
    role_keys: Mapping[str, str]  # role -> the role's KMS key name (role_kms_keys)

    @property
    def local(self) -> bool:
        """The keyring is the KMS: KEKs and role keys live in the keyring file (the one place that asks)."""
        return self.provider is KmsProvider.LOCAL

    @property
    def key_setting(self) -> str | None:
        """The setting that names the remote provider's key (None for the keyring)."""
        return {KmsProvider.AWS: "aws_kms_key_id", KmsProvider.VAULT: "vault_transit_key"}.get(self.provider)

    @property
    def key(self) -> str:
        """The remote provider's key name ('' for the keyring, or when only role keys are set)."""
        setting_name = self.key_setting
        return getattr(self, setting_name) if setting_name else ""

    @classmethod
    def of(cls, config: GatewayConfig) -> KmsSettings:
        check = GatewayConfig._check
        try:
            provider = KmsProvider(config.kms_provider)
        except ValueError:
            raise ConfigError(f"setting 'kms_provider' ({env_name('kms_provider')}): must be local, aws or vault") \
                from None
        check(0 < config.kms_timeout_s <= 60, "kms_timeout_s", "must be in (0, 60] seconds")
        try:
            roles = parse_role_kms_keys(config.role_kms_keys)
        except ValueError as exc:
            raise ConfigError(f"setting 'role_kms_keys' ({env_name('role_kms_keys')}): {exc}; expected "
                              "ROLE=KEY[,ROLE=KEY...]") from None
        check(not roles or provider is not KmsProvider.LOCAL, "role_kms_keys",
              "is set but kms_provider is local: local role keys live in the keyring (gateway keys init "
              "--role R); set kms_provider=aws or vault to use KMS keys per role")
        # a consumer decrypting as one role (gateway decrypt --role R) needs only its role's key
        if provider is KmsProvider.AWS:
            check(bool(config.aws_kms_key_id) or bool(roles), "aws_kms_key_id",
                  "is required with kms_provider=aws (key id, ARN or alias/NAME)")
            check(not config.aws_endpoint_url or config.aws_endpoint_url.startswith(("http://", "https://")),
                  "aws_endpoint_url", "must start with http:// or https://")
        if provider is KmsProvider.VAULT:
            check(config.vault_addr.startswith(("http://", "https://")), "vault_addr",
                  "is required with kms_provider=vault, as http(s)://HOST:PORT")
            check(bool(config.vault_token), "vault_token",
                  "is required with kms_provider=vault; set it in the environment, never on the command line")
            check(bool(config.vault_transit_key) or bool(roles), "vault_transit_key",
                  "is required with kms_provider=vault (the name of an aes256-gcm96 transit key)")
            check(bool(config.vault_mount.strip("/")), "vault_mount", "must name the transit mount")
        return cls(provider, config.kms_timeout_s, config.aws_kms_key_id, config.aws_region,
                   config.aws_endpoint_url, config.vault_addr, Secret(reveal(config.vault_token)),
                   config.vault_transit_key, config.vault_mount, MappingProxyType(roles))


@dataclass(frozen=True)
class EnvironmentVariable:
    """A variable read from the process environment, not a setting of `GatewayConfig`: read where no
    configuration exists yet (the embedded broker's jar cache) or per host (the instance lock files).
    Declared here, beside the settings, so the docs' table lists it (`settings_table("environment")`)."""

    name: str
    default: str  # as the docs state it
    help: str

    def get(self, environ: Mapping[str, str] | None = None) -> str:
        """The variable's value, '' when unset or empty."""
        return (os.environ if environ is None else environ).get(self.name) or ""


INSTANCE_LOCK_DIR = EnvironmentVariable(
    "GATEWAY_INSTANCE_LOCK_DIR", "$TMPDIR/privacy-gateway",
    "directory of the lock files by which workers on one host claim their instance slot (instance_id HOST-<slot>)")
KAFKA_CACHE = EnvironmentVariable(
    "GATEWAY_KAFKA_CACHE", "$XDG_CACHE_HOME/privacy-gateway, else ~/.cache/privacy-gateway",
    "cache directory of the embedded Apache Kafka broker's and registry's jars (demo, tests)")
ENVIRONMENT = (INSTANCE_LOCK_DIR, KAFKA_CACHE)


def instance_lock_dir() -> Path:
    """GATEWAY_INSTANCE_LOCK_DIR, else $TMPDIR/privacy-gateway."""
    return Path(INSTANCE_LOCK_DIR.get() or Path(tempfile.gettempdir()) / "privacy-gateway")


def kafka_cache_dir() -> Path:
    """GATEWAY_KAFKA_CACHE, else $XDG_CACHE_HOME/privacy-gateway, else ~/.cache/privacy-gateway."""
    configured = KAFKA_CACHE.get()
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "privacy-gateway"


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


def declared(groups: tuple[str, ...] | None = None) -> list[Any]:
    """The declared settings (dataclass fields), in declaration order; of these groups if given."""
    return [f for f in fields(GatewayConfig) if groups is None or f.metadata["group"] in groups]


def shown_default(f: Any) -> str:
    """A setting's default as the help text and the docs state it."""
    if f.metadata.get("shown"):
        return str(f.metadata["shown"])
    if f.default == "" or f.metadata.get("secret"):
        return "(none)"
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return str(f.default)


def settings_table(group: str) -> str:
    """The docs' table of one group's settings, derived from the declarations (Markdown: a `<` in
    the help text, as in `HOST-<slot>`, is escaped so that it is not read as an HTML tag)."""
    if group == "environment":
        rows = ["| environment | default | |", "|---|---|---|"]
        rows += [f"| `{v.name}` | `{v.default}` | {v.help.replace('<', '&lt;')} |" for v in ENVIRONMENT]
        return "\n".join(rows)
    rows = ["| setting | default | environment | |", "|---|---|---|---|"]
    for f in declared((group,)):
        meaning = f.metadata["help"] + (" (from the environment only; never printed)" if f.metadata["secret"] else "")
        meaning = meaning.replace("<", "&lt;")
        rows.append(f"| `{f.name}` | `{shown_default(f)}` | `{env_name(f.name)}` | {meaning} |")
    return "\n".join(rows)


_TABLE_RE = re.compile(r"(<!-- settings: (\w+) -->\n)((?:\|[^\n]*\n)*)(<!-- /settings -->)")


def with_settings_tables(page: str) -> str:
    """The page with every `<!-- settings: GROUP -->` block replaced by that group's table
    (`make docs` writes it back; tests/unit/test_settings_declared_once.py checks the page is current)."""
    return _TABLE_RE.sub(lambda m: m.group(1) + settings_table(m.group(2)) + "\n" + m.group(4), page)


SETTINGS_PAGE = "docs/reference/settings.md"

if __name__ == "__main__":  # python -m gateway.settings [PAGE]: rewrite its settings tables
    import sys

    target = Path(sys.argv[1] if len(sys.argv) > 1 else SETTINGS_PAGE)
    target.write_text(with_settings_tables(target.read_text()))
