# ruff: noqa: F811 - the session fixtures imported from conftest_kms are parameters here
"""Role-scoped decryption on the real broker: the payments policy with the email readable by
`support` and the card number by `fraud` (format v3), a sanitize worker, and consumers that hold
one role's key: a keyring exported for `support` (local keyring), AWS KMS keys per role (moto's
server) and Vault transit keys per role with a token whose policy allows decrypt on one key
(OpenBao). No plaintext canary reaches a sanitized topic, a log or an error message."""

from __future__ import annotations

import base64
import subprocess
import sys
from typing import Any

import orjson
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.core.codec.raw import decoded_for_json
from gateway.core.codec.sanitized import SanitizedDecoder
from gateway.core.policy.lint import load_plans
from gateway.embedded.demo import encode_raw
from gateway.embedded.samples import CANARIES, SampleEvents
from gateway.integrations.common import SanitizedReader
from gateway.keys.envelope import parse_ciphertext, role_wrap_context

from .conftest import _STARTED, ENV, REPO, Deployment, WorkerProcess, cli
from .conftest_kms import AWS_ENV, MotoKms, OpenBao, moto_kms, openbao  # noqa: F401

pytestmark = pytest.mark.integration
N = 8
CANARY_FORMS = [form for value in (CANARIES["email"], CANARIES["card"])
                for form in (value.encode(), base64.b64encode(value.encode()))]


def _role_policy(d: Deployment) -> None:
    """The deployment's payments policy, with email and card each readable by one role."""
    path = d.schemas / "payments.avsc"
    schema = orjson.loads(path.read_bytes())
    for f in schema["fields"]:
        if f["name"] == "email":
            f["privacy"] = {"encrypt": {"roles": ["support"]}}
        elif f["name"] == "card_number":
            f["privacy"] = {"encrypt": {"roles": ["fraud"]}}
    path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2))
    d.plans = {p.name.rsplit(".", 1)[-1]: p for p in load_plans(d.schemas)}


def _start(d: Deployment, instance: str, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
           ) -> WorkerProcess:
    log_path = d.root / f"worker-{instance}.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - closed by WorkerProcess.stop
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas),
         "--keyring", str(d.keyring), "--audit-topic", d.audit_topic, "--group-id", d.group_id,
         "--instance-id", instance, "--partitions", "1", "--session-timeout-ms", "6000", *extra],
        stdout=handle, stderr=subprocess.STDOUT, env=env or ENV, cwd=REPO)
    _STARTED.append(proc)
    worker = WorkerProcess(proc, log_path, handle)
    worker.wait_for_log('"msg":"partitions assigned"')
    return worker


def _sanitize(d: Deployment, worker: WorkerProcess) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bytes]:
    """Produce N payments (the first with the canaries) through the worker; (raw, sanitized, topic bytes)."""
    samples = SampleEvents(seed=17)
    payments = [samples.payment(canary=(i == 0)) for i in range(N)]
    try:
        d.produce(d.payments.source_topic, [encode_raw(d.payments, p, "avro") for p in payments])
        d.wait_for_audit(N)
    finally:
        assert worker.stop() == 0
    records = d.read(d.payments.sanitized_topic)
    assert len(records) == N
    decoder = SanitizedDecoder(list(d.plans.values()))
    sanitized = [decoder.decode(r)[1] for r in records]
    topic_bytes = b"".join((r.value or b"") + (r.key or b"") for r in records)
    return payments, sanitized, topic_bytes


def _lines(sanitized: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(decoded_for_json(s)) + b"\n" for s in sanitized)


def _decrypt(d: Deployment, lines: bytes, *args: str, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "gateway", "decrypt", "--schemas", str(d.schemas), "--topic",
                           d.payments.sanitized_topic, *args], input=lines, capture_output=True, timeout=120,
                          env=env or ENV, cwd=REPO)


def _outcomes(result: subprocess.CompletedProcess[bytes]) -> dict[str, set[str]]:
    """field -> the reasons `gateway decrypt` reported on stderr for it."""
    found: dict[str, set[str]] = {}
    for line in result.stderr.decode().splitlines():
        if ": field '" in line:
            field = line.split(": field '", 1)[1].split("'", 1)[0]
            found.setdefault(field, set()).add(line.split("': ", 1)[1].split(":", 1)[0])
    return found


def _no_canary(*haystacks: bytes) -> None:
    for haystack in haystacks:
        for form in CANARY_FORMS:
            assert form not in haystack


def _opened_emails(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return sorted(orjson.loads(line)["email"] for line in result.stdout.splitlines())


# ---- local keyring: a keyring exported for one role ------------------------------------------------------
def test_a_keyring_exported_for_support_opens_the_email_and_not_the_card(fresh_deployment: Deployment) -> None:
    d = fresh_deployment
    _role_policy(d)
    init = cli("keys", "init", "--keyring", str(d.keyring), "--schemas", str(d.schemas))
    assert init.returncode == 0 and b"role keys fraud, support" in init.stdout, init.stderr
    consumer = d.root / "support-keyring.json"
    export = cli("keys", "export", "--keyring", str(d.keyring), "--role", "support", "--out", str(consumer))
    assert export.returncode == 0, export.stderr
    worker = _start(d, "roles-local")
    payments, sanitized, topic_bytes = _sanitize(d, worker)
    assert {parse_ciphertext(s["email"]).roles for s in sanitized} == {("support",)}
    assert {parse_ciphertext(s["card_number"]).roles for s in sanitized} == {("fraud",)}

    lines = _lines(sanitized)
    support = _decrypt(d, lines, "--keyring", str(consumer), "--role", "support")
    assert support.returncode == 1  # the card (and the fields under the main KEK) stay closed
    assert _opened_emails(support) == sorted(p["email"] for p in payments)
    outcomes = _outcomes(support)
    assert outcomes["card_number"] == {"not_permitted"} and "email" not in outcomes
    assert outcomes["customer_name"] == {"key_not_held"}  # format v1: the export holds no KEK
    cards = {orjson.loads(line)["card_number"] for line in support.stdout.splitlines()}
    assert not cards & {p["card_number"] for p in payments}
    # the same keyring as fraud: listed, but the key is not in it
    fraud = _decrypt(d, lines, "--keyring", str(consumer), "--role", "fraud")
    assert _outcomes(fraud)["card_number"] == {"key_not_held"}
    # the key holder's keyring as fraud opens the card, and still not the email
    holder = _decrypt(d, lines, "--keyring", str(d.keyring), "--role", "fraud")
    assert sorted(orjson.loads(line)["card_number"] for line in holder.stdout.splitlines()) == sorted(
        p["card_number"] for p in payments)
    assert _outcomes(holder) == {"email": {"not_permitted"}}

    # not our code deciding: the export's key bytes do not unwrap the card's data key
    support_key = next(iter(orjson.loads(consumer.read_bytes())["roles"]["support"]["keys"].values()))
    card_wrap = parse_ciphertext(sanitized[0]["card_number"]).role_wraps[0]
    with pytest.raises(InvalidTag):
        AESGCM(base64.b64decode(support_key)).decrypt(card_wrap.wrapped[:12], card_wrap.wrapped[12:], None)

    # the Python API: SanitizedReader with the exported keyring and the role
    reader = SanitizedReader(d.schemas, consumer, role="support")
    record = d.read(d.payments.sanitized_topic)[0]
    decoded = reader.decode(record.topic, record.value, record.headers)
    assert decoded.reason("email") == "decrypted" and decoded.reason("card_number") == "not_permitted"

    _no_canary(topic_bytes, worker.log().encode(), support.stderr, fraud.stderr, holder.stderr, init.stdout,
               export.stdout)
    assert CANARIES["card"].encode() not in support.stdout


# ---- AWS KMS (moto's server): one key per role ----------------------------------------------------------------
def test_aws_keys_per_role(fresh_deployment: Deployment, moto_kms: MotoKms) -> None:
    d = fresh_deployment
    _role_policy(d)
    client = moto_kms.client()
    arns, aliases = {}, {}
    for role in ("support", "fraud"):
        meta = client.create_key(Description=f"privacy-gateway role {role}")["KeyMetadata"]
        aliases[role] = f"alias/gw-{role}-{d.suffix}"
        client.create_alias(AliasName=aliases[role], TargetKeyId=meta["KeyId"])
        arns[role] = meta["Arn"]
    env = {**ENV, **AWS_ENV}
    aws = ("--kms-provider", "aws", "--aws-endpoint-url", moto_kms.endpoint, "--aws-region", "us-east-1")
    role_keys = f"support={aliases['support']},fraud={aliases['fraud']}"
    worker = _start(d, "roles-aws", (*aws, "--aws-kms-key-id", moto_kms.alias, "--role-kms-keys", role_keys), env)
    payments, sanitized, topic_bytes = _sanitize(d, worker)
    # each role's wrap names that role's own key (aliases resolved to ARNs): IAM on the key decides
    assert {parse_ciphertext(s["email"]).role_wraps[0].kek_id for s in sanitized} == {f"aws:{arns['support']}"}
    assert {parse_ciphertext(s["card_number"]).role_wraps[0].kek_id for s in sanitized} == {f"aws:{arns['fraud']}"}

    # the support consumer: its role's key only, no main key, no keyring, no probe (kms:Decrypt is enough)
    lines = _lines(sanitized)
    support = _decrypt(d, lines, *aws, "--role-kms-keys", f"support={aliases['support']}", "--role", "support",
                       "--keyring", str(d.root / "absent.json"), env=env)
    assert _opened_emails(support) == sorted(p["email"] for p in payments)
    assert _outcomes(support)["card_number"] == {"not_permitted"}
    # the support key does not unwrap the card's data key, whoever asks the KMS (with the right context)
    from botocore.exceptions import ClientError

    card = parse_ciphertext(sanitized[0]["card_number"])
    context = base64.b64encode(role_wrap_context("fraud", card.dek_id)).decode()
    with pytest.raises(ClientError) as excinfo:
        client.decrypt(CiphertextBlob=card.role_wraps[0].wrapped, KeyId=arns["support"],
                       EncryptionContext={"privacy-gateway": context})
    assert excinfo.value.response["Error"]["Code"] in {"AccessDeniedException", "IncorrectKeyException",
                                                       "InvalidCiphertextException"}
    fraud = _decrypt(d, lines, *aws, "--role-kms-keys", f"fraud={aliases['fraud']}", "--role", "fraud",
                     "--keyring", str(d.root / "absent.json"), env=env)
    assert sorted(orjson.loads(line)["card_number"] for line in fraud.stdout.splitlines()) == sorted(
        p["card_number"] for p in payments)
    assert _outcomes(fraud).get("email") == {"not_permitted"}
    # a worker whose role_kms_keys lacks a role the policy names does not start, naming the setting
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--bootstrap", d.bootstrap, "--schemas", str(d.schemas),
         "--keyring", str(d.keyring), *aws, "--aws-kms-key-id", moto_kms.alias, "--role-kms-keys",
         f"support={aliases['support']}"], capture_output=True, timeout=120, env=env, cwd=REPO)
    assert bad.returncode == 2 and b"role_kms_keys" in bad.stderr and b"'fraud'" in bad.stderr, bad.stderr
    _no_canary(topic_bytes, worker.log().encode(), support.stderr, fraud.stderr, bad.stderr)


# ---- Vault / OpenBao: a transit key per role, a token allowed to decrypt with one -----------------------------
def test_vault_token_allowed_one_role_key_opens_only_that_role(fresh_deployment: Deployment,
                                                               openbao: OpenBao) -> None:
    d = fresh_deployment
    _role_policy(d)
    client = openbao.client()
    keys = {role: f"gw-{role}-{d.suffix}" for role in ("support", "fraud")}
    for key in keys.values():
        client.secrets.transit.create_key(name=key, key_type="aes256-gcm96", mount_point=openbao.mount)
    policy = f'path "{openbao.mount}/decrypt/{keys["support"]}" {{ capabilities = ["update"] }}'
    client.sys.create_or_update_policy(name=f"support-{d.suffix}", policy=policy)
    support_token = client.auth.token.create(policies=[f"support-{d.suffix}"], ttl="1h")["auth"]["client_token"]
    vault = ("--kms-provider", "vault", "--vault-addr", openbao.addr)
    role_keys = f"support={keys['support']},fraud={keys['fraud']}"
    worker = _start(d, "roles-vault", (*vault, "--vault-transit-key", openbao.key, "--role-kms-keys", role_keys),
                    {**ENV, "GATEWAY_VAULT_TOKEN": openbao.token})
    payments, sanitized, topic_bytes = _sanitize(d, worker)
    assert {parse_ciphertext(s["card_number"]).role_wraps[0].kek_id for s in sanitized} == {
        f"vault:{openbao.mount}/{keys['fraud']}"}

    lines = _lines(sanitized)
    env = {**ENV, "GATEWAY_VAULT_TOKEN": support_token}
    support = _decrypt(d, lines, *vault, "--role-kms-keys", f"support={keys['support']}", "--role", "support",
                       "--keyring", str(d.root / "absent.json"), env=env)
    assert _opened_emails(support) == sorted(p["email"] for p in payments)
    outcomes = _outcomes(support)
    assert outcomes["card_number"] == {"not_permitted"}
    assert outcomes["customer_name"] == {"not_permitted"}  # the main transit key: its policy does not allow it
    # the same token claiming to be fraud: the header lists fraud, Vault refuses the decrypt
    claimed = _decrypt(d, lines, *vault, "--role-kms-keys", f"fraud={keys['fraud']}", "--role", "fraud",
                       "--keyring", str(d.root / "absent.json"), env=env)
    assert _outcomes(claimed)["card_number"] == {"not_permitted"}
    assert b"Vault refused to unwrap" in claimed.stderr
    assert not {orjson.loads(line)["card_number"] for line in claimed.stdout.splitlines()} & {
        p["card_number"] for p in payments}
    for output in (support.stdout, support.stderr, claimed.stdout, claimed.stderr, worker.log().encode()):
        assert support_token.encode() not in output and openbao.token.encode() not in output
    _no_canary(topic_bytes, worker.log().encode(), support.stderr, claimed.stderr, claimed.stdout)
