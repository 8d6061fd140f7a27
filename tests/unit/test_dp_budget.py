"""One budget per source and subject: every aggregate about the same subjects spends from it, and
the ledger refuses the release that would take the sum past its cap (basic composition)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from gateway.core.codec.raw import load_schema_file
from gateway.core.policy.compiler import compile_plan
from gateway.core.policy.lint import lint_directory, lint_file
from gateway.dp.declarations import AggregateSpec
from gateway.dp.ledger import BUDGET_EPSILON_CAP, EPSILON_CAP, Charge, Ledger, _worst_period, describe

HOUR = 3_600_000
BASE = AggregateSpec(
    schema="t.Payment", name="a", metric="count", field=None, group_by=("country",), window_ms=HOUR,
    grace_ms=0, epsilon=1.0, delta=1e-6, max_groups_per_subject=1, max_records_per_group=1, clamp=None,
    time_field=None, output_topic="out", source_topic="src", sanitized_topic="san", period_ms=24 * HOUR,
    period_epsilon_cap=24.0, period_delta_cap=1.0, budget="subject:customer", budget_epsilon_cap=5.0,
    budget_delta_cap=1.0)
A = BASE
B = replace(BASE, name="b", epsilon=0.5)
OTHER = replace(BASE, name="c", budget="subject:patient")  # other subjects: its own budget


def _charge(ledger: Ledger, spec: AggregateSpec, window: int, partition: int = 0) -> str | None:
    """Charge through the log, as workers do; the window's decision."""
    ledger.apply_charge(Charge.for_release(spec, window * HOUR, partition, 0, "w"))
    return ledger.decisions[(spec.id, window * HOUR)]


def test_two_aggregates_share_the_cap_and_the_one_that_would_exceed_it_is_refused() -> None:
    ledger = Ledger()
    assert [_charge(ledger, A, 0), _charge(ledger, B, 0), _charge(ledger, A, 1), _charge(ledger, B, 1)] == [None] * 4
    assert ledger.budget_spend("subject:customer", A.id, 1 * HOUR, A.period_ms) == pytest.approx((3.0, 4e-6))
    assert _charge(ledger, A, 2) is None  # 4.0
    assert _charge(ledger, B, 2) is None  # 4.5
    assert _charge(ledger, A, 3) == BUDGET_EPSILON_CAP  # would be 5.5 > 5
    assert _charge(ledger, B, 3) is None  # 5.0: still within
    assert _charge(ledger, B, 4) == BUDGET_EPSILON_CAP
    assert ledger.check(A, 5 * HOUR, 0) == BUDGET_EPSILON_CAP  # the pre-check agrees with the log
    # another budget is untouched by this one's spend
    assert _charge(ledger, OTHER, 3) is None
    # a refused window spends nothing; the period rolls on
    assert ledger.budget_spend("subject:customer", A.id, 3 * HOUR, A.period_ms)[0] == pytest.approx(5.0)
    assert _charge(ledger, A, 25) is None


@pytest.mark.parametrize("seed", range(5))
def test_no_order_of_charges_takes_any_period_past_the_cap(seed: int) -> None:
    """Whatever order windows of both aggregates are charged in, no rolling period of the admitted
    windows sums above the cap (checked by brute force over every period start)."""
    rng = random.Random(seed)
    charges = [(spec, w) for spec in (A, B) for w in range(60)]
    rng.shuffle(charges)
    ledger = Ledger()
    admitted: list[tuple[int, float]] = []
    for spec, w in charges:
        if _charge(ledger, spec, w) is None:
            admitted.append((w, spec.epsilon))
    for first in range(-24, 61):
        spent = sum(e for w, e in admitted if first <= w < first + 24)
        assert spent <= 5.0 + 1e-9, (first, spent)
    assert len(admitted) > 10  # the cap admits a fair share, not nothing


def test_an_aggregate_cap_still_binds_inside_the_budget() -> None:
    ledger = Ledger()
    tight = replace(A, period_epsilon_cap=1.0)
    assert _charge(ledger, tight, 0) is None
    assert _charge(ledger, tight, 1) == EPSILON_CAP


def test_budget_show_sums_the_aggregates() -> None:
    ledger = Ledger()
    for w in range(3):
        _charge(ledger, A, w)
        _charge(ledger, B, w)
    (row,) = ledger.budget_summary({A.id: A, B.id: B})
    assert row["budget"] == "subject:customer"
    assert row["epsilon_in_period"] == pytest.approx(4.5) and row["epsilon_remaining"] == pytest.approx(0.5)
    assert row["aggregates"] == {A.id: pytest.approx(3.0), B.id: pytest.approx(1.5)}
    text = describe(ledger, {A.id: A, B.id: B})
    assert "budget subject:customer: latest 86400 s period: 4.5 of cap 5" in text


def _schema(budget: Any = None, shares: tuple[float | None, float | None] = (None, None),
            domain: str = "customer", name: str = "Payment", topic: str = "payments.raw") -> dict[str, Any]:
    aggregates = []
    for agg_name, eps, share in (("by_country", 1.0, shares[0]), ("by_city", 0.5, shares[1])):
        decl = {"name": agg_name, "metric": "count", "group_by": [agg_name[3:]], "window_s": 3600,
                "epsilon": eps, "delta": 1e-6, "max_groups_per_subject": 1, "max_records_per_group": 1}
        if share is not None:
            decl["share"] = share
        aggregates.append(decl)
    privacy: dict[str, Any] = {"source_topic": topic, "sanitized_topic": topic + ".sanitized", "subject": "user",
                               "aggregates": aggregates}
    if budget is not None:
        privacy["budget"] = budget
    return {"type": "record", "name": name, "namespace": "t", "privacy": privacy, "fields": [
        {"name": "user", "type": "string", "privacy": {"tokenize": {"domain": domain}}},
        {"name": "country", "type": "string", "privacy": "keep"},
        {"name": "city", "type": "string", "privacy": "keep"}]}


def test_the_budget_block_compiles_into_every_aggregate(write_schema) -> None:
    plan = compile_plan(load_schema_file(write_schema(_schema({"epsilon_cap": 12.0}, shares=(0.75, 0.25)))))
    by_name = {a.name: a for a in plan.aggregates}
    assert {a.budget for a in plan.aggregates} == {"subject:customer"}
    assert all(a.budget_epsilon_cap == 12.0 for a in plan.aggregates)
    assert by_name["by_country"].period_epsilon_cap == pytest.approx(9.0)  # its share of the budget
    assert by_name["by_city"].period_epsilon_cap == pytest.approx(3.0)
    default = compile_plan(load_schema_file(write_schema(_schema())))
    # no budget block: a real bound (10 a subject a day), not the sum of what every window could spend
    assert {(a.budget_epsilon_cap, a.budget_period_ms) for a in default.aggregates} == {(10.0, 86_400_000)}


def test_lint_warns_about_a_budget_above_ten_epsilon_a_day(write_schema) -> None:
    def warnings(budget: Any) -> list[str]:
        return [p.message for p in lint_file(write_schema(_schema(budget))) if p.severity == "warning"
                and "per subject per day" in p.message]

    assert warnings({"epsilon_cap": 10.0}) == [] and warnings(None) == []
    assert warnings({"epsilon_cap": 10.5})
    assert warnings({"period_s": 3600, "epsilon_cap": 1.0})  # 24 a day


@pytest.mark.parametrize(("budget", "shares", "message"), [
    ({"epsilon_cap": 0}, (None, None), "'epsilon_cap' must be a positive number"),
    ({"period": 5}, (None, None), "unknown budget setting 'period'"),
    ({"epsilon_cap": 10.0}, (0.75, 0.5), "shares sum to 1.25"),
    ({"epsilon_cap": 10.0}, (1.5, None), "setting 'share'"),
    ({"epsilon_cap": 0.2}, (None, None), "above what its budget allows"),
])
def test_bad_budgets_are_refused(write_schema, budget: Any, shares: Any, message: str) -> None:
    errors = [p for p in lint_file(write_schema(_schema(budget, shares))) if p.severity == "error"]
    assert errors and any(message in e.message for e in errors), errors


def test_sources_sharing_a_token_domain_must_declare_one_budget(tmp_path) -> None:
    import orjson

    (tmp_path / "a.avsc").write_bytes(orjson.dumps(_schema({"epsilon_cap": 10.0})))
    (tmp_path / "b.avsc").write_bytes(orjson.dumps(_schema({"epsilon_cap": 20.0}, name="Refund",
                                                           topic="refunds.raw")))
    errors = [p for p in lint_directory(tmp_path) if p.severity == "error"]
    assert len(errors) == 1 and "budget 'subject:customer'" in errors[0].message
    (tmp_path / "b.avsc").write_bytes(orjson.dumps(_schema({"epsilon_cap": 10.0}, name="Refund",
                                                           topic="refunds.raw")))
    assert not [p for p in lint_directory(tmp_path) if p.severity == "error"]


def test_aggregates_with_other_periods_share_a_budget_over_the_longest(write_schema) -> None:
    schema = _schema({"period_s": 86_400, "epsilon_cap": 48.0})
    schema["privacy"]["aggregates"][0].update(period_s=3600, period_epsilon_cap=1.5)
    plan = compile_plan(load_schema_file(write_schema(schema)))
    assert {a.budget_period_ms for a in plan.aggregates} == {86_400_000}
    # by_country may spend 1.5 an hour (36 a day), by_city its default 0.5 x 24 windows a day
    assert [a.budget_epsilon_cap for a in plan.aggregates] == [pytest.approx(36.0 + 12.0)] * 2
    by_name = {a.name: a for a in plan.aggregates}
    ledger = Ledger()
    for w in range(24):  # a day of hourly windows: by_city 24 x 0.5, by_country 24 x 1.0 (within 1.5 an hour)
        _charge(ledger, by_name["by_city"], w)
        _charge(ledger, by_name["by_country"], w)
    assert ledger.budget_spend("subject:customer", by_name["by_city"].id, 0, 86_400_000)[0] == pytest.approx(36.0)


def test_a_continual_horizon_counts_in_every_period_it_covers() -> None:
    """The outside review's case: a 1-day cap of 2.0 must not admit an hourly epsilon 1.0 aggregate
    beside a 7-day epsilon 1.5 horizon after day one (the horizon's running totals keep releasing the
    subject's data every day of it)."""
    day, hour = 86_400_000, 3_600_000
    base = AggregateSpec(
        schema="t.Payment", name="hourly", metric="count", field=None, group_by=("country",), window_ms=hour,
        grace_ms=0, epsilon=1.0, delta=1e-6, max_groups_per_subject=1, max_records_per_group=1, clamp=None,
        time_field=None, output_topic="out", source_topic="src", sanitized_topic="san", period_ms=day,
        period_epsilon_cap=24.0, period_delta_cap=1.0, budget="subject:customer", budget_period_ms=day,
        budget_epsilon_cap=2.0, budget_delta_cap=1.0)
    horizon = replace(base, name="weekly", epsilon=1.5, delta=1e-6, continual_windows=7 * 24,
                      continual_start_ms=0, continual_groups=('["DE"]',))
    ledger = Ledger()
    ledger.apply_charge(Charge.for_release(horizon, 0, 0, 0, "w", (1.5, 0.0)))  # paid with its first window
    assert ledger.decisions[(horizon.id, 0)] is None
    for when in (hour, 2 * day, 6 * day + 23 * hour):  # inside the horizon: 1.5 + 1.0 > 2.0
        ledger.apply_charge(Charge.for_release(base, when, 0, when, "w"))
        assert ledger.decisions[(base.id, when)] == "budget_epsilon_cap", when
    after = 8 * day  # past the horizon's last period: the hourly aggregate has the whole cap again
    ledger.apply_charge(Charge.for_release(base, after, 0, after, "w"))
    assert ledger.decisions[(base.id, after)] is None


def test_the_worst_period_sweep_matches_checking_every_period() -> None:
    """gateway.dp.ledger._worst_period sweeps the bounds; checked here against every rolling period."""
    rng = random.Random(8)
    period = 100
    for _ in range(200):
        spent = {("a", s): (rng.choice([0.0, 0.5, 1.0]), rng.choice([0.0, 1e-6])) for s in
                 rng.sample(range(0, 1000, 10), 20)}
        spans = {key: key[1] + rng.choice([1, 50, 300]) for key in spent if rng.random() < 0.3}
        window = rng.choice(list(spent))[1]

        def brute(window: int = window, spent: dict = spent, spans: dict = spans) -> tuple[float, float]:
            end = spans.get(("a", window), window + 1)
            sums = []
            for p in range(window - period + 1, end):
                inside = [c for k, c in spent.items() if k[1] < p + period and spans.get(k, k[1] + 1) > p]
                sums.append((sum(e for e, _ in inside), sum(d for _, d in inside)))
            return max(s[0] for s in sums), max(s[1] for s in sums)

        got = _worst_period(spent, spans, "a", window, period, None)
        assert got == pytest.approx(brute(), abs=1e-9)
