"""An input event's audit entry, built in one place from what the pipeline's steps decided.

Entries carry actions, key ids, counts and the outcome, never a value. The batch record that holds
them (chain, instance, time) is gateway.core.audit's; its body is canonical JSON (sorted keys), so
the order in which an entry's keys are set does not reach the wire.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.core.pipeline.outcome import Outcome


def entity_counts(entities: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Redacted entities per field path and type, for the audit event (counts only, never text)."""
    out: dict[str, dict[str, int]] = {}
    for (path, entity), n in sorted(entities.items()):
        out.setdefault(path, {})[entity] = n
    return out


def event_entry(topic: str, partition: int, offset: int, timestamp_ms: int, schema: str, policy: str,
                outcome: Outcome, output: Any, key_ids: Any, *, actions: Any = None, event_id: Any = None,
                redacted: Counter[tuple[str, str]] | None = None, quality: list[str] | None = None,
                leaks: list[tuple[str, str]] | None = None, purposes: dict[str, str] | None = None
                ) -> dict[str, Any]:
    """The entry of a source event (`type` event). `output`: the output topic as a pre-serialized
    fragment; `actions` and `event_id` only for a published event; the optional parts only when the
    step that decides them ran and found something."""
    ref: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset, "timestamp": timestamp_ms}
    if event_id is not None:
        ref["event_id"] = event_id
    entry: dict[str, Any] = {"type": "event", "event": ref, "schema": schema, "policy": policy,
                             "outcome": outcome.wire, "output": output, "key_ids": key_ids}
    if actions is not None:
        entry["actions"] = actions
    if redacted:
        entry["redacted"] = entity_counts(redacted)
    if quality is not None:
        entry["quality"] = quality
    if leaks:
        entry["leak_suspected"] = [{"field": path, "entity": entity} for path, entity in leaks]
    if purposes is not None:
        entry["purposes"] = purposes
    return entry


def withhold(entry: dict[str, Any], outcome: Outcome) -> None:
    """A held event's entry once its class is found too small: withheld, no output."""
    entry["outcome"] = outcome.wire
    entry["output"] = None


def consent_entry(topic: str, partition: int, offset: int, timestamp_ms: int, outcome: Outcome, output: Any,
                  *, key_ids: Any = None, change: dict[str, Any] | None = None) -> dict[str, Any]:
    """The entry of a raw consent event (`type` consent): stored (`change`: domain, subject token,
    purpose, time) or dead-lettered (`key_ids`: the key that sealed it)."""
    entry: dict[str, Any] = {"type": "consent",
                             "event": {"topic": topic, "partition": partition, "offset": offset,
                                       "timestamp": timestamp_ms},
                             "outcome": outcome.wire, "output": output}
    if key_ids is not None:
        entry["key_ids"] = key_ids
    if change is not None:
        entry["consent"] = change
    return entry
