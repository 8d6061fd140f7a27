"""The example policies under examples/schemas lint clean: what the docs point users at works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from gateway.core.policy.lint import lint_directory, load_plans

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "schemas"


def test_the_example_policies_compile_with_no_problem() -> None:
    assert lint_directory(EXAMPLES) == []
    (rides,) = load_plans(EXAMPLES)
    assert rides.quality is not None and rides.quality.risk is not None
    kinds = {r.kind for r in rides.quality.rules}
    assert kinds == {"required", "max_length", "format", "range", "outlier", "allowed", "check", "duplicate",
                     "freshness"}


def test_a_bare_action_name_is_the_action_with_default_options(tmp_path: Path) -> None:
    """rides.avsc writes `"privacy": "redact"`; the action table documents it as `{"redact": {}}`."""
    schema = orjson.loads((EXAMPLES / "rides.avsc").read_bytes())
    (note,) = [f for f in schema["fields"] if f["name"] == "driver_note"]
    assert note["privacy"] == "redact"
    note["privacy"] = {"redact": {}}
    (tmp_path / "rides.avsc").write_bytes(orjson.dumps(schema))
    (bare,), (spelled,) = load_plans(EXAMPLES), load_plans(tmp_path)

    def redact_of(plan: Any) -> dict[str, Any]:
        (field,) = [f for f in plan.record.fields if f.name == "driver_note"]
        op = field.operator
        return {"action": plan.field_actions["driver_note"], "entities": op.entities, "tokenize": op.tokenize,
                "max_chars": op.max_chars, "truncate": op.truncate, "phone_region": op.phone_region}

    assert redact_of(bare) == redact_of(spelled)
    assert redact_of(bare)["max_chars"] == 10_000 and redact_of(bare)["truncate"] is False
