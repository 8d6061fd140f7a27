"""Shared fixtures for the unit tests: the example plans, a fresh keyring and a pipeline per test."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.app import tokenizers
from gateway.core.codec.raw import load_schema_file
from gateway.core.pipeline import Pipeline
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="session")
def schemas_dir() -> Path:
    return SCHEMAS


@pytest.fixture(scope="session")
def payments_plan() -> Plan:
    return compile_plan(load_schema_file(SCHEMAS / "payments.avsc"))


@pytest.fixture(scope="session")
def clinical_plan() -> Plan:
    return compile_plan(load_schema_file(SCHEMAS / "clinical_visits.avsc"))


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.open(tmp_path / "k.json")


@pytest.fixture
def config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(keyring=tmp_path / "k.json", instance_id="unit-test")


@pytest.fixture
def pipeline(payments_plan: Plan, clinical_plan: Plan, keyring: Keyring, config: GatewayConfig) -> Pipeline:
    return Pipeline([payments_plan, clinical_plan], keyring, config, audit_partitions=3,
                    tokenizers=tokenizers(keyring, [payments_plan, clinical_plan]))


@pytest.fixture
def write_schema(tmp_path: Path) -> Callable[..., Path]:
    """Write a schema dict to tmp_path/<name> and return the path."""

    def write(schema: dict[str, Any], name: str = "s.avsc") -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(schema))
        return path

    return write
