"""Structured JSON logs with a redaction filter.

The code logs only what it passes in `extra` (topics, offsets, counts, reason codes), never field
values, and exceptions are logged by type, never by message (messages may quote data). The filter
below is the second line of defence: whatever reaches a handler, from our code or a library, has
e-mail addresses, card numbers, US SSNs, IBANs, bearer tokens, cloud and Vault credentials and PEM
private keys replaced by ``[REDACTED:<kind>]`` before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.core import detectors as detect

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class Redactor:
    """Replaces recognisable secrets and PII in text. Card numbers and e-mail addresses are found by
    gateway.core.detectors, the detectors `redact` uses (issuer prefix, length and Luhn check, so offsets,
    timestamps and counts are left alone; cards split by dots or no-break spaces, addresses with
    non-ASCII parts), so the log filter and the redaction operator cannot drift apart."""

    _PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
        ("private_key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
                                   re.DOTALL)),
        ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")),
        ("bearer", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")),
        ("vault_token", re.compile(r"\bhv[sbr]\.[A-Za-z0-9_-]{20,}")),
        ("aws_access_key", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
        ("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b")),
        ("ssn", re.compile(r"\b\d{3}-\d{2}-\d{4}\b")),
    )
    _DETECTED = {"CARD": "[REDACTED:card]", "EMAIL": "[REDACTED:email]"}
    _DETECTOR = detect.detector(_DETECTED)

    def redact(self, text: str) -> str:
        for kind, pattern in self._PATTERNS:
            text = pattern.sub(f"[REDACTED:{kind}]", text)
        return detect.redact(text, self._DETECTOR.find(text), self._placeholder)

    @classmethod
    def _placeholder(cls, match: detect.Match, _text: str) -> str:
        return cls._DETECTED[match.entity]

    def value(self, value: Any) -> Any:
        """Redact strings inside any JSON-like value (dicts, lists, tuples)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set)):
            return [self.value(v) for v in value]
        return value


class RedactingFilter(logging.Filter):
    """Applies the Redactor to a record's message, arguments and `extra` fields, in place."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or Redactor()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.redact(record.getMessage())
        record.args = None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD:
                record.__dict__[key] = self.redactor.value(value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__  # the type only: messages may quote data
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_to_file(path: Path) -> None:
    """Send the process's log lines (the same JSON, redacted) to `path` instead of stderr, at the level
    set up: a command whose own output is the point (`gateway demo`) keeps its terminal clean."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in root.handlers:
        old.close()
    root.handlers[:] = [handler]
