"""One exception family. Messages say what, where and how to fix; they never carry field values."""


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A setting is missing or invalid; the message names the setting."""


class PolicyError(GatewayError):
    """A schema's privacy annotations cannot compile; the message names schema and field."""


class KeyringError(GatewayError):
    """The keyring (KEKs, token keys, quarantine key) is missing, unreadable or malformed."""


class RejectedEvent(GatewayError):
    """An input event cannot be sanitized. `reason` is a stable code for the dead-letter topic."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class DecryptError(GatewayError):
    """A ciphertext cannot be opened: tampered, moved to another context, or its key is not held."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class MalformedStateRecord(GatewayError):
    """A record of a state topic (keys, consent, DP changelogs) this version cannot read. The state then
    holds nothing for its key, as the compacted log will (its latest record is this one); the reader
    skips it and counts it (gateway_state_records_skipped_total), never fails on it. The message never
    quotes the record."""
