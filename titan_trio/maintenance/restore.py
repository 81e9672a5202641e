"""``titan restore``: put a backup in place of the database, so that nothing is lost.

The order of the steps is what makes it safe:

1. The service's instance lock is taken (dbtools.service_stopped) and held to the end:
   restore refuses while the service runs, and the service cannot start meanwhile.
2. The backup is verified before anything is touched: its SHA-256 against the
   ``<name>.sha256`` file beside it (``<hex>  <name>``, as ``sha256sum`` writes; a backup
   without one never finished and is refused), then it is decompressed to a private
   temporary file in the database's directory (same filesystem, so the swap is a rename),
   fsynced, and opened: ``PRAGMA integrity_check`` and the service's schema version. A
   corrupted or truncated backup fails here and the database was never touched.
3. The current database is kept as ``<db>.before-restore-<stamp>``, with its ``-wal`` and
   ``-shm`` as ``<db>.before-restore-<stamp>-wal`` / ``-shm`` (the names SQLite looks for,
   so the kept one opens with its newest commits). They are hard links made before
   anything is removed: at every moment the complete current database exists under one
   name or the other. A copy of the main file alone would lose the commits in the WAL.
4. The old ``-wal`` and ``-shm`` names are removed, then the verified file is renamed
   onto the database's path and the directory fsynced. The WAL goes first: a WAL left
   beside the restored file would be replayed into it. (Killed between the two, the old
   database stands without its WAL under its own name, and the kept trio is complete.)
5. ``integrity_check`` on the database now in place. Should it fail, the kept database
   goes back; every failure leaves the database as it was and is one line, exit 1.

Listing (``--list``): the local backups in ``database.backupDir``, newest first, each
"verified" when its SHA-256 matches its ``.sha256`` file (only the checksum: the full
verification is what a restore or ``titan backup --verify`` does), and the S3 ones when
``database.s3.bucket`` is set.

The verification here decompresses into the database's own directory (the file that is
then renamed into place), so it is restore's own; ``backups.verify_backup`` checks a
backup without keeping what it decompressed. S3 goes through ``maintenance.s3``
(``list_s3``, ``download`` with the checksum object).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import shlex
import shutil
import sqlite3
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from titan_trio.config import Config
from titan_trio.maintenance import s3
from titan_trio.maintenance.backups import (
    BackupError,
    BackupInfo,
    file_sha256,
    list_local,
    read_checksum,
)
from titan_trio.maintenance.dbtools import (
    MaintenanceError,
    Print,
    integrity_problems,
    resolve_db,
    service_stopped,
)
from titan_trio.private_files import make_private_dirs

CHUNK = 1024 * 1024


class RestoreError(MaintenanceError):
    """The restore refused or failed; the database is as it was. Exit 1."""


def checked(info: BackupInfo) -> bool:
    """Whether a backup's SHA-256 matches its ``.sha256`` file (only the checksum: the
    full verification is what a restore does)."""
    try:
        return info.sha256 is not None and file_sha256(info.path) == info.sha256
    except OSError:
        return False


def _local(backup_dir: str | os.PathLike[str]) -> list[BackupInfo]:
    try:
        return list_local(str(backup_dir))
    except BackupError as exc:
        raise RestoreError(str(exc)) from None


# ----- verification ---------------------------------------------------------------------


def verify_file(backup: Path, dest_dir: Path) -> Path:
    """Check ``backup`` and decompress it to a new private file in ``dest_dir``, fsynced
    and checked with ``integrity_check``; its path. RestoreError, with no file left, when
    anything is wrong."""
    if not backup.is_file():
        raise RestoreError(f"no backup at {backup}")
    try:
        if file_sha256(str(backup)) != read_checksum(str(backup)):
            raise RestoreError(
                f"{backup} does not match its checksum ({backup.name}.sha256): it is damaged"
            )
    except BackupError as exc:  # no checksum file, or not one of this backup
        raise RestoreError(str(exc)) from None
    except OSError as exc:
        raise RestoreError(f"cannot read {backup}: {exc.strerror}") from None
    fd, name = tempfile.mkstemp(dir=dest_dir, prefix=".restoring-", suffix=".db")  # 0600
    temp = Path(name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(backup, "rb") as src:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # bad or cut-off data
            raise RestoreError(f"{backup} does not decompress ({exc}): it is damaged") from None
        except OSError as exc:  # our side: disk full, no permission
            raise RestoreError(
                f"cannot decompress {backup} into {dest_dir}: {exc.strerror or exc}"
            ) from None
        _check_database(temp, what=str(backup))
        return temp
    except BaseException:
        _remove_sqlite_files(temp)
        raise


def _check_database(path: Path, what: str) -> None:
    """A sound SQLite file holding this service's schema, no newer than this code's."""
    from titan_trio.state.schema import SCHEMA_VERSION

    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise RestoreError(f"{what} is not a database: {exc}") from None
    try:
        problems = integrity_problems(conn)
        if problems != ["ok"]:
            raise RestoreError(f"{what} fails its integrity check: {'; '.join(problems[:3])}")
        try:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.DatabaseError:
            row = None
        if row is None:
            raise RestoreError(f"{what} is not a titan database (no schema version)")
        if int(row[0]) > SCHEMA_VERSION:
            raise RestoreError(
                f"{what} has schema version {row[0]}, newer than this titan's "
                f"({SCHEMA_VERSION}): restore it with the version that wrote it"
            )
    finally:
        conn.close()


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


# ----- the swap -------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    db: Path
    backup: Path
    kept: list[Path]  # the previous database and its -wal/-shm, under their kept names
    restored_at: str  # the stamp of the kept names


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def restore_file(db: Path, backup: Path) -> RestoreResult:
    """Verify ``backup`` and put it in place of ``db`` (the steps of the module
    docstring). RestoreError, with the database as it was, on any failure."""
    with service_stopped(db, "restore"):
        return _restore_locked(db, backup)


def _restore_locked(db: Path, backup: Path) -> RestoreResult:
    try:
        make_private_dirs(db.parent)
    except OSError as exc:
        raise RestoreError(f"cannot create {db.parent}: {exc.strerror}") from None
    temp = verify_file(backup, db.parent)
    try:
        return _swap(db, temp, backup)
    finally:
        _remove_sqlite_files(temp)


def _swap(db: Path, temp: Path, backup: Path) -> RestoreResult:
    stamp = _stamp()
    kept_base = Path(f"{db}.before-restore-{stamp}")
    pairs = [(Path(f"{db}{s}"), Path(f"{kept_base}{s}")) for s in ("", "-wal", "-shm")]
    pairs = [(live, kept) for live, kept in pairs if live.exists()]
    made: list[Path] = []
    try:
        for live, kept in pairs:
            os.link(live, kept)
            made.append(kept)
        _fsync_dir(db.parent)
    except OSError as exc:
        for kept in made:
            os.unlink(kept)
        raise RestoreError(
            f"cannot keep the current database as {kept_base}: {exc.strerror}; nothing changed"
        ) from None
    try:
        for live, _kept in pairs:
            if live != db:
                os.unlink(live)  # -wal and -shm: they belong to the kept database now
        os.rename(temp, db)
        _fsync_dir(db.parent)
        _after_check(db)
    except (OSError, RestoreError) as exc:
        _put_back(db, pairs)
        detail = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise RestoreError(f"restore failed ({detail}); the previous database is back") from None
    return RestoreResult(db, backup, [kept for _live, kept in pairs], stamp)


def _after_check(db: Path) -> None:
    try:
        conn = sqlite3.connect(str(db), isolation_level=None)
    except sqlite3.Error as exc:
        raise RestoreError(f"the restored database does not open: {exc}") from None
    try:
        problems = integrity_problems(conn)
    finally:
        conn.close()
    if problems != ["ok"]:
        raise RestoreError(f"the restored database fails its integrity check: {problems[0]}")


def _put_back(db: Path, pairs: list[tuple[Path, Path]]) -> None:
    """The kept database back under its own names (the kept links stay too)."""
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{db}{suffix}")
    kept_db = None
    for live, kept in pairs:
        if live == db:
            kept_db = kept
        else:
            os.link(kept, live)
    if kept_db is not None:
        swap = Path(f"{db}.putting-back")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(swap)
        os.link(kept_db, swap)
        os.rename(swap, db)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(db)
    _fsync_dir(db.parent)


def undo_commands(result: RestoreResult) -> list[str]:
    """The shell commands that put the previous database back (service stopped)."""
    db = str(result.db)
    q = shlex.quote
    aside = f"{db}.restored-{result.restored_at}"
    lines = [
        f"for s in '' -wal -shm; do if [ -e {q(db)}\"$s\" ]; then "
        f'mv {q(db)}"$s" {q(aside)}"$s"; fi; done'
    ]
    for kept in result.kept:
        suffix = str(kept)[len(f"{db}.before-restore-{result.restored_at}") :]
        lines.append(f"mv {q(str(kept))} {q(db + suffix)}")
    if not result.kept:
        lines = [f"mv {q(db)} {q(aside)}  # there was no database before the restore"]
    return lines


def print_result(result: RestoreResult, out: Print = print) -> None:
    out(f"restored {result.db} from {result.backup} (verified, integrity ok)")
    if result.kept:
        out("the previous database is kept as:")
        for kept in result.kept:
            out(f"  {kept}")
    else:
        out("there was no database before")
    out("to undo, with the service stopped:")
    for line in undo_commands(result):
        out(f"  {line}")


# ----- the command ------------------------------------------------------------------------


def _age(taken: datetime) -> str:
    seconds = int((datetime.now(UTC) - taken).total_seconds())
    if seconds < 3600:
        return f"{max(seconds, 0) // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MiB"


def print_list(cfg: Config, out: Print = print) -> None:
    backup_dir = Path(cfg.database.backup_dir).absolute()
    local = _local(backup_dir)
    out(f"local backups in {backup_dir}: {len(local)}")
    for b in local:
        state = "verified" if checked(b) else "NOT verified (checksum missing or wrong)"
        out(
            f"  {b.taken_at:%Y-%m-%d %H:%M:%S} UTC  {_age(b.taken_at):>7} ago  "
            f"{_size(b.size):>10}  {state}  {b.path}"
        )
    if cfg.database.s3.bucket is None:
        return
    try:
        remote = s3.list_s3(cfg.database.s3)
    except BackupError as exc:
        raise RestoreError(str(exc)) from None
    out(f"S3 backups in s3://{cfg.database.s3.bucket}/{cfg.database.s3.prefix}: {len(remote)}")
    for item in remote:
        taken = item.taken_at
        state = "NOT finished (no checksum)" if item.verified is False else "checksum present"
        out(
            f"  {taken:%Y-%m-%d %H:%M:%S} UTC  {_age(taken):>7} ago  "
            f"{_size(item.size):>10}  {state}  {item.key}"
        )


def latest_local(cfg: Config) -> Path:
    backups = _local(cfg.database.backup_dir)
    if not backups:
        raise RestoreError(f"no backup in {Path(cfg.database.backup_dir).absolute()}")
    return Path(backups[0].path).absolute()


@contextlib.contextmanager
def from_s3(cfg: Config, key: str | None, db: Path) -> Iterator[Path]:
    """The S3 backup ``key`` (default: the newest) downloaded, with its checksum file,
    into a private directory beside the database, removed afterwards."""
    if cfg.database.s3.bucket is None:
        raise RestoreError("--from-s3 needs database.s3.bucket in the configuration")
    try:
        if key is None:
            finished = [b for b in s3.list_s3(cfg.database.s3) if b.verified is not False]
            if not finished:
                raise RestoreError(f"no backup in s3://{cfg.database.s3.bucket}")
            key = finished[0].key  # newest first
        assert key is not None
        make_private_dirs(db.parent)
        where = Path(tempfile.mkdtemp(dir=db.parent, prefix=".restore-s3-"))
    except BackupError as exc:
        raise RestoreError(str(exc)) from None
    try:
        try:
            path = Path(s3.download(key, str(where), cfg.database.s3))
        except BackupError as exc:
            raise RestoreError(str(exc)) from None
        yield path
    finally:
        shutil.rmtree(where, ignore_errors=True)


def run_restore(
    cfg: Config,
    *,
    list_only: bool = False,
    latest: bool = False,
    s3_key: str | None = None,
    from_s3_flag: bool = False,
    path: str | None = None,
    confirm: Callable[[str], bool] | None = None,
    out: Print = print,
) -> RestoreResult | None:
    """What ``titan restore`` does with its arguments (one of them). ``confirm`` is asked
    "restore X from Y?" before anything changes (the CLI asks on a terminal); False
    stops with nothing done."""
    if list_only:
        print_list(cfg, out)
        return None
    db = resolve_db(cfg.database.path)
    if from_s3_flag:
        source = f"S3 backup {s3_key}" if s3_key else "the newest S3 backup"
    else:
        backup = latest_local(cfg) if latest else Path(path or "").absolute()
        source = str(backup)
    if confirm is not None and not confirm(f"restore {db} from {source}?"):
        raise RestoreError("restore not confirmed; nothing changed")
    if from_s3_flag:
        # the lock first: refused before anything is downloaded
        with service_stopped(db, "restore"), from_s3(cfg, s3_key, db) as downloaded:
            result = _restore_locked(db, downloaded)
    else:
        result = restore_file(db, backup)
    print_result(result, out)
    return result
