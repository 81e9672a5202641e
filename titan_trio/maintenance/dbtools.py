"""``titan db check | vacuum | analyze | stats``: the guide's database maintenance, done
so that none of it can lose data or stall the running service by surprise.

"The service is running" means its instance lock (``<db>.lock``, engine.InstanceLock) is
held. ``service_stopped`` takes that very lock, non-blocking, and holds it for the whole
operation, so the service cannot start in the middle of a vacuum or a restore.

Choices where the guide is silent:

- ``check`` opens the database read-only (``mode=ro``), so it runs beside the live
  service: ``PRAGMA integrity_check`` (the whole file, unlike the service's start-up
  ``quick_check``) and ``PRAGMA foreign_key_check``. On a stopped WAL database a read-only
  connection leaves an empty ``-wal`` and ``-shm`` behind (SQLite cannot delete them
  read-only); they are harmless and the next writer reuses them.
- ``analyze`` runs ``ANALYZE``: short on this database's size, so it is allowed online;
  the service's commits wait for it (busy_timeout), they do not fail.
- ``vacuum`` rewrites the whole file under the write lock: while it runs every commit of
  the service waits, and a vacuum longer than the service's busy timeout (5 s) makes its
  commits fail (health unhealthy, trading narrowed). So it refuses while the service
  runs unless ``--online`` says the operator accepts that. It needs free space for a
  copy of the database in the temporary directory and for the rewritten pages in the WAL
  beside the database (up to twice the database on one filesystem): checked first, per
  filesystem, so a full disk refuses before it starts instead of failing half-way. Offline
  it then folds the WAL back in (``wal_checkpoint(TRUNCATE)``); online the service's own
  checkpoints do that.
- ``stats`` writes nothing, not even a checkpoint: ``PRAGMA wal_checkpoint(PASSIVE)``
  would copy pages into the database behind the service's store thread, which owns
  checkpoints (store.py). What the last checkpoint did is read instead from the WAL index
  (the ``-shm`` file, https://www.sqlite.org/walformat.html): ``mxFrame``, the frames in
  the WAL, and ``nBackfill``, how many of them a checkpoint already copied into the
  database. SQLite records no time for a checkpoint, so none is shown. Table sizes come
  from the ``dbstat`` virtual table when SQLite has it (bytes per table, its indexes
  apart), else row counts alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from titan_trio.errors import StartupError, TitanError

Print = Callable[[str], None]

# Waits of our own connection on the service's write lock (the service uses the same).
BUSY_TIMEOUT_MS = 5000
# How many problems a check prints before "and N more".
SHOWN_PROBLEMS = 20


class MaintenanceError(TitanError):
    """A maintenance command refused or failed; nothing was changed. Exit 1."""


class ServiceRunning(MaintenanceError):
    """The instance lock is held: the service runs on this database."""


def resolve_db(path: str) -> Path:
    """The database the service uses: ``database.path``, relative to the current
    directory as for the service (run these commands where it runs, ``TITAN_DATA``)."""
    return Path(os.path.abspath(path))


def require_db(db: Path) -> None:
    if not db.is_file():
        raise MaintenanceError(
            f"no database at {db}: check database.path (a relative path is relative to "
            "the directory the service runs in; run titan from there)"
        )


@contextlib.contextmanager
def service_stopped(db: Path, what: str) -> Iterator[None]:
    """Hold the service's instance lock for the block: ServiceRunning when the service
    has it. The lock file is engine.InstanceLock's own (same file, same flock), so a
    service started meanwhile is refused, naming this process."""
    from titan_trio.engine import InstanceLock

    lock = InstanceLock(str(db))
    try:
        lock.acquire()
    except StartupError as exc:
        if "another titan instance" not in str(exc):
            raise MaintenanceError(str(exc)) from None
        holder = _lock_holder(Path(lock.path))
        raise ServiceRunning(
            f"{what} refused: the service (pid {holder}) is running on {db}; stop it "
            "first (titan-stop, or systemctl stop titan-execution)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def service_running(db: Path) -> bool:
    """Whether the instance lock is held now (taken and given back at once)."""
    try:
        with service_stopped(db, "check"):
            return False
    except ServiceRunning:
        return True


def _lock_holder(lock: Path) -> str:
    try:
        return lock.read_text(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _read_only(db: Path) -> sqlite3.Connection:
    require_db(db)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise MaintenanceError(f"cannot open database {db}: {exc}") from None
    return conn


def _writable(db: Path) -> sqlite3.Connection:
    require_db(db)
    try:
        conn = sqlite3.connect(str(db), isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        raise MaintenanceError(f"cannot open database {db}: {exc}") from None
    return conn


# ----- check ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckReport:
    integrity: list[str]  # ["ok"] when sound
    foreign_keys: list[str]  # one line per violation

    @property
    def ok(self) -> bool:
        return self.integrity == ["ok"] and not self.foreign_keys


def integrity_problems(conn: sqlite3.Connection) -> list[str]:
    """``PRAGMA integrity_check``'s lines (``["ok"]`` when sound); a file SQLite cannot
    read at all is one problem, not an exception."""
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]


def check(db: Path) -> CheckReport:
    """Integrity and foreign keys, read-only: safe while the service runs."""
    conn = _read_only(db)
    try:
        integrity = integrity_problems(conn)
        foreign: list[str] = []
        if integrity == ["ok"]:
            try:
                rows = conn.execute("PRAGMA foreign_key_check").fetchall()
            except sqlite3.DatabaseError as exc:
                rows, foreign = [], [str(exc)]
            foreign += [
                f"{table} row {rowid} refers to a missing row of {parent}"
                for table, rowid, parent, _fk in rows
            ]
        return CheckReport(integrity, foreign)
    finally:
        conn.close()


def print_check(db: Path, report: CheckReport, out: Print = print) -> None:
    if report.ok:
        out(f"{db}: integrity ok, foreign keys ok")
        return
    problems = [p for p in report.integrity if p != "ok"] + report.foreign_keys
    out(f"{db}: {len(problems)} problem(s):")
    for line in problems[:SHOWN_PROBLEMS]:
        out(f"  {line}")
    if len(problems) > SHOWN_PROBLEMS:
        out(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
    out("restore the latest good backup: titan restore --list, then titan restore --latest")


# ----- analyze, vacuum --------------------------------------------------------------------


def analyze(db: Path) -> None:
    conn = _writable(db)
    try:
        conn.execute("ANALYZE")
    except sqlite3.Error as exc:
        raise MaintenanceError(f"ANALYZE of {db} failed: {exc}") from None
    finally:
        conn.close()


def _sizes(db: Path) -> tuple[int, int]:
    """The database file and its WAL, in bytes."""
    wal = Path(f"{db}-wal")
    return db.stat().st_size, (wal.stat().st_size if wal.exists() else 0)


def vacuum_space_needed(db: Path, temp_dir: str | None = None) -> dict[str, int]:
    """Bytes VACUUM needs free, per filesystem (named by a directory on it): a copy of
    the database in the temporary directory, and the rewritten pages in the WAL beside
    the database. On one filesystem, twice the database."""
    size = sum(_sizes(db))
    temp = Path(temp_dir or tempfile.gettempdir())
    needed: dict[int, tuple[str, int]] = {}
    for where in (db.parent, temp):
        dev = where.stat().st_dev
        name, total = needed.get(dev, (str(where), 0))
        needed[dev] = (name, total + size)
    return dict(needed.values())


def vacuum(db: Path, *, online: bool, out: Print = print) -> None:
    """VACUUM, after checking free space. Offline (the default) under the instance lock,
    then the WAL folded back into the file; ``online`` beside the running service."""
    require_db(db)
    for where, need in vacuum_space_needed(db).items():
        free = shutil.disk_usage(where).free
        if free < need:
            raise MaintenanceError(
                f"vacuum refused: it needs {_mb(need)} free on the filesystem of {where}, "
                f"which has {_mb(free)} (a copy of the database, and its pages again in "
                "the WAL); free space first"
            )
    before = sum(_sizes(db))
    if online:
        out(
            "vacuum --online: the service's commits wait for the whole vacuum (it holds "
            "the write lock); one waiting longer than 5 s fails and trading narrows"
        )
        _vacuum(db, checkpoint="PASSIVE")
    else:
        with service_stopped(db, "vacuum"):
            _vacuum(db, checkpoint="TRUNCATE")
    after = sum(_sizes(db))
    out(f"vacuumed {db}: {_mb(before)} -> {_mb(after)} (database and WAL)")


def _vacuum(db: Path, checkpoint: str) -> None:
    conn = _writable(db)
    try:
        conn.execute("VACUUM")
        conn.execute(f"PRAGMA wal_checkpoint({checkpoint})")
    except sqlite3.Error as exc:
        raise MaintenanceError(f"VACUUM of {db} failed, the database is unchanged: {exc}") from None
    finally:
        conn.close()


# ----- stats ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TableStats:
    name: str
    rows: int
    table_bytes: int | None  # None: SQLite without dbstat
    index_bytes: int | None


@dataclass(frozen=True)
class WalState:
    wal_bytes: int  # the -wal file (its high-water mark, not the live frames)
    frames: int | None  # frames of the current WAL (mxFrame); None: no WAL index
    checkpointed: int | None  # of them, copied into the database (nBackfill)


@dataclass(frozen=True)
class DbStats:
    path: Path
    file_bytes: int
    page_size: int
    page_count: int
    freelist_pages: int
    journal_mode: str
    tables: list[TableStats]
    wal: WalState


def read_wal_index(shm: Path) -> tuple[int, int] | None:
    """(mxFrame, nBackfill) from a WAL index, or None when there is none or it is not
    readable. The header is kept twice so a reader can tell a torn read: both copies must
    agree (a few retries while the service writes)."""
    for _ in range(10):
        try:
            with open(shm, "rb") as f:
                head = f.read(136)
        except OSError:
            return None
        if len(head) < 136:
            return None
        first, second = head[0:48], head[48:96]
        if first != second or first[12] == 0:  # torn, or not initialised
            continue
        order = "<" if sys.byteorder == "little" else ">"  # the writer's native order
        (mx_frame,) = struct.unpack_from(f"{order}I", head, 16)
        (backfill,) = struct.unpack_from(f"{order}I", head, 96)
        return mx_frame, backfill
    return None


def stats(db: Path) -> DbStats:
    """Sizes and the WAL's state, read-only (nothing written, no checkpoint)."""
    conn = _read_only(db)
    try:
        pragma = lambda name: conn.execute(f"PRAGMA {name}").fetchone()[0]  # noqa: E731
        page_size, page_count = pragma("page_size"), pragma("page_count")
        freelist, journal = pragma("freelist_count"), pragma("journal_mode")
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        sizes: dict[str, tuple[int, int]] | None = None
        try:
            sizes = {}
            for table, kind, size in conn.execute(
                "SELECT m.tbl_name, m.type, SUM(s.pgsize) FROM dbstat s "
                "JOIN sqlite_master m ON m.name = s.name GROUP BY m.tbl_name, m.type"
            ):
                own, idx = sizes.get(table, (0, 0))
                sizes[table] = (own + size, idx) if kind == "table" else (own, idx + size)
        except sqlite3.OperationalError:  # no such table: dbstat (not compiled in)
            sizes = None
        tables = []
        for name in names:
            (rows,) = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            own, idx = (None, None) if sizes is None else sizes.get(name, (0, 0))
            tables.append(TableStats(name, rows, own, idx))
    except sqlite3.DatabaseError as exc:
        raise MaintenanceError(f"cannot read {db}: {exc} (titan db check tells more)") from None
    finally:
        conn.close()
    wal_bytes = _sizes(db)[1]
    index = read_wal_index(Path(f"{db}-shm")) if wal_bytes else None
    wal = WalState(wal_bytes, *(index if index else (None, None)))
    return DbStats(db, db.stat().st_size, page_size, page_count, freelist, journal, tables, wal)


def print_stats(s: DbStats, out: Print = print) -> None:
    out(f"database   {s.path}")
    out(
        f"file       {_mb(s.file_bytes)}: {s.page_count} pages of {s.page_size} bytes, "
        f"{s.freelist_pages} free (reclaimed by vacuum), journal {s.journal_mode}"
    )
    if s.wal.wal_bytes == 0:
        out("wal        none (everything is in the database file)")
    elif s.wal.frames is None:
        out(f"wal        {_mb(s.wal.wal_bytes)} (no WAL index to read its frames from)")
    else:
        out(
            f"wal        {_mb(s.wal.wal_bytes)} file; {s.wal.frames} frames in use, "
            f"{s.wal.checkpointed} of them copied into the database by the last checkpoint"
        )
    with_sizes = any(t.table_bytes is not None for t in s.tables)
    out("")
    header = f"{'table':<22}{'rows':>12}"
    if with_sizes:
        header += f"{'table':>12}{'indexes':>12}"
    out(header)
    for t in s.tables:
        line = f"{t.name:<22}{t.rows:>12}"
        if with_sizes:
            line += f"{_mb(t.table_bytes or 0):>12}{_mb(t.index_bytes or 0):>12}"
        out(line)
    if not with_sizes:
        out("(table sizes need SQLite's dbstat, which this SQLite lacks: row counts only)")


def _mb(n: int) -> str:
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"
