"""The local keyring file: creation, permissions, persistence of token domains, KEK ownership."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import orjson
import pytest

from gateway.errors import DecryptError, KeyringError
from gateway.keys import keyring as keyring_module
from gateway.keys.envelope import DekCache, FieldDecryptor, context_bytes, encrypt_field
from gateway.keys.keyring import Keyring, _VersionedKeys
from gateway.keys.kms import WrappedKey

CTX = context_bytes("t.sanitized", "f", "s")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_created_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "k.json"
    ring = Keyring.open(path)
    assert path.exists()
    assert _mode(path) == 0o600
    data = orjson.loads(path.read_bytes())
    assert data["format"] == 1
    assert data["kek"]["active"] == ring.active_key_id()
    assert [p.name for p in path.parent.iterdir()] == ["k.json"]  # no temp file left behind


def test_reopen_reads_the_same_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    first = Keyring.open(path)
    ciphertext = encrypt_field(DekCache(first, 60, 10).current(), b"secret", CTX)
    second = Keyring.open(path, create=False)
    assert second.active_key_id() == first.active_key_id()
    assert second.quarantine_key() == first.quarantine_key()
    assert FieldDecryptor(second).decrypt(ciphertext, CTX) == b"secret"


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o601, 0o660, 0o620, 0o610, 0o666])
def test_keyring_open_to_others_or_group_writable_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k.json"
    Keyring.open(path)
    os.chmod(path, mode)
    with pytest.raises(KeyringError) as excinfo:
        Keyring.open(path)
    message = str(excinfo.value)
    assert "chmod 600" in message
    assert str(path) in message


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440])
def test_owner_only_or_group_read_only_keyring_is_accepted(tmp_path: Path, mode: int) -> None:
    # group read is tolerated for Kubernetes Secret volumes mounted with fsGroup (mode 0440)
    path = tmp_path / "k.json"
    kek = Keyring.open(path).active_key_id()
    os.chmod(path, mode)
    assert Keyring.open(path, create=False).active_key_id() == kek


def test_unwritable_keyring_lacking_a_domain_names_keys_init(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "k.json"
    Keyring.open(path).ensure_token_domains({"customer"})
    ring = Keyring.open(path, create=False)
    before = path.read_bytes()

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(keyring_module.tempfile, "mkstemp", read_only)
    ring.ensure_token_domains({"customer"})  # nothing missing: no write attempted
    with pytest.raises(KeyringError) as excinfo:
        ring.ensure_token_domains({"customer", "patient"})
    assert "gateway keys init" in str(excinfo.value)
    assert "patient" in str(excinfo.value)
    assert path.read_bytes() == before


def test_missing_keyring_without_create(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(KeyringError) as excinfo:
        Keyring.open(path, create=False)
    assert str(path) in str(excinfo.value)
    assert not path.exists()


@pytest.mark.parametrize("content,fragment", [
    (b"not json", "not valid JSON"),
    (b'{"format": 99}', "unknown format"),  # 1, and 2 (with role keys), are known
    (b'{"format": 1, "kek": {"active": "a", "keys": {"a": "!!"}}, "quarantine": {}}', "not base64"),
    (b'{"format": 1, "kek": {"active": "a", "keys": {"a": "AAAA"}}, "quarantine": {}}', "32-byte key"),
    (b'{"format": 1, "kek": {"active": "b", "keys": {}}, "quarantine": {}}', "not among its keys"),
])
def test_malformed_keyring_is_refused(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "k.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyringError, match=fragment):
        Keyring.open(path)


def test_ensure_token_domains_persists_and_keeps_existing_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.open(path)
    kek_before = orjson.loads(path.read_bytes())["kek"]
    ring.ensure_token_domains({"customer"})
    customer = ring.token_keys("customer")
    ring.ensure_token_domains({"customer", "patient"})
    assert ring.token_keys("customer") == customer

    reopened = Keyring.open(path, create=False)
    assert reopened.token_keys("customer") == customer
    assert reopened.token_keys("patient") == ring.token_keys("patient")
    assert reopened.token_keys("patient")[1] != customer[1]
    assert orjson.loads(path.read_bytes())["kek"] == kek_before
    assert _mode(path) == 0o600


def test_ensure_token_domains_without_new_domains_does_not_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    ring = Keyring.open(path)
    ring.ensure_token_domains({"customer"})
    inode = path.stat().st_ino
    ring.ensure_token_domains({"customer"})
    assert path.stat().st_ino == inode


def test_ensure_token_domains_merges_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    one = Keyring.open(path)
    two = Keyring.open(path)
    one.ensure_token_domains({"customer"})
    two.ensure_token_domains({"patient"})
    final = Keyring.open(path, create=False)
    assert final.token_keys("customer") == one.token_keys("customer")
    assert final.token_keys("patient") == two.token_keys("patient")


def test_unknown_token_domain(keyring: Keyring) -> None:
    with pytest.raises(KeyringError, match="token domain 'nope'"):
        keyring.token_keys("nope")


def test_decryptor_with_another_keyring_does_not_hold_the_key(tmp_path: Path) -> None:
    ours = Keyring.open(tmp_path / "ours.json")
    theirs = Keyring.open(tmp_path / "theirs.json")
    ciphertext = encrypt_field(DekCache(ours, 60, 10).current(), b"secret", CTX)
    with pytest.raises(DecryptError) as excinfo:
        FieldDecryptor(theirs).decrypt(ciphertext, CTX)
    assert excinfo.value.reason == "key_not_held"
    assert b"secret" not in str(excinfo.value).encode()


def test_unknown_quarantine_key_id(keyring: Keyring) -> None:
    with pytest.raises(DecryptError) as excinfo:
        keyring.quarantine_key("quarantine-unknown")
    assert excinfo.value.reason == "key_not_held"


def test_wrap_is_bound_to_its_context(keyring: Keyring) -> None:
    dek = os.urandom(32)
    wrapped = keyring.wrap(dek, b"context-a")
    assert wrapped.kek_id == keyring.active_key_id()
    assert dek not in wrapped.blob
    assert keyring.unwrap(wrapped, b"context-a") == dek
    with pytest.raises(DecryptError) as excinfo:
        keyring.unwrap(wrapped, b"context-b")
    assert excinfo.value.reason == "tampered"
    with pytest.raises(DecryptError) as excinfo:
        keyring.unwrap(WrappedKey("kek-elsewhere", wrapped.blob), b"context-a")
    assert excinfo.value.reason == "key_not_held"


def test_concurrent_ensure_waits_for_the_lock_and_adopts_the_key_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    one = Keyring.open(path)
    two = Keyring.open(path)
    with one._locked():  # another process is adding the same domain right now
        worker = threading.Thread(target=two.ensure_token_domains, args=({"customer"},))
        worker.start()
        worker.join(0.3)
        assert worker.is_alive()  # it waits for the lock instead of racing
        _add_domain_unlocked(one, "customer")
    worker.join(5)
    assert not worker.is_alive()
    on_disk = Keyring.open(path, create=False).token_keys("customer")
    assert one.token_keys("customer") == on_disk
    assert two.token_keys("customer") == on_disk  # adopted, not replaced by its own fresh key


def _add_domain_unlocked(ring: Keyring, domain: str) -> None:
    """What the lock holder does inside its critical section."""
    ring._token_domains[domain] = _VersionedKeys.fresh("1")
    ring._write()
