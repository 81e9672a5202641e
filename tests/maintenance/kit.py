"""What the restore and db tests share: a small database in the service's shape (WAL,
a schema version), a backup made as ``titan backup`` names them (SQLite's backup API,
gzip, ``<name>.sha256`` beside it), and the CLI run in-process."""

from __future__ import annotations

import gzip
import hashlib
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from titan_trio.cli import main


def make_db(path: Path, rows: list[str]) -> None:
    """A WAL database with a schema version and ``rows`` in ``notes``."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        if conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0:
            conn.execute("INSERT INTO schema_version VALUES (1)")
        conn.execute("CREATE TABLE IF NOT EXISTS notes (text TEXT NOT NULL)")
        conn.executemany("INSERT INTO notes VALUES (?)", [(r,) for r in rows])
    conn.close()


def commit_and_die(path: Path, row: str) -> None:
    """Commit ``row`` and die without closing: the commit stays in ``-wal`` only, as
    after a crash (a clean close would fold it into the file and remove the WAL)."""
    code = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "c.execute('PRAGMA wal_autocheckpoint=0')\n"
        "c.execute('INSERT INTO notes VALUES (?)', (sys.argv[2],))\n"
        "c.commit()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), row], check=True, timeout=30)
    assert Path(f"{path}-wal").stat().st_size > 0


def rows(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT text FROM notes ORDER BY rowid")]
    finally:
        conn.close()


def make_backup(db: Path, backups: Path, age: timedelta = timedelta(0)) -> Path:
    backups.mkdir(mode=0o700, exist_ok=True)
    stamp = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H-%M-%S")
    copy = backups / f".backup-{stamp}.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
    src.close()
    dst.close()
    name = f"backup-{stamp}.db.gz"
    (backups / name).write_bytes(gzip.compress(copy.read_bytes()))
    copy.unlink()
    write_checksum(backups / name)
    return backups / name


def write_checksum(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file of ``directory`` (not below) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def titan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``titan ARGS`` in this process: exit code, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
