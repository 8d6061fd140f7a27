"""The shipped package has no un-noised path: no pytest detection, no no-noise switch in the source,
and no such option (hidden or not) on `gateway aggregate`. Tests without noise inject the double in
tests/dp_doubles.py instead."""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.dp.mechanisms import AggregateMechanism
from gateway.runtime.jobs.aggregate import AggregateWorker

ROOT = Path(__file__).resolve().parents[2] / "gateway"
# identifiers, flags and variables (prose such as "draws no noise" is fine): PYTEST_CURRENT_TEST,
# pytest, no_noise / no-noise / NoNoise / NO_NOISE, noise_free, test_mode / testmode, GATEWAY_DP_TEST_*
FORBIDDEN = re.compile(r"PYTEST_CURRENT_TEST|pytest|no[-_]?noise|noise[-_]?(free|less)|skip[-_]?noise|"
                       r"test[-_]?mode|GATEWAY_DP_TEST|dp[-_]test", re.IGNORECASE)


def _sources() -> list[Path]:
    files = [p for p in sorted(ROOT.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    assert len([p for p in files if p.suffix == ".py"]) > 30
    return files


def test_no_file_of_the_package_mentions_pytest_or_a_no_noise_switch() -> None:
    hits = []
    for path in _sources():
        text = path.read_bytes().decode("utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if FORBIDDEN.search(line):
                hits.append(f"{path.relative_to(ROOT.parent)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)
    assert not (ROOT / "dp" / "testmode.py").exists()


def test_the_pattern_catches_what_it_must() -> None:
    for line in ('if os.environ.get("PYTEST_CURRENT_TEST"):', "no_noise: NoNoise | None", "--dp-test-no-noise",
                 'NO_NOISE_MECHANISM = "none:test-mode"', "from gateway.dp.testmode import allow_no_noise",
                 'os.environ["GATEWAY_DP_TEST_NOISE"]', "if self.noise_free:", "NoiseFreeMechanism"):
        assert FORBIDDEN.search(line), line
    for line in ("Draws no noise.", "adds noise once per group", "the noise step"):
        assert not FORBIDDEN.search(line), line


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_gateway_aggregate_has_no_noise_or_test_option(capsys: pytest.CaptureFixture[str]) -> None:
    aggregate = _subparser("aggregate")
    options = [o for action in aggregate._actions for o in action.option_strings]  # hidden ones too
    dests = [action.dest for action in aggregate._actions]
    assert "--bootstrap" in options and "--dp-idle-close-s" in options
    assert not [o for o in options + dests if re.search(r"noise|test", o, re.IGNORECASE)], options
    assert not [a.dest for a in aggregate._actions if a.help == argparse.SUPPRESS]
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["aggregate", "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert "--dp-idle-close-s" in shown and not re.search(r"noise|--dp-test", shown, re.IGNORECASE)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["aggregate", "--dp-test-no-noise"])
    capsys.readouterr()


def test_the_worker_and_the_mechanism_take_no_switch() -> None:
    assert list(inspect.signature(AggregateMechanism).parameters) == ["spec"]
    worker = inspect.signature(AggregateWorker)
    assert list(worker.parameters) == ["config", "plans", "mechanism_factory"]
    assert worker.parameters["mechanism_factory"].default is AggregateMechanism
