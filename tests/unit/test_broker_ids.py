"""The embedded broker's cluster id: never one kafka-storage's parser takes for an option."""

from __future__ import annotations

import base64
import uuid

import pytest

from gateway.embedded import broker


def test_a_cluster_id_starting_with_a_dash_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    dashed = uuid.UUID(bytes=b"\xf8" + bytes(15))  # 0b111110.. is base64url's '-'
    plain = uuid.UUID(bytes=bytes(range(16)))
    assert base64.urlsafe_b64encode(dashed.bytes).startswith(b"-")
    draws = iter([dashed, plain])
    monkeypatch.setattr(broker.uuid, "uuid4", lambda: next(draws))
    value = broker.cluster_uuid()
    assert value == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(value) == 22 and not value.startswith("-")
