"""The layering the design promises (docs/architecture.md): imports point down, with no cycle even behind
`TYPE_CHECKING` or inside a function; the pure packages (core, keys, dp, consent) reach neither Kafka nor the
runtime nor the commands; only the commands parse arguments; only runtime/clients.py builds a Kafka client. Each
check reads every module's syntax tree, so a new module is checked without being listed."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "gateway"
PURE = ("core", "keys", "dp", "consent")
FORBIDDEN_IN_PURE = ("confluent_kafka", "gateway.runtime", "gateway.cli")
KAFKA_CLIENTS = {"Producer", "Consumer", "AdminClient", "SerializingProducer", "DeserializingConsumer"}
CLIENTS_MODULE = Path("runtime", "clients.py")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for tree in ("gateway", "benchmarks"):
        for path in sorted((REPO / tree).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _imported(path: Path) -> Iterator[tuple[str, str | None]]:
    """(module, name) for every import anywhere in the file: module level, in functions, under TYPE_CHECKING."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = _module_name(path).split(".")
                package = base if path.name == "__init__.py" else base[:-1]
                package = package[: len(package) - node.level + 1]
                module = ".".join([*package, node.module] if node.module else package)
            else:
                module = node.module or ""
            for alias in node.names:
                yield module, alias.name


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for module, imported in _imported(path):
            if imported is not None and f"{module}.{imported}" in modules:
                edges.add(f"{module}.{imported}")  # `from gateway.runtime import clients`: the submodule
            elif module in modules:
                edges.add(module)
        edges.discard(name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter
                    counter += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _gateway_files() -> list[Path]:
    files = sorted(ROOT.rglob("*.py"))
    assert len(files) > 100
    return files


def test_the_cycle_finder_finds_a_cycle_behind_type_checking_or_in_a_function() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_at_all() -> None:
    """Counting imports under TYPE_CHECKING and inside functions: when two modules need each other's types,
    the types move down."""
    graph = _import_graph()
    assert len(graph) > 100
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_pure_packages_reach_neither_kafka_nor_the_runtime_nor_the_commands() -> None:
    offenders = []
    checked = 0
    for package in PURE:
        for path in sorted((ROOT / package).rglob("*.py")):
            checked += 1
            for module, imported in _imported(path):
                full = f"{module}.{imported}" if imported else module
                if any(full == f or full.startswith(f + ".") for f in FORBIDDEN_IN_PURE):
                    offenders.append(f"{path.relative_to(ROOT)}: {full}")
    assert checked > 60
    assert not offenders, f"pure packages import Kafka, the runtime or the commands: {offenders}"


def test_keys_dp_and_consent_do_not_import_the_core() -> None:
    """The core may use keys, DP and consent; they never use it: a type both need lives below them."""
    offenders = []
    for package in ("keys", "dp", "consent"):
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += [f"{path.relative_to(ROOT)}: {m}" for m, _ in _imported(path)
                          if m == "gateway.core" or m.startswith("gateway.core.")]
    assert not offenders, f"keys, dp or consent import the core: {offenders}"


def test_the_report_package_reaches_no_kafka_client() -> None:
    for path in sorted((ROOT / "report").rglob("*.py")):
        bad = {m for m, _ in _imported(path) if m.startswith(("confluent_kafka", "gateway.runtime", "gateway.cli"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_commands_parse_arguments() -> None:
    offenders = [str(path.relative_to(ROOT)) for path in _gateway_files()
                 if path.relative_to(ROOT).parts[0] != "cli"
                 and any(m == "argparse" or m.startswith("argparse.") for m, _ in _imported(path))]
    assert not offenders, f"argparse imported outside gateway/cli: {offenders}"


def test_only_runtime_clients_builds_a_kafka_client() -> None:
    """Every Producer, Consumer and AdminClient comes from runtime/clients.py, where the security settings,
    error callbacks and logging are applied once."""
    offenders = []
    for path in _gateway_files():
        if path.relative_to(ROOT) == CLIENTS_MODULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name in KAFKA_CLIENTS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...)")
    assert not offenders, f"Kafka clients built outside gateway/runtime/clients.py: {offenders}"


def test_only_the_runtime_layer_imports_a_kafka_client() -> None:
    """confluent_kafka is imported in gateway/runtime/ and gateway/embedded/ (the broker and the demo) only."""
    outside = [p for p in _gateway_files() if p.relative_to(ROOT).parts[0] not in ("runtime", "embedded")]
    assert len(outside) > 100
    offenders = [str(p.relative_to(ROOT)) for p in outside
                 if any(m == "confluent_kafka" or m.startswith("confluent_kafka.") for m, _ in _imported(p))]
    assert not offenders, f"Kafka client imported outside gateway/runtime and gateway/embedded: {offenders}"


KMS_BUILDERS = {"AwsKms", "VaultTransitKms", "KmsRouter", "ResilientKms", "InstrumentedKms"}
KMS_WIRING = (Path("app.py"),)
PROVIDERS = Path("keys", "providers")
# what the core and the jobs may take from the registry: the keyring as the KMS when none is given
KEYRING_KMS = ("gateway.keys.providers.local", "keyring_kms")


def test_only_app_and_the_provider_registry_build_a_kms() -> None:
    """A KMS client is built in gateway/keys/providers/ (the registry) and reached through gateway/app.py: the
    core, the jobs and the commands receive it. Nothing else imports the registry (but the keyring-as-KMS
    default) or constructs a provider, a router or a decorator."""
    offenders = []
    for path in _gateway_files():
        rel = path.relative_to(ROOT)
        if rel in KMS_WIRING or rel.parts[:2] == PROVIDERS.parts:
            continue
        for module, name in _imported(path):
            full = f"{module}.{name}" if name else module
            if (module, name) != KEYRING_KMS and full.startswith("gateway.keys.providers"):
                offenders.append(f"{rel}: imports {full}")
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) \
                    else None
                if called in KMS_BUILDERS:
                    offenders.append(f"{rel}:{node.lineno} {called}(...)")
    assert not offenders, f"KMS built outside gateway/app.py and gateway/keys/providers: {offenders}"


def _calls(path: Path, name: str) -> list[int]:
    """Lines where `path` calls `name` (as a bare name or an attribute)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called == name:
                lines.append(node.lineno)
    return lines


def test_the_core_builds_no_tokenizer() -> None:
    """The pipeline's token-domain tokenizers are built from the keyring in gateway/app.py (`app.tokenizers`)
    and given to the core: nothing under gateway/core constructs a DomainTokenizer."""
    core = [p for p in _gateway_files() if p.relative_to(ROOT).parts[0] == "core"]
    assert len(core) > 20
    assert _calls(ROOT / "app.py", "DomainTokenizer"), "the check looks for the wrong name: app.py builds them"
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in core for line in _calls(p, "DomainTokenizer")]
    assert not offenders, f"DomainTokenizer built in the core, not given by gateway/app.py: {offenders}"
