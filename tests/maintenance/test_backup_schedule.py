"""The in-service backup schedule: backups at each interval off the trio thread, INFO
when taken, ERROR when not, and the service goes on either way.

Real time, short intervals (a tenth of a second): the work happens in a worker thread,
which trio's MockClock cannot see, so the interval is injected in seconds instead."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from tests.helpers import eventually, service
from tests.maintenance.test_backups import make_db
from titan_trio.config import Config
from titan_trio.maintenance import backup_job
from titan_trio.maintenance.backup_job import BackupSchedule
from titan_trio.maintenance.backups import list_local, newest_backup_s, verify_backup

START = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def seconds_apart() -> Callable[[], datetime]:
    """A clock for the backups' names that moves a second per call."""
    calls = [0]

    def now() -> datetime:
        calls[0] += 1
        return START + timedelta(seconds=calls[0])

    return now


async def test_backups_run_each_interval_and_a_failure_does_not_stop_them(
    tmp_path: Path, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="titan.backup")
    db = make_db(tmp_path / "titan.db")
    cfg = make_config()
    schedule = BackupSchedule(cfg, interval_s=0.05, now=seconds_apart())
    async with trio.open_nursery() as nursery:
        await nursery.start(schedule.run)
        await eventually(lambda: len(list_local(cfg.database.backup_dir)) >= 2)
        taken = [r for r in caplog.records if r.getMessage().startswith("backup taken: ")]
        assert taken and all(r.levelno == logging.INFO for r in taken)

        db.rename(tmp_path / "away.db")  # the next runs fail
        failures = schedule.failures
        await eventually(lambda: schedule.failures >= failures + 2)
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert errors[-1].getMessage() == (f"scheduled backup failed: no database at {db}")

        (tmp_path / "away.db").rename(db)  # and the schedule carries on
        count = len(list_local(cfg.database.backup_dir))
        await eventually(lambda: len(list_local(cfg.database.backup_dir)) > count)
        nursery.cancel_scope.cancel()
    assert all(b.verified is None for b in list_local(cfg.database.backup_dir))  # finished


async def test_the_store_holds_its_wal_resets_while_each_backup_runs(
    tmp_path: Path, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The WAL's resets wait while a backup writes (Store.hold_wal_reset), and are let go
    after each run, a failed one too: a hold left on would let the WAL grow for good."""
    db = make_db(tmp_path / "titan.db")
    cfg = make_config()
    holds: list[bool] = []
    seen: list[bool] = []  # the hold as each backup saw it
    real = backup_job.create_backup

    def create(*args: object, **kwargs: object) -> object:
        seen.append(holds[-1])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_job, "create_backup", create)
    schedule = BackupSchedule(cfg, interval_s=60, now=seconds_apart(), hold_wal=holds.append)
    assert await schedule.run_once() is not None  # the runs themselves: no interval waited
    db.rename(tmp_path / "away.db")  # the next run fails
    assert await schedule.run_once() is None
    assert schedule.failures == 1 and len(list_local(cfg.database.backup_dir)) == 1
    assert seen and all(seen)
    assert holds == [True, False] * schedule.runs


async def test_a_stop_during_a_backup_leaves_no_temporary_file(
    tmp_path: Path, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_db(tmp_path / "titan.db", rows=2000, blob=500)
    cfg = make_config()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    real = backup_job.create_backup

    def slow_create(*args: object, **kwargs: object) -> object:
        def progress(done: int, total: int) -> None:
            trio.from_thread.run_sync(started.set, trio_token=token)
            threading_wait(0.01)  # a slow disk: one step at a time

        return real(*args, **{**kwargs, "progress": progress})  # type: ignore[arg-type]

    monkeypatch.setattr(backup_job, "create_backup", slow_create)
    monkeypatch.setattr("titan_trio.maintenance.backups.PAGES_PER_STEP", 1)
    schedule = BackupSchedule(cfg, interval_s=0.01)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(schedule.run)
            await started.wait()
            nursery.cancel_scope.cancel()  # the service stops mid-backup: no wait on it
        await eventually(lambda: os.listdir(cfg.database.backup_dir) == [])


def threading_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


async def test_the_service_runs_the_schedule_when_an_interval_is_set(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_job, "SECONDS_PER_MINUTE", 0.05)  # a "minute" of 50 ms
    cfg = make_config(database={"backupIntervalMin": 1})
    async with service(cfg) as engine:
        info = await eventually(lambda: list_local(cfg.database.backup_dir), limit_s=10)
        # the service's own database, whole, while it runs; and its metric sees it
        assert newest_backup_s(cfg.database.backup_dir) >= info[-1].taken_at.timestamp()
        tables = (await trio.to_thread.run_sync(verify_backup, info[-1].path)).tables
        assert {"orders", "trades", "system_events"} <= tables.keys()
        assert engine.health()["status"] in ("healthy", "degraded")


async def test_no_interval_no_schedule(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backup_job, "SECONDS_PER_MINUTE", 0.01)
    cfg = make_config()
    assert cfg.database.backup_interval_min is None
    async with service(cfg):
        await trio.sleep(0.2)
    assert list_local(cfg.database.backup_dir) == []
