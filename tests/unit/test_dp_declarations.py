"""DP aggregate declarations: parsed from the schema's privacy block, errors name schema, aggregate, setting."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.core.codec.raw import load_schema_file
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_file
from gateway.errors import PolicyError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
BASE = orjson.loads((SCHEMAS / "payments.avsc").read_bytes())
GOOD = {"name": "spend", "metric": "sum", "field": "amount_minor", "group_by": ["country"], "window_s": 60,
        "grace_s": 5, "epsilon": 1.0, "delta": 1e-6, "max_groups_per_subject": 2, "max_records_per_group": 3,
        "clamp": [0, 500]}


def _write(tmp_path: Path, aggregates: Any, **privacy: Any) -> Path:
    schema = copy.deepcopy(BASE)
    schema["privacy"]["aggregates"] = aggregates
    schema["privacy"].update(privacy)
    path = tmp_path / "s.avsc"
    path.write_bytes(orjson.dumps(schema))
    return path


def _errors(path: Path) -> list[str]:
    return [f"{p.where}: {p.message}" for p in lint_file(path) if p.severity == "error"]


def test_example_schema_compiles_its_aggregates() -> None:
    plan = compile_plan(load_schema_file(SCHEMAS / "payments.avsc"))
    by_name = {a.name: a for a in plan.aggregates}
    spend = by_name["spend_by_country"]
    assert spend.id == "example.payments.Payment/spend_by_country"
    assert (spend.metric, spend.field, spend.group_by, spend.clamp) == ("sum", "amount_minor", ("country",),
                                                                        (0, 100000))
    assert (spend.window_ms, spend.grace_ms, spend.time_field) == (60_000, 10_000, "occurred_at")
    assert spend.output_topic == "payments.raw.aggregates"
    count = by_name["payments_by_currency"]
    assert count.clamp is None and count.field is None
    # default period cap: one release per window of the period
    assert count.period_epsilon_cap == pytest.approx(0.5 * 1440)


def test_defaults_and_frozen(tmp_path: Path) -> None:
    decl = {k: v for k, v in GOOD.items() if k != "grace_s"}
    plan = compile_plan(load_schema_file(_write(tmp_path, [decl])))
    spec = plan.aggregates[0]
    assert spec.grace_ms == 0 and spec.time_field is None and spec.period_ms == 86_400_000
    with pytest.raises(AttributeError):
        spec.epsilon = 5.0  # type: ignore[misc]


@pytest.mark.parametrize(("change", "needle"), [
    ({"metric": "median"}, "setting 'metric': 'median' is not one of count, sum, mean"),
    ({"field": "email"}, "setting 'field': 'email' must be a kept top-level field"),
    ({"field": "country"}, "setting 'field': 'country' must be an int or long"),
    ({"clamp": [10, 1]}, "setting 'clamp'"),
    ({"clamp": None}, "setting 'clamp'"),
    ({"group_by": ["user_id"]}, "setting 'group_by': 'user_id' is the subject"),
    ({"group_by": ["billing_address"]}, "setting 'group_by': 'billing_address' must be a string"),
    ({"group_by": []}, "setting 'group_by': must be a non-empty list"),
    ({"epsilon": 0}, "setting 'epsilon': must be a number in (0, 10]"),
    ({"epsilon": float("inf")}, "setting 'epsilon'"),
    ({"delta": 0.5}, "setting 'delta'"),
    ({"max_groups_per_subject": 0}, "setting 'max_groups_per_subject'"),
    ({"max_records_per_group": True}, "setting 'max_records_per_group'"),
    ({"window_s": 1.5}, "setting 'window_s'"),
    ({"grace_s": -1}, "setting 'grace_s'"),
    ({"time_field": "country"}, "setting 'time_field'"),
    ({"output_topic": "payments.raw"}, "setting 'output_topic': must differ"),
    ({"colour": "red"}, "setting 'colour': unknown aggregate setting"),
    ({"period_epsilon_cap": 0.5}, "setting 'period_epsilon_cap': must be a number >= epsilon"),
    ({"clamp": [0, 2**40], "max_records_per_group": 10_000, "max_groups_per_subject": 10}, "below 2^52"),
])
def test_errors_name_schema_aggregate_and_setting(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    path = _write(tmp_path, [dict(GOOD, **change)])
    errors = _errors(path)
    assert any(e.startswith("aggregate 'spend': ") and needle in e for e in errors), errors
    with pytest.raises(PolicyError) as raised:
        compile_plan(load_schema_file(path))
    assert str(path) in str(raised.value) and "aggregate 'spend'" in str(raised.value)


def test_count_rejects_field_and_clamp_and_missing_required(tmp_path: Path) -> None:
    decl = {k: v for k, v in GOOD.items() if k != "epsilon"}
    decl["metric"] = "count"
    errors = _errors(_write(tmp_path, [decl]))
    assert any("setting 'epsilon': is required" in e for e in errors)
    assert any("metric 'count' takes no field" in e for e in errors)
    assert any("metric 'count' takes no clamp" in e for e in errors)


def test_aggregates_need_a_subject_and_unique_names(tmp_path: Path) -> None:
    schema_path = _write(tmp_path, [GOOD, GOOD])
    errors = _errors(schema_path)
    assert any("aggregate 'spend': duplicate aggregate name" in e for e in errors)
    schema = orjson.loads(schema_path.read_bytes())
    del schema["privacy"]["subject"]
    schema_path.write_bytes(orjson.dumps(schema))
    assert any("aggregates need the record-level 'subject'" in e for e in _errors(schema_path))


def test_aggregates_block_must_be_a_list(tmp_path: Path) -> None:
    assert any("aggregates must be a list" in e for e in _errors(_write(tmp_path, {"name": "x"})))
