"""One backup run as ``titan backup`` and the in-service schedule do it, and the schedule.

A run: take the backup (backups.create_backup), delete the local backups past the
retention, then, when ``database.s3.bucket`` is set, upload it and apply the retention
in S3. Retention runs only after a successful backup, so a run of failures never eats
into the backups that exist. An S3 failure does not undo the local backup: the run
reports it (``BackupRun.s3_error``) and ``titan backup`` exits 1, the schedule logs an
ERROR; the local copy stays.

The schedule (``database.backupIntervalMin``) runs a backup every N minutes from a
worker thread (``trio.to_thread.run_sync``) that follows the backup's child process:
the copy, the integrity check and the gzip run there, at the lowest CPU priority
(backups.create_backup says why a process), so the service's threads keep their CPUs.
The first run comes one interval after the start (a restart loop must not turn into a
backup loop). A failure is logged as ERROR and the next run comes at its time: a backup
problem never stops the service. On shutdown the worker is told to stop (it interrupts
the child, which deletes its temporary files) and abandoned, so a stop never waits on a
backup of a large database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from titan_trio.config import Config
from titan_trio.maintenance.backups import (
    BackupError,
    BackupInfo,
    ProgressFn,
    create_backup,
    prune_local,
)

log = logging.getLogger("titan.backup")

SECONDS_PER_MINUTE = 60.0


@dataclass
class BackupRun:
    """What one run did."""

    info: BackupInfo
    pruned_local: list[str] = field(default_factory=list)
    s3_key: str | None = None
    pruned_s3: list[str] = field(default_factory=list)
    s3_error: str | None = None


def run_backup(
    cfg: Config,
    *,
    progress: ProgressFn | None = None,
    now: datetime | None = None,
    cancel: threading.Event | None = None,
) -> BackupRun:
    """Back up, prune, upload and prune in S3 (when configured). Raises BackupError
    when no backup was taken; an S3 failure is in the result instead."""
    db = cfg.database
    info = create_backup(db.path, db.backup_dir, progress=progress, now=now, cancel=cancel)
    run = BackupRun(info)
    run.pruned_local = prune_local(db.backup_dir, db.backup_retention_days, info.taken_at)
    if db.s3.bucket:
        from titan_trio.maintenance import s3

        try:
            client = s3.client(db.s3)
            run.s3_key = s3.upload(info, db.s3, s3=client).key
            run.pruned_s3 = s3.prune_s3(db.s3, db.backup_retention_days, info.taken_at, s3=client)
        except BackupError as exc:
            run.s3_error = str(exc)
    return run


class BackupSchedule:
    """Every ``interval_s`` (default ``database.backupIntervalMin`` minutes), one
    ``run_backup`` off the trio thread. ``now`` names the backups (tests inject it).
    ``hold_wal``: called with True before each run and False after it, however it ended
    (the service passes Store.hold_wal_reset: the store's WAL resets wait while the
    backup's writes keep the disk busy)."""

    def __init__(
        self,
        cfg: Config,
        *,
        interval_s: float | None = None,
        now: Callable[[], datetime] | None = None,
        hold_wal: Callable[[bool], None] | None = None,
    ) -> None:
        minutes = cfg.database.backup_interval_min
        if interval_s is None and minutes is None:
            raise ValueError("no backup interval: database.backupIntervalMin is not set")
        self.cfg = cfg
        self.interval_s = interval_s if interval_s is not None else minutes * SECONDS_PER_MINUTE  # type: ignore[operator]
        self._now = now or (lambda: datetime.now(UTC))
        self._hold_wal = hold_wal or (lambda _hold: None)
        self.runs = 0
        self.failures = 0
        self.last: BackupRun | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        log.info(
            "backups every %g min into %s%s",
            self.interval_s / SECONDS_PER_MINUTE,
            self.cfg.database.backup_dir,
            f" and s3://{self.cfg.database.s3.bucket}/{self.cfg.database.s3.prefix}"
            if self.cfg.database.s3.bucket
            else "",
        )
        task_status.started()
        while True:
            await trio.sleep(self.interval_s)
            await self.run_once()

    async def run_once(self) -> BackupRun | None:
        """One backup in a worker thread; logged, never raised (but cancellation)."""
        cancel = threading.Event()
        self.runs += 1
        self._hold_wal(True)
        try:
            run = await trio.to_thread.run_sync(
                lambda: run_backup(self.cfg, now=self._now(), cancel=cancel),
                abandon_on_cancel=True,
            )
        except trio.Cancelled:
            cancel.set()  # the worker stops at its next step and deletes its files
            raise
        except BackupError as exc:
            self.failures += 1
            log.error("scheduled backup failed: %s", exc)
            return None
        except Exception as exc:  # a bug: logged with its traceback, the service goes on
            self.failures += 1
            log.error("scheduled backup failed (a bug): %r", exc, exc_info=exc)
            return None
        finally:
            self._hold_wal(False)
        self.last = run
        info = run.info
        log.info(
            "backup taken: %s (%d bytes, sha256 %s)%s%s",
            info.path,
            info.size,
            info.sha256,
            f", uploaded to s3://{self.cfg.database.s3.bucket}/{run.s3_key}" if run.s3_key else "",
            f", {len(run.pruned_local) + len(run.pruned_s3)} old backups deleted"
            if run.pruned_local or run.pruned_s3
            else "",
        )
        if run.s3_error is not None:
            self.failures += 1
            log.error(
                "scheduled backup: the local backup %s was taken, but %s", info.path, run.s3_error
            )
        return run
