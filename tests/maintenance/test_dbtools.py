"""``titan db check | analyze | vacuum | stats`` on real SQLite files, with and without
the service's instance lock held (what "the service runs" means)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.maintenance.kit import make_db, one_line, rows, snapshot, titan
from titan_trio.engine import InstanceLock
from titan_trio.maintenance import dbtools


@pytest.fixture
def config(tmp_path: Path, config_file: Callable[..., Path]) -> Path:
    make_db(tmp_path / "titan.db", [f"note {n}" for n in range(2000)])
    return config_file()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[None]:
    """The service's instance lock held, as by a running service."""
    lock = InstanceLock(str(tmp_path / "titan.db"))
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def test_check_a_good_database_while_the_service_runs(
    tmp_path: Path, config: Path, running: None, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "titan.db"
    before = db.read_bytes()
    code, out, err = titan(capsys, "db", "check", "--config", str(config))
    assert (code, err) == (0, "")
    assert out == f"{db}: integrity ok, foreign keys ok\n"
    assert db.read_bytes() == before  # read-only


def test_check_a_damaged_database(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "titan.db"
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[3 * page : 3 * page + 8] = b"\xff" * 8  # a b-tree page's header
    db.write_bytes(bytes(data))
    code, out, err = titan(capsys, "db", "check", "--config", str(config))
    assert code == 1, out + err
    assert "problem(s):" in out.splitlines()[0]
    assert "titan restore --latest" in out.splitlines()[-1]


def test_check_names_a_foreign_key_violation(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with sqlite3.connect(tmp_path / "titan.db") as conn:
        conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        conn.execute("CREATE TABLE child (parent_id INTEGER REFERENCES parent(id))")
        conn.execute("INSERT INTO child VALUES (7)")  # foreign_keys is off by default
    conn.close()
    code, out, _err = titan(capsys, "db", "check", "--config", str(config))
    assert code == 1
    assert "child row 1 refers to a missing row of parent" in out


def test_no_database(
    tmp_path: Path, config_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file()
    for command in ("check", "stats", "analyze", "vacuum"):
        code, _out, err = titan(capsys, "db", command, "--config", str(config))
        assert code == 1
        assert f"no database at {tmp_path / 'titan.db'}" in one_line(err)
    assert not (tmp_path / "titan.db").exists()  # none created by looking


def shrinkable(db: Path) -> int:
    """Free pages made by deleting most rows; their number."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM notes WHERE rowid > 10")
    conn.close()
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()


def freelist(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()


def test_vacuum_is_refused_while_the_service_runs_unless_online(
    tmp_path: Path, config: Path, running: None, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "titan.db"
    assert shrinkable(db) > 0
    before = snapshot(tmp_path)
    code, out, err = titan(capsys, "db", "vacuum", "--config", str(config))
    assert code == 1 and out == ""
    line = one_line(err)
    assert "vacuum refused: the service" in line and "stop it first" in line
    assert snapshot(tmp_path) == before
    code, out, err = titan(capsys, "db", "vacuum", "--online", "--config", str(config))
    assert code == 0, err
    assert "commits wait for the whole vacuum" in out  # the cost, said
    assert freelist(db) == 0
    assert rows(db) == [f"note {n}" for n in range(10)]


def test_vacuum_offline_folds_the_wal_back(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "titan.db"
    shrinkable(db)
    size = db.stat().st_size
    code, out, err = titan(capsys, "db", "vacuum", "--config", str(config))
    assert code == 0, err
    assert out.startswith(f"vacuumed {db}: ")
    assert db.stat().st_size < size / 2
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0
    assert rows(db) == [f"note {n}" for n in range(10)]


def test_vacuum_refused_without_the_space(
    tmp_path: Path,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = tmp_path / "titan.db"
    need = dbtools.vacuum_space_needed(db, str(tmp_path))
    assert need == {str(tmp_path): 2 * db.stat().st_size}  # one filesystem: twice
    usage = dbtools.shutil.disk_usage(tmp_path)
    full = usage._replace(free=2 * db.stat().st_size - 1)
    monkeypatch.setattr(dbtools.shutil, "disk_usage", lambda _where: full)
    before = snapshot(tmp_path)
    code, _out, err = titan(capsys, "db", "vacuum", "--config", str(config))
    assert code == 1
    assert "vacuum refused: it needs" in one_line(err) and "free space first" in err
    assert snapshot(tmp_path) == before


def test_analyze_online(
    tmp_path: Path, config: Path, running: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = titan(capsys, "db", "analyze", "--config", str(config))
    assert (code, out, err) == (0, f"analyzed {tmp_path / 'titan.db'}\n", "")
    conn = sqlite3.connect(tmp_path / "titan.db")
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_stat1").fetchone()[0] > 0
    finally:
        conn.close()


def test_stats_prints_tables_and_the_wal_while_a_writer_holds_it(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "titan.db"
    writer = sqlite3.connect(db, isolation_level=None)  # as the service: no autocheckpoint
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        for n in range(3):
            writer.execute("INSERT INTO notes VALUES (?)", (f"more {n}",))
        code, out, err = titan(capsys, "db", "stats", "--config", str(config))
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"database   {db}"
        notes = next(line for line in lines if line.startswith("notes "))
        assert notes.split()[1] == "2003"
        assert "KiB" in notes or "MiB" in notes  # sizes from dbstat
        wal = next(line for line in lines if line.startswith("wal "))
        assert "3 frames in use, 0 of them copied" in wal
        writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        _code, out, _err = titan(capsys, "db", "stats", "--config", str(config))
        assert "3 frames in use, 3 of them copied into the database" in out
    finally:
        writer.close()
    assert dbtools.read_wal_index(tmp_path / "missing-shm") is None
