"""`gateway demo` keeps its folder (keyring, worker and broker logs) only when it fails, and says so."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from gateway.embedded import demo
from gateway.errors import GatewayError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture
def tmpdir_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_demo_that_succeeds_removes_its_folder_and_names_no_log(
        tmpdir_here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Path] = []

    def run(_schemas: Path, _n: int, _plans: object, workdir: Path, _out: Path | None) -> None:
        (workdir / "worker.log").write_text("{}\n")
        seen.append(workdir)

    monkeypatch.setattr(demo, "_run_demo", run)
    assert demo.run_demo(SCHEMAS, 1) == 0
    assert seen and not seen[0].exists()
    assert list(tmpdir_here.iterdir()) == []
    out = capsys.readouterr()
    assert "log" not in out.out + out.err and str(seen[0]) not in out.out + out.err


@pytest.mark.parametrize("error", [GatewayError("the gateway worker exited with code 1"), KeyboardInterrupt()])
def test_a_demo_that_fails_keeps_its_folder_and_says_where(
        tmpdir_here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        error: BaseException) -> None:
    def run(_schemas: Path, _n: int, _plans: object, workdir: Path, _out: Path | None) -> None:
        (workdir / "worker.log").write_text('{"msg":"boom"}\n')
        raise error

    monkeypatch.setattr(demo, "_run_demo", run)
    with pytest.raises(type(error)):
        demo.run_demo(SCHEMAS, 1)
    [kept] = list(tmpdir_here.iterdir())
    assert kept.name.startswith("gateway-demo-") and (kept / "worker.log").read_text() == '{"msg":"boom"}\n'
    assert f"the demo failed: its folder is kept for a look at {kept}" in capsys.readouterr().err


def test_progress_on_a_pipe_is_a_few_lines(capsys: pytest.CaptureFixture[str]) -> None:
    progress = demo._Progress(100, tty=False)
    for _ in range(50):
        progress.update("waiting for the worker to join", 0)
    for n in range(0, 101, 5):
        progress.update("sanitizing", n)
    progress.close(100)
    lines = capsys.readouterr().out.splitlines()
    assert "\r" not in "".join(lines)
    assert lines[0] == "  waiting for the worker to join: 0/100 events audited"
    assert lines[1].startswith("  sanitizing: 0/100 events audited")
    assert lines[-1].startswith("  100/100 events audited")
    assert len(lines) == 3
