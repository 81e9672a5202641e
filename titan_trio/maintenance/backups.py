"""Backups of the service's database: take one, verify one, list and prune them.

A backup is ``backup-YYYY-MM-DDTHH-MM-SS.db.gz`` (the UTC time it was taken) with
``<name>.sha256`` beside it in sha256sum's format (``<hex>  <name>``), so
``sha256sum -c`` checks it by hand. The checksum file is written last: it marks the
backup finished, and everything that reads backups (the metric
titan_backup_last_success_timestamp_seconds, ``list_local``, retention, the runbook)
counts a backup without one as unfinished.

Design choices:

- SQLite's online backup API, never a file copy: a copy of the main file misses what
  is still in the ``-wal`` and may catch a page mid-write. The source connection holds
  one read transaction for the whole copy, so every step reads the same snapshot: the
  backup is the database as it was when the backup started (every transaction
  committed before it), and a writer that commits meanwhile never makes it start over
  (without that read transaction, SQLite restarts a stepped backup after each foreign
  commit: measured 152 restarts for a 12 MB database under a busy writer). In WAL mode
  a reader blocks no writer, so the service goes on committing; the WAL only cannot be
  checkpointed past the snapshot until the copy ends (it is the next checkpoint's).
- The source is opened read-only (``mode=ro``): a backup never changes the database,
  and a missing database is an error, not a new empty file.
- The copy is turned into a self-contained file (``journal_mode=DELETE``: the backup
  API carries the source's WAL flag over) and ``PRAGMA integrity_check`` runs on it
  before it is compressed, so a backup is never a damaged copy. Then it is gzipped as a
  stream, hashed while written, fsynced, and renamed into place. The gzip is ISA-L's
  (the ``isal`` package): the same format (gunzip, zcat and Python's gzip read it), a
  quarter to a tenth of zlib's CPU at its fastest level, for about the same size
  (docs/BENCHMARKS.md). With zlib the gzip was the backup's longest phase, a CPU flat
  out beside the service: SCHED_IDLE keeps it off the service's CPU inside the machine,
  but not the host's steal time, which rose with it.
- A backup shares the disk and the CPUs with the running service. Measured beside it: a
  writer at the disk's full speed multiplied the service's signal p99 by 3 to 20, one
  paced at 10-50 MB/s hardly moved it. So:
  - the temporary copy is made in memory (SCRATCH_DIR, a tmpfs) when it fits with room
    to spare (_scratch_dir: twice the database in available memory, the cgroup's limits
    included; TITAN_BACKUP_SCRATCH names another directory, or, empty, none): the disk
    then sees only the compressed backup, and the gzip hands the copy's memory back as
    it reads it (_compress: a virtual machine returns freed memory to its host, and a
    gigabyte returned at once stalled the service). Otherwise it is made beside the
    backups, its writes paced at WRITE_RATE. (Pacing the copy also keeps the snapshot,
    and the WAL it holds back, longer: a 1 GB copy at 48 MB/s held 200-310 MB of a busy
    service's WAL.)
  - a short backup rather than a slow one: pacing its CPU work made a backup last more
    than twice as long and raised the signal p99 more, not less (docs/BENCHMARKS.md).
  - before a copy in memory takes its snapshot, the database is read into the page
    cache (_warm_up): a host short of memory evicts the pages of a database nothing read
    for a while, and the copy read them back off the disk at full speed (8 MB readahead
    requests here), with its snapshot held, and the WAL behind it, meanwhile. The
    warm-up holds nothing, asks for 256 KB at a time, and leaves the disk free at least
    half the time; the copy then reads memory.
  - what it writes goes to the disk as it is written, at most WRITE_RATE (_Writeback:
    no gigabyte of dirty pages flushed at once, no journal commit every few megabytes),
    and the temporary copy is never fsynced (it is read back and deleted; only the
    compressed file must survive a crash).
  - all of it runs in a child process at the lowest CPU priority (create_backup says why
    a process).
- Every file is first written under a hidden temporary name in the backup directory
  (``.backup-...``), on the same filesystem, so the rename is atomic, and a failure
  (full disk, read-only directory, missing database) deletes whatever it wrote: nothing
  partial is ever left under a backup's name. The directory is fsynced after the renames.
  A copy in memory is named ``.backup-<pid>-...`` after the process making it; one whose
  process is gone (killed before its cleanup) is deleted by the next backup, since it
  holds memory until then.
- Files are private (0600, directories 0700): a backup is the whole account.
- An existing backup of the same second is never replaced (its checksum file would
  describe the other file for a moment): the new one waits for the next second, or,
  named by the caller (``now``), is refused.
- ``verified`` in BackupInfo: True when this process checked it (``create_backup``
  checked the copy's integrity, ``verify_backup`` everything); False when it has no
  checksum beside it (unfinished, or not one of ours: it cannot be verified); None when
  it is finished but was not checked by the call that listed it (checking means
  reading the whole file).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gzip
import hashlib
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from isal import igzip

from titan_trio.errors import TitanError
from titan_trio.libc import (
    HAVE_SYNC_FILE_RANGE,
    SFR_WAIT_AFTER,
    SFR_WAIT_BEFORE,
    SFR_WRITE,
    libc_function,
    sync_file_range,
)
from titan_trio.private_files import FILE_MODE, make_private_dirs

BACKUP_RE = re.compile(r"^backup-(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})\.db\.gz$")
NAME_FORMAT = "backup-%Y-%m-%dT%H-%M-%S.db.gz"
TIME_FORMAT = "%Y-%m-%dT%H-%M-%S"
CHECKSUM_SUFFIX = ".sha256"
TEMP_PREFIX = ".backup-"  # hidden: nothing that reads backups ever sees a temporary file

# Pages copied per backup step: the progress callback's granularity (4 MB at SQLite's
# default 4 KB page). The read transaction makes the step size irrelevant to writers.
PAGES_PER_STEP = 1024
CHUNK = 1 << 20  # bytes per read/write while compressing, hashing, decompressing
# ISA-L's levels run 0-3; 1 is its fastest that compresses as well as zlib's level 1. A
# backup of a large database shares two CPUs with the service.
GZIP_LEVEL = 1
# Written data is pushed to the disk as it is written, this many bytes at a time, not
# all at once at the end: a gigabyte of dirty pages flushed in one go stalls every other
# writer's fsync (see _Writeback).
FLUSH_EVERY = 8 * 1024 * 1024
# At most this many bytes a second written, by the copy and by the gzip each: a disk
# written flat out stalls the service's commits (measured: a writer at full speed beside
# the service multiplied its signal p99 by 3-20, one paced at 10-50 MB/s hardly moved it).
WRITE_RATE = 48 * 1024 * 1024
# Where the temporary copy goes when memory has room for it (see _scratch_dir).
# TITAN_BACKUP_SCRATCH in the environment names another directory, or, set empty, none:
# the copy then always goes beside the backups.
SCRATCH_DIR = os.environ.get("TITAN_BACKUP_SCRATCH", "/dev/shm")
SCRATCH_HEADROOM = 256 * 1024 * 1024  # memory left over beyond twice the copy, at least
# Cgroup v1 says no limit with its page counter's maximum (about 2**63).
CGROUP_V1_UNLIMITED = 2**62
REMOVE_STEP = 64 * 1024 * 1024  # the temporary copy is deleted this much at a time
# A copy in memory is given back as the gzip reads it, this much at a time (_compress).
RELEASE_EVERY = 32 * 1024 * 1024
REMOVE_PAUSE_S = 0.005
# Before a copy in memory takes its snapshot, the database is read into the page cache
# (_warm_up) WARM_CHUNK bytes at a time, the disk kept busy with it at most WARM_DUTY of
# the time, for at most WARM_UP_MAX_S (then the copy reads the rest itself).
WARM_CHUNK = 256 * 1024
WARM_DUTY = 0.5
WARM_UP_MAX_S = 30.0
WARM_PAUSE_AFTER_S = 0.005  # disk time owed before the warm-up pauses to pay it back
WARM_CACHED_S = 0.0005  # a chunk read faster than this came from the cache
LOWEST_PRIORITY = 19  # nice, where SCHED_IDLE is not available
CANCEL_POLL_S = 0.2  # how often a backup waiting on its child looks at ``cancel``
CHILD_STOP_S = 10.0  # an interrupted child deletes its files; killed if it takes longer
STALE_TEMP_S = 24 * 3600  # a temporary file this old belongs to a backup that died
BUSY_TIMEOUT_MS = 5000


class BackupError(TitanError):
    """A backup could not be taken, verified, listed, uploaded or downloaded. The
    message is one line for the operator, naming the file and the cause."""


@dataclass(frozen=True)
class BackupInfo:
    """One backup, local or in S3 (``key`` is the object key there, None locally)."""

    path: str
    taken_at: datetime
    size: int
    sha256: str | None
    verified: bool | None
    location: Literal["local", "s3"] = "local"
    key: str | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.key if self.key is not None else self.path)


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_backup`` found: the checksum matched, the decompressed database
    passed ``PRAGMA integrity_check``, and these row counts per table."""

    path: str
    taken_at: datetime | None
    size: int
    sha256: str
    database_size: int
    tables: dict[str, int] = field(default_factory=dict)


ProgressFn = Callable[[int, int], None]


def backup_name(ts: datetime) -> str:
    """The file name of a backup taken at ``ts`` (converted to UTC; naive means UTC)."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC)
    return ts.strftime(NAME_FORMAT)


def taken_at_of(name: str) -> datetime | None:
    """The UTC time a backup's name says it was taken, or None for another name."""
    found = BACKUP_RE.match(os.path.basename(name))
    if found is None:
        return None
    return datetime.strptime(found.group(1), TIME_FORMAT).replace(tzinfo=UTC)


# ----- taking a backup ----------------------------------------------------------------


def create_backup(
    db_path: str,
    backup_dir: str,
    *,
    progress: ProgressFn | None = None,
    now: datetime | None = None,
    cancel: threading.Event | None = None,
) -> BackupInfo:
    """Back up the database at ``db_path`` into ``backup_dir``, safely while the service
    writes to it. ``progress(done_pages, total_pages)`` is called after each step of
    the copy. ``now`` names the backup (default: the current UTC time). ``cancel``, when
    set (by another thread), stops the backup at its next step, or during the gzip
    within CANCEL_POLL_S. Raises BackupError, leaving no file behind.

    The work runs in a child process at the lowest CPU priority (backup_child), which
    this process follows: the copy is a full CPU and the gzip a minute of CPU per
    gigabyte. In a thread of the service they would share the GIL, so they could only
    be as polite as the service's own threads (lowering a thread's priority makes it
    worse: a thread that must hand the GIL over waits until the low-priority one runs).
    A process has its own interpreter, and at the lowest priority (backup_child) the
    kernel gives the service's threads a CPU first. With a ``progress`` callback the
    child reports each step of the copy and waits for this process's go-ahead before the
    next, so a cancel stops it at the next step exactly as in-process; without one (the
    in-service schedule) it reports nothing until it is done (backup_child says why), and
    a cancel interrupts it (SIGINT), as it does in the later phases (the check, the
    gzip) either way: it deletes its temporary files on the way out."""
    command = [
        sys.executable,
        "-m",
        "titan_trio.maintenance.backup_child",
        db_path,
        backup_dir,
        now.isoformat() if now is not None else "",
        str(PAGES_PER_STEP),
        _scratch_dir(db_path) or "",
        "1" if progress is not None else "0",
    ]
    try:
        child = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise BackupError(f"cannot start the backup of {db_path}: {_why(exc)}") from None
    try:
        lower_priority(child.pid)  # its start-up too, not only once it runs its main
        return _follow(child, db_path, progress, cancel)
    finally:
        _stop_child(child)


def lower_priority(pid: int = 0) -> None:
    """Run process ``pid`` (0: this one) only when a CPU has nothing else to do (Linux's
    SCHED_IDLE: a waking service thread takes the CPU from it at once, where nice 19
    still lets it finish its slice), else at nice 19. Best effort. create_backup also
    calls it on the child as soon as it is spawned, so the child's interpreter start-up
    and imports (a few hundred ms of CPU) run at the lowest priority too."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, LOWEST_PRIORITY)


def _follow(
    child: subprocess.Popen[bytes],
    db_path: str,
    progress: ProgressFn | None,
    cancel: threading.Event | None,
) -> BackupInfo:
    """Read the child's reports until it finishes; its result, or its one-line error."""
    assert child.stdout is not None and child.stdin is not None
    for line in _lines(child.stdout.fileno(), cancel):
        kind, _, rest = line.partition(" ")
        if kind == "progress":
            done, total = (int(n) for n in rest.split())
            if progress is not None:
                progress(done, total)
            if cancel is not None and cancel.is_set():
                break
            child.stdin.write(b"\n")  # the go-ahead for its next step
            child.stdin.flush()
        elif kind == "done":
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(CHILD_STOP_S)  # it is exiting: never interrupted at its end
            got = json.loads(rest)
            taken = datetime.fromisoformat(got["taken_at"])
            return BackupInfo(got["path"], taken, got["size"], got["sha256"], True)
    if cancel is not None and cancel.is_set():
        raise BackupError(f"backup of {db_path} cancelled")
    assert child.stderr is not None
    child.wait()
    lines = child.stderr.read().decode(errors="replace").strip().splitlines()
    raise BackupError(
        lines[-1] if lines else f"backup of {db_path} failed (exit {child.returncode})"
    )


def _lines(fd: int, cancel: threading.Event | None) -> Iterator[str]:
    """The lines a child writes on ``fd`` until it closes it, or until ``cancel`` is set
    (looked at every CANCEL_POLL_S while nothing comes)."""
    pending = b""
    while not (cancel is not None and cancel.is_set()):
        ready, _, _ = select.select([fd], [], [], CANCEL_POLL_S)
        if not ready:
            continue
        data = os.read(fd, 65536)
        if not data:
            return
        pending += data
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.decode(errors="replace")


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """A child still running (cancelled, or this process failed) is interrupted, so it
    deletes its temporary files, and killed if it has not gone CHILD_STOP_S later."""
    if child.poll() is None:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    for pipe in (child.stdin, child.stdout, child.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def create_backup_here(
    db_path: str,
    backup_dir: str,
    *,
    progress: ProgressFn | None = None,
    now: datetime | None = None,
    scratch: str | None = None,
) -> BackupInfo:
    """create_backup's work, in this process (backup_child runs it). The temporary copy
    is made in ``scratch`` (create_backup passes _scratch_dir's choice) or, when None,
    beside the backups with its writes paced."""
    if not os.path.isfile(db_path):
        raise BackupError(f"no database at {db_path}")
    try:
        make_private_dirs(backup_dir)
    except OSError as exc:
        raise BackupError(f"cannot create the backup directory {backup_dir}: {_why(exc)}") from None
    for _attempt in range(3):
        taken = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        name = backup_name(taken)
        final = os.path.join(backup_dir, name)
        checksum_path = final + CHECKSUM_SUFFIX
        if not (os.path.exists(final) or os.path.exists(checksum_path)):
            break
        if now is not None:
            raise BackupError(f"{final} exists already; one backup a second at most")
        # a backup of this second exists (cron and an operator at once): the next second
        time.sleep(1.0 - datetime.now(UTC).microsecond / 1e6 + 0.01)
    else:
        raise BackupError(f"{final} exists already; one backup a second at most")
    with (
        _temporaries(backup_dir) as temp,
        _temporaries(scratch or backup_dir, owner=os.getpid() if scratch else None) as temp_copy,
    ):
        copy = temp_copy(".db")
        if scratch is not None:  # memory has room for the database twice over
            _warm_up(db_path)
        _online_copy(db_path, copy, progress, paced=scratch is None)
        gz = temp(".db.gz")
        digest = _compress(copy, gz, release=scratch is not None)
        _remove_gently(copy)  # the space, before the next file needs it
        sums = temp(".sha256")
        _write_synced(sums, f"{digest}  {name}\n".encode())
        size = os.path.getsize(gz)
        try:
            _link_into_place(gz, final)
            _link_into_place(sums, checksum_path)  # last: the backup is finished
        except BaseException:  # a failure, or the interrupt that stops the child
            if not os.path.exists(checksum_path):  # unfinished: nothing under its name
                with contextlib.suppress(OSError):
                    os.unlink(final)
            raise
        _fsync_dir(backup_dir)
    return BackupInfo(final, taken, size, digest, True, "local", None)


def _scratch_dir(db_path: str) -> str | None:
    """SCRATCH_DIR when the copy of ``db_path`` fits there and memory has room for it
    twice over (the copy, and the page cache the service and the gzip need), plus
    SCRATCH_HEADROOM; None (the copy goes beside the backups) otherwise, or off Linux.
    Memory is the smaller of the system's MemAvailable and, under a cgroup limit (a
    systemd MemoryHigh or MemoryMax), what the limit leaves: a tmpfs file is charged to
    it (_memory_room)."""
    if not sys.platform.startswith("linux") or not SCRATCH_DIR:
        return None
    size = 0
    for path in (db_path, db_path + "-wal"):
        with contextlib.suppress(OSError):
            size += os.path.getsize(path)
    try:
        if not os.path.isdir(SCRATCH_DIR) or not os.access(SCRATCH_DIR, os.W_OK | os.X_OK):
            return None
        free = shutil.disk_usage(SCRATCH_DIR).free
    except OSError:
        return None
    room = _memory_room()
    if room is None or free < size + SCRATCH_HEADROOM or room < 2 * size + SCRATCH_HEADROOM:
        return None
    return SCRATCH_DIR


def _memory_room(
    cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup"
) -> int | None:
    """Bytes of memory this process may still use: MemAvailable, less under a cgroup's
    limit; None when unknown. Cgroup v2: the lower of ``memory.high``, past which the
    kernel throttles every process of the group, the service included, and
    ``memory.max`` (systemd's MemoryHigh and MemoryMax). Cgroup v1 (the memory
    controller on the legacy hierarchy): ``memory.limit_in_bytes`` (systemd's MemoryMax
    or MemoryLimit there; v1 has no MemoryHigh), past which the group reclaims and then
    the kernel kills one of its processes: a copy in ``/dev/shm`` cannot be reclaimed.
    Both are looked up when both are mounted (a hybrid host)."""
    room: int | None = None
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
                break
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return room
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, group = parts[0], parts[1], parts[2].lstrip("/")
        if hierarchy == "0" and controllers == "":  # cgroup v2
            left = _left_under(
                os.path.join(cgroup_root, group), ("memory.high", "memory.max"), "memory.current"
            )
        elif "memory" in controllers.split(","):  # cgroup v1's memory controller
            left = _left_under(
                os.path.join(cgroup_root, "memory", group),
                ("memory.limit_in_bytes",),
                "memory.usage_in_bytes",
            )
        else:
            continue
        if left is not None:
            room = left if room is None else min(room, left)
    return room


def _left_under(base: str, limit_files: tuple[str, ...], usage_file: str) -> int | None:
    """What the lowest of a cgroup's limits leaves above its usage; None with no limit
    (``max`` in v2, the page counter's maximum in v1) or files that cannot be read."""
    limits = []
    for name in limit_files:
        with contextlib.suppress(OSError, ValueError), open(os.path.join(base, name)) as f:
            text = f.read().strip()
            if text != "max" and int(text) < CGROUP_V1_UNLIMITED:
                limits.append(int(text))
    if not limits:
        return None
    try:
        with open(os.path.join(base, usage_file)) as f:
            return max(min(limits) - int(f.read()), 0)
    except (OSError, ValueError):
        return None


def _warm_up(db_path: str, budget_s: float | None = None) -> float:
    """Read the database at ``db_path`` into the page cache before the copy's snapshot;
    the seconds spent reading from the disk (not from the cache).

    A host short of memory evicts the pages of a database that nothing read for a while
    (this one does after about a minute), and the copy then reads them back from the
    disk while its snapshot holds the WAL: at full speed, with the kernel's readahead (8
    MB requests here) in front of every read and fsync of the service's commits
    (docs/BENCHMARKS.md). Here, before the snapshot, nothing is held: the file is read
    WARM_CHUNK bytes at a time without readahead, so a service's read waits behind one
    small request at most, and after each WARM_PAUSE_AFTER_S of disk time it pauses so
    that the disk spends at most WARM_DUTY of its time on it. Pages already cached cost
    a copy in memory and no pause. Stops after ``budget_s`` (WARM_UP_MAX_S): a slow
    disk delays the backup, not forever. Best effort: a file that cannot be read is
    left to the copy, which reports it. Only for a copy in memory: where memory is short
    (the copy on the disk), warmed pages would push out the service's own."""
    deadline = time.monotonic() + (WARM_UP_MAX_S if budget_s is None else budget_s)
    try:
        fd = os.open(db_path, os.O_RDONLY)
    except OSError:
        return 0.0
    buf = bytearray(WARM_CHUNK)
    on_disk = owed = 0.0
    try:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead on this fd
        offset = 0
        while time.monotonic() < deadline:
            began = time.monotonic()
            read = os.preadv(fd, [buf], offset)
            if read <= 0:
                break
            offset += read
            took = time.monotonic() - began
            if took > WARM_CACHED_S:
                on_disk += took
                owed += took
            if owed >= WARM_PAUSE_AFTER_S:
                time.sleep(owed * (1 - WARM_DUTY) / WARM_DUTY)
                owed = 0.0
    except OSError:
        pass
    finally:
        os.close(fd)
    return on_disk


def _online_copy(
    db_path: str, dest: str, progress: ProgressFn | None, *, paced: bool = True
) -> None:
    try:
        src = sqlite3.connect(
            f"{Path(db_path).absolute().as_uri()}?mode=ro", uri=True, isolation_level=None
        )
    except sqlite3.Error as exc:
        raise BackupError(f"cannot open the database {db_path}: {exc}") from None
    try:
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            # One read transaction for the whole copy: one snapshot, no restarts.
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchall()

            # gzip reads it next; in memory there is no disk to spare
            writeback = _Writeback(dest, keep_cached=True, rate=None if paced else 0)

            def step(_status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)
                writeback.wrote(os.path.getsize(dest))

            try:
                src.backup(dst, pages=PAGES_PER_STEP, progress=step, sleep=0)
            finally:
                writeback.close()
            src.execute("COMMIT")
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            problems = [row[0] for row in dst.execute("PRAGMA integrity_check").fetchall()]
            if problems != ["ok"]:
                raise BackupError(
                    f"the database {db_path} fails its integrity check, no backup taken: "
                    + "; ".join(str(p) for p in problems[:3])
                )
        finally:
            dst.close()
        # Not fsynced: the copy is a temporary file, read back by this process and
        # deleted; only the compressed backup must survive a crash (_compress syncs it).
    except sqlite3.Error as exc:
        raise BackupError(f"backup of {db_path} failed: {_sqlite_why(exc, dest)}") from None
    except OSError as exc:
        raise BackupError(f"backup of {db_path} failed: {_why(exc)}") from None
    finally:
        src.close()


# fallocate(2): os binds posix_fallocate only, which cannot punch a hole
_FALLOCATE = libc_function(
    "fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
)
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2


def _punch_hole(fd: int, start: int, end: int) -> bool:
    """Free the file's bytes from ``start`` to ``end`` (its size stays); whether it
    could (not on every filesystem, nor off Linux)."""
    if _FALLOCATE is None:
        return False
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    return _FALLOCATE(fd, mode, start, end - start) == 0


class _Writeback:
    """Push a file being written to the disk behind the writer, FLUSH_EVERY bytes at a
    time, so that dirty pages never pile up (the service shares the disk, and, under
    systemd's MemoryMax, the page cache counts against its memory).

    On Linux with sync_file_range(2): each new window's writeback is started without
    waiting, and the window before it is waited for. That writes the data only, with no
    journal commit (an fsync of each window made the filesystem commit its journal every
    few megabytes, which stalled the service's own fsyncs), and paces the writer to the
    disk. ``keep_cached=False`` also drops the written pages from the page cache once
    they are on the disk (the compressed backup is never read back by this process).
    Elsewhere: an fdatasync per window. Durability is not this class's job: the caller
    fsyncs what must survive a crash."""

    def __init__(self, path: str, *, keep_cached: bool, rate: int | None = None) -> None:
        self.keep_cached = keep_cached
        self.rate = WRITE_RATE if rate is None else rate  # bytes/s; 0: no pacing
        self.fd: int | None = os.open(path, os.O_RDONLY)
        self.started = 0  # writeback started up to here
        self.waited = 0  # on the disk up to here
        self.began = time.monotonic()

    def wrote(self, size: int) -> None:
        """The file is ``size`` bytes long now."""
        if self.fd is None or size - self.started < FLUSH_EVERY:
            return
        if not HAVE_SYNC_FILE_RANGE:
            os.fdatasync(self.fd)
            self.started = self.waited = size
            self._pace(size)
            return
        self._sync_range(
            self.waited, self.started - self.waited, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER
        )
        if not self.keep_cached and self.started > self.waited:
            os.posix_fadvise(
                self.fd, self.waited, self.started - self.waited, os.POSIX_FADV_DONTNEED
            )
        self.waited = self.started
        self._sync_range(self.started, size - self.started, SFR_WRITE)
        self.started = size
        self._pace(size)

    def _pace(self, size: int) -> None:
        """Sleep until ``size`` bytes are no more than ``rate`` a second since the start."""
        if self.rate > 0:
            ahead = self.began + size / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def _sync_range(self, offset: int, length: int, flags: int) -> None:
        if length <= 0:
            return
        assert self.fd is not None
        sync_file_range(self.fd, offset, length, flags)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _compress(source: str, dest: str, *, release: bool = False) -> str:
    """Gzip ``source`` into ``dest`` (fsynced); the SHA-256 of what was written.

    ``release``: ``source`` is a file in memory (a tmpfs), given back RELEASE_EVERY
    bytes at a time as it is read (holes punched behind the reader), not all at once
    when it is deleted. A virtual machine hands the memory it frees back to its host
    (free page reporting, a couple of seconds later): a gigabyte freed at once is a
    gigabyte handed back in one go, and the service's replies stalled in the seconds
    after each backup ended (docs/BENCHMARKS.md). Best effort: where holes cannot be
    punched, the memory goes when the file is deleted."""
    digest = hashlib.sha256()

    class Hashing:
        def __init__(self, raw: object) -> None:
            self.raw = raw

        def write(self, data: bytes) -> int:
            digest.update(data)
            return self.raw.write(data)  # type: ignore[attr-defined,no-any-return]

        def flush(self) -> None:
            self.raw.flush()  # type: ignore[attr-defined]

    try:
        with open(source, "r+b" if release else "rb") as src, open(dest, "wb") as raw:
            writeback = _Writeback(dest, keep_cached=False)  # never read again here
            try:
                # mtime 0 and no file name: the same database gives the same bytes.
                with igzip.GzipFile(
                    filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=Hashing(raw), mtime=0
                ) as gz:  # type: ignore[arg-type]
                    released = 0
                    while chunk := src.read(CHUNK):
                        gz.write(chunk)
                        raw.flush()
                        writeback.wrote(raw.tell())
                        if release and src.tell() - released >= RELEASE_EVERY:
                            # a filesystem that cannot punch is not asked again
                            release = _punch_hole(src.fileno(), released, src.tell())
                            released = src.tell()
                raw.flush()
                os.fsync(raw.fileno())
            finally:
                writeback.close()
    except OSError as exc:
        raise BackupError(
            f"cannot write the backup into {os.path.dirname(dest)}: {_why(exc)}"
        ) from None
    return digest.hexdigest()


@contextlib.contextmanager
def _temporaries(directory: str, *, owner: int | None = None) -> Iterator[Callable[[str], str]]:
    """Make hidden temporary files in ``directory`` (0600); every one still there when
    the block ends is deleted, whether it succeeded or not (on success they have been
    renamed away, or deleted, already). With ``owner`` (a pid) the names carry it, and
    those of owners that are gone are deleted first (_remove_orphans)."""
    made: list[str] = []
    prefix = TEMP_PREFIX
    if owner is not None:
        _remove_orphans(directory)
        prefix = f"{TEMP_PREFIX}{owner}-"

    def temp(suffix: str) -> str:
        try:
            fd, path = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        except OSError as exc:
            raise BackupError(f"cannot write in {directory}: {_why(exc)}") from None
        os.fchmod(fd, FILE_MODE)
        os.close(fd)
        made.append(path)
        return path

    try:
        yield temp
    finally:
        for path in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            for extra in ("-journal", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + extra)


def _link_into_place(temp: str, final: str) -> None:
    """``temp`` becomes ``final``, never replacing an existing file (link, then unlink:
    atomic, and EEXIST instead of a silent overwrite)."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise BackupError(f"{final} exists already; one backup a second at most") from None
    except OSError as exc:
        raise BackupError(f"cannot create {final}: {_why(exc)}") from None
    os.unlink(temp)


def _write_synced(path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise BackupError(f"cannot write {path}: {_why(exc)}") from None


def _remove_gently(path: str) -> None:
    """Delete a large file in REMOVE_STEP slices from its end, then the rest. Freeing a
    gigabyte's blocks and cached pages in one unlink is one large filesystem transaction
    that every other writer on the disk waits for (the service's commits stalled 20-60
    ms at the end of each 1 GB backup, measured); slices spread it out."""
    try:
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            while size > REMOVE_STEP:
                size -= REMOVE_STEP
                f.truncate(size)
                time.sleep(REMOVE_PAUSE_S)  # let the writers waiting on the journal in
    except OSError:
        pass  # the unlink below is what must happen; it reports its own failure
    os.unlink(path)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be synced
        _fsync_path(directory)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def _sqlite_why(exc: sqlite3.Error, dest: str) -> str:
    code = getattr(exc, "sqlite_errorname", None)
    if code == "SQLITE_FULL":
        return f"no space left on the device in {os.path.dirname(dest)} (SQLITE_FULL)"
    if code in ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR_WRITE"):
        return f"{exc} ({code}): cannot write {os.path.dirname(dest)}"
    return f"{exc} ({code})" if code else str(exc)


# ----- verifying -------------------------------------------------------------------------


def read_checksum(path: str) -> str:
    """The SHA-256 recorded beside the backup at ``path``; BackupError when it is
    missing or not in sha256sum's format for this file."""
    sums = path + CHECKSUM_SUFFIX
    try:
        text = Path(sums).read_text(errors="replace")
    except FileNotFoundError:
        raise BackupError(
            f"{path} has no checksum file {os.path.basename(sums)}: the backup did not "
            "finish, or the file was not made by titan backup"
        ) from None
    except OSError as exc:
        raise BackupError(f"cannot read {sums}: {_why(exc)}") from None
    found = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", text.strip())
    if found is None or os.path.basename(found.group(2)) != os.path.basename(path):
        raise BackupError(f"{sums} is not a checksum of {os.path.basename(path)}")
    return found.group(1).lower()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_backup(path: str, *, work_dir: str | None = None) -> VerifyReport:
    """Check the backup at ``path``: its SHA-256 against the ``.sha256`` beside it, then
    decompress it into a temporary file (in ``work_dir``, default the backup's own
    directory: /tmp may be a small tmpfs) and run ``PRAGMA integrity_check`` and a row
    count per table. Raises BackupError naming the first failure."""
    if not os.path.isfile(path):
        raise BackupError(f"no backup at {path}")
    expected = read_checksum(path)
    try:
        actual = file_sha256(path)
        size = os.path.getsize(path)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {_why(exc)}") from None
    if actual != expected:
        raise BackupError(
            f"{path} does not match its checksum (sha256 {actual[:12]}..., recorded "
            f"{expected[:12]}...): the file is damaged or incomplete"
        )
    where = work_dir or os.path.dirname(os.path.abspath(path))
    try:
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".verify.db", dir=where)
    except OSError:  # the backup's directory is read-only: the system's temp directory
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".verify.db")
    try:
        try:
            with os.fdopen(fd, "wb") as out, gzip.open(path, "rb") as gz:
                while chunk := gz.read(CHUNK):
                    out.write(chunk)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise BackupError(f"cannot decompress {path} into {where}: {_why(exc)}") from None
            raise BackupError(f"{path} is not a complete gzip file: {exc}") from None
        tables = _check_database(path, temp)
        database_size = os.path.getsize(temp)
    finally:
        for extra in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp + extra)
    return VerifyReport(path, taken_at_of(path), size, actual, database_size, tables)


def _check_database(path: str, db: str) -> dict[str, int]:
    try:
        conn = sqlite3.connect(f"{Path(db).as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise BackupError(f"{path} does not hold a database that opens: {exc}") from None
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check").fetchall()]
        if problems != ["ok"]:
            raise BackupError(
                f"{path} fails PRAGMA integrity_check: {'; '.join(problems[:3])}"
                + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            )
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        return {
            name: conn.execute(
                f'SELECT count(*) FROM "{name.replace(chr(34), chr(34) * 2)}"'
            ).fetchone()[0]
            for name in names
        }
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} does not hold a valid SQLite database: {exc}") from None
    finally:
        conn.close()


# ----- listing and retention -----------------------------------------------------------


def list_local(backup_dir: str) -> list[BackupInfo]:
    """The backups in ``backup_dir``, newest first (``verified``: None when finished,
    False without a checksum file; see the module's docstring). A missing directory
    holds none."""
    try:
        names = set(os.listdir(backup_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise BackupError(f"cannot list {backup_dir}: {_why(exc)}") from None
    found: list[BackupInfo] = []
    for name in names:
        taken = taken_at_of(name)
        if taken is None:
            continue
        path = os.path.join(backup_dir, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            continue  # deleted meanwhile
        finished = name + CHECKSUM_SUFFIX in names
        digest = None
        if finished:
            with contextlib.suppress(BackupError):
                digest = read_checksum(path)
        found.append(BackupInfo(path, taken, size, digest, None if finished else False))
    found.sort(key=lambda info: info.taken_at, reverse=True)
    return found


def newest_local(backup_dir: str) -> BackupInfo | None:
    """The newest finished backup (with its checksum file), or None."""
    for info in list_local(backup_dir):
        if info.verified is not False:
            return info
    return None


def newest_backup_s(backup_dir: str) -> float:
    """When the newest finished backup in ``backup_dir`` was taken (its name says, UTC),
    in Unix seconds; 0 when there is none. Names only, no file read: the metric a scrape
    asks for every 15 s (``titan_backup_last_success_timestamp_seconds``)."""
    try:
        names = set(os.listdir(backup_dir))
    except OSError:
        return 0.0
    finished = (taken_at_of(name) for name in names if name + CHECKSUM_SUFFIX in names)
    return max((taken.timestamp() for taken in finished if taken is not None), default=0.0)


def expired(taken: list[tuple[datetime, bool]], retention_days: int, now: datetime) -> list[int]:
    """Indexes into ``taken`` ((time, finished) pairs) that retention deletes: taken
    before ``now - retention_days``, except the newest finished backup, whatever its
    age (a service whose backups stopped for a month still has its last one)."""
    cutoff = now - timedelta(days=retention_days)
    finished = [i for i, (_, done) in enumerate(taken) if done]
    keep = max(finished, key=lambda i: taken[i][0]) if finished else None
    return [i for i, (when, _) in enumerate(taken) if when < cutoff and i != keep]


def prune_local(backup_dir: str, retention_days: int, now: datetime) -> list[str]:
    """Delete the backups (and their checksum files) older than ``retention_days``
    before ``now``, never the newest finished one. The deleted backups' paths."""
    backups = list_local(backup_dir)
    doomed = expired([(b.taken_at, b.verified is not False) for b in backups], retention_days, now)
    deleted: list[str] = []
    for i in doomed:
        path = backups[i].path
        try:
            # the checksum first: a backup is never left looking finished but half gone
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + CHECKSUM_SUFFIX)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        except OSError as exc:
            raise BackupError(f"cannot delete the old backup {path}: {_why(exc)}") from None
        deleted.append(path)
    deleted += _remove_stale_temporaries(backup_dir, now)
    if deleted:
        _fsync_dir(backup_dir)
    return deleted


def _remove_orphans(directory: str) -> None:
    """Delete the temporary copies named after a process (``.backup-<pid>-...``) that no
    longer runs: killed before it could delete them. Owned by someone else (not ours to
    signal) counts as running."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            found = _OWNED.match(entry.name)
            if found is None or not entry.is_file(follow_symlinks=False):
                continue
            try:
                os.kill(int(found.group(1)), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except (PermissionError, OverflowError, ValueError):
                pass


_OWNED = re.compile(re.escape(TEMP_PREFIX) + r"(\d+)-")


def _remove_stale_temporaries(backup_dir: str, now: datetime) -> list[str]:
    """Temporary files a killed backup left (a crash skips the cleanup), once they are
    STALE_TEMP_S old: no backup runs that long, so none is still being written."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(backup_dir):
            if not entry.name.startswith(TEMP_PREFIX) or not entry.is_file():
                continue
            with contextlib.suppress(OSError):
                if now.timestamp() - entry.stat().st_mtime > STALE_TEMP_S:
                    os.unlink(entry.path)
                    removed.append(entry.path)
    return removed
