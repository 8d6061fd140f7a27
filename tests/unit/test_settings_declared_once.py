"""Settings are declared once (gateway/settings.py); the command line and the docs' settings tables derive from it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.settings import GROUPS, SETTINGS_PAGE, GatewayConfig, Secret, declared, env_name, with_settings_tables

PAGE = Path(__file__).resolve().parents[2] / SETTINGS_PAGE
CANARY = "hunter2-canary"  # a test password, never a real one


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:  # argparse keeps subcommands here; no public API walks them
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"{prefix}{name}"] = sub
                out.update(_subparsers(sub, f"{prefix}{name} "))
    return out


COMMANDS = _subparsers(build_parser())


def _options(command: str) -> dict[str, argparse.Action]:
    return {a.dest: a for a in COMMANDS[command]._actions if a.option_strings and a.dest != "help"}


def test_every_setting_has_a_help_text_and_a_known_group() -> None:
    for f in declared():
        assert f.metadata["help"].strip(), f.name
        assert f.metadata["group"] in GROUPS, f.name


def test_every_option_of_every_command_has_a_help_text() -> None:
    missing = [f"{name}: {action.option_strings or action.dest}" for name, sub in COMMANDS.items()
               for action in sub._actions if action.dest != "help" and not action.help
               and not isinstance(action, argparse._SubParsersAction)]
    assert not missing


def test_a_setting_s_option_says_its_default_and_environment_variable() -> None:
    batch = _options("run")["batch_max_events"]
    assert batch.option_strings == ["--batch-max-events"] and batch.type is int
    assert "default 1000" in batch.help and env_name("batch_max_events") in batch.help
    assert _options("run")["kms_provider"].choices == ("local", "aws", "vault")


def test_commands_show_only_the_settings_they_use() -> None:
    aggregate = set(_options("aggregate"))
    for unused in ("kms_provider", "vault_addr", "dek_max_uses", "max_field_bytes", "key_topic"):
        assert unused not in aggregate, unused
    # the keyring: its audit key MACs the DP audit records
    assert {"ledger_topic", "dp_idle_close_s", "group_id", "bootstrap", "keyring"} <= aggregate
    run = set(_options("run"))
    assert "ledger_topic" not in run and {"keyring", "kms_provider", "leak_sample_rate", "quality_topic"} <= run
    assert set(_options("audit verify")) - {"topic", "allow_legacy"} == \
        {"bootstrap", "audit_topic", "group_id", "keyring", "key_topic"} | {f.name for f in declared(("security",))
                                                                            if not f.metadata["secret"]}


def test_secrets_are_never_command_line_options() -> None:
    secrets = {f.name for f in declared() if f.metadata["secret"]}
    assert secrets == {"vault_token", "ssl_key_password", "sasl_password"}
    for name in COMMANDS:
        assert not secrets & set(_options(name)), name


def test_a_secret_prints_as_a_mask_but_reaches_the_client_whole() -> None:
    config = GatewayConfig(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="u",
                           sasl_password=CANARY)
    assert isinstance(config.sasl_password, Secret)
    for shown in (repr(config), str(config.sasl_password), f"{config.sasl_password}", repr(config.sasl_password)):
        assert CANARY not in shown
    assert config.kafka_client_config()["sasl.password"] == CANARY
    assert config.sasl_password.reveal() == CANARY


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_the_docs_tables_are_the_declarations(group: str) -> None:
    page = PAGE.read_text()
    assert f"<!-- settings: {group} -->" in page, f"{SETTINGS_PAGE} has no table for settings group {group}"
    assert with_settings_tables(page) == page, f"stale settings tables: python -m gateway.settings {SETTINGS_PAGE}"
