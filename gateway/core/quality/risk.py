"""Re-identification risk of a window of sanitized records: k-anonymity and l-diversity (pure).

A schema declares quasi-identifiers (sanitized fields published in clear, such as a generalized
age band or a country) and optionally one sensitive field. Records with the same tuple of
quasi-identifier values form an equivalence class: a class of k people hides each of them among
k; a class whose records share fewer than l sensitive values tells that value about everyone in it.
k counts distinct subjects (the record's subject as published: its token), not records: five events
of one person are one person, and a class of them singles that person out. A record without a
subject counts as a person of its own. When the policy publishes a time that follows the event's
(the record timestamp kept, truncated or processing time: gateway/core/policy/timestamp.py), it is one
more quasi-identifier, at the granularity it is published with.
The figures are measured on what is published, per window (the runtime decides its bounds), so
they say what a reader of the output can link, not what the policy hoped for.

Memory: per class its quasi-identifier tuple, a count, the set of its subjects' hashes and, when a
sensitive field is declared, the set of its sensitive values' hashes (within this process): the
values themselves are not kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Hashable = Any  # the output of _hashable: None, str, bytes, int or a tagged tuple


def _hashable(value: Any) -> Hashable:
    """A deterministic hashable form of a field value that only equal values share.

    Python equates True, 1 and 1.0 (and Decimal(1)); a published field that carries one or the
    other is two different values to a reader, so everything but str, bytes, int and None is tagged
    with its type. Lists and dicts become tuples (dict items sorted), NaN is one value."""
    if value is None or isinstance(value, str | bytes) or type(value) is int:
        return value
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else value)
    if isinstance(value, dict):
        items = ((_hashable(k), _hashable(v)) for k, v in value.items())
        return ("dict", tuple(sorted(items, key=lambda kv: repr(kv[0]))))
    if isinstance(value, list | tuple):
        return ("list", tuple(_hashable(v) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", frozenset(_hashable(v) for v in value))
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    tag = type(value).__qualname__
    try:
        hash(value)
    except TypeError:
        return (tag, repr(value))
    return (tag, value)


@dataclass(frozen=True)
class RiskFigures:
    """One window's risk, as counts: what the quality record and `policy show` report."""

    records: int
    classes: int
    k: int                 # fewest distinct subjects in a class (0 when no records)
    k_target: int          # the declared k
    below_k_records: int   # records in classes of fewer than k_target subjects
    below_k_share: float   # below_k_records / records (0.0 when no records)
    # fewest distinct sensitive values in a class (None when no sensitive field declared or no records)
    l: int | None  # noqa: E741 - l-diversity's own name
    l_target: int | None
    below_l_classes: int   # classes with fewer distinct sensitive values than l_target (0 when not declared)

    def to_json(self) -> dict[str, Any]:
        """Plain counts and rates only, never a value: the quality record goes where the data does not."""
        return {
            "k_counts": "subjects",  # k counts distinct subjects; records written without this key counted records
            "records": self.records,
            "classes": self.classes,
            "k": self.k,
            "k_target": self.k_target,
            "below_k_records": self.below_k_records,
            "below_k_share": round(self.below_k_share, 6),
            "l": self.l,
            "l_target": self.l_target,
            "below_l_classes": self.below_l_classes,
        }


class RiskWindow:
    """The equivalence classes of one window's sanitized records. Class ids are indexes, stable
    until `clear`, so the caller can hold records by class and withhold the small ones."""

    def __init__(self, quasi_identifiers: Sequence[str], k_target: int, sensitive: str | None = None,
                 l_target: int | None = None, timestamp: bool = False) -> None:
        if k_target < 1:
            raise ValueError(f"k must be at least 1, not {k_target}")
        if l_target is not None and sensitive is None:
            raise ValueError("an l-diversity target needs a sensitive field")
        if l_target is not None and l_target < 1:
            raise ValueError(f"l must be at least 1, not {l_target}")
        if sensitive is not None and sensitive in quasi_identifiers:
            raise ValueError(f"'{sensitive}' cannot be both a quasi-identifier and the sensitive field")
        self.quasi_identifiers = tuple(quasi_identifiers)
        self.timestamp = timestamp  # the published record timestamp is a quasi-identifier too
        self.k_target = k_target
        self.sensitive = sensitive
        self.l_target = l_target
        self._ids: dict[tuple[Hashable, ...], int] = {}
        self._counts: list[int] = []
        self._subjects: list[set[int]] = []  # per class, hashes of its distinct subjects
        self._values: list[set[int]] = []  # per class, hashes of its sensitive values (when declared)
        self._records = 0

    def __len__(self) -> int:
        return self._records

    def __repr__(self) -> str:
        return f"<RiskWindow records={self._records} classes={len(self._counts)} k_target={self.k_target}>"

    def add(self, record: dict[str, Any], subject: str = "", timestamp_ms: int | None = None) -> int:
        """The record's class id. A missing quasi-identifier counts as None, a value of its own.
        `subject`: the record's subject as published ("": none, a person of its own); `timestamp_ms`:
        the published record timestamp, a quasi-identifier when the window counts it."""
        key = tuple(_hashable(record.get(name)) for name in self.quasi_identifiers)
        if self.timestamp:
            key += (timestamp_ms,)
        class_id = self._ids.get(key)
        if class_id is None:
            class_id = self._ids[key] = len(self._counts)
            self._counts.append(0)
            self._subjects.append(set())
            if self.sensitive is not None:
                self._values.append(set())
        self._counts[class_id] += 1
        # a record without a subject is someone: distinct from every other (negative: never a str's hash pair)
        self._subjects[class_id].add(hash(subject) if subject else -1 - self._records)
        if self.sensitive is not None:
            self._values[class_id].add(hash(_hashable(record.get(self.sensitive))))
        self._records += 1
        return class_id

    def figures(self) -> RiskFigures:
        counts = self._counts
        people = [len(s) for s in self._subjects]
        below_k = sum(c for c, n in zip(counts, people, strict=True) if n < self.k_target)
        diversity = [len(v) for v in self._values]
        return RiskFigures(
            records=self._records,
            classes=len(counts),
            k=min(people, default=0),
            k_target=self.k_target,
            below_k_records=below_k,
            below_k_share=below_k / self._records if self._records else 0.0,
            l=min(diversity) if self.sensitive is not None and diversity else None,
            l_target=self.l_target,
            below_l_classes=sum(1 for d in diversity if d < self.l_target) if self.l_target is not None else 0,
        )

    def small_classes(self) -> set[int]:
        """The class ids `enforce` withholds: fewer distinct subjects than k, or (with an l target)
        fewer distinct sensitive values than l."""
        small = {i for i, s in enumerate(self._subjects) if len(s) < self.k_target}
        if self.l_target is not None:
            small.update(i for i, v in enumerate(self._values) if len(v) < self.l_target)
        return small

    def class_sizes(self) -> list[int]:
        """Records of all classes, by class id."""
        return list(self._counts)

    def class_subjects(self) -> list[int]:
        """Distinct subjects of all classes, by class id: the k of each."""
        return [len(s) for s in self._subjects]

    def clear(self) -> None:
        self._ids.clear()
        self._counts.clear()
        self._subjects.clear()
        self._values.clear()
        self._records = 0


def generalization_warning(figures: RiskFigures) -> str | None:
    """One line for the operator when most of the window cannot meet the declared targets: the
    quasi-identifiers are generalized too finely (or the traffic is too thin) for them."""
    if figures.records and figures.below_k_share > 0.5:
        return (f"{round(figures.below_k_share * 100)}% of records are in classes smaller than k={figures.k_target}:"
                " the declared generalization of the quasi-identifiers is too fine for the traffic")
    if figures.l_target is not None and figures.classes and figures.below_l_classes / figures.classes > 0.5:
        return (f"{round(figures.below_l_classes / figures.classes * 100)}% of classes have fewer than"
                f" l={figures.l_target} distinct sensitive values: the sensitive field is too uniform"
                " within the declared quasi-identifier classes")
    return None


def risk_figures(data: dict[str, Any]) -> RiskFigures:
    """Figures back from a quality record's (or a merged window's) "risk" object."""
    return RiskFigures(records=data["records"], classes=data["classes"], k=data["k"], k_target=data["k_target"],
                       below_k_records=data["below_k_records"], below_k_share=data["below_k_share"],
                       l=data.get("l"), l_target=data.get("l_target"), below_l_classes=data.get("below_l_classes", 0))
