"""The log redaction filter and the JSON formatter, with the canary values the integration tests use."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from gateway.embedded.samples import CANARIES
from gateway.ops.logs import JsonFormatter, RedactingFilter, Redactor


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_pii_and_secrets_in_messages_args_and_extras_are_redacted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("mail %s paid with %s", CANARIES["email"], "4111 1111 1111 1111",
                extra={"detail": {"card": CANARIES["card"], "list": [CANARIES["email"]]},
                       "auth": "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "token": "hvs.CAESIJ0123456789abcdefghij",
                       "aws": "AKIAIOSFODNN7EXAMPLE", "ssn": "078-05-1120", "iban": "DE89 3704 0044 0532 0130 00",
                       "pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"})
    line = stream.getvalue()
    entry = orjson.loads(line)
    for secret in (CANARIES["email"], CANARIES["card"], "4111 1111 1111 1111", "eyJhbGciOiJIUzI1NiJ9",
                   "hvs.CAESIJ", "AKIAIOSFODNN7EXAMPLE", "078-05-1120", "3704 0044", "MIIEvQIBADANBg"):
        assert secret not in line, secret
    assert entry["msg"] == "mail [REDACTED:email] paid with [REDACTED:card]"
    assert entry["detail"] == {"card": "[REDACTED:card]", "list": ["[REDACTED:email]"]}
    assert entry["aws"] == "[REDACTED:aws_access_key]" and entry["ssn"] == "[REDACTED:ssn]"


def test_operational_numbers_are_left_alone() -> None:
    redactor = Redactor()
    # offsets, epoch milliseconds, ports and counts: digit runs that fail the Luhn check or are short
    text = "offset 1234567890123 at 1732400000000 on 127.0.0.1:9092 after 4111111111111112 events, took 0.25 s"
    assert redactor.redact(text) == text
    assert redactor.redact("payments.raw:3") == "payments.raw:3"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [  # the shapes the detectors learned: the log filter uses them, so it learned them too
        ("row alice,4111111111111111,12/26", "row alice,[REDACTED:card],12/26"),
        ("card 4111.1111.1111.1111 declined", "card [REDACTED:card] declined"),
        ("card 4111\u00a01111\u00a01111\u00a01111 declined", "card [REDACTED:card] declined"),
        ("from josé.garcía@bücher.de", "from [REDACTED:email]"),
    ],
)
def test_the_log_filter_uses_the_detectors(text: str, redacted: str) -> None:
    assert Redactor().redact(text) == redacted


def test_exceptions_are_logged_by_type_only(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError(f"bad value {CANARIES['name']}")
    except ValueError:
        logger.exception("decode failed")
    entry = orjson.loads(stream.getvalue())
    assert entry["error"] == "ValueError" and CANARIES["name"] not in stream.getvalue()
