"""The store: every database operation runs on one dedicated thread, in batches.

Why a dedicated thread: pony keeps one connection per thread, and hopping a fresh worker
thread per row costs about three times an inline commit (SPEC §1). Why batches: callers
that arrive while a commit is running are committed together in the next transaction
(group commit), so the fsync cost is shared and the trio thread never waits on disk.

Guarantees:
- ``await store.call(fn, *args)`` returns only after ``fn``'s changes are committed, so
  what the service acknowledges is on disk.
- A job that raises changes nothing: its whole batch rolls back and the other jobs are
  run again one by one, so one bad write cannot take its neighbours down with it.
- ``fn`` runs inside a db_session on the store thread and must return plain data, never
  pony entities.
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
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import outcome
import trio
from pony import orm

from titan_trio.errors import StoreError, TitanError
from titan_trio.state.schema import Entities, open_database

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
_CHECKPOINT = object()
INLINE_SHARE = 0.2  # of the trio thread's time, at most, for inline commits
INLINE_BURST_S = 0.001
CHECKPOINT_EVERY = 500  # commits between WAL checkpoints (run on the store thread)


@dataclass
class StoreStats:
    commits: int = 0
    jobs: int = 0
    failed_batches: int = 0
    last_commit_monotonic: float | None = None
    last_batch_seconds: float = 0.0
    max_batch_seconds: float = 0.0
    last_error: str | None = None


class Store:
    def __init__(
        self,
        path: str,
        synchronous: str = "NORMAL",
        *,
        inline: bool = True,
        always_inline: bool = False,
        inline_burst_s: float = INLINE_BURST_S,
    ) -> None:
        self.path = os.path.abspath(path)
        self.synchronous = synchronous
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.entities: Entities | None = None
        self._closed = trio.Event()
        self._closing = False
        self._outstanding = 0  # jobs queued or running on the store thread
        self._since_checkpoint = 0
        # With FULL every commit fsyncs: that wait belongs on the store thread, never on
        # the trio thread, so nothing runs inline then.
        self.inline = inline and synchronous == "NORMAL"
        self._raw: _RawDatabase | None = None  # urgent writes on the calling thread
        # Every call inline: for tests under trio's MockClock, where waiting on another
        # thread would let virtual time run ahead of the work.
        self.always_inline = always_inline
        self.inline_burst_s = inline_burst_s
        self._inline_budget = inline_burst_s
        self._inline_refilled = time.perf_counter()

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
        self._queue.put(_STOP)
        await self._closed.wait()
        await trio.to_thread.run_sync(self._thread.join, 1.0)

    def _thread_main(self, on_open: Callable[[BaseException | None], None]) -> None:
        try:
            self.entities = open_database(self.path, self.synchronous)
        except BaseException as exc:  # reported to the trio side, which raises it
            self._to_trio(on_open, exc)
            self._to_trio(self._closed.set)
            return
        self._to_trio(on_open, None)
        try:
            self._loop()
        finally:
            try:
                self.entities.db.disconnect()
            finally:
                self._to_trio(self._closed.set)

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
                if item is not _STOP and item is not _CHECKPOINT:
                    self._deliver(item, outcome.Error(StoreError("the database is closing")))

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            if first is _CHECKPOINT:
                self._checkpoint()
                continue
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                if item is _CHECKPOINT:
                    continue  # the batch commit below is as good a moment; next time
                batch.append(item)
            self._run_batch(batch)
            if stop:
                return

    def _checkpoint(self) -> None:
        """Move the WAL into the database without blocking writers (PASSIVE)."""
        try:
            # Its own connection: pony's may hold a read transaction, which pins the WAL.
            with contextlib.closing(sqlite3.connect(self.path, timeout=1.0)) as conn:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # retried after the next CHECKPOINT_EVERY commits
            log.warning("WAL checkpoint failed: %s", exc)

    def _run_batch(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            results = []
            with orm.db_session(strict=True):
                for job in batch:
                    results.append(job.fn(self.entities, *job.args))
        except Exception as exc:
            self.stats.failed_batches += 1
            if len(batch) > 1:
                for job in batch:  # rolled back together; now find the culprit
                    self._run_batch([job])
                return
            self._to_trio(self._failed, exc)
            self._deliver(batch[0], outcome.Error(_as_store_error(exc)))
            return
        elapsed = time.perf_counter() - started
        self._to_trio(self._committed, elapsed, len(batch))
        for job, result in zip(batch, results, strict=True):
            self._deliver(job, outcome.Value(result))

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
        ):
            try:
                return self._run_here(fn, args, raw=True)
            except _Busy:
                pass  # another process holds the write lock: wait on the store thread
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
        another core. It cannot be long: this thread never checkpoints (the store thread
        does) and with synchronous=NORMAL a commit does not fsync.

        ``raw``: on this thread's plain sqlite3 connection. Urgent functions only run SQL
        through ``e.db.execute/exists/select`` (see records.py), so they work there
        without pony's per-statement overhead, which costs more than SQLite itself on
        these one-row writes. Otherwise in a pony session (tests' always_inline)."""
        started = time.perf_counter()
        try:
            if raw:
                if self._raw is None or self._raw.closed:
                    self._raw = _RawDatabase(self.path, self.synchronous)
                with self._raw.transaction() as entities:
                    result = fn(entities, *args)
            else:
                with orm.db_session(strict=True):
                    result = fn(self.entities, *args)
        except _Busy:
            raise
        except Exception as exc:
            self._failed(exc)
            raise _as_store_error(exc) from exc
        elapsed = time.perf_counter() - started
        self._inline_budget -= elapsed
        self._committed(elapsed, 1)
        return result

    def _failed(self, exc: BaseException) -> None:
        """A refusal the caller asked for (a TitanError) says nothing about the database;
        anything else is its health until the next commit succeeds."""
        if not isinstance(exc, TitanError):
            self.stats.last_error = f"{type(exc).__name__}: {exc}"

    def _committed(self, elapsed: float, jobs: int) -> None:
        self.stats.last_error = None
        self.stats.commits += 1
        self.stats.jobs += jobs
        self.stats.last_commit_monotonic = time.monotonic()
        self.stats.last_batch_seconds = elapsed
        self.stats.max_batch_seconds = max(self.stats.max_batch_seconds, elapsed)
        self._since_checkpoint += 1
        if self._since_checkpoint >= CHECKPOINT_EVERY and not self._closing:
            self._since_checkpoint = 0
            self._queue.put(_CHECKPOINT)

    @property
    def last_commit_age_s(self) -> float | None:
        last = self.stats.last_commit_monotonic
        return None if last is None else time.monotonic() - last

    def is_writable(self) -> bool:
        return (
            self.entities is not None
            and not self._closed.is_set()
            and os.access(os.path.dirname(self.path) or ".", os.W_OK)
            and (not os.path.exists(self.path) or os.access(self.path, os.W_OK))
        )


class _RawSql:
    """The slice of pony's Database API the urgent record functions use (SQLite binds
    ``$name`` parameters from a dict natively)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: dict[str, Any]) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def exists(self, sql: str, params: dict[str, Any]) -> bool:
        return self.conn.execute(f"SELECT {sql} LIMIT 1", params).fetchone() is not None

    def select(self, sql: str, params: dict[str, Any]) -> list[Any]:
        rows = self.conn.execute(f"SELECT {sql}", params).fetchall()
        return [row[0] for row in rows] if rows and len(rows[0]) == 1 else rows


@dataclass
class _RawEntities:
    db: _RawSql


class _Busy(Exception):
    """Another connection holds the write lock; nothing was done."""


RAW_BUSY_TIMEOUT_MS = 20  # the trio thread never waits longer than this for the lock


class _RawDatabase:
    def __init__(self, path: str, synchronous: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={synchronous}",
            f"busy_timeout={RAW_BUSY_TIMEOUT_MS}",
            "wal_autocheckpoint=0",
        ):
            self.conn.execute(f"PRAGMA {pragma}")
        self.entities = _RawEntities(_RawSql(self.conn))
        self.closed = False  # the store opens a new one in its place

    @contextmanager
    def transaction(self) -> Iterator[_RawEntities]:
        """BEGIN IMMEDIATE ... COMMIT; anything failing, the COMMIT included (a full disk
        shows there), rolls back, so the connection never keeps the write lock; one that
        cannot even roll back is closed."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise _Busy(str(exc)) from exc
            raise
        try:
            yield self.entities
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite may have rolled back already
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self.close()  # the original error is the one to report
            raise

    def close(self) -> None:
        self.closed = True
        self.conn.close()


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


def _as_store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, TitanError):
        return exc
    err = StoreError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
