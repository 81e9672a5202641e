"""What the service creates on disk is private to its user whatever the umask: the
database with its -wal and -shm, the instance lock and the directories made for them 0600
and 0700; the log directory 0700 and every log file, rotated ones too, 0600."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from tests.helpers import service
from titan_trio import logs
from titan_trio.config import Config
from titan_trio.logs import setup_logging
from titan_trio.state import records
from titan_trio.state.store import Store


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_database_wal_shm_lock_and_new_directories_are_private(
    tmp_path: Path, make_config: Callable[..., Config], umask: int
) -> None:
    db = tmp_path / "var" / "titan" / "titan.db"
    cfg = make_config(database={"path": str(db)})
    async with service(cfg, ready=False) as engine:
        await engine.store.call(records.add_event, 0, "INFO", "test", "a commit")
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.lock")]
        assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
    for directory in (db.parent, db.parent.parent):
        assert oct(mode(directory)) == "0o700", directory


async def test_an_existing_database_keeps_its_mode_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The operator may share it through a group on purpose: told, not overruled."""
    path = tmp_path / "t.db"
    path.touch()
    path.chmod(0o640)
    async with trio.open_nursery() as nursery:
        await nursery.start(Store(str(path)).run)
        nursery.cancel_scope.cancel()
    assert mode(path) == 0o640
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"database {path} is open to other users (mode 0640)" in w for w in warnings)


def test_log_directory_and_files_are_private_rotated_ones_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    monkeypatch.setattr(logs, "MAX_BYTES", 2000)
    directory = tmp_path / "var" / "log" / "titan"
    handle = setup_logging("INFO", str(directory))
    try:
        for k in range(100):  # about 8 KB: several rotations
            logging.getLogger("titan.test").info("line %03d of a log that rotates", k)
    finally:
        handle.stop()
    files = sorted(directory.iterdir())
    assert [f.name for f in files[:3]] == [
        "titan-execution.log",
        "titan-execution.log.1",
        "titan-execution.log.2",
    ]
    assert {f.name: oct(mode(f)) for f in files} == {f.name: "0o600" for f in files}
    for made in (directory, directory.parent, directory.parent.parent):
        assert oct(mode(made)) == "0o700", made
