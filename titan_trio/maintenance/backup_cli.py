"""``titan backup`` and ``titan backup --verify [PATH]``.

``titan backup`` works on the files, not through the API: it runs the same whether the
service runs or not (SQLite's online backup reads a consistent snapshot while the
service writes), so the hourly cron job needs neither the API nor its token. The running
service sees the new backup at once: its metric titan_backup_last_success_timestamp_seconds
reads the backup directory.

Output: the backup's file, size and SHA-256, the S3 key when uploaded, and what
retention deleted, on stdout; a progress line on stderr every 10 % for a database above
PROGRESS_ABOVE_BYTES (a small one is done before anyone would read it). Any failure is
one line on stderr and exit 1 (a bad configuration: 2); an S3 failure after the local
backup was taken says so, and still exits 1, so cron's log and the stale-backup alert
tell the operator. The work runs in a child process at the lowest CPU priority, as for
the service's schedule (backups.create_backup); the command itself keeps its priority
(it may run inside another program, e.g. a test, whose priority it must not change).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from titan_trio.config import load_config
from titan_trio.maintenance.backups import BackupError, newest_local, verify_backup

PROGRESS_ABOVE_BYTES = 50 * 1024 * 1024
EXIT_OK, EXIT_FAIL = 0, 1


def add_backup_parser(sub: Any, with_config: Callable[[argparse.ArgumentParser], None]) -> None:
    """The ``backup`` subcommand, on the ``titan`` parser's subparsers."""
    p = sub.add_parser(
        "backup",
        help="back up the database now (or --verify a backup)",
        description="Back up the database with SQLite's online backup API (safe while the "
        "service runs) into database.backupDir as backup-YYYY-MM-DDTHH-MM-SS.db.gz with its "
        "SHA-256, delete backups older than database.backupRetentionDays (never the newest), "
        "and upload to S3 when database.s3.bucket is set. Exit 0 done, 1 failed, 2 bad "
        "configuration.",
    )
    with_config(p)
    p.add_argument(
        "--verify",
        nargs="?",
        const="",
        metavar="PATH",
        help="verify a backup instead (default: the newest in database.backupDir): "
        "checksum, decompress, PRAGMA integrity_check, row counts per table",
    )
    p.set_defaults(func=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.verify is not None:
        return _verify(args.verify or None, cfg.database.backup_dir)
    from titan_trio.maintenance.backup_job import run_backup

    run = run_backup(cfg, progress=_progress_printer(cfg.database.path))
    info = run.info
    print(f"backup {info.path}")
    print(f"  size {_size(info.size)} ({info.size} bytes), sha256 {info.sha256}")
    if run.s3_key is not None:
        print(f"  uploaded to s3://{cfg.database.s3.bucket}/{run.s3_key} (server-side encrypted)")
    pruned = run.pruned_local + run.pruned_s3
    if pruned:
        days = cfg.database.backup_retention_days
        print(f"  deleted {len(pruned)} backups older than {days} days:")
        for what in pruned:
            print(f"    {what}")
    if run.s3_error is not None:
        raise BackupError(f"the local backup was taken, but {run.s3_error}")
    return EXIT_OK


def _verify(path: str | None, backup_dir: str) -> int:
    if path is None:
        newest = newest_local(backup_dir)
        if newest is None:
            raise BackupError(f"no finished backup in {backup_dir} to verify")
        path = newest.path
    report = verify_backup(path)
    print(f"{report.path}: OK")
    print(
        f"  sha256 {report.sha256} matches; integrity_check ok; {_size(report.size)} "
        f"compressed, {_size(report.database_size)} database"
    )
    width = max([len("table"), *(len(name) for name in report.tables)])
    print(f"  {'table':<{width}}  rows")
    for name, rows in report.tables.items():
        print(f"  {name:<{width}}  {rows}")
    return EXIT_OK


def _progress_printer(db_path: str) -> Callable[[int, int], None] | None:
    """A progress callback printing every 10 % on stderr, for a large database only."""
    try:
        size = os.path.getsize(db_path)
        size += os.path.getsize(db_path + "-wal") if os.path.exists(db_path + "-wal") else 0
    except OSError:
        return None  # the backup itself will say what is wrong
    if size <= PROGRESS_ABOVE_BYTES:
        return None
    shown = [-1]

    def show(done: int, total: int) -> None:
        tenth = done * 10 // total if total else 10
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"titan: backup {tenth * 10} % ({done} of {total} pages)", file=sys.stderr)

    return show


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
