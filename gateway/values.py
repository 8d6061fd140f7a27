"""Small rules about values that several layers share, kept at the bottom so that settings, the policy
compiler, quality rules, operators, DP declarations and the keyring all import down to one definition:
what a Kafka topic name may be, what a policy accepts as a number or an integer, and base64 text."""

from __future__ import annotations

import base64
import math
import re
from typing import Any

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # the names Kafka accepts (legal characters, length)


def is_number(value: Any) -> bool:
    """A finite int or float from JSON (a bool is not a number here, though Python says it is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """An int from JSON, a bool excluded."""
    return isinstance(value, int) and not isinstance(value, bool)


def b64(data: bytes) -> str:
    """Standard base64 as ASCII text (JSON documents: the keyring, Vault's API, dead letters)."""
    return base64.b64encode(data).decode("ascii")
