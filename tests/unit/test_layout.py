"""The layering the design promises: only the runtime layer (and the embedded broker and demo)
talks to Kafka, so transforms, policy, keys and DP mechanisms stay testable without a broker."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "gateway"
KAFKA_FACING = ("runtime", "embedded")
ALSO_ALLOWED: set[str] = set()


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_runtime_layer_imports_a_kafka_client() -> None:
    offenders = []
    checked = 0
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in KAFKA_FACING or relative.name in ALSO_ALLOWED and len(relative.parts) == 1:
            continue
        checked += 1
        if any(name == "confluent_kafka" or name.startswith("confluent_kafka.") for name in _imports(path)):
            offenders.append(str(relative))
    assert checked > 30
    assert not offenders, f"Kafka client imported outside gateway/runtime: {offenders}"


def test_pure_packages_do_not_reach_into_the_runtime() -> None:
    for package in ("dp", "keys", "core", "report"):
        for path in sorted((ROOT / package).rglob("*.py")):
            runtime = {n for n in _imports(path) if n.startswith("gateway.runtime")}
            assert not runtime, f"{path.relative_to(ROOT)} imports {sorted(runtime)}"
