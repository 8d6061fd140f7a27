"""The demo's policy: the shipped schemas, with the payments policy tuned so that every step of the
tour shows within a minute.

Why not the shipped payments policy as it is: its DP windows are 60 s long with 10 s of grace (a
release would take over a minute, a refusal many more), it declares no purpose (nothing to show
consent on), and its encrypted fields are under the gateway's shared keys (forgetting a subject
would leave its fields readable). The demo's copy (written to the demo's own folder, the shipped
file untouched) changes exactly that:

- one DP aggregate, `payments_by_currency`: a noisy count per currency over windows of
  WINDOW_S seconds, epsilon EPSILON each, under a budget that pays for BUDGET_WINDOWS windows per
  subject and hour, so the ledger refuses the ones after;
- one consent purpose, `marketing`: a view with the event id, the subject's token, the amount and
  the country, published only for subjects whose consent is in force;
- `customer_name` encrypted under a per-subject key, so `forget` makes it unreadable.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson

from gateway.core.policy.lint import load_plans
from gateway.core.policy.plan import Plan

PAYMENTS = "example.payments.Payment"  # the shipped schema the demo tunes
AGGREGATE = "payments_by_currency"
PURPOSE = "marketing"
FORGOTTEN_FIELD = "customer_name"
WINDOW_S = 2
GRACE_S = 2
EPSILON = 1.0
# windows the budget pays for, counted from when the aggregate worker starts (every window costs its
# epsilon, data or not): the one holding the demo's events, a few windows later, is among them
BUDGET_WINDOWS = 10
SUBJECT_DOMAIN = "customer"

_AGGREGATE = {"name": AGGREGATE, "metric": "count", "group_by": ["currency"], "time_field": "occurred_at",
              "window_s": WINDOW_S, "grace_s": GRACE_S, "epsilon": EPSILON, "delta": 1e-6,
              "max_groups_per_subject": 1, "max_records_per_group": 1, "period_s": 3600}
_BUDGET = {"period_s": 3600, "epsilon_cap": BUDGET_WINDOWS * EPSILON, "delta_cap": 1e-4}


def purpose_topic(schema: dict[str, Any]) -> str:
    return f"{schema['privacy']['sanitized_topic'].rsplit('.', 1)[0]}.{PURPOSE}"


def tune_payments(schema: dict[str, Any]) -> dict[str, Any]:
    """The payments schema with the demo's aggregate, budget, purpose and per-subject encryption."""
    tuned = orjson.loads(orjson.dumps(schema))
    privacy = tuned["privacy"]
    privacy["aggregates"] = [_AGGREGATE]
    privacy["budget"] = _BUDGET
    privacy["purposes"] = {PURPOSE: {
        "topic": purpose_topic(tuned), "basis": "consent",
        "fields": {"event_id": "keep", "user_id": {"tokenize": {"domain": SUBJECT_DOMAIN}}, "amount_minor": "keep",
                   "country": "keep"}}}
    for field in tuned["fields"]:
        if field["name"] == FORGOTTEN_FIELD:
            field["privacy"] = {"encrypt": {"per_subject": True}}
    return tuned


def write_demo_schemas(shipped: Path, out: Path) -> tuple[list[Plan], Plan | None]:
    """Copy the schemas of `shipped` to `out`, the payments one tuned; return the plans and the
    payments plan (None: the folder has none, and the demo shows the sanitize path only)."""
    out.mkdir(parents=True, exist_ok=True)
    found = False
    for path in sorted(shipped.glob("*.avsc")):
        schema = orjson.loads(path.read_bytes())
        if isinstance(schema, dict) and f"{schema.get('namespace')}.{schema.get('name')}" == PAYMENTS:
            (out / path.name).write_bytes(orjson.dumps(tune_payments(schema), option=orjson.OPT_INDENT_2))
            found = True
        else:
            shutil.copyfile(path, out / path.name)
    plans = load_plans(out)
    return plans, next((p for p in plans if p.schema.fullname == PAYMENTS), None) if found else None
