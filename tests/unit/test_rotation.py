"""KEK and token-key rotation with the local keyring, and the `gateway keys rotate/retire` commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import tokenizers
from gateway.cli import main
from gateway.core.decrypt import decrypt_record
from gateway.core.pipeline import Pipeline
from gateway.core.policy.plan import Plan
from gateway.embedded.samples import SampleEvents
from gateway.errors import DecryptError, KeyringError
from gateway.keys.envelope import DekCache, FieldDecryptor, encrypt_field, parse_ciphertext
from gateway.keys.keyring import Keyring
from gateway.settings import GatewayConfig

CTX = b"ctx"


def test_ciphertexts_before_and_after_rotation_and_a_dek_refresh_all_decrypt(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    worker_ring = Keyring.open(path)  # what a running worker holds
    cache = DekCache(worker_ring, max_age_s=3600, max_uses=3)
    first_kek = worker_ring.active_key_id()
    before = [encrypt_field(cache.current(), b"before-%d" % i, CTX) for i in range(2)]
    new_kek = Keyring.open(path, create=False).rotate_kek()  # `gateway keys rotate` in another process
    same_dek = encrypt_field(cache.current(), b"same-dek", CTX)  # the DEK in use is not renewed by rotation
    refreshed = [encrypt_field(cache.current(), b"after-%d" % i, CTX) for i in range(2)]  # a new DEK
    assert new_kek != first_kek
    assert {parse_ciphertext(c).kek_id for c in before} == {first_kek}
    assert parse_ciphertext(same_dek).kek_id == first_kek  # the DEK in use lives on until its age or uses end
    assert {parse_ciphertext(c).kek_id for c in refreshed} == {new_kek}
    assert len({parse_ciphertext(c).dek_id for c in [*before, same_dek, *refreshed]}) == 2
    for reader in (worker_ring, Keyring.open(path, create=False)):
        decryptor = FieldDecryptor(reader)
        assert [decryptor.decrypt(c, CTX) for c in before] == [b"before-0", b"before-1"]
        assert decryptor.decrypt(same_dek, CTX) == b"same-dek"
        assert [decryptor.decrypt(c, CTX) for c in refreshed] == [b"after-0", b"after-1"]


def test_a_decryptor_loaded_before_a_rotation_opens_the_new_kek(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    reader = Keyring.open(path)
    writer = Keyring.open(path, create=False)
    writer.rotate_kek()
    ciphertext = encrypt_field(DekCache(writer, 60, 10).current(), b"new", CTX)
    assert FieldDecryptor(reader).decrypt(ciphertext, CTX) == b"new"


def test_rotations_keep_every_version_and_concurrent_rotations_both_land(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    one, two = Keyring.open(path), Keyring.open(path, create=False)
    a, b = one.rotate_kek(), two.rotate_kek()  # `two` rotates on top of `one`'s change, under the lock
    final = Keyring.open(path, create=False)
    assert final.active_key_id() == b and a in final.kek_ids() and len(final.kek_ids()) == 3


def test_retiring_a_kek_makes_its_ciphertexts_unreadable_and_the_active_one_cannot_be_retired(
        tmp_path: Path) -> None:
    ring = Keyring.open(tmp_path / "k.json")
    old = ring.active_key_id()
    ciphertext = encrypt_field(DekCache(ring, 60, 10).current(), b"x", CTX)
    with pytest.raises(KeyringError, match="is the active one"):
        ring.retire_kek(old)
    ring.rotate_kek()
    ring.retire_kek(old)
    with pytest.raises(DecryptError) as excinfo:
        FieldDecryptor(Keyring.open(ring.path, create=False)).decrypt(ciphertext, CTX)
    assert excinfo.value.reason == "key_not_held"


def test_token_rotation_new_tokens_carry_the_new_version_old_ones_still_join(
        payments_plan: Plan, tmp_path: Path) -> None:
    config = GatewayConfig(keyring=tmp_path / "k.json", instance_id="t")
    ring = Keyring.open(config.keyring)
    before = Pipeline([payments_plan], ring, config, 1, tokenizers(ring, [payments_plan]))
    record = SampleEvents(seed=9).payment()
    old = before.stages[payments_plan.source_topic].sanitizer.sanitize(record).record
    assert Keyring.open(config.keyring, create=False).rotate_token_domain("customer") == "2"
    restarted = Keyring.open(config.keyring, create=False)
    after = Pipeline([payments_plan], restarted, config, 1, tokenizers(restarted, [payments_plan]))  # restarted worker
    new = after.stages[payments_plan.source_topic].sanitizer.sanitize(record).record
    assert old["user_id"].startswith("tok_v1_") and new["user_id"].startswith("tok_v2_")
    assert old["user_id"][7:] != new["user_id"][7:]  # unlinkable without the key holder
    # the key holder can still recompute v1 tokens (both versions stay in the keyring)
    version, keys = Keyring.open(config.keyring, create=False).token_keys("customer")
    assert version == "2" and set(keys) == {"1", "2"}
    from gateway.keys.tokens import DomainTokenizer

    assert DomainTokenizer("customer", "1", keys["1"]).token(record["user_id"]) == old["user_id"]
    # ciphertexts of both runs decrypt (the subject token is part of their associated data)
    for sanitized in (old, new):
        _, report = decrypt_record(sanitized, payments_plan, FieldDecryptor(Keyring.open(config.keyring)))
        assert report.ok, report.fields


def test_keys_rotate_command(tmp_path: Path, schemas_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keyring = tmp_path / "k.json"
    assert main(["keys", "init", "--keyring", str(keyring), "--schemas", str(schemas_dir)]) == 0
    first = Keyring.open(keyring, create=False).active_key_id()
    assert main(["keys", "rotate", "--keyring", str(keyring)]) == 0
    out = capsys.readouterr().out
    second = Keyring.open(keyring, create=False).active_key_id()
    assert second != first and f"{first} -> {second}" in out
    assert main(["keys", "rotate", "--keyring", str(keyring), "--token-domain", "customer"]) == 0
    assert "tok_v2_" in capsys.readouterr().out
    assert main(["keys", "rotate", "--keyring", str(keyring), "--token-domain", "nope"]) == 2
    assert "token domain 'nope'" in capsys.readouterr().err
    assert main(["keys", "retire", first, "--keyring", str(keyring)]) == 2  # needs --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["keys", "retire", first, "--keyring", str(keyring), "--yes"]) == 0
    assert Keyring.open(keyring, create=False).kek_ids() == [second]
