"""The embedded broker's log goes when the broker stops cleanly and stays, named, when it failed."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest

from gateway.embedded.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_a_clean_stop_removes_the_log_and_the_temporary_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the data directory is made here
    log_path = tmp_path / "logs" / "broker.log"
    log_path.parent.mkdir()
    with EmbeddedBroker(log_path=log_path) as broker:
        assert log_path.stat().st_size > 0  # the broker writes it while it runs
        data_dir = broker.data_dir
        assert data_dir.is_relative_to(tmp_path)
    assert broker.failure is None
    assert not log_path.exists() and not data_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]


def test_a_failed_broker_keeps_its_log_and_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    broker = EmbeddedBroker().start()  # log inside the temporary data directory
    assert broker.process is not None and broker.log_path.is_relative_to(broker.data_dir)
    broker.process.kill()  # the JVM dies under it
    broker.process.wait(30)
    with caplog.at_level(logging.WARNING, logger="gateway.embedded.broker"):
        broker.stop()
    assert broker.failure is not None and "exited on its own" in broker.failure
    kept = tmp_path / f"gateway-broker-{broker.port}.log"
    assert broker.log_path == kept and kept.stat().st_size > 0  # moved out before the data directory went
    assert not broker.data_dir.exists()
    [record] = [r for r in caplog.records if r.name == "gateway.embedded.broker"]
    assert record.log == str(kept)  # type: ignore[attr-defined]
    broker.stop()  # a second stop leaves the kept log alone
    assert kept.exists()
