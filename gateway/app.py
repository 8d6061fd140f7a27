"""Wiring only: settings -> KMS, tokenizers, pipeline and workers. The one place outside the provider
registry (`gateway.keys.providers`) that builds a KMS, and the one place that builds the pipeline's
token-domain tokenizers from the keyring; the commands call these builders and the core and the jobs
receive what they build (`Pipeline(tokenizers, kms=...)`, `Worker(kms=..., tokenizers=...)`).

The KMS is decided once, here, at start-up, from the typed `KmsSettings` (gateway.settings): a
wrong or unreachable one fails before any Kafka client exists, naming the setting.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.core.pipeline import Pipeline
from gateway.core.policy.cases import load_case_files
from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan, policy_roles
from gateway.core.policy.runner import Bench, PolicyTestReport, Sampler, run_policy_tests
from gateway.keys import providers
from gateway.keys.envelope import FieldDecryptor
from gateway.keys.keyring import Keyring
from gateway.keys.kms import KmsProvider
from gateway.keys.providers.router import KmsRouter
from gateway.keys.subject_keys import SubjectKeys
from gateway.keys.tokens import DomainTokenizer
from gateway.runtime.jobs.aggregate import AggregateWorker, audit_keys_for
from gateway.runtime.jobs.sanitize import Worker
from gateway.settings import GatewayConfig


def build_kms(config: GatewayConfig, keyring: Keyring | None) -> KmsRouter:
    """The gateway's KMS: the configured provider, checked now, plus the keyring for unwrapping."""
    return providers.build_kms(config, keyring)


def optional_keyring(config: GatewayConfig) -> Keyring | None:
    """The keyring where one is needed or present: always with the local KMS (it is the KMS), else only
    when the file exists (it opens ciphertexts made before a move to AWS or Vault)."""
    if config.kms_settings().local or config.keyring.exists():
        return Keyring.open(config.keyring, create=False)
    return None


def decrypt_kms(config: GatewayConfig, keyring: Keyring | None, role: str | None) -> KmsRouter:
    """`gateway decrypt`'s KMS: as a role, that role's key only, unwrap only (its consumer may not wrap)."""
    return providers.build_role_decrypt_kms(config, keyring, role) if role else build_kms(config, keyring)


def remote_kek(config: GatewayConfig) -> Any:
    """The configured AWS or Vault key itself (checked, undecorated): what `gateway keys rotate` rotates."""
    return providers.remote_provider(config)


def remote_role_key(config: GatewayConfig, role: str) -> Any:
    """`role`'s AWS or Vault key (checked, undecorated): what `gateway keys rotate --role R` rotates."""
    return providers.remote_role_provider(config, role)


def subject_keys(config: GatewayConfig, keyring: Keyring | None) -> SubjectKeys:
    """Empty per-subject keys over the configured KMS (the commands fill them from the key topic)."""
    return SubjectKeys(build_kms(config, keyring))


def tokenizers(keyring: Keyring, plans: Sequence[Plan]) -> Mapping[str, DomainTokenizer]:
    """Each token domain the plans (and their purposes' views) use -> its tokenizer under the domain's
    active key; keys a domain lacks are made now (and persisted). The pipeline receives these."""
    views = [purpose.plan for p in plans for purpose in p.purposes]  # each purpose's view is a plan too
    domains = {d for p in (*plans, *views) for d in p.token_domains}
    keyring.ensure_token_domains(domains)
    built: dict[str, DomainTokenizer] = {}
    for domain in sorted(domains):
        version, keys = keyring.token_keys(domain)
        built[domain] = DomainTokenizer(domain, version, keys[version])
    return built


def build_pipeline(plans: Sequence[Plan], keyring: Keyring, config: GatewayConfig, audit_partitions: int,
                   kms: KmsProvider | None = None, subject_keys: SubjectKeys | None = None) -> Pipeline:
    """A sanitize pipeline with its KMS: the one given, else the configured one (checked now)."""
    return Pipeline(plans, keyring, config, audit_partitions, tokenizers(keyring, plans),
                    kms=kms if kms is not None else build_kms(config, keyring), subject_keys=subject_keys)


def worker_keys(config: GatewayConfig) -> tuple[Keyring, KmsRouter]:
    """The sanitize worker's keys: the keyring (made on first run) and the KMS, checked before Kafka."""
    keyring = Keyring.open(config.keyring, create=True)
    return keyring, build_kms(config, keyring)


def worker(config: GatewayConfig, plans: Sequence[Plan], keyring: Keyring, kms: KmsProvider) -> Worker:
    """The sanitize worker, given its keyring, KMS and tokenizers."""
    return Worker(config, plans, keyring, kms=kms, tokenizers=tokenizers(keyring, plans))


def aggregate_worker(config: GatewayConfig, plans: Sequence[Plan]) -> AggregateWorker:
    """The DP aggregate worker (its plans checked first), given the audit keys it MACs its records with:
    the only keys it holds (gateway keys export --audit)."""
    job = AggregateWorker(config, plans)
    job.audit_keys = audit_keys_for(config)
    return job


def policy_bench(plans: Sequence[Plan], workdir: Path) -> Bench:
    """`gateway policy test`'s bench: the pipeline wired as the sanitize worker's (tokenizers, KMS, subject
    keys), over a throwaway local keyring in `workdir`, and decryptors for what it encrypts (the keyring's,
    then each role's a policy names)."""
    config = GatewayConfig(keyring=workdir / "keyring.json", instance_id="policy-test")
    keyring = Keyring.open(config.keyring, create=True)
    kms = build_kms(config, keyring)
    keys = SubjectKeys(kms)
    pipeline = build_pipeline(plans, keyring, config, audit_partitions=1, kms=kms, subject_keys=keys)
    decryptors = [FieldDecryptor(kms, subject_keys=keys),
                  *(FieldDecryptor(kms, subject_keys=keys, role=role) for role in sorted(policy_roles(plans)))]
    return Bench(pipeline, tuple(decryptors))


def policy_tests(directory: Path, fuzz: int, sampler: Sampler, seed: int,
                 progress: Callable[[str], None] | None = None) -> PolicyTestReport:
    """`gateway policy test DIR`: the policies of DIR (linted and compiled as at start-up), the cases beside
    them and, with `fuzz`, that many events per schema from `sampler` (the sample generator, which the
    command gives: the workers never load Faker), on a bench in a temporary directory. Raises GatewayError
    (exit 2) for a policy or case file that cannot run."""
    plans = load_plans(directory)
    files = load_case_files(plans)
    with tempfile.TemporaryDirectory(prefix="gateway-policy-test-") as tmp:
        return run_policy_tests(policy_bench(plans, Path(tmp)), plans, files, fuzz, sampler, seed, progress)
