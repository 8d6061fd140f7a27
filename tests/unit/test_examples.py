"""The example policies under examples/schemas lint clean: what the docs point users at works."""

from __future__ import annotations

from pathlib import Path

from gateway.policy import lint_directory, load_plans

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "schemas"


def test_the_example_policies_compile_with_no_problem() -> None:
    assert lint_directory(EXAMPLES) == []
    (rides,) = load_plans(EXAMPLES)
    assert rides.quality is not None and rides.quality.risk is not None
    kinds = {r.kind for r in rides.quality.rules}
    assert kinds == {"required", "max_length", "format", "range", "outlier", "allowed", "check", "duplicate",
                     "freshness"}
