"""Backups: taken while a writer commits, verified, refused cleanly, pruned."""

from __future__ import annotations

import gzip
import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fill_disk
from titan_trio.libc import libc_function
from titan_trio.maintenance import backups
from titan_trio.maintenance.backups import (
    BACKUP_RE,
    BackupError,
    backup_name,
    create_backup,
    list_local,
    newest_local,
    prune_local,
    verify_backup,
)

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def make_db(path: Path, rows: int = 200, blob: int = 100) -> Path:
    """A WAL database with a table of ``rows`` random blobs and an index."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, data BLOB, tag INTEGER)")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("CREATE INDEX items_tag ON items (tag)")
        conn.executemany(
            "INSERT INTO items (data, tag) VALUES (?, ?)",
            [(os.urandom(blob), i % 7) for i in range(rows)],
        )
        conn.execute("INSERT INTO notes (text) VALUES ('hello')")
    conn.close()
    return path


def files_in(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


# ----- a backup while a writer commits -------------------------------------------------------


class Writer(threading.Thread):
    """Commits continuously on its own connection: row n of ``ledger`` and
    ``counter.value = n`` in one transaction. ``committed`` is the last n committed."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.committed = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=5000")
            n = self.committed
            while not self.stop.is_set():
                n += 1
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO ledger (n, pad) VALUES (?, randomblob(300))", (n,))
                conn.execute("UPDATE counter SET value = ? WHERE id = 1", (n,))
                conn.execute("COMMIT")
                self.committed = n
            conn.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


def test_a_backup_taken_while_a_writer_commits_holds_every_commit_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "live.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE ledger (n INTEGER PRIMARY KEY, pad BLOB)")
        conn.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, value INTEGER)")
        conn.execute("INSERT INTO counter VALUES (1, 0)")
    conn.close()
    # small steps, so the copy takes many of them while the writer commits between
    monkeypatch.setattr(backups, "PAGES_PER_STEP", 4)
    writer = Writer(db)
    writer.start()
    try:
        while writer.committed < 300 and writer.error is None:
            threading.Event().wait(0.005)
        seen_during: list[int] = []

        def progress(done: int, total: int) -> None:
            # at the first step, wait until the writer has committed more: the backup
            # must go on without them (one snapshot) and without starting over
            if not seen_during:
                target = writer.committed + 20
                for _ in range(2000):
                    if writer.committed >= target or writer.error is not None:
                        break
                    threading.Event().wait(0.001)
                seen_during.append(writer.committed)

        before = writer.committed  # committed before the backup started
        info = create_backup(str(db), str(tmp_path / "backups"), progress=progress, now=NOW)
        after = writer.committed
    finally:
        writer.stop.set()
        writer.join(10)
    assert writer.error is None, writer.error
    assert seen_during and seen_during[0] >= before + 20, "the writer was held up"
    assert after > before

    restored = tmp_path / "restored.db"
    restored.write_bytes(gzip.decompress(Path(info.path).read_bytes()))
    with sqlite3.connect(f"file:{restored}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        value = conn.execute("SELECT value FROM counter").fetchone()[0]
        count, low, high = conn.execute("SELECT count(*), min(n), max(n) FROM ledger").fetchone()
    conn.close()
    # consistent: every transaction whole; complete: every commit before the backup;
    # one snapshot: none of the commits the first step waited for
    assert (count, low, high) == (value, 1, value)
    assert before <= value < seen_during[0]
    # the name, the checksum file and the file modes
    assert BACKUP_RE.match(Path(info.path).name)
    assert Path(info.path).name == backup_name(NOW) == "backup-2026-03-10T12-00-00.db.gz"
    assert files_in(tmp_path / "backups") == [
        "backup-2026-03-10T12-00-00.db.gz",
        "backup-2026-03-10T12-00-00.db.gz.sha256",
    ]
    digest = hashlib.sha256(Path(info.path).read_bytes()).hexdigest()
    assert info.sha256 == digest and info.size == os.path.getsize(info.path)
    assert Path(info.path + ".sha256").read_text() == f"{digest}  {Path(info.path).name}\n"
    assert os.stat(info.path).st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "backups").st_mode & 0o777 == 0o700
    # sha256sum itself agrees
    done = subprocess.run(
        ["sha256sum", "-c", Path(info.path).name + ".sha256"],
        cwd=tmp_path / "backups",
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_backup_is_a_plain_gzip_that_compresses_and_repeats_byte_for_byte(
    tmp_path: Path,
) -> None:
    # What an operator relies on: gunzip (or zcat) reads it without our tools, rows of
    # text take far less room than in the database, and the same database gives the
    # same bytes (no time or name in the gzip header), so two backups compare by hash.
    db = tmp_path / "text.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE fills (id INTEGER PRIMARY KEY, symbol TEXT, note TEXT)")
        conn.executemany(
            "INSERT INTO fills (symbol, note) VALUES (?, ?)",
            [(("BTCUSDT", "ETHUSDT")[i % 2], f"fill {i} of order {i // 3}") for i in range(20_000)],
        )
    conn.close()
    first = create_backup(str(db), str(tmp_path / "b"), now=NOW)
    second = create_backup(str(db), str(tmp_path / "b"), now=NOW + timedelta(hours=1))
    assert first.sha256 == second.sha256
    assert first.size < db.stat().st_size / 3
    gunzip = subprocess.run(
        ["gzip", "-dc", first.path], capture_output=True, check=True, timeout=60
    ).stdout
    assert gunzip == gzip.decompress(Path(second.path).read_bytes())
    restored = tmp_path / "restored.db"
    restored.write_bytes(gunzip)
    with sqlite3.connect(f"file:{restored}?mode=ro", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM fills").fetchone() == (20_000,)
    conn.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="hole punching is Linux's")
def test_a_copy_in_memory_is_given_back_while_it_is_gzipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The memory a copy in /dev/shm holds goes back as the gzip reads it, not in one
    # gigabyte at the end; the gzip still holds every byte. A copy on the disk is left
    # whole (it is deleted in slices afterwards).
    monkeypatch.setattr(backups, "RELEASE_EVERY", 1 << 20)
    data = os.urandom(8 << 20) + b"tail"
    for release in (True, False):
        copy, gz = tmp_path / f"copy-{release}.db", tmp_path / f"copy-{release}.db.gz"
        copy.write_bytes(data)
        digest = backups._compress(str(copy), str(gz), release=release)
        assert gzip.decompress(gz.read_bytes()) == data
        assert digest == hashlib.sha256(gz.read_bytes()).hexdigest()
        assert copy.stat().st_size == len(data)
        kept = copy.stat().st_blocks * 512  # bytes the file still holds
        if release:  # at most the tail after the last whole RELEASE_EVERY
            assert kept <= 1 << 20
        else:
            assert kept >= len(data)


def cached_share(path: Path) -> float:
    """The share of ``path``'s pages in the page cache (mincore over a mapping of it)."""
    import ctypes
    import mmap

    mincore = libc_function("mincore", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p])
    assert mincore is not None
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = ctypes.create_string_buffer(pages)
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as m:
        anchor = (ctypes.c_char * 1).from_buffer(m)  # the mapping's address; nothing read
        try:
            assert mincore(ctypes.addressof(anchor), size, vector) == 0
        finally:
            del anchor
    return sum(b & 1 for b in vector.raw) / pages


def evict(path: Path) -> None:
    """Drop ``path``'s clean pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore, fadvise: Linux")
def test_the_warm_up_reads_an_evicted_database_back_into_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A host short of memory evicts a database nothing read for a while; the warm-up
    # before a copy in memory reads it back, so the copy (which holds the snapshot)
    # reads memory. Within its budget only: a budget of 0 reads nothing.
    db = make_db(tmp_path / "a.db", rows=400, blob=20_000)  # ~8 MB
    evict(db)
    if cached_share(db) > 0.2:
        pytest.skip("this filesystem keeps its pages cached (tmpfs?): nothing to warm")
    assert backups._warm_up(str(db), budget_s=0) == 0.0
    assert cached_share(db) < 0.2
    monkeypatch.setattr(backups, "WARM_CHUNK", 64 * 1024)
    monkeypatch.setattr(backups, "WARM_DUTY", 1.0)  # no pauses: the test never waits
    backups._warm_up(str(db))
    assert cached_share(db) == 1.0
    assert backups._warm_up(str(tmp_path / "missing.db")) == 0.0  # the copy reports it


def test_a_backup_of_the_same_second_never_replaces_one(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db")
    first = create_backup(str(db), str(tmp_path / "b"), now=NOW)
    content = Path(first.path).read_bytes()
    with pytest.raises(BackupError, match="exists already"):
        create_backup(str(db), str(tmp_path / "b"), now=NOW)
    assert Path(first.path).read_bytes() == content
    assert len(files_in(tmp_path / "b")) == 2


def test_a_missing_database_is_an_error_not_a_new_file(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no database at"):
        create_backup(str(tmp_path / "nope.db"), str(tmp_path / "b"), now=NOW)
    assert not (tmp_path / "nope.db").exists()
    assert not (tmp_path / "b").exists() or files_in(tmp_path / "b") == []


def test_a_file_that_is_not_a_database_fails_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "x.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BackupError, match="not a database"):
        create_backup(str(tmp_path / "x.db"), str(tmp_path / "b"), now=NOW)
    assert files_in(tmp_path / "b") == []


def test_a_cancelled_backup_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = make_db(tmp_path / "a.db", rows=500)
    monkeypatch.setattr(backups, "PAGES_PER_STEP", 2)
    cancel = threading.Event()
    with pytest.raises(BackupError, match="cancelled"):
        create_backup(
            str(db), str(tmp_path / "b"), now=NOW, cancel=cancel, progress=lambda d, t: cancel.set()
        )
    assert files_in(tmp_path / "b") == []


def test_a_backup_interrupted_between_its_two_files_leaves_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interrupt that stops a backup child (the schedule's cancel) landing after the
    compressed file took its name and before its checksum did: the backup is not left
    behind unfinished, with no checksum (it would be listed as such, and never used)."""
    db = make_db(tmp_path / "a.db", rows=50)
    real = backups._link_into_place

    def link(temp: str, final: str) -> None:
        if final.endswith(backups.CHECKSUM_SUFFIX):
            raise KeyboardInterrupt
        real(temp, final)

    monkeypatch.setattr(backups, "_link_into_place", link)
    with pytest.raises(KeyboardInterrupt):
        backups.create_backup_here(str(db), str(tmp_path / "b"), now=NOW)
    assert files_in(tmp_path / "b") == []


def test_a_cancelled_backup_stops_its_child_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup runs in a child process: a cancel (the service stopping) ends it, at
    the copy's next step, and it deletes what it wrote."""
    db = make_db(tmp_path / "a.db", rows=500)
    monkeypatch.setattr(backups, "PAGES_PER_STEP", 2)
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        child = real_popen(command, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(backups.subprocess, "Popen", recording)
    cancel = threading.Event()
    steps: list[int] = []

    def cancel_at_the_third_step(done: int, total: int) -> None:
        steps.append(done)
        if len(steps) == 3:
            cancel.set()

    with pytest.raises(BackupError, match="cancelled"):
        create_backup(
            str(db), str(tmp_path / "b"), now=NOW, cancel=cancel, progress=cancel_at_the_third_step
        )
    assert len(steps) == 3  # not one step more
    assert len(started) == 1 and started[0].poll() is not None  # ended, not left running
    assert files_in(tmp_path / "b") == []


def test_a_cancel_stops_a_backup_that_reports_no_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch: Path
) -> None:
    """Without a progress callback (the in-service schedule) the child copies without
    waiting for a go-ahead at each step; a cancel interrupts it all the same, and it
    deletes what it wrote, in memory and beside the backups."""
    db = make_db(tmp_path / "a.db", rows=64, blob=1 << 20)  # the gzip alone takes > 1 s
    started: list[subprocess.Popen[bytes]] = []
    real_popen = subprocess.Popen

    def recording(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(real_popen(command, **kwargs))
        return started[-1]

    monkeypatch.setattr(backups.subprocess, "Popen", recording)
    cancel = threading.Event()

    def cancel_once_the_copy_exists() -> None:
        for _ in range(20_000):
            if any(n.endswith(".db") for n in os.listdir(scratch)):
                cancel.set()
                return
            threading.Event().wait(0.001)

    watcher = threading.Thread(target=cancel_once_the_copy_exists, daemon=True)
    watcher.start()
    with pytest.raises(BackupError, match="cancelled"):
        create_backup(str(db), str(tmp_path / "b"), now=NOW, cancel=cancel)
    watcher.join(30)
    assert cancel.is_set()
    assert started[0].args[-1] == "0"  # it was told not to report
    assert started[0].poll() is not None  # ended, not left running
    assert files_in(tmp_path / "b") == [] and files_in(scratch) == []


def test_the_backup_child_reports_a_failure_in_one_line(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "titan_trio.maintenance.backup_child",
            str(tmp_path / "none.db"),
            str(tmp_path / "b"),
            "",
            "1024",
            "",
            "0",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.strip() == f"no database at {tmp_path / 'none.db'}", run.stderr


# ----- where the temporary copy goes ------------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory standing in for /dev/shm."""
    where = tmp_path / "shm"
    where.mkdir()
    monkeypatch.setattr(backups, "SCRATCH_DIR", str(where))
    return where


def copies_during_the_copy(
    db: Path, backup_dir: Path, scratch: Path
) -> tuple[list[str], list[str]]:
    """Back up ``db``; the temporary copies seen in ``scratch`` and in ``backup_dir`` at
    the copy's first step (the child waits for the go-ahead meanwhile)."""
    seen: dict[str, list[str]] = {}

    def look(done: int, total: int) -> None:
        if not seen:
            for name, where in (("scratch", scratch), ("beside", backup_dir)):
                names = os.listdir(where) if where.is_dir() else []
                seen[name] = [n for n in names if n.endswith(".db")]

    info = create_backup(str(db), str(backup_dir), now=NOW, progress=look)
    assert verify_backup(info.path).tables["items"] == 500
    return seen["scratch"], seen["beside"]


def test_the_copy_is_made_in_memory_when_memory_has_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch: Path
) -> None:
    # A writer at the disk's full speed stalls the service's commits: with room in
    # memory, the disk sees only the compressed backup.
    monkeypatch.setattr(backups, "PAGES_PER_STEP", 2)
    db = make_db(tmp_path / "a.db", rows=500)
    in_memory, beside = copies_during_the_copy(db, tmp_path / "b", scratch)
    assert len(in_memory) == 1 and beside == []
    assert BACKUP_RE.match(in_memory[0]) is None and in_memory[0].startswith(".backup-")
    assert files_in(scratch) == []  # deleted once compressed


def test_without_room_in_memory_the_copy_is_made_beside_the_backups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch: Path
) -> None:
    monkeypatch.setattr(backups, "PAGES_PER_STEP", 2)
    db = make_db(tmp_path / "a.db", rows=500)
    size = db.stat().st_size
    # memory for the copy once, not twice over with the headroom
    monkeypatch.setattr(backups, "_memory_room", lambda: size + backups.SCRATCH_HEADROOM)
    in_memory, beside = copies_during_the_copy(db, tmp_path / "b", scratch)
    assert in_memory == [] and len(beside) == 1


def test_with_no_scratch_directory_the_copy_is_made_beside_the_backups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backups, "PAGES_PER_STEP", 2)
    monkeypatch.setattr(backups, "SCRATCH_DIR", "")  # TITAN_BACKUP_SCRATCH set empty
    db = make_db(tmp_path / "a.db", rows=500)
    in_memory, beside = copies_during_the_copy(db, tmp_path / "b", tmp_path / "unused")
    assert in_memory == [] and len(beside) == 1


def test_room_in_memory_is_what_the_cgroups_lower_limit_leaves(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/titan.service\n")  # cgroup v2 only
    base = tmp_path / "system.slice/titan.service"
    base.mkdir(parents=True)
    mb = 2**20
    (base / "memory.current").write_text(f"{300 * mb}\n")
    (base / "memory.max").write_text(f"{500 * mb}\n")
    (base / "memory.high").write_text(f"{400 * mb}\n")  # systemd's MemoryHigh: throttled above
    assert backups._memory_room(str(tmp_path), str(proc)) == 100 * mb
    (base / "memory.high").write_text("max\n")
    assert backups._memory_room(str(tmp_path), str(proc)) == 200 * mb
    (base / "memory.current").write_text(f"{600 * mb}\n")  # over it already: no room
    assert backups._memory_room(str(tmp_path), str(proc)) == 0
    (base / "memory.max").write_text("max\n")  # no limit: what the system has
    room = backups._memory_room(str(tmp_path), str(proc))
    assert room is not None and room > 200 * mb


def test_room_in_memory_under_a_cgroup_v1_limit(tmp_path: Path) -> None:
    """The memory controller on the legacy hierarchy (a hybrid host: v2's line has no
    controller): memory.limit_in_bytes, systemd's MemoryMax there. The copy in memory
    cannot be reclaimed: past the limit the kernel would kill the service."""
    proc = tmp_path / "cgroup"
    proc.write_text(
        "9:name=systemd:/system.slice/titan.service\n"
        "4:memory:/system.slice/titan.service\n"
        "1:cpu,cpuacct:/system.slice/titan.service\n"
        "0::/system.slice/titan.service\n"
    )
    base = tmp_path / "memory/system.slice/titan.service"
    base.mkdir(parents=True)
    mb = 2**20
    (base / "memory.limit_in_bytes").write_text(f"{500 * mb}\n")
    (base / "memory.usage_in_bytes").write_text(f"{120 * mb}\n")
    assert backups._memory_room(str(tmp_path), str(proc)) == 380 * mb
    (base / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    room = backups._memory_room(str(tmp_path), str(proc))
    assert room is not None and room > 380 * mb


def test_a_copy_in_memory_left_by_a_killed_backup_is_deleted_by_the_next(
    tmp_path: Path, scratch: Path
) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    orphan = scratch / f".backup-{dead_pid}-abc.db"
    orphan.write_bytes(b"x" * 1000)
    running = scratch / f".backup-{os.getpid()}-def.db"  # a backup still under way
    running.write_bytes(b"y")
    other = scratch / "someone-elses-file"
    other.write_bytes(b"z")
    db = make_db(tmp_path / "a.db")
    create_backup(str(db), str(tmp_path / "b"), now=NOW)
    assert files_in(scratch) == sorted([running.name, other.name])


def test_writes_beside_the_backups_are_paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[float] = []
    real_monotonic = backups.time.monotonic
    # a clock the pacing's sleeps move on, without waiting for them
    monkeypatch.setattr(backups.time, "sleep", asked.append)
    monkeypatch.setattr(backups.time, "monotonic", lambda: real_monotonic() + sum(asked))
    path = tmp_path / "f"
    chunk = os.urandom(1 << 20)
    for rate, expect_sleep in ((8 << 20, True), (0, False)):
        asked.clear()
        path.write_bytes(b"")
        writeback = backups._Writeback(str(path), keep_cached=False, rate=rate)
        with open(path, "ab") as f:
            for _ in range(32):
                f.write(chunk)
                f.flush()
                writeback.wrote(f.tell())
        writeback.close()
        if expect_sleep:
            # 32 MB at 8 MB/s: close to 4 s of waiting (less the time the writes took)
            assert 2.0 < sum(asked) <= 4.0, asked
        else:
            assert asked == []


# ----- verify ----------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path: Path) -> Path:
    db = make_db(tmp_path / "a.db", rows=300)
    return Path(create_backup(str(db), str(tmp_path / "b"), now=NOW).path)


def rewrite_checksum(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")


def test_verify_a_good_backup_counts_the_rows(good: Path) -> None:
    report = verify_backup(str(good))
    assert report.tables == {"items": 300, "notes": 1}
    assert report.taken_at == NOW
    assert report.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert files_in(good.parent) == [good.name, good.name + ".sha256"]  # no temp left


def test_verify_finds_a_flipped_byte(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    good.write_bytes(bytes(data))
    with pytest.raises(BackupError, match=r"does not match its checksum.*damaged"):
        verify_backup(str(good))


def test_verify_finds_a_truncated_file(good: Path) -> None:
    good.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(BackupError, match="does not match its checksum"):
        verify_backup(str(good))
    rewrite_checksum(good)  # truncated before its checksum was taken: gzip tells
    with pytest.raises(BackupError, match="not a complete gzip file"):
        verify_backup(str(good))
    assert files_in(good.parent) == [good.name, good.name + ".sha256"]


def test_verify_refuses_a_backup_without_its_checksum(good: Path) -> None:
    Path(f"{good}.sha256").unlink()
    with pytest.raises(BackupError, match=r"has no checksum file.*did not finish"):
        verify_backup(str(good))


def test_verify_refuses_a_checksum_of_another_file(good: Path) -> None:
    Path(f"{good}.sha256").write_text(f"{'0' * 64}  backup-2020-01-01T00-00-00.db.gz\n")
    with pytest.raises(BackupError, match="is not a checksum of"):
        verify_backup(str(good))


def test_verify_refuses_a_gzip_of_something_else(good: Path) -> None:
    good.write_bytes(gzip.compress(b"hello, not a database\n" * 1000))
    rewrite_checksum(good)
    with pytest.raises(BackupError, match="not hold a valid SQLite database"):
        verify_backup(str(good))


def test_verify_refuses_a_damaged_database(tmp_path: Path, good: Path) -> None:
    db = tmp_path / "damaged.db"
    db.write_bytes(gzip.decompress(good.read_bytes()))
    data = bytearray(db.read_bytes())
    page = 4096
    for offset in range(2 * page + 200, len(data) - page, page):  # damage every page's cells
        data[offset : offset + 64] = os.urandom(64)
    db.write_bytes(bytes(data))
    good.write_bytes(gzip.compress(db.read_bytes()))
    rewrite_checksum(good)
    with pytest.raises(BackupError, match=f"{good.name}.*(integrity_check|malformed|valid)"):
        verify_backup(str(good))


# ----- failures leave nothing ------------------------------------------------------------


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may write: a read-only tmpfs as root (root ignores modes),
    else a directory of mode 0500."""
    where = tmp_path / "ro"
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o500)
        yield where
        where.chmod(0o700)
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "--lazy", str(where)], check=False)


def test_a_backup_into_a_read_only_directory_fails_clearly(
    tmp_path: Path, readonly_dir: Path
) -> None:
    db = make_db(tmp_path / "a.db")
    with pytest.raises(BackupError) as caught:
        create_backup(str(db), str(readonly_dir), now=NOW)
    assert "cannot write in" in str(caught.value)
    assert "read-only file system" in str(caught.value) or "permission denied" in str(caught.value)
    assert files_in(readonly_dir) == []


def test_a_backup_onto_a_full_disk_fails_clearly_and_leaves_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    db = make_db(tmp_path / "a.db", rows=3000, blob=1000)  # ~3 MB of random bytes
    fill_disk(small_disk)
    with pytest.raises(BackupError, match="no space left"):
        create_backup(str(db), str(small_disk / "backups"), now=NOW)
    assert files_in(small_disk) == ["backups", "filler"]
    assert files_in(small_disk / "backups") == []


def test_a_disk_that_fills_while_compressing_leaves_nothing(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backups, "SCRATCH_DIR", str(tmp_path / "no-memory-scratch"))
    db = make_db(tmp_path / "a.db", rows=3000, blob=1000)
    size = db.stat().st_size
    filler = fill_disk(small_disk)
    # room for the uncompressed copy, not for it and its (incompressible) gzip
    with open(filler, "r+b") as f:
        f.truncate(filler.stat().st_size - size - 512 * 1024)
    with pytest.raises(BackupError, match="no space left"):
        create_backup(str(db), str(small_disk / "backups"), now=NOW)
    assert files_in(small_disk / "backups") == []
    # and once there is space, the next backup works
    filler.unlink()
    info = create_backup(str(db), str(small_disk / "backups"), now=NOW)
    assert verify_backup(info.path).tables["items"] == 3000


# ----- listing and retention -------------------------------------------------------------


def test_listing_is_newest_first_and_tells_unfinished_ones(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db")
    d = tmp_path / "b"
    for days in (3, 1, 2):
        create_backup(str(db), str(d), now=NOW - timedelta(days=days))
    unfinished = d / backup_name(NOW)
    unfinished.write_bytes(b"half")
    (d / "notes.txt").write_text("not a backup")
    listed = list_local(str(d))
    assert [b.taken_at for b in listed] == [NOW - timedelta(days=n) for n in (0, 1, 2, 3)]
    assert [b.verified for b in listed] == [False, None, None, None]
    assert listed[1].sha256 == hashlib.sha256(Path(listed[1].path).read_bytes()).hexdigest()
    assert listed[0].sha256 is None
    newest = newest_local(str(d))
    assert newest is not None and newest.taken_at == NOW - timedelta(days=1)
    assert list_local(str(tmp_path / "none")) == []


def test_retention_deletes_only_what_is_older_than_the_window(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db")
    d = tmp_path / "b"
    ages = [timedelta(days=40), timedelta(days=31), timedelta(days=29, hours=23), timedelta(0)]
    paths = [create_backup(str(db), str(d), now=NOW - age).path for age in ages]
    stale = d / ".backup-dead.db"
    stale.write_bytes(b"x")
    os.utime(stale, (NOW.timestamp() - 2 * 86400,) * 2)
    fresh_temp = d / ".backup-running.db"
    fresh_temp.write_bytes(b"x")
    os.utime(fresh_temp, (NOW.timestamp() - 60,) * 2)

    deleted = prune_local(str(d), 30, NOW)
    assert sorted(deleted) == sorted([*paths[:2], str(stale)])
    assert files_in(d) == sorted(
        [fresh_temp.name]
        + [Path(p).name for p in paths[2:]]
        + [Path(p).name + ".sha256" for p in paths[2:]]
    )


def test_retention_never_deletes_the_newest_backup(tmp_path: Path) -> None:
    db = make_db(tmp_path / "a.db")
    d = tmp_path / "b"
    old = [create_backup(str(db), str(d), now=NOW - timedelta(days=n)).path for n in (90, 60)]
    # an unfinished one newer than both does not count as the newest
    (d / backup_name(NOW - timedelta(days=45))).write_bytes(b"half")
    deleted = prune_local(str(d), 30, NOW)
    assert sorted(deleted) == sorted([old[0], str(d / backup_name(NOW - timedelta(days=45)))])
    assert files_in(d) == [Path(old[1]).name, Path(old[1]).name + ".sha256"]
    assert prune_local(str(d), 30, NOW + timedelta(days=365)) == []


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling classes")
def test_the_child_is_lowered_from_its_start_and_the_caller_is_not() -> None:
    mine = os.sched_getscheduler(0)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        backups.lower_priority(child.pid)  # what create_backup does right after the spawn
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) == mine
    finally:
        child.kill()
        child.wait()
