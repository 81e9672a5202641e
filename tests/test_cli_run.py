"""``titan run``'s account of a start and a stop: the settings this version ignores are
named at start; whatever else failed on the way down, the last log line names what
stopped the service."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from titan_trio import cli, engine
from titan_trio.config import Config, parse_config
from titan_trio.errors import StoreError, TitanError

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "config" / "default.json"


class FeedDied(TitanError):
    pass


async def crash_with_a_failing_cleanup(_cfg: Config, _lock: object = None) -> None:
    """One service fails; another, cancelled because of it, fails again in its cleanup
    (a write on a full disk): trio reports both, the cause first."""

    async def cleanup_fails() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise StoreError("database or disk is full (SQLITE_FULL)")

    async def crash() -> None:
        await trio.testing.wait_all_tasks_blocked()
        raise FeedDied("the market feed died")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cleanup_fails)
        nursery.start_soon(crash)


def test_last_line_of_a_stop_names_its_cause(
    make_config: Callable[..., Config],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(engine, "run_service", crash_with_a_failing_cleanup)
    assert cli._run(make_config(), "config.json") == cli.EXIT_FAIL
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "titan"]
    assert lines[-2:] == [
        ("ERROR", "while stopping: database or disk is full (SQLITE_FULL)"),
        ("CRITICAL", "stopped: the market feed died"),
    ]


async def stops_at_once(_cfg: Config, _lock: object = None) -> None:
    pass


def test_start_names_each_setting_this_version_ignores(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engine, "run_service", stops_at_once)
    doc = {"broker": {"slippagePct": 0.5}, "database": {"backupIntervalMin": 60}}
    cfg = parse_config(doc, environ={})
    assert cli._run(cfg, "config.json") == cli.EXIT_OK
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [  # the backup interval is used now: not named
        "broker.slippagePct = 0.5 is ignored in this version "
        "(paper fills walk the book's depth instead)",
    ]


def test_a_log_that_cannot_be_opened_is_one_line_on_stderr(
    tmp_path: Path, config_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not-a-directory").write_text("")
    logs = tmp_path / "not-a-directory" / "logs"
    assert cli.main(["run", "--config", str(config_file(logging={"dir": str(logs)}))]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"titan: cannot open the log in {logs}: File exists ({logs.parent})\n"
    assert not (tmp_path / "titan.db").exists()


def test_a_reader_that_stops_early_gets_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``titan market | head -0``: the pipe closes under the CLI, which says nothing."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte is written
    closed_pipe = os.fdopen(write_end, "w", buffering=1)  # each line written at once
    monkeypatch.setattr(sys, "stdout", closed_pipe)
    try:
        code = cli.main(["config", "validate", str(DEFAULT_CONFIG)])
    finally:
        monkeypatch.undo()
        with contextlib.suppress(OSError):
            closed_pipe.close()
    assert code == 0
    assert "Traceback" not in capsys.readouterr().err
