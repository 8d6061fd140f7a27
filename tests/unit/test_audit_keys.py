"""The audit MAC keys in the keyring: made on first use, kept across every other change, rotated,
and written as keyring format 3 so an older gateway refuses the file rather than drop them."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from gateway.core.audit import GENESIS, AuditKeys, seal_audit_event, verify_chains
from gateway.errors import KeyringError
from gateway.keys.keyring import AUDIT_FORMAT, Keyring


def test_first_use_makes_one_audit_key_and_format_3(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.open(path)
    assert ring.audit_keys(create=False) == ("", {})
    assert orjson.loads(path.read_bytes())["format"] == 1  # untouched until a writer needs it
    active, keys = ring.audit_keys()
    assert active.startswith("audit-") and set(keys) == {active} and len(keys[active]) == 32
    data = orjson.loads(path.read_bytes())
    assert data["format"] == AUDIT_FORMAT == 3
    assert Keyring.open(path, create=False).audit_keys() == (active, keys)  # no second key made


def test_other_changes_keep_the_audit_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.open(path)
    active, keys = ring.audit_keys()
    ring.rotate_kek()
    ring.ensure_token_domains({"customer"})
    ring.ensure_roles({"analyst"})
    assert Keyring.open(path, create=False).audit_keys() == (active, keys)


def test_rotation_keeps_old_records_verifiable(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.open(path)
    old = AuditKeys(*ring.audit_keys())
    first = seal_audit_event({"chain": "keys:forget", "n": 1}, GENESIS, old)
    new_id = Keyring.open(path, create=False).rotate_audit_key()
    new = AuditKeys(*Keyring.open(path, create=False).audit_keys())
    assert new.active == new_id != old.active
    second = seal_audit_event({"chain": "keys:forget", "n": 2}, first["hash"], new)
    assert (first["mac_key_id"], second["mac_key_id"]) == (old.active, new_id)
    report = verify_chains([(0, 0, orjson.dumps(first)), (0, 1, orjson.dumps(second))], new)
    assert report.ok and report.authenticated, report.breaks


def test_a_format_3_keyring_with_a_bad_audit_section_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    Keyring.open(path).audit_keys()
    data = orjson.loads(path.read_bytes())
    data["audit"]["active"] = "audit-missing"
    path.write_bytes(orjson.dumps(data))
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match="audit"):
        Keyring.open(path, create=False)


def test_the_audit_key_never_shows_in_a_repr(tmp_path: Path) -> None:
    ring = Keyring.open(tmp_path / "k.json")
    active, keys = ring.audit_keys()
    for text in (repr(ring), repr(AuditKeys(active, keys))):
        assert keys[active].hex() not in text and str(keys[active]) not in text


def test_audit_export_holds_the_audit_keys_alone(tmp_path: Path) -> None:
    ring = Keyring.open(tmp_path / "k.json")
    ring.ensure_token_domains({"customer"})
    out = tmp_path / "audit.json"
    assert ring.export_audit(out) == 1
    assert os.stat(out).st_mode & 0o777 == 0o600
    data = orjson.loads(out.read_bytes())
    assert set(data) == {"format", "audit_export", "audit"} and data["format"] == AUDIT_FORMAT
    export = Keyring.open(out, create=False)
    assert export.audit_keys() == ring.audit_keys()
    with pytest.raises(KeyringError):
        export.token_keys("customer")
    with pytest.raises(KeyringError, match="audit keys only"):
        export.rotate_kek()
