"""Re-identification risk: equivalence classes, k-anonymity and l-diversity of a window, checked
against figures computed independently with collections.Counter."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest

from gateway.core.quality.risk import RiskFigures, RiskWindow, generalization_warning

QI = ("country", "age_band")
PLANTED = {("DE", "30-39"): 7, ("FR", "30-39"): 2, ("FR", "40-49"): 1}


def _records(distribution: dict[tuple[Any, ...], int], seed: int = 0) -> list[dict[str, Any]]:
    rows = [{"country": c, "age_band": a, "amount": i} for (c, a), n in distribution.items() for i in range(n)]
    random.Random(seed).shuffle(rows)
    return rows


def test_k_anonymity_of_a_known_distribution() -> None:
    window = RiskWindow(QI, k_target=3)
    for record in _records(PLANTED):
        window.add(record)
    f = window.figures()
    sizes = Counter(PLANTED)
    assert f.records == sum(sizes.values()) == 10 == len(window)
    assert f.classes == len(sizes) == 3
    assert f.k == min(sizes.values()) == 1
    assert f.k_target == 3
    assert f.below_k_records == sum(n for n in sizes.values() if n < 3) == 3
    assert f.below_k_share == pytest.approx(0.3)
    assert (f.l, f.l_target, f.below_l_classes) == (None, None, 0)
    assert sorted(window.class_sizes()) == sorted(sizes.values())


def test_small_classes_are_exactly_the_planted_ones() -> None:
    window = RiskWindow(QI, k_target=3)
    ids: dict[tuple[str, str], set[int]] = defaultdict(set)
    for record in _records(PLANTED, seed=1):
        ids[(record["country"], record["age_band"])].add(window.add(record))
    assert all(len(v) == 1 for v in ids.values())  # one id per class, stable across its records
    assert len({next(iter(v)) for v in ids.values()}) == 3
    small = {next(iter(ids[c])) for c, n in PLANTED.items() if n < 3}
    assert window.small_classes() == small
    sizes = window.class_sizes()
    assert {c: sizes[next(iter(ids[c]))] for c in PLANTED} == PLANTED


def test_l_diversity_with_a_sensitive_field() -> None:
    rows = (
        [{"country": "DE", "age_band": "30-39", "diagnosis": d} for d in ["flu", "flu", "asthma", "gout", "flu"]]
        + [{"country": "FR", "age_band": "30-39", "diagnosis": d} for d in ["flu", "flu", "flu", "flu"]]
        + [{"country": "FR", "age_band": "40-49", "diagnosis": d} for d in ["gout", "asthma", "gout"]]
    )
    window = RiskWindow(QI, k_target=3, sensitive="diagnosis", l_target=2)
    ids = {}
    for row in rows:
        ids[(row["country"], row["age_band"])] = window.add(row)
    distinct: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in rows:
        distinct[(row["country"], row["age_band"])].add(row["diagnosis"])
    f = window.figures()
    assert f.k == 3 and f.below_k_records == 0
    assert f.l == min(len(v) for v in distinct.values()) == 1
    assert f.l_target == 2
    assert f.below_l_classes == sum(1 for v in distinct.values() if len(v) < 2) == 1
    assert window.small_classes() == {ids[("FR", "30-39")]}  # big enough, but everyone in it has flu


def test_l_is_measured_without_a_target() -> None:
    window = RiskWindow(["zip"], k_target=1, sensitive="salary")
    for zip_code, salary in [("1", 10), ("1", 20), ("1", 20), ("2", 30)]:
        window.add({"zip": zip_code, "salary": salary})
    f = window.figures()
    assert (f.l, f.l_target, f.below_l_classes) == (1, None, 0)
    assert window.small_classes() == set()


def test_none_is_a_value_of_its_own() -> None:
    window = RiskWindow(QI, k_target=2)
    a = window.add({"country": None, "age_band": "30-39"})
    b = window.add({"age_band": "30-39"})  # missing: the same as None
    c = window.add({"country": "None", "age_band": "30-39"})
    d = window.add({"country": "", "age_band": "30-39"})
    assert a == b
    assert len({a, c, d}) == 3
    assert sorted(window.class_sizes()) == [1, 1, 2]


def test_nested_values_are_hashable_and_compared_by_content() -> None:
    window = RiskWindow(["tags", "geo"], k_target=2)
    a = window.add({"tags": ["x", "y"], "geo": {"lat": 1, "lon": [2, 3]}})
    b = window.add({"tags": ["x", "y"], "geo": {"lon": [2, 3], "lat": 1}})  # key order does not matter
    c = window.add({"tags": ["y", "x"], "geo": {"lat": 1, "lon": [2, 3]}})  # list order does
    d = window.add({"tags": '["x", "y"]', "geo": {"lat": 1, "lon": [2, 3]}})  # a string is not the list
    e = window.add({"tags": ["x", "y"], "geo": {"lat": 1.0, "lon": [2, 3]}})  # a float is not an int
    f = window.add({"tags": [True], "geo": None})
    g = window.add({"tags": [1], "geo": None})
    h = window.add({"tags": [b"\x00"], "geo": float("nan")})
    i = window.add({"tags": [b"\x00"], "geo": float("nan")})
    assert a == b and h == i
    assert len({a, c, d, e, f, g, h}) == 7
    assert window.figures().classes == 7


def test_empty_window() -> None:
    window = RiskWindow(QI, k_target=5, sensitive="diagnosis", l_target=2)
    f = window.figures()
    assert f == RiskFigures(records=0, classes=0, k=0, k_target=5, below_k_records=0, below_k_share=0.0,
                            l=None, l_target=2, below_l_classes=0)
    assert window.small_classes() == set() and window.class_sizes() == [] and len(window) == 0
    assert generalization_warning(f) is None


def test_clear_starts_a_new_window() -> None:
    window = RiskWindow(QI, k_target=3, sensitive="amount")
    for record in _records(PLANTED):
        window.add(record)
    window.clear()
    assert len(window) == 0 and window.class_sizes() == []
    assert window.add({"country": "NL", "age_band": "20-29", "amount": 1}) == 0
    assert window.figures().records == 1 and window.figures().l == 1


def test_figures_match_counter_on_random_records() -> None:
    rnd = random.Random(3)
    for _ in range(30):
        k_target, l_target = rnd.randint(1, 6), rnd.randint(1, 3)
        window = RiskWindow(["a", "b"], k_target=k_target, sensitive="s", l_target=l_target)
        rows = [{"a": rnd.choice(["x", "y", None]), "b": rnd.randint(0, 4), "s": rnd.randint(0, 3)}
                for _ in range(rnd.randint(1, 80))]
        ids = [window.add(row) for row in rows]
        sizes = Counter((r["a"], r["b"]) for r in rows)
        values: dict[tuple[Any, Any], set[int]] = defaultdict(set)
        for r in rows:
            values[(r["a"], r["b"])].add(r["s"])
        f = window.figures()
        assert f.classes == len(sizes) and f.records == len(rows)
        assert f.k == min(sizes.values())
        assert f.below_k_records == sum(n for n in sizes.values() if n < k_target)
        assert f.l == min(len(v) for v in values.values())
        assert f.below_l_classes == sum(1 for v in values.values() if len(v) < l_target)
        small_rows = {i for i, r in enumerate(rows)
                      if sizes[(r["a"], r["b"])] < k_target or len(values[(r["a"], r["b"])]) < l_target}
        assert {i for i, c in enumerate(ids) if c in window.small_classes()} == small_rows


def test_to_json_holds_counts_and_rates_never_values() -> None:
    window = RiskWindow(["city"], k_target=2, sensitive="diagnosis", l_target=2)
    for city, diagnosis in [("Canaryville", "rare-canary-disease"), ("Canaryville", "flu"), ("Elsewhere", "flu")]:
        window.add({"city": city, "diagnosis": diagnosis})
    out = window.figures().to_json()
    assert out == {"k_counts": "subjects", "records": 3, "classes": 2, "k": 1, "k_target": 2, "below_k_records": 1,
                   "below_k_share": 0.333333, "l": 1, "l_target": 2, "below_l_classes": 1}
    text = orjson.dumps(out)
    assert b"Canary" not in text and b"canary" not in text and b"flu" not in text


def test_generalization_warning_when_most_records_are_in_small_classes() -> None:
    window = RiskWindow(QI, k_target=5)
    for record in _records({("DE", "30-39"): 38, **{("FR", str(age)): 1 for age in range(62)}}):
        window.add(record)
    message = generalization_warning(window.figures())
    assert message == ("62% of records are in classes smaller than k=5: the declared generalization"
                       " of the quasi-identifiers is too fine for the traffic")
    window = RiskWindow(QI, k_target=3)
    for record in _records(PLANTED):  # 30% in small classes: no warning
        window.add(record)
    assert generalization_warning(window.figures()) is None


def test_generalization_warning_for_uniform_sensitive_values() -> None:
    window = RiskWindow(["zip"], k_target=2, sensitive="s", l_target=2)
    for zip_code, s in [("1", "a"), ("1", "a"), ("2", "b"), ("2", "b"), ("3", "a"), ("3", "b")]:
        window.add({"zip": zip_code, "s": s})
    message = generalization_warning(window.figures())
    assert message is not None and message.startswith("67% of classes have fewer than l=2")
    assert "\n" not in message


@pytest.mark.parametrize("kwargs", [
    {"k_target": 0},
    {"k_target": 2, "l_target": 2},  # l without a sensitive field
    {"k_target": 2, "sensitive": "s", "l_target": 0},
    {"k_target": 2, "sensitive": "country"},  # the sensitive field cannot be a quasi-identifier
])
def test_window_rejects_inconsistent_declarations(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RiskWindow(QI, **kwargs)
