"""`gateway quality show`: the quality records of a window summed over source partitions.

Each worker writes one record per window and source partition (exact: its counters are committed
with the partition's offsets). A window's figures for the whole source are their sum; the risk
figures combine conservatively: the smallest k of any partition, records below k added up (a class
split across partitions is measured per partition, so this never overstates k).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def merge_windows(records: Iterable[dict[str, Any]], source: str | None = None) -> list[dict[str, Any]]:
    """One summary per (source, window start), oldest first."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        if r.get("type") != "quality_window" or (source is not None and r.get("source") != source):
            continue
        key = (r["source"], r["window"]["start"])
        row = merged.get(key)
        if row is None:
            row = merged[key] = {"source": r["source"], "schema": r.get("schema"), "window": dict(r["window"]),
                                 "partitions": [], "events": 0, "sanitized": 0, "rules": {}, "completeness": {},
                                 "lag_ms": {"max": 0, "sum": 0}}
        if r["partition"] in row["partitions"]:
            continue  # the same window of a partition written twice cannot happen (exactly once); ignore if it does
        row["partitions"].append(r["partition"])
        row["events"] += r["events"]
        row["sanitized"] += r["sanitized"]
        row["lag_ms"]["max"] = max(row["lag_ms"]["max"], r["lag_ms"]["max"])
        row["lag_ms"]["sum"] += r["lag_ms"]["mean"] * r["events"]
        for rule in r["rules"]:
            entry = row["rules"].setdefault(rule["name"], {"kind": rule["kind"], "action": rule["action"], "failed": 0})
            entry["failed"] += rule["failed"]
        for name, c in r["completeness"].items():
            entry = row["completeness"].setdefault(name, {"present": 0, **({"target": c["target"]}
                                                                          if "target" in c else {})})
            entry["present"] += c["present"]
        if "risk" in r:
            _merge_risk(row, r["risk"])
    out = []
    for _, row in sorted(merged.items()):
        row["partitions"].sort()
        out.append(finish_rates(row))
    return out


def finish_rates(row: dict[str, Any]) -> dict[str, Any]:
    """Turn a summed row's (windows or a whole period's) sums into rates: mean lag, failure and
    completeness rates against their targets, the share of records below k."""
    n = row["events"]
    row["lag_ms"] = {"mean": round(row["lag_ms"]["sum"] / n) if n else 0, "max": row["lag_ms"]["max"]}
    for entry in row["rules"].values():
        entry["rate"] = round(entry["failed"] / n, 6) if n else 0.0
    for entry in row["completeness"].values():
        entry["rate"] = round(entry["present"] / n, 6) if n else 0.0
        if "target" in entry:
            entry["met"] = entry["rate"] >= entry["target"]
    if "risk" in row:
        risk = row["risk"]
        risk["below_k_share"] = round(risk["below_k_records"] / risk["records"], 6) if risk["records"] else 0.0
    return row


def _merge_risk(row: dict[str, Any], risk: dict[str, Any]) -> None:
    merged = row.get("risk")
    if merged is None:
        row["risk"] = dict(risk)
        return
    if risk["records"]:
        merged["k"] = min(merged["k"], risk["k"]) if merged["records"] else risk["k"]
    if risk.get("l") is not None:
        merged["l"] = risk["l"] if merged.get("l") is None else min(merged["l"], risk["l"])
    for name in ("records", "classes", "below_k_records", "below_l_classes"):
        merged[name] = merged.get(name, 0) + risk.get(name, 0)
    merged["complete"] = merged.get("complete", True) and risk.get("complete", True)


def latest(rows: list[dict[str, Any]], windows: int) -> list[dict[str, Any]]:
    """The last `windows` windows of each source."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    return [row for source in sorted(by_source) for row in by_source[source][-windows:]]
