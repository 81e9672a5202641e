"""The store: every database operation runs on one dedicated thread, in batches.

Why a dedicated thread: pony keeps one connection per thread, and hopping a fresh worker
thread per row costs about three times an inline commit (SPEC §1). Why batches: callers
that arrive while a commit is running are committed together in the next transaction
(group commit), so the fsync cost is shared and the trio thread never waits on disk.

Guarantees:
- ``await store.call(fn, *args)`` returns only after ``fn``'s changes are committed, so
  what the service acknowledges is on disk.
- A job that raises changes nothing: its whole batch rolls back and the other jobs are
  run again one by one, so one bad write cannot take its neighbours down with it (when
  the database itself failed, see below, they fail with it instead).
- ``fn`` runs inside a db_session on the store thread and must return plain data, never
  pony entities.

When the database itself fails (the disk is full, another process holds the write lock
past the busy timeout, the file turned read-only, an I/O error), every caller in the batch
gets a StoreError naming SQLite's cause, e.g. "database or disk is full (SQLITE_FULL)",
never pony's wrapper class. Such a batch is not re-run job by job: each job would meet
the same wall (and, for a lock, wait out the busy timeout again).

Retry policy: the store retries on its own in one case only. After SQLITE_FULL it
checkpoints the WAL with TRUNCATE, which gives the WAL's space back to the disk, and if
that freed any it runs the batch once more (an inline write that meets a full disk is
handed to the store thread for this). Anything else is for the caller to decide: a
request fails to its sender (who may retry with the same ids), a background writer
retries at its next tick. Nothing needs a restart: both connections (pony's on the store
thread, the plain one for inline writes) write again as soon as space returns or the
lock is released (one that cannot even roll back is replaced). While writes fail,
``stats.last_error`` holds the cause (the health check says unhealthy) and
``stats.write_failures`` counts them (a metric); the next transaction that writes a row
clears the error (a read proves nothing). One WARNING per cause, one INFO when writes
succeed again, repeats rate-limited (write_health.py).

One notion of "the database takes writes now": a transaction on the store thread
commits. The inline connection defers to it: an inline write that meets the database
failing (read-only, an I/O error, a lock, a full disk) did nothing and is run on the
store thread instead, whose connection decides (a file made read-only after the service
opened it is still written through the store thread's connection, opened before). Health
asks ``takes_writes``, answered from that and from a write probe the store thread runs
at most once a second (write_health.py).

WAL bound: automatic checkpoints are off (schema.py) so that no commit on the trio thread
ever pays for one. A checkpoint thread of its own (``titan-checkpoint``, so that no job
queued on the store thread waits for a checkpoint) runs PASSIVE every CHECKPOINT_EVERY
commits, and more as soon as the -wal file has grown past WAL_TRUNCATE_BYTES. Without that
bound the file only grows (measured: about 9 KB per one-row commit, 18 MB after 2,000
commits with no checkpoint) and keeps its size after space returns, so a disk it filled
stays full. Under a steady stream of inline commits the WAL is in practice never reused
from its start after a PASSIVE one (SQLite restarts it only when a checkpoint copied
every frame and no commit came in between), so the bound's checkpoint is what bounds it.

Past the bound, a RESTART checkpoint makes the next commit write the WAL from its start
again, so the file stops growing and keeps its size (it is not truncated: cutting 64 MB
off a file took the filesystem 17 ms and more, measured, with the write lock held).
A RESTART holds the write lock while it copies the frames left and syncs: every write
waits for it. So it is kept short and hardly waits: a PASSIVE checkpoint first copies
nearly everything without blocking anyone, the frames committed meanwhile are written
out without the lock (_write_out_wal), then the RESTART is tried with no busy timeout, a
few times (a writer's commit ends within a millisecond). It is not tried at
all after a PASSIVE that a reader of an older snapshot (e.g. a backup) kept from copying
everything: it is tried again once the WAL has grown by an eighth of the bound, after a
PASSIVE has copied the reader's backlog without the lock; and while it holds the lock,
urgent writes go to the store thread's queue instead of waiting for the lock on the
trio thread (RAW_BUSY_TIMEOUT_MS, which would stall every task). The RESTART comes when
the WAL's content (its frames, counted by each PASSIVE) or the file outgrows the bound,
so the file stays near it. A reader that keeps the WAL from being reused for long (a
backup of a large database) lets the file grow meanwhile; once the WAL is reused from
its start, the file is cut back to the bound (_shrink_wal), WAL_SHRINK_STEP at a time,
WAL_SHRINK_PAUSE_S apart, each cut with the write lock held and never below the WAL's
last valid frame (a writer that has not yet reused the WAL from its start leaves nothing
to cut). Small cuts, spread out: a truncate frees the file's blocks before it returns,
and on a filesystem mounted with ``discard`` (this host's ext4) that includes telling
the device, a cost in proportion to the megabytes cut, plus some per call, all of it
with every write waiting (the TRUNCATE of the 300 MB a backup let the file grow to
raised the signal p99 of the 10 s around it more than tenfold; docs/BENCHMARKS.md has
the figures). Each cut ends at a page boundary: one inside a page zeroes the page's
tail, and reads the page back first if the host dropped it. Not kept either: the next
backup's WAL would write into the old file's pages, which this host has evicted by then,
and each such write reads its page back from the disk first. The file is truncated at
once only when the disk is full (_make_room, which waits CHECKPOINT_BUSY_S for the lock:
there the space is the way out). While the in-service backup runs, the RESTART and the
cuts wait (hold_wal_reset says why), and the WAL's pages up to the bound are kept mapped
so that the host does not drop them (resident.py).

The write gate: this process's own writers (the store thread's batches and write probe,
the trio thread's inline commits) wait for a RESTART or a cut at a lock of the store's
(``_writers``), which the checkpoint thread holds for as long as SQLite's write lock,
rather than in SQLite's busy handler, which polls with sleeps of 1, 2, 5, 10, 15, 20 ms
and more: a writer then wakes when the lock is let go, not at its next poll. The trio
thread never waits at the gate: an urgent write that finds it held goes to the store
thread. Other processes' writers (``titan db vacuum --online``) meet SQLite's handler.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import outcome
import trio
from pony import orm

from titan_trio.errors import StoreError, TitanError
from titan_trio.libc import SFR_WAIT_AFTER, SFR_WAIT_BEFORE, SFR_WRITE, sync_file_range
from titan_trio.state.failures import as_store_error, database_failure, describe
from titan_trio.state.raw import Deferred, RawDatabase
from titan_trio.state.resident import ResidentFile
from titan_trio.state.schema import Entities, open_database
from titan_trio.state.write_health import PROBE_BUSY_MS, PROBE_KEY, PROBE_SQL, WriteHealth

log = logging.getLogger("titan.store")

T = TypeVar("T")
MAX_BATCH = 256


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    done: trio.Event = field(default_factory=trio.Event)
    result: outcome.Outcome | None = None
    abandoned: bool = False  # the caller stopped waiting


_STOP = object()
_PROBE = object()
_PASSIVE = object()  # checkpoint requests: a PASSIVE one
_BOUND = object()  # a PASSIVE one, then the bound's RESTART
INLINE_SHARE = 0.2  # of the trio thread's time, at most, for inline commits
INLINE_BURST_S = 0.001
CHECKPOINT_EVERY = 500  # commits between PASSIVE WAL checkpoints (checkpoint thread)
# Past this (the WAL's content, or the -wal file) a RESTART checkpoint has the WAL
# written from its start again (the module docstring). Set above what 500 commits of a
# busy signal stream write (about 20 MB at 100 signal pairs/s), so that the RESTART,
# which holds the write lock, stays rare. A full disk truncates at once, whatever the size.
WAL_TRUNCATE_BYTES = 64 * 1024 * 1024
WAL_FRAME_HEADER = 24  # bytes before each page in the -wal file
WAL_HEADER = 32  # bytes before the first frame
# A -wal file grown past the bound by more than a quarter of it (a reader kept the WAL
# from being reused) is cut back to the bound this much at a time (_shrink_wal), each cut
# with the write lock held, WAL_SHRINK_PAUSE_S apart, at a multiple of WAL_CUT_ALIGN.
WAL_SHRINK_STEP = 1024 * 1024
WAL_SHRINK_PAUSE_S = 0.05
WAL_CUT_ALIGN = 4096  # a cut inside a page zeroes the page's tail: read first if dropped
# Cuts tried in a row that find the WAL still in use past the cut (its writer has not
# reused it from its start since the RESTART: no commit came) before the checkpoint
# thread leaves the rest to its next checkpoint.
WAL_SHRINK_WAITS = 25
# While a backup writes (Store.hold_wal_reset), the bound's RESTART and the cuts wait,
# unless the -wal file reaches this many times the bound.
WAL_HOLD_LIMIT = 8
WAL_CHECK_EVERY = 8  # inline commits between looks at the WAL's size (a stat, ~3 us)
# How long the full disk's TRUNCATE (_make_room) waits for a writer or an old reader.
# Short: a reader that keeps an old snapshot for long (a backup of a large database)
# would otherwise stall the store thread, and every write behind it, at each try. The
# bound's RESTART never waits holding the lock (the module docstring says why).
CHECKPOINT_BUSY_S = 0.05
# The bound's RESTART never waits holding the lock; it is tried this many times, this far
# apart (tried once, it lost to the stream of commits again and again).
BOUND_TRIES = 3
BOUND_PAUSE_S = 0.002
# How long the store thread waits at the write gate for the checkpoint thread's RESTART or
# cut (Store._writers) before it goes on to SQLite's own busy timeout (schema.py's, as long).
GATE_WAIT_S = 5.0
# How long the checkpoint thread waits at the gate for a batch of the store thread's.
CHECKPOINT_GATE_S = 0.1
CHECKPOINTER_JOIN_S = 10.0  # at close: a PASSIVE of a large WAL takes a while
# After the inline connection met the database failing (not a lock, not a full disk),
# urgent writes go to the store thread for this long before the inline path is tried again.
INLINE_RETRY_S = 10.0


@dataclass
class StoreStats:
    commits: int = 0
    jobs: int = 0
    failed_batches: int = 0
    last_commit_monotonic: float | None = None
    last_batch_seconds: float = 0.0
    max_batch_seconds: float = 0.0
    last_error: str | None = None  # set while writes fail; cleared by one that succeeds
    write_failures: int = 0  # calls the database failed (a TitanError a job raises is not one)
    write_probes: int = 0  # health's write probes run (at most one a second)


class Store:
    def __init__(
        self,
        path: str,
        synchronous: str = "NORMAL",
        *,
        inline: bool = True,
        always_inline: bool = False,
        inline_burst_s: float = INLINE_BURST_S,
        wal_truncate_bytes: int = WAL_TRUNCATE_BYTES,
    ) -> None:
        self.path = os.path.abspath(path)
        self.synchronous = synchronous
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._checkpoints: queue.SimpleQueue[Any] = queue.SimpleQueue()  # checkpoint thread
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.entities: Entities | None = None
        self._closed = trio.Event()
        self._closing = False
        self._outstanding = 0  # jobs queued or running on the store thread
        self._since_checkpoint = 0
        self.wal_path = self.path + "-wal"
        self.wal_truncate_bytes = wal_truncate_bytes
        self._bound_at: float = wal_truncate_bytes  # the -wal file size that asks for one
        self._wal_content_bytes = 0  # the WAL's frames at the last checkpoint, in bytes
        self._frames_left = 0  # frames the last checkpoint could not copy (an old reader)
        self._checkpoint_queued = False
        self._checkpoint_error: str | None = None  # logged once, not at every attempt
        # The write gate (the module docstring): held by whichever of this process's
        # writers writes (the store thread's TRUNCATE of a full disk included), and by the
        # checkpoint thread while its RESTART or cut holds SQLite's write lock. Urgent
        # writes that find it held queue instead of waiting for the lock on the trio thread.
        self._writers = threading.Lock()
        self._shrinking = False  # the -wal file is to be cut back to the bound
        # The cuts' pause (WAL_SHRINK_PAUSE_S), ended early by what stops them.
        self._cut_pause = threading.Event()
        self._holding = False  # a backup writes: the RESTART and the cuts wait (hold_wal_reset)
        self._inline_commits = 0
        self._pony = threading.local()  # .conn: pony's sqlite3 connection on this thread
        # With FULL every commit fsyncs: that wait belongs on the store thread, never on
        # the trio thread, so nothing runs inline then.
        self.inline = inline and synchronous == "NORMAL"
        self._raw: RawDatabase | None = None  # urgent writes on the calling thread
        # Every call inline: for tests under trio's MockClock, where waiting on another
        # thread would let virtual time run ahead of the work.
        self.always_inline = always_inline
        self.inline_burst_s = inline_burst_s
        self._inline_budget = inline_burst_s
        self._inline_refilled = time.perf_counter()
        self._inline_paused_until = 0.0  # monotonic; after the inline connection failed
        self._inline_error: str | None = None  # logged once, not at every attempt
        self.writes = WriteHealth(self.stats)

    # ----- lifecycle -------------------------------------------------------------------

    @asynccontextmanager
    async def opened(self) -> AsyncIterator[Store]:
        """Open the database on the store thread for the duration of the block, and close
        it cleanly (bounded: 5 s) on the way out, however the block ends. The engine
        wraps every other service in this, so the database closes after they stop."""
        self._token = trio.lowlevel.current_trio_token()
        opened = trio.Event()
        failure: list[BaseException] = []

        def on_open(err: BaseException | None) -> None:
            if err is not None:
                failure.append(err)
            opened.set()

        self._thread = threading.Thread(
            target=self._thread_main, args=(on_open,), name="titan-store", daemon=False
        )
        self._thread.start()
        try:
            await opened.wait()
            if failure:
                raise failure[0]
            yield self
        finally:
            self._closing = True
            try:
                if self.entities is not None:
                    self.entities.db.disconnect()  # this thread's connection (inline calls)
                if self._raw is not None:
                    self._raw.close()
            finally:  # whatever closing those raised, the store thread must end, or the
                # process could never exit (it is not a daemon: it finishes its commits)
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._stop()

    async def run(self, *, task_status: trio.TaskStatus[Store] = trio.TASK_STATUS_IGNORED) -> None:
        """The store as a nursery task: open, report started, close when cancelled."""
        async with self.opened():
            task_status.started(self)
            await trio.sleep_forever()

    async def _stop(self) -> None:
        if self._thread is None:
            return
        self._closing = True
        self._cut_pause.set()
        self._queue.put(_STOP)
        await self._closed.wait()
        await trio.to_thread.run_sync(self._thread.join, 1.0)

    def _thread_main(self, on_open: Callable[[BaseException | None], None]) -> None:
        try:
            self.entities = open_database(self.path, self.synchronous, self._pony_connected)
        except BaseException as exc:  # reported to the trio side, which raises it
            self._to_trio(on_open, exc)
            self._to_trio(self._closed.set)
            return
        self._to_trio(on_open, None)
        checkpointer = threading.Thread(
            target=self._checkpointer, name="titan-checkpoint", daemon=True
        )
        checkpointer.start()
        try:
            self._loop()
        finally:
            try:
                self._checkpoints.put(_STOP)
                checkpointer.join(CHECKPOINTER_JOIN_S)
                self.entities.db.disconnect()
            finally:
                self._to_trio(self._closed.set)

    def _checkpointer(self) -> None:
        """The checkpoint thread: PASSIVE every CHECKPOINT_EVERY commits, and the bound's
        RESTART past WAL_TRUNCATE_BYTES. Not on the store thread: a PASSIVE
        blocks no writer in SQLite, but on the store thread every job queued behind it
        waited for it (tens of ms, more after a backup held the WAL back), and with one
        job queued, every urgent write after it too. After each, the WAL's pages up to
        the bound are kept mapped (resident.py), so that the trio thread's commits,
        which write the WAL from its start again after each RESTART, find them in
        memory."""
        wal = ResidentFile(self.wal_path, self.wal_truncate_bytes)
        try:
            while True:
                item = self._checkpoints.get()
                if item is _STOP:
                    return
                try:
                    self._checkpoint_and_bound(restart=item is _BOUND)
                    wal.refresh()
                except Exception:  # a bug: logged, and the next request is served
                    self._checkpoint_queued = False
                    log.exception("WAL checkpoint failed")
        finally:
            wal.close()

    def _to_trio(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass  # nobody is waiting any more

    def _loop(self) -> None:
        try:
            self._serve()
        finally:  # whatever is still queued will never run: tell its callers
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Job):
                    self._deliver(item, outcome.Error(StoreError("the database is closing")))

    def _serve(self) -> None:
        while True:
            batch: list[_Job] = []
            probe = stop = False
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stop = True
                    break
                if item is _PROBE:  # after the batch: it proves what the batch did not
                    probe = True
                else:
                    batch.append(item)
                    if len(batch) >= MAX_BATCH:
                        break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with self._gate(GATE_WAIT_S):  # then SQLite's busy timeout, as long
                    self._run_batch(batch)
            if stop:
                return
            if probe:
                with self._gate(GATE_WAIT_S):
                    self._probe()

    @contextlib.contextmanager
    def _gate(self, timeout_s: float) -> Iterator[bool]:
        """The write gate (``_writers``), waited for up to ``timeout_s``: whether it was
        got (and is then held until the block ends). The store thread goes on without
        it past GATE_WAIT_S, and SQLite's busy timeout decides as without the gate."""
        got = self._writers.acquire(timeout=timeout_s)
        try:
            yield got
        finally:
            if got:
                self._writers.release()

    def _gate_for_checkpoint(self) -> contextlib.AbstractContextManager[bool]:
        """The checkpoint thread's hold of the gate for a RESTART or a cut, if it gets it
        within CHECKPOINT_GATE_S (a store batch held it; the caller tries again later,
        as it does when SQLite's lock is held)."""
        return self._gate(CHECKPOINT_GATE_S)

    def _checkpoint_and_bound(self, *, restart: bool) -> None:
        """The checkpoint thread's work: a PASSIVE checkpoint, then a RESTART that never
        waits with the lock held (_try_without_waiting) when asked for (the file outgrew
        the bound) or when the WAL's content has (its frames, as the PASSIVE counted
        them), but only after a PASSIVE that copied everything, so the RESTART itself
        copies only what came in meanwhile. One that an old reader kept from completing
        is tried again once the file grew by an eighth of the bound. Then a file an old
        reader let grow is cut back (_shrink_wal)."""
        self._checkpoint("PASSIVE")
        self._bound(restart=restart)
        if self._shrinking and not self._held():  # after the bound: a RESTART lets them go further
            self._shrink_wal()

    def hold_wal_reset(self, hold: bool) -> None:
        """While ``hold``: the bound's RESTART and the cuts of the -wal file wait; the
        PASSIVE checkpoints go on. For the time a backup writes (the in-service
        schedule holds it for each run). Both take the write lock and, before they
        can reset the WAL, sync the frames committed since the last PASSIVE: a device
        busy with a backup's writes makes each sync take tens of ms, and every write
        waited for the lock meanwhile, every few seconds. The WAL grows instead (its new
        pages are written past the file's end: nothing to read first), up to
        WAL_HOLD_LIMIT times the bound, past which the RESTART goes ahead anyway. Once
        released, a bound checkpoint is asked for: the RESTART, then the cuts back to
        the bound, WAL_SHRINK_STEP at a time. Callable from any thread."""
        self._holding = hold
        self._cut_pause.set()
        if not hold:
            self._request_checkpoint(_BOUND)

    def _held(self) -> bool:
        return self._holding and self._wal_bytes() < WAL_HOLD_LIMIT * self.wal_truncate_bytes

    def _bound(self, *, restart: bool) -> None:
        if not restart and self._wal_content_bytes <= self.wal_truncate_bytes:
            return
        if self._held():  # asked again once the file grew by an eighth of the bound
            self._bound_at = self._wal_bytes() + self.wal_truncate_bytes // 8
            return
        if self._frames_left:
            # An old reader (a backup's snapshot) kept the PASSIVE from copying it all. A
            # RESTART now would fail while the reader stays, and if it had just gone, it
            # would copy the whole backlog itself with the write lock held, every commit
            # waiting (docs/BENCHMARKS.md). The next PASSIVE copies the backlog without
            # the lock; the RESTART comes after it.
            self._bound_at = self._wal_bytes() + self.wal_truncate_bytes // 8
            return
        self._write_out_wal()
        if self._try_without_waiting("RESTART"):
            # The file keeps its size and is written from its start again: it grows (and
            # asks for the next one) only once the WAL outgrows it. Grown far past the
            # bound (an old reader kept the WAL), it is cut back.
            self._bound_at = max(self.wal_truncate_bytes, self._wal_bytes())
            bound = self.wal_truncate_bytes
            self._shrinking = self._wal_bytes() > bound + bound // 4
        else:
            self._bound_at = self._wal_bytes() + self.wal_truncate_bytes // 8

    def _write_out_wal(self) -> None:
        """Write the -wal file's dirty pages to the disk and wait for them, without the
        write lock and without a device flush (sync_file_range): the frames committed
        since the PASSIVE began. The RESTART that follows syncs the WAL with the lock
        held, every write waiting: it then has only the frames of the last moments to
        write, and the flush. Not a sync (nothing is promised by it), so a failure, or a
        system without the call, changes nothing but the RESTART's length."""
        with contextlib.suppress(OSError), open(self.wal_path, "rb", buffering=0) as f:
            sync_file_range(f.fileno(), 0, 0, SFR_WAIT_BEFORE | SFR_WRITE | SFR_WAIT_AFTER)

    def _shrink_wal(self) -> None:
        """Cut the -wal file back to the bound, WAL_SHRINK_STEP at a time (checkpoint
        thread). Each cut takes the write gate and the write lock (no busy timeout: a
        commit holding it is over within a millisecond; it is tried again after the
        pause), finds where the WAL's log ends (_log_end), and cuts only past that, at
        the next page boundary: no writer can add a frame while the lock is held, and no
        reader reads past the log's end. Right after the RESTART the log still ends
        where the old WAL did; the cuts start once a commit has reused the WAL from its
        start, and go down to where its log ends at most (the next RESTART lets them go
        further). Stops when the file is down to the bound, when the store closes, when
        a checkpoint is asked for (the bound comes first: the next checkpoint goes on
        cutting after it), while a backup holds the WAL (hold_wal_reset), and after
        WAL_SHRINK_WAITS cuts in a row that could not cut; any of these but the last
        ends the pause between two cuts at once."""
        target = self.wal_truncate_bytes
        waits = 0
        try:
            with contextlib.closing(
                sqlite3.connect(self.path, timeout=0.0, isolation_level=None)
            ) as lock:
                page = lock.execute("PRAGMA page_size").fetchone()[0]
                self._cut_pause.clear()
                while not self._closing and not self._checkpoint_queued and not self._held():
                    size = self._wal_bytes()
                    if size <= target:
                        self._shrinking = False
                        break
                    if self._cut_wal(lock, page, max(target, size - WAL_SHRINK_STEP)):
                        waits = 0
                        self._bound_at = max(target, self._wal_bytes())
                    else:
                        waits += 1
                        if waits >= WAL_SHRINK_WAITS:
                            break
                    if self._cut_pause.wait(WAL_SHRINK_PAUSE_S):
                        self._cut_pause.clear()  # the loop's test says whether to stop
        except (sqlite3.Error, OSError) as exc:  # tried again at the next checkpoint
            text = describe(exc) if isinstance(exc, sqlite3.Error) else str(exc)
            if text != self._checkpoint_error:
                log.warning("cutting the WAL file back failed: %s", text)
            self._checkpoint_error = text

    def _cut_wal(self, lock: sqlite3.Connection, page: int, to: int) -> bool:
        """Truncate the -wal file to ``to`` bytes, or to where its log ends if that is
        further (_log_end), with the write lock held on ``lock``; whether it was cut."""
        with self._gate_for_checkpoint() as gated:
            if not gated:
                return False
            try:
                lock.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # another process writes (or checkpoints)
                return False
            try:
                to = max(to, self._log_end(page))
                to = -(-to // WAL_CUT_ALIGN) * WAL_CUT_ALIGN
                if to >= self._wal_bytes():
                    return False
                os.truncate(self.wal_path, to)
                return True
            finally:
                lock.execute("ROLLBACK")

    def _log_end(self, page: int) -> int:
        """Where the WAL's log ends in the -wal file, in bytes, read from the file (the
        caller holds the write lock: nobody appends meanwhile). SQLite's file format: a
        frame belongs to the log only if the salts in its header are the WAL header's,
        and a reset of the WAL (a RESTART, then the next commit writing from the start)
        changes the salts; frames are written one after the other from the start. So the
        frames with the header's salts are the log's first ones (and, after a rollback,
        frames written but never committed, which are kept too), and the first frame
        without them is past its end: found by a binary search, a few reads of 24 bytes
        (pages this store keeps mapped, resident.py). Not asked of SQLite: its only
        answer is a checkpoint's count of the frames, and a PASSIVE under the lock copies
        the frames committed since the last one and syncs, with every write waiting
        (docs/BENCHMARKS.md). Not from the -shm file either: closing a descriptor of a
        file drops every POSIX lock this process holds on it, SQLite's included (it
        holds none on the -wal file)."""
        frame = page + WAL_FRAME_HEADER
        with open(self.wal_path, "rb", buffering=0) as f:
            fd = f.fileno()
            header = os.pread(fd, WAL_HEADER, 0)
            if len(header) < WAL_HEADER:
                return len(header)
            salts = header[16:24]
            frames = (os.fstat(fd).st_size - WAL_HEADER) // frame

            def in_log(k: int) -> bool:
                return os.pread(fd, WAL_FRAME_HEADER, WAL_HEADER + k * frame)[8:16] == salts

            low, high = 0, frames  # frames before low are in the log, from high on not
            while low < high:
                middle = (low + high) // 2
                if in_log(middle):
                    low = middle + 1
                else:
                    high = middle
        return WAL_HEADER + low * frame

    def _try_without_waiting(self, mode: str) -> bool:
        """``mode`` with no busy timeout, BOUND_TRIES times BOUND_PAUSE_S apart: a commit
        holding the write lock is over within a millisecond, while a busy timeout would
        also be spent waiting for an old reader with the write lock held, every write
        stalled behind it."""
        for attempt in range(BOUND_TRIES):
            if attempt:
                time.sleep(BOUND_PAUSE_S)
            with self._gate_for_checkpoint() as gated:
                if gated and self._checkpoint(mode, busy_s=0.0):
                    return True
        return False

    def _checkpoint(self, mode: str, *, busy_s: float | None = None) -> bool:
        """Move the WAL into the database (checkpoint thread; the store thread's
        _make_room); return whether it all went.

        PASSIVE never waits. RESTART and TRUNCATE wait up to ``busy_s`` (default
        CHECKPOINT_BUSY_S) for a writer and for readers of older snapshots; TRUNCATE then
        empties the -wal file, which gives its space back to the disk. A failure is
        logged (once per cause) and never fails a job."""
        self._checkpoint_queued = False
        try:
            # Its own connection: pony's may hold a read transaction, which pins the WAL.
            timeout = CHECKPOINT_BUSY_S if busy_s is None else busy_s
            with contextlib.closing(sqlite3.connect(self.path, timeout=timeout)) as conn:
                busy, frames, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                page = conn.execute("PRAGMA page_size").fetchone()[0]
                self._wal_content_bytes = max(frames, 0) * (page + WAL_FRAME_HEADER)
                self._frames_left = max(frames - copied, 0)
        except sqlite3.Error as exc:  # retried at the next bound or CHECKPOINT_EVERY commits
            text = describe(exc)
            if text != self._checkpoint_error:
                log.warning("WAL checkpoint (%s) failed: %s", mode, text)
            self._checkpoint_error = text
            return False
        self._checkpoint_error = None
        return busy == 0

    def _probe(self) -> None:
        """The write probe (store thread only): one upsert committed through the store
        thread's connection, as every write goes, waiting at most PROBE_BUSY_MS for a
        lock another connection holds."""
        conn = getattr(self._pony, "conn", None)
        waited: int | None = None
        cause: str | None = None
        try:
            if conn is not None:
                try:
                    waited = conn.execute("PRAGMA busy_timeout").fetchone()[0]
                    conn.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_MS}")
                except sqlite3.Error:
                    conn = None  # gone: the session below opens another, with its pragmas
            with orm.db_session(strict=True):
                assert self.entities is not None
                self.entities.db.execute(
                    PROBE_SQL, {"key": PROBE_KEY, "now": int(time.time() * 1000)}
                )
        except Exception as exc:
            cause = str(as_store_error(exc))
        finally:
            if conn is not None and waited is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute(f"PRAGMA busy_timeout = {waited}")
        self._to_trio(self._probed, cause)

    def _wal_bytes(self) -> int:
        try:
            return os.stat(self.wal_path).st_size
        except OSError:  # none yet, or just removed by the last connection closing
            return 0

    def _request_checkpoint(self, checkpoint: object) -> None:
        if not self._checkpoint_queued and not self._closing:
            self._checkpoint_queued = True
            self._checkpoints.put(checkpoint)
            self._cut_pause.set()  # the cuts' pause ends: the checkpoint comes first

    def _make_room(self) -> bool:
        """After SQLITE_FULL: checkpoint and truncate the WAL, whose space then goes back
        to the disk. Whether a write might fit now (it completed and freed something)."""
        before = self._wal_bytes()
        freed = before - self._wal_bytes() if self._checkpoint("TRUNCATE") else 0
        if freed > 0:
            log.info("disk full: the WAL was truncated (%d KiB freed); writing again", freed >> 10)
        return freed > 0

    def _run_batch(self, batch: list[_Job], *, may_make_room: bool = True) -> None:
        started = time.perf_counter()
        before = self._pony_changes()
        try:
            results = []
            with orm.db_session(strict=True):
                for job in batch:
                    results.append(job.fn(self.entities, *job.args))
        except Exception as exc:
            self.stats.failed_batches += 1
            code = database_failure(exc)
            if code == sqlite3.SQLITE_FULL and may_make_room and self._make_room():
                self._run_batch(batch, may_make_room=False)
                return
            if code is None and len(batch) > 1:
                for job in batch:  # rolled back together; now find the culprit
                    self._run_batch([job], may_make_room=may_make_room)
                return
            self._to_trio(self._failed, exc, len(batch))
            for job in batch:  # each caller its own exception object to raise
                self._deliver(job, outcome.Error(as_store_error(exc)))
            return
        elapsed = time.perf_counter() - started
        wrote = self._wrote_since(before)
        self._to_trio(self._committed, elapsed, len(batch), wrote)
        for job, result in zip(batch, results, strict=True):
            self._deliver(job, outcome.Value(result))
        if self._wal_bytes() > self._bound_at:
            self._request_checkpoint(_BOUND)

    def _pony_connected(self, conn: sqlite3.Connection) -> None:
        """schema.open_database's hook: pony opened ``conn`` on this thread."""
        self._pony.conn = conn

    def _wrote_since(self, before: tuple[sqlite3.Connection, int] | None) -> bool:
        """Whether the transaction that just committed wrote a row. A connection pony
        opened in between (it replaces one a write failed on) counts from zero: a read on
        it proves nothing, so it must not clear a write failure."""
        after = self._pony_changes()
        if after is None:
            return True  # cannot tell
        conn, changes = after
        if before is None or before[0] is not conn:
            return changes > 0
        return changes != before[1]

    def _pony_changes(self) -> tuple[sqlite3.Connection, int] | None:
        """This thread's pony connection and its count of rows changed so far: compared
        before and after a transaction, whether it wrote anything."""
        conn = getattr(self._pony, "conn", None)
        if conn is None:
            return None
        try:
            return conn, conn.total_changes
        except sqlite3.ProgrammingError:  # closed; pony opens another
            return None

    def _deliver(self, job: _Job, result: outcome.Outcome) -> None:
        def finish() -> None:
            job.result = result
            if job.abandoned:
                self._outstanding -= 1
            job.done.set()

        self._to_trio(finish)

    # ----- use -------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, urgent: bool = False) -> T:
        """Run ``fn(entities, *args)`` in a committed transaction on the store thread; return its
        result or raise its error (as StoreError unless it is a TitanError).

        Cancelling the caller does not cancel the job: it still commits (or not) as a
        whole; the caller only stops waiting.

        ``urgent``: a small transaction someone is waiting on (a signal's journal entry,
        an order's commit before it is sent, one order's fill and position). When the
        store thread is idle it runs right here, which saves two thread wake-ups (a few
        hundred microseconds on a virtual machine); big or background writes leave it
        False and are group-committed. Only functions marked ``@plain_sql_function`` (they
        use nothing but ``e.db.execute/exists/select``) run inline; any other goes to the
        store thread whatever ``urgent`` says.
        """
        if self.entities is None or self._closing:
            raise StoreError("the database is not open")
        if (
            urgent
            and self._outstanding == 0
            and self.inline
            and plain_sql(fn, args)
            and self._inline_allowed()
            and time.monotonic() >= self._inline_paused_until
            and self._writers.acquire(blocking=False)  # else the store thread waits for it
        ):
            try:
                return self._run_here(fn, args, raw=True)
            except Deferred:
                pass  # nothing was done: the store thread waits for the lock or makes room
            finally:
                self._writers.release()
        if self.always_inline:
            return self._run_here(fn, args, raw=False)
        job = _Job(fn, args)
        self._outstanding += 1
        self._queue.put(job)
        try:
            await job.done.wait()
        finally:
            if job.result is None:  # cancelled while waiting: count it when it lands
                job.abandoned = True
            else:
                self._outstanding -= 1
        assert job.result is not None
        return job.result.unwrap()

    def _inline_allowed(self) -> bool:
        """A token bucket of trio-thread time: at most INLINE_SHARE of it goes to inline
        commits, with bursts up to INLINE_BURST_S; a burst beyond that queues for the
        store thread, where it is group-committed."""
        now = time.perf_counter()
        self._inline_budget = min(
            self.inline_burst_s, self._inline_budget + (now - self._inline_refilled) * INLINE_SHARE
        )
        self._inline_refilled = now
        return self._inline_budget > 0

    def _run_here(self, fn: Callable[..., T], args: tuple[Any, ...], *, raw: bool) -> T:
        """Run a small transaction on the calling thread while the store thread is idle
        (nothing queued, nothing running, no transaction open): no thread hop, no waking
        another core. It cannot be long: this thread never checkpoints (the checkpoint
        thread does) and with synchronous=NORMAL a commit does not fsync.

        ``raw``: on this thread's plain sqlite3 connection. Urgent functions only run SQL
        through ``e.db.execute/exists/select`` (see records.py), so they work there
        without pony's per-statement overhead, which costs more than SQLite itself on
        these one-row writes. Otherwise in a pony session (tests' always_inline)."""
        started = time.perf_counter()
        try:
            if raw:
                if self._raw is None or self._raw.closed:
                    self._raw = RawDatabase(self.path, self.synchronous)
                changes = self._raw.conn.total_changes
                with self._raw.transaction() as entities:
                    result = fn(entities, *args)
                wrote = self._raw.conn.total_changes != changes
            else:
                before = self._pony_changes()
                with orm.db_session(strict=True):
                    result = fn(self.entities, *args)
                wrote = self._wrote_since(before)
        except Deferred:
            raise
        except Exception as exc:
            code = database_failure(exc)
            if raw and code is not None:
                # Rolled back, nothing done: the store thread's connection decides (on a
                # full disk it truncates the WAL and retries).
                if code not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    self._pause_inline(exc)
                raise Deferred(str(exc)) from exc
            self._failed(exc)
            raise as_store_error(exc) from exc
        elapsed = time.perf_counter() - started
        self._inline_budget -= elapsed
        self._committed(elapsed, 1, wrote)
        if raw:
            self._inline_error = None
            self._inline_commits += 1
            if self._inline_commits % WAL_CHECK_EVERY == 0 and self._wal_bytes() > self._bound_at:
                self._request_checkpoint(_BOUND)
        return result

    def _pause_inline(self, exc: BaseException) -> None:
        """The inline connection cannot write (a file made read-only, an I/O error): drop
        it, and leave urgent writes to the store thread for INLINE_RETRY_S."""
        self._inline_paused_until = time.monotonic() + INLINE_RETRY_S
        if self._raw is not None:
            with contextlib.suppress(sqlite3.Error):
                self._raw.close()
        text = str(as_store_error(exc))
        if text != self._inline_error:
            log.warning(
                "writes on a second connection to the database fail (%s): they go through "
                "the store thread's connection for now (if the database file was made "
                "read-only, a restart would fail until that is fixed)",
                text,
            )
        self._inline_error = text

    def _failed(self, exc: BaseException, jobs: int = 1) -> None:
        """A refusal the caller asked for (a TitanError) says nothing about the database;
        anything else is its health until a transaction that writes succeeds."""
        if not isinstance(exc, TitanError):
            self.writes.failed(str(as_store_error(exc)), jobs)

    def _committed(self, elapsed: float, jobs: int, wrote: bool = True) -> None:
        if wrote:
            self.writes.succeeded()
        self.stats.commits += 1
        self.stats.jobs += jobs
        self.stats.last_commit_monotonic = time.monotonic()
        self.stats.last_batch_seconds = elapsed
        self.stats.max_batch_seconds = max(self.stats.max_batch_seconds, elapsed)
        self._count_for_checkpoint()

    def _count_for_checkpoint(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY:
            self._since_checkpoint = 0
            self._request_checkpoint(_PASSIVE)

    def _probed(self, cause: str | None) -> None:
        self.writes.probe_finished(cause)
        if cause is None:
            self._count_for_checkpoint()  # its frames are in the WAL like any commit's

    @property
    def last_commit_age_s(self) -> float | None:
        last = self.stats.last_commit_monotonic
        return None if last is None else time.monotonic() - last

    def takes_writes(self) -> tuple[bool, str | None]:
        """Whether the database takes writes now, and if not, why (SQLite's cause). Never
        waits: it answers from what writes and the last probe did, and asks for the next
        probe when that one is a second old (write_health.py)."""
        if self.entities is None or self._closing or self._closed.is_set():
            return False, "the database is not open"
        if self.writes.probe_due():
            self._queue.put(_PROBE)
        return self.writes.verdict()


F = TypeVar("F", bound=Callable[..., Any])


def plain_sql_function(fn: F) -> F:
    """Mark ``fn`` as using only ``e.db.execute/exists/select``: ``call`` may then run it
    inline on the plain sqlite3 connection (urgent=True). A function that touches pony
    entities must not carry this mark."""
    fn.plain_sql = True  # type: ignore[attr-defined]
    return fn


def plain_sql(fn: Callable[..., Any], args: tuple[Any, ...] = ()) -> bool:
    """Whether ``fn(entities, *args)`` only uses ``e.db.execute/exists/select`` and so can
    run on the plain sqlite3 connection. A function says so with ``@plain_sql_function``,
    or with a predicate over its arguments (records.run_all: true when every write it
    carries is)."""
    mark = getattr(fn, "plain_sql", False)
    return bool(mark(*args)) if callable(mark) else mark is True
