"""The demo's tuned copy of the shipped payments policy (gateway/embedded/demo_policy.py): it declares
what each step of the tour needs, compiles, leaves the shipped file alone, and a folder without
the payments schema still runs (the sanitize path only). And the demo's log lines go to its file."""

from __future__ import annotations

import logging
from pathlib import Path

import orjson
import pytest

from gateway.dp.mechanisms import AggregateMechanism
from gateway.embedded import demo_policy
from gateway.ops.logs import log_to_file, setup_logging

REPO = Path(__file__).resolve().parents[2]


def test_the_tuned_payments_policy_has_what_each_step_shows(tmp_path: Path) -> None:
    shipped = (REPO / "schemas" / "payments.avsc").read_bytes()
    plans, payments = demo_policy.write_demo_schemas(REPO / "schemas", tmp_path)
    assert (REPO / "schemas" / "payments.avsc").read_bytes() == shipped  # the shipped policy untouched
    assert payments is not None and len(plans) == len(list((REPO / "schemas").glob("*.avsc")))
    # consent: one purpose with basis consent, its view keyed by the subject's token
    [purpose] = payments.purposes
    assert (purpose.name, purpose.spec.basis, purpose.topic) == ("marketing", "consent", "payments.marketing")
    assert payments.consent_purposes == ("marketing",)
    # DP: one short window, and a budget that pays for BUDGET_WINDOWS of them, then refuses
    [spec] = payments.aggregates
    assert spec.name == demo_policy.AGGREGATE and spec.window_ms == demo_policy.WINDOW_S * 1000
    assert spec.budget_epsilon_cap == pytest.approx(demo_policy.BUDGET_WINDOWS * spec.epsilon)
    assert AggregateMechanism(spec).threshold < 20  # a few dozen subjects per currency pass key selection
    # forget: the name is under the subject's own key (erasable), the card stays under the shared KEK
    fields = {f["name"]: f.get("privacy") for f in orjson.loads((tmp_path / "payments.avsc").read_bytes())["fields"]}
    assert fields[demo_policy.FORGOTTEN_FIELD] == {"encrypt": {"per_subject": True}}
    assert fields["card_number"] == "encrypt"


def test_a_folder_without_the_payments_schema_runs_the_sanitize_path_only(tmp_path: Path) -> None:
    plans, payments = demo_policy.write_demo_schemas(REPO / "examples" / "schemas", tmp_path)
    assert payments is None and plans


def test_log_to_file_takes_the_log_lines_off_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        log_to_file(tmp_path / "demo.log")
        logging.getLogger("gateway.topics").info("created topics", extra={"topics": ["a"]})
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert capsys.readouterr().err == ""
    assert '"msg":"created topics"' in (tmp_path / "demo.log").read_text()
