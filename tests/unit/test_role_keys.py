"""Role-scoped encryption (format v3): who may open a field is decided by which role KEKs wrap its DEK.

Round trips per role, not_permitted for a role the field does not list (even when the process holds
that role's key too), a role list that cannot be altered, ciphertexts that cannot move, DEK renewal
with one KMS call per DEK per role, role keys in the keyring and their export, settings, commands
and compile errors.
"""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import cli
from gateway.core.codec.raw import decoded_for_json, load_schema_file
from gateway.core.decrypt import decrypt_record
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.plan import Plan, policy_roles
from gateway.core.sanitizer import RecordSanitizer
from gateway.errors import ConfigError, DecryptError, KeyringError, PolicyError
from gateway.keys import envelope
from gateway.keys.envelope import (
    FORMAT_ROLES,
    DekCache,
    FieldDecryptor,
    RoleWrap,
    context_bytes,
    encrypt_field,
    parse_ciphertext,
)
from gateway.keys.errors import KmsConfigError
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider, WrappedKey
from gateway.keys.providers import KmsRouter, build_kms
from gateway.keys.roles import parse_role_kms_keys
from gateway.keys.tokens import DomainTokenizer
from gateway.settings import GatewayConfig

CTX = context_bytes("orders.sanitized", "email", "tok_v1_subject")
EMAIL, CARD, NOTE, STREET = "canary.person@example.org", "4111111111111111", "call after 5pm", "1 Canary Row"


def _schema(**fields: Any) -> dict[str, Any]:
    """Email readable by support, card by fraud, the note by both, amount under the shared KEK (v1), the
    nested street by audit."""
    schema: dict[str, Any] = {
        "type": "record", "name": "Order", "namespace": "t.roles",
        "privacy": {"source_topic": "orders.raw", "sanitized_topic": "orders.sanitized", "subject": "uid"},
        "fields": [
            {"name": "uid", "type": "string", "privacy": {"tokenize": {"domain": "customer"}}},
            {"name": "email", "type": "string", "privacy": {"encrypt": {"roles": ["support"]}}},
            {"name": "card", "type": "string", "privacy": {"encrypt": {"roles": ["fraud"]}}},
            {"name": "note", "type": ["null", "string"], "default": None,
             "privacy": {"encrypt": {"roles": ["support", "fraud"]}}},
            {"name": "amount", "type": "long", "privacy": "encrypt"},
            {"name": "address", "privacy": "keep", "type": {"type": "record", "name": "Addr", "fields": [
                {"name": "street", "type": "string", "privacy": {"encrypt": {"roles": ["audit"]}}},
                {"name": "city", "type": "string", "privacy": "keep"}]}},
        ]}
    for name, privacy in fields.items():
        next(f for f in schema["fields"] if f["name"] == name)["privacy"] = privacy
    return schema


def _raw() -> dict[str, Any]:
    return {"uid": "user-1", "email": EMAIL, "card": CARD, "note": NOTE, "amount": 4200,
            "address": {"street": STREET, "city": "Paris"}}


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    path = tmp_path / "schemas" / "orders.avsc"
    path.parent.mkdir()
    path.write_text(json.dumps(_schema()))
    return compile_plan(load_schema_file(path))


def _sanitizer(plan: Plan, kms: Any, max_uses: int = 1000) -> RecordSanitizer:
    tokenizer = DomainTokenizer("customer", "1", b"\x01" * 32)
    return RecordSanitizer(plan, {"customer": tokenizer}, DekCache(kms, 3600, max_uses), max_field_bytes=1000)


def _outcomes(record: dict[str, Any], plan: Plan, decryptor: FieldDecryptor) -> tuple[dict[str, Any], dict[str, str]]:
    opened, report = decrypt_record(record, plan, decryptor)
    return opened, {path: outcome.split(":", 1)[0] for path, outcome in report.fields.items()}


# ---- round trips per role ---------------------------------------------------------------------------
def test_each_role_opens_its_fields_and_only_those(plan: Plan, keyring: Keyring, tmp_path: Path) -> None:
    record = _sanitizer(plan, keyring).sanitize(_raw()).record
    assert parse_ciphertext(record["note"]).roles == ("fraud", "support")
    assert parse_ciphertext(record["email"]).version == FORMAT_ROLES
    assert parse_ciphertext(record["amount"]).version == 1  # fields without roles as before
    keyring.export_role("support", tmp_path / "support.json")
    keyring.export_role("fraud", tmp_path / "fraud.json")

    support = FieldDecryptor(Keyring.open(tmp_path / "support.json", create=False), role="support")
    opened, outcomes = _outcomes(record, plan, support)
    assert outcomes == {"email": "decrypted", "card": "not_permitted", "note": "decrypted",
                        "amount": "key_not_held", "address.street": "not_permitted"}
    assert (opened["email"], opened["note"]) == (EMAIL, NOTE)
    assert opened["card"] == record["card"]  # stays ciphertext

    fraud = FieldDecryptor(Keyring.open(tmp_path / "fraud.json", create=False), role="fraud")
    opened, outcomes = _outcomes(record, plan, fraud)
    assert outcomes["card"] == "decrypted" and outcomes["note"] == "decrypted" and outcomes["email"] == "not_permitted"
    assert (opened["card"], opened["note"]) == (CARD, NOTE)


def test_a_role_the_field_does_not_list_is_not_permitted_even_holding_other_role_keys(
        plan: Plan, keyring: Keyring) -> None:
    record = _sanitizer(plan, keyring).sanitize(_raw()).record
    assert keyring.roles() == ["audit", "fraud", "support"]  # this process holds every role's key
    _, outcomes = _outcomes(record, plan, FieldDecryptor(keyring, role="support"))
    assert outcomes["card"] == "not_permitted" and outcomes["address.street"] == "not_permitted"
    assert outcomes["email"] == outcomes["note"] == outcomes["amount"] == "decrypted"
    _, report = decrypt_record(record, plan, FieldDecryptor(keyring, role="support"))
    assert "role 'support' may not open the field (readable by role(s) fraud)" in report.fields["card"]
    # a decryptor acting as no role opens no role-scoped field, whatever keys it holds
    _, outcomes = _outcomes(record, plan, FieldDecryptor(keyring))
    assert outcomes == {"email": "not_permitted", "card": "not_permitted", "note": "not_permitted",
                        "amount": "decrypted", "address.street": "not_permitted"}


def test_an_export_holds_the_role_key_and_nothing_else(keyring: Keyring, tmp_path: Path) -> None:
    keyring.ensure_token_domains({"customer"})
    keyring.ensure_roles({"support", "fraud"})
    out = tmp_path / "support.json"
    assert keyring.export_role("support", out) == 1
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    data = orjson.loads(out.read_bytes())
    assert set(data) == {"format", "role_export", "roles"} and set(data["roles"]) == {"support"}
    main = orjson.loads(keyring.path.read_bytes())
    for secret in (*main["kek"]["keys"].values(), *main["quarantine"]["keys"].values(),
                   *main["token_domains"]["customer"]["keys"].values(), *main["roles"]["fraud"]["keys"].values()):
        assert secret.encode() not in out.read_bytes()
    export = Keyring.open(out, create=False)
    assert "support" in repr(export) and data["roles"]["support"]["keys"].popitem()[1] not in repr(export)
    with pytest.raises(KeyringError, match="export of role 'support'"):
        export.wrap(b"k" * 32, b"c")
    with pytest.raises(KeyringError, match="export of role 'support'"):
        export.ensure_token_domains({"customer"})
    with pytest.raises(DecryptError) as excinfo:
        export.quarantine_key()
    assert excinfo.value.reason == "key_not_held"
    with pytest.raises(KeyringError, match="replace keyring"):
        keyring.export_role("support", keyring.path)
    with pytest.raises(KeyringError, match="no key for role 'billing'"):
        keyring.export_role("billing", tmp_path / "billing.json")


def test_rotating_a_role_key_keeps_old_fields_open_and_an_old_export_opens_only_old_ones(
        keyring: Keyring, tmp_path: Path) -> None:
    before = encrypt_field(DekCache(keyring, 60, 10).for_roles(("support",)).current(), b"old", CTX)
    keyring.export_role("support", tmp_path / "old.json")
    new_id = keyring.rotate_role("support")
    assert keyring.role_key_ids("support")[-1] == new_id and len(keyring.role_key_ids("support")) == 2
    after = encrypt_field(DekCache(keyring, 60, 10).for_roles(("support",)).current(), b"new", CTX)
    assert parse_ciphertext(after).role_wraps[0].kek_id == new_id
    full = FieldDecryptor(Keyring.open(keyring.path, create=False), role="support")
    assert full.decrypt(before, CTX) == b"old" and full.decrypt(after, CTX) == b"new"
    old_export = FieldDecryptor(Keyring.open(tmp_path / "old.json", create=False), role="support")
    assert old_export.decrypt(before, CTX) == b"old"
    with pytest.raises(DecryptError) as excinfo:
        old_export.decrypt(after, CTX)
    assert excinfo.value.reason == "key_not_held" and "new export" in excinfo.value.message
    keyring.export_role("support", tmp_path / "new.json")
    new_export = FieldDecryptor(Keyring.open(tmp_path / "new.json", create=False), role="support")
    assert new_export.decrypt(after, CTX) == b"new"


def test_a_role_whose_key_is_not_held_is_key_not_held(keyring: Keyring, tmp_path: Path) -> None:
    ciphertext = encrypt_field(DekCache(keyring, 60, 10).for_roles(("fraud", "support")).current(), b"v", CTX)
    keyring.export_role("support", tmp_path / "support.json")
    with pytest.raises(DecryptError) as excinfo:  # listed, but this keyring has no fraud key
        FieldDecryptor(Keyring.open(tmp_path / "support.json", create=False), role="fraud").decrypt(ciphertext, CTX)
    assert excinfo.value.reason == "key_not_held" and "gateway keys export --role fraud" in excinfo.value.message
    with pytest.raises(DecryptError) as excinfo:  # another keyring's support key is not this one's
        FieldDecryptor(Keyring.open(tmp_path / "other.json"), role="support").decrypt(ciphertext, CTX)
    assert excinfo.value.reason == "key_not_held"


# ---- the header cannot be altered, the ciphertext cannot move ------------------------------------------
def _rebuild(data: bytes, wraps: list[RoleWrap]) -> bytes:
    """A v3 ciphertext with its role entries replaced (the body, nonce and DEK id kept)."""
    parsed = parse_ciphertext(data)
    header = bytes([FORMAT_ROLES]) + parsed.dek_id + bytes([len(wraps)])
    for w in wraps:
        header += (bytes([len(w.role)]) + w.role.encode() + bytes([len(w.kek_id)]) + w.kek_id.encode()
                   + struct.pack(">H", len(w.wrapped)) + w.wrapped)
    return header + parsed.nonce + parsed.body


def _reason(decryptor: FieldDecryptor, data: bytes, context: bytes = CTX) -> str:
    with pytest.raises(DecryptError) as excinfo:
        decryptor.decrypt(data, context)
    assert b"secret" not in str(excinfo.value).encode()
    return excinfo.value.reason


def test_altering_the_role_list_fails_to_authenticate(keyring: Keyring) -> None:
    ciphertext = encrypt_field(DekCache(keyring, 60, 10).for_roles(("fraud", "support")).current(), b"secret", CTX)
    fraud, support = parse_ciphertext(ciphertext).role_wraps
    decryptor = FieldDecryptor(keyring, role="support")
    assert decryptor.decrypt(ciphertext, CTX) == b"secret"
    # dropping a role (to hide who can read it), adding or renaming one: the header is associated data
    assert _reason(FieldDecryptor(keyring, role="support"), _rebuild(ciphertext, [support])) == "tampered"
    extra = RoleWrap("zeta", support.kek_id, support.wrapped)
    assert _reason(FieldDecryptor(keyring, role="support"), _rebuild(ciphertext, [fraud, support, extra])) == "tampered"
    renamed = RoleWrap("audit", fraud.kek_id, fraud.wrapped)
    assert _reason(FieldDecryptor(keyring, role="support"), _rebuild(ciphertext, [renamed, support])) == "tampered"
    # relabelling fraud's wrap as support's: only support's key versions are tried, and the wrap is bound to its role
    relabelled = [RoleWrap("fraud", support.kek_id, support.wrapped), RoleWrap("support", fraud.kek_id, fraud.wrapped)]
    assert _reason(FieldDecryptor(keyring, role="support"), _rebuild(ciphertext, relabelled)) == "key_not_held"
    swapped = [fraud, RoleWrap("support", support.kek_id, fraud.wrapped)]
    assert _reason(FieldDecryptor(keyring, role="support"), _rebuild(ciphertext, swapped)) == "tampered"
    # every single header byte
    header_len = len(parse_ciphertext(ciphertext).header)
    for index in range(1, header_len):
        flipped = ciphertext[:index] + bytes([ciphertext[index] ^ 1]) + ciphertext[index + 1:]
        assert _reason(FieldDecryptor(keyring, role="support"), flipped) in {"tampered", "malformed", "key_not_held",
                                                                            "not_permitted"}


def test_unsorted_or_duplicate_roles_are_malformed(keyring: Keyring) -> None:
    ciphertext = encrypt_field(DekCache(keyring, 60, 10).for_roles(("fraud", "support")).current(), b"secret", CTX)
    fraud, support = parse_ciphertext(ciphertext).role_wraps
    for wraps in ([support, fraud], [support, support], []):
        assert _reason(FieldDecryptor(keyring, role="support"), _rebuild(ciphertext, wraps)) == "malformed"
    bad_name = RoleWrap("Support!", support.kek_id, support.wrapped)  # never echoed back as a role name
    assert _reason(FieldDecryptor(keyring, role="support"), _rebuild(ciphertext, [fraud, bad_name])) == "malformed"


def test_a_role_wrap_is_bound_to_its_role_when_roles_share_one_kms_key(keyring: Keyring) -> None:
    class OneKeyForEveryRole:  # a misconfiguration: every role mapped to the same KMS key
        name = "local"

        def role_wrapping_kms(self, role: str) -> KmsProvider:
            return keyring

        def role_unwrapping_kms(self, role: str) -> KmsProvider:
            return keyring

    kms: Any = OneKeyForEveryRole()
    ciphertext = encrypt_field(DekCache(kms, 60, 10).for_roles(("fraud", "support")).current(), b"secret", CTX)
    fraud, support = parse_ciphertext(ciphertext).role_wraps
    assert fraud.kek_id == support.kek_id and FieldDecryptor(kms, role="support").decrypt(ciphertext, CTX) == b"secret"
    swapped = [RoleWrap("fraud", fraud.kek_id, support.wrapped), RoleWrap("support", support.kek_id, fraud.wrapped)]
    assert _reason(FieldDecryptor(kms, role="support"), _rebuild(ciphertext, swapped)) == "tampered"


@pytest.mark.parametrize("moved", [context_bytes("other.sanitized", "email", "tok_v1_subject"),
                                   context_bytes("orders.sanitized", "note", "tok_v1_subject"),
                                   context_bytes("orders.sanitized", "email", "tok_v1_someone_else")],
                         ids=["topic", "field", "subject"])
def test_a_moved_ciphertext_fails_to_authenticate(keyring: Keyring, moved: bytes) -> None:
    ciphertext = encrypt_field(DekCache(keyring, 60, 10).for_roles(("support",)).current(), b"secret", CTX)
    assert _reason(FieldDecryptor(keyring, role="support"), ciphertext, moved) == "tampered"


def test_a_record_field_moved_to_another_field_is_tampered(plan: Plan, keyring: Keyring) -> None:
    record = _sanitizer(plan, keyring).sanitize(_raw()).record
    moved = dict(record, email=record["note"])  # both readable by support; the path is bound
    _, outcomes = _outcomes(moved, plan, FieldDecryptor(keyring, role="support"))
    assert outcomes["email"] == "tampered" and outcomes["note"] == "decrypted"


# ---- DEK renewal: the KMS once per DEK per role ---------------------------------------------------------
class _CountingRoles:
    """Role KMSs over the keyring that count their wraps per role."""

    name = "local"

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.wraps: dict[str, int] = {}

    def active_key_id(self) -> str:  # the shared KEK (format v1) is the keyring's
        return self.keyring.active_key_id()

    def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
        return self.keyring.wrap(dek, context)

    def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
        return self.keyring.unwrap(wrapped, context)

    def role_wrapping_kms(self, role: str) -> KmsProvider:
        inner, counts = self.keyring.role_wrapping_kms(role), self.wraps

        class Counting:
            name = "local"

            def active_key_id(self) -> str:
                return inner.active_key_id()

            def healthy(self) -> bool:
                return True

            def wrap(self, dek: bytes, context: bytes) -> WrappedKey:
                counts[role] = counts.get(role, 0) + 1
                return inner.wrap(dek, context)

            def unwrap(self, wrapped: WrappedKey, context: bytes) -> bytes:
                return inner.unwrap(wrapped, context)

        return Counting()

    def role_unwrapping_kms(self, role: str) -> KmsProvider:
        return self.keyring.role_unwrapping_kms(role)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_dek_renewal_calls_the_kms_once_per_dek_per_role(keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(envelope, "time", clock)
    kms: Any = _CountingRoles(keyring)
    cache = DekCache(kms, max_age_s=60, max_uses=3)
    roles = cache.for_roles(("support", "fraud"))
    assert cache.for_roles(("fraud", "support", "fraud")) is roles  # one cache per role set
    keys = []
    for i in range(7):  # 3 uses per DEK: DEKs for 1-3, 4-6, 7
        key = roles.current()
        keys.append(key)
        encrypt_field(key, b"v%d" % i, CTX)
    assert len({k.dek_id for k in keys}) == 3
    assert kms.wraps == {"fraud": 3, "support": 3} and roles.kms_calls == 6
    assert cache.kms_calls == 6  # the worker's metrics count role wraps too
    clock.now += 61  # too old: renewed, one more wrap per role
    renewed = roles.current()
    assert renewed.dek_id not in {k.dek_id for k in keys} and kms.wraps == {"fraud": 4, "support": 4}
    clock.now += 30
    assert roles.current() is renewed and kms.wraps == {"fraud": 4, "support": 4}


def test_the_sanitizer_calls_the_kms_per_dek_never_per_event(plan: Plan, keyring: Keyring) -> None:
    kms: Any = _CountingRoles(keyring)
    sanitizer = RecordSanitizer(plan, {"customer": DomainTokenizer("customer", "1", b"\x01" * 32)},
                                DekCache(kms, 3600, 1000), max_field_bytes=1000)
    results = [sanitizer.sanitize(_raw()) for _ in range(50)]
    # role sets {support}, {fraud}, {fraud, support}, {audit}: one DEK each, one wrap per role in the set
    assert kms.wraps == {"support": 2, "fraud": 2, "audit": 1}
    assert len({parse_ciphertext(r.record["email"]).dek_id for r in results}) == 1
    assert len({parse_ciphertext(r.record["note"]).header for r in results}) == 1
    assert len({parse_ciphertext(r.record["email"]).nonce for r in results}) == 50  # a fresh nonce per value
    assert len(results[0].other_key_ids or ()) == 4  # the audit names each role set's DEK


def test_data_key_and_wrap_reprs_hide_keys(keyring: Keyring) -> None:
    cache = DekCache(keyring, 60, 10).for_roles(("support",))
    key = cache.current()
    assert key.key_id == f"roles:support/{key.dek_id.hex()}"
    wrap = parse_ciphertext(encrypt_field(key, b"secret", CTX)).role_wraps[0]
    raw = orjson.loads(keyring.path.read_bytes())["roles"]["support"]["keys"].popitem()[1]
    for shown in (repr(key), repr(wrap), repr(cache), repr(keyring), repr(keyring.role_wrapping_kms("support"))):
        assert raw not in shown and wrap.wrapped.hex() not in shown


# ---- policy --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("privacy", "problem"), [
    ({"encrypt": {"roles": []}}, "roles must be a non-empty list"),
    ({"encrypt": {"roles": "support"}}, "roles must be a non-empty list"),
    ({"encrypt": {"roles": ["Support"]}}, "'Support': each role name must be 1 to 64 characters"),
    ({"encrypt": {"roles": ["x" * 65]}}, "each role name must be"),
    ({"encrypt": {"roles": [7]}}, "7: each role name must be"),
    ({"encrypt": {"roles": ["support", "support"]}}, "names a role twice"),
])
def test_bad_roles_fail_to_compile_naming_the_field(tmp_path: Path, privacy: dict[str, Any], problem: str) -> None:
    path = tmp_path / "orders.avsc"
    path.write_text(json.dumps(_schema(email=privacy)))
    with pytest.raises(PolicyError) as excinfo:
        compile_plan(load_schema_file(path))
    message = str(excinfo.value)
    assert "email" in message and problem in message, message


def test_the_plan_names_roles_in_actions_docs_and_policy_roles(plan: Plan) -> None:
    assert plan.field_actions["email"] == "encrypt:roles=support"
    assert plan.field_actions["note"] == "encrypt:roles=fraud,support"
    assert plan.field_actions["amount"] == "encrypt"
    docs = {f["name"]: f.get("doc", "") for f in plan.sanitized_schema["fields"]}
    assert "readable by role(s) fraud, support only" in docs["note"] and "format v3" in docs["note"]
    assert policy_roles([plan]) == {"support", "fraud", "audit"}  # nested records too


def test_a_purpose_view_may_scope_its_fields_to_roles(tmp_path: Path, keyring: Keyring) -> None:
    schema = _schema()
    schema["privacy"]["purposes"] = {"chargebacks": {
        "topic": "orders.chargebacks", "basis": "contract",
        "fields": {"uid": {"tokenize": {"domain": "customer"}}, "card": {"encrypt": {"roles": ["disputes"]}}}}}
    path = tmp_path / "orders.avsc"
    path.write_text(json.dumps(schema))
    view = compile_plan(load_schema_file(path)).purposes[0].plan
    assert policy_roles([compile_plan(load_schema_file(path))]) == {"support", "fraud", "audit", "disputes"}
    record = _sanitizer(view, keyring).sanitize(_raw()).record
    assert parse_ciphertext(record["card"]).roles == ("disputes",)
    opened, outcomes = _outcomes(record, view, FieldDecryptor(keyring, role="disputes"))
    assert outcomes == {"card": "decrypted"} and opened["card"] == CARD


# ---- settings and KMS routing ------------------------------------------------------------------------
def test_role_kms_keys_syntax_and_errors_name_the_setting() -> None:
    assert parse_role_kms_keys(" support=alias/gw-support, fraud=alias/gw-fraud ") == {
        "support": "alias/gw-support", "fraud": "alias/gw-fraud"}
    config = GatewayConfig(kms_provider="aws", role_kms_keys="support=alias/gw-support")
    assert config.role_kms_key_map() == {"support": "alias/gw-support"}  # a role's consumer: no main key
    for value, problem in (("support", "is not ROLE=KEY"), ("Support=k", "role 'Support' must be"),
                           ("a=k,a=j", "given twice"), ("a=", "is not ROLE=KEY")):
        with pytest.raises(ConfigError) as excinfo:
            GatewayConfig(kms_provider="aws", aws_kms_key_id="k", role_kms_keys=value)
        assert "setting 'role_kms_keys' (GATEWAY_ROLE_KMS_KEYS)" in str(excinfo.value) and problem in str(excinfo.value)
    with pytest.raises(ConfigError, match="kms_provider is local: local role keys live in the keyring"):
        GatewayConfig(role_kms_keys="support=k")
    with pytest.raises(ConfigError, match="setting 'aws_kms_key_id'"):
        GatewayConfig(kms_provider="aws")


def test_a_worker_needs_the_main_key_even_when_role_keys_are_set(tmp_path: Path) -> None:
    config = GatewayConfig(keyring=tmp_path / "k.json", kms_provider="vault", vault_addr="http://127.0.0.1:1",
                           vault_token="t", role_kms_keys="support=gw-support")  # noqa: S106 - not a real token
    with pytest.raises(KmsConfigError, match="setting 'vault_transit_key'.*only gateway decrypt --role"):
        build_kms(config, Keyring.open(config.keyring))


def test_a_remote_kms_without_a_key_for_the_role_fails_naming_role_kms_keys(keyring: Keyring) -> None:
    class Remote:
        name = "aws"

    router = KmsRouter(Remote(), {"local": keyring})  # type: ignore[arg-type]
    with pytest.raises(KmsConfigError) as excinfo:
        DekCache(router, 60, 10).for_roles(("support",))
    assert "role_kms_keys" in str(excinfo.value) and "support=KEY" in str(excinfo.value)
    assert keyring.roles() == []  # no silent fallback to a local role key


def test_the_local_router_makes_missing_role_keys_for_the_worker(keyring: Keyring) -> None:
    router = build_kms(GatewayConfig(keyring=keyring.path), keyring)
    ciphertext = encrypt_field(DekCache(router, 60, 10).for_roles(("support",)).current(), b"secret", CTX)
    assert Keyring.open(keyring.path, create=False).roles() == ["support"]
    assert FieldDecryptor(router, role="support").decrypt(ciphertext, CTX) == b"secret"


def test_a_keyring_with_role_keys_is_format_2_and_reloads_them(keyring: Keyring) -> None:
    assert orjson.loads(keyring.path.read_bytes())["format"] == 1
    other = Keyring.open(keyring.path, create=False)
    keyring.ensure_roles({"support"})
    assert orjson.loads(keyring.path.read_bytes())["format"] == 2  # older gateways refuse, never drop role keys
    other.ensure_token_domains({"customer"})  # another process writes: it keeps the role key on disk
    assert Keyring.open(keyring.path, create=False).roles() == ["support"]


# ---- commands -------------------------------------------------------------------------------------------
def _run(args: list[str], monkeypatch: pytest.MonkeyPatch, stdin: bytes = b"") -> int:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    return cli.main(args)


def test_keys_init_export_rotate_and_decrypt_as_a_role(plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    monkeypatch.delenv("GATEWAY_KMS_PROVIDER", raising=False)
    ring, schemas = tmp_path / "ring.json", tmp_path / "schemas"
    assert _run(["keys", "init", "--keyring", str(ring), "--schemas", str(schemas), "--role", "billing"],
                monkeypatch) == 0
    out = capsysbinary.readouterr().out.decode()
    assert "role keys audit, billing, fraud, support" in out  # the policies' roles and --role
    export = tmp_path / "support.json"
    assert _run(["keys", "export", "--keyring", str(ring), "--role", "support", "--out", str(export)],
                monkeypatch) == 0
    assert "role 'support' key, 1 version(s), and nothing else" in capsysbinary.readouterr().out.decode()
    assert _run(["keys", "rotate", "--keyring", str(ring), "--role", "billing"], monkeypatch) == 0
    assert "role 'billing' key rotated" in capsysbinary.readouterr().out.decode()

    record = _sanitizer(plan, Keyring.open(ring, create=False)).sanitize(_raw()).record
    line = orjson.dumps(decoded_for_json(record)) + b"\n"
    code = _run(["decrypt", "--keyring", str(export), "--schemas", str(schemas), "--topic", plan.sanitized_topic,
                 "--role", "support"], monkeypatch, line)
    captured = capsysbinary.readouterr()
    assert code == 1  # some fields are not this role's
    opened = orjson.loads(captured.out)
    assert opened["email"] == EMAIL and opened["note"] == NOTE and opened["card"] != CARD
    errors = captured.err.decode()
    assert "field 'card': not_permitted" in errors and "field 'amount': key_not_held" in errors
    for canary in (EMAIL, CARD, NOTE, STREET):
        assert canary not in errors


def test_role_arguments_are_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["decrypt", "--role", "Not A Role"])
    assert "is not a role name" in capsys.readouterr().err


def test_export_refuses_a_remote_kms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in (("TOKEN", "t"), ("ADDR", "http://127.0.0.1:1"), ("TRANSIT_KEY", "gw")):
        monkeypatch.setenv(f"GATEWAY_VAULT_{name}", value)
    code = cli.main(["keys", "export", "--keyring", str(tmp_path / "k.json"), "--role", "support", "--out",
                     str(tmp_path / "o.json"), "--kms-provider", "vault"])
    assert code == 2
    assert "grant the role's consumers decrypt on their key" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.json")
