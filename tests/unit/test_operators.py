"""The operator package's contract: one action per module, found by name, and nothing else
switching on action strings."""

from __future__ import annotations

import ast
import pkgutil
import re
from pathlib import Path

import gateway.core.operators as operators_package
from gateway.core.operators import registry
from gateway.core.operators.base import Operator

GATEWAY = Path(operators_package.__file__).resolve().parents[2]


def test_every_module_defines_exactly_one_named_operator() -> None:
    for module in pkgutil.iter_modules(operators_package.__path__):
        if module.name == "base":
            continue
        tree = ast.parse((GATEWAY / "core" / "operators" / f"{module.name}.py").read_text())
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef)
                   and any(isinstance(b, ast.Name) and b.id == "Operator" for b in n.bases)]
        assert len(classes) == 1, f"{module.name}.py defines {len(classes)} operators"
    found = registry()
    assert {"keep", "drop", "tokenize", "encrypt"} <= set(found)
    assert all(issubclass(cls, Operator) and cls.name == name for name, cls in found.items())
    assert len(found) == len([m for m in pkgutil.iter_modules(operators_package.__path__) if m.name != "base"])


def test_policy_transforms_and_decrypt_do_not_switch_on_action_names() -> None:
    names = "|".join(re.escape(n) for n in registry())
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    for name in ("core/policy/compiler.py", "core/policy/plan.py", "core/policy/lint.py", "core/sanitizer.py",
                 "core/decrypt.py"):
        source = (GATEWAY / name).read_text()
        hits = [line.strip() for line in source.splitlines() if pattern.search(line)]
        assert hits == [], f"{name} compares action names: {hits}"


def test_field_encryption_has_one_code_path() -> None:
    """Only gateway.keys.envelope.encrypt_field encrypts field values under a DEK (the dead-letter
    sealer encrypts whole raw events under the quarantine key: another format, another key)."""
    callers = []
    for path in sorted(set(GATEWAY.rglob("*.py")) - {GATEWAY / "core" / "deadletter.py"}):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "aead.encrypt(" in line:
                callers.append(f"{path.relative_to(GATEWAY)}:{number}")
    assert len(callers) == 1 and callers[0].startswith("keys/envelope.py"), callers
