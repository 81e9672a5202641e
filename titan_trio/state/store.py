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

import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
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


_STOP = object()


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
    def __init__(self, path: str, synchronous: str = "NORMAL") -> None:
        self.path = os.path.abspath(path)
        self.synchronous = synchronous
        self.stats = StoreStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self.entities: Entities | None = None
        self._closed = trio.Event()
        self._closing = False

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
                if item is not _STOP:
                    self._deliver(item, outcome.Error(StoreError("the database is closing")))

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
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
                batch.append(item)
            self._run_batch(batch)
            if stop:
                return

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
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            self._deliver(batch[0], outcome.Error(_as_store_error(exc)))
            return
        elapsed = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.jobs += len(batch)
        self.stats.last_commit_monotonic = time.monotonic()
        self.stats.last_batch_seconds = elapsed
        self.stats.max_batch_seconds = max(self.stats.max_batch_seconds, elapsed)
        for job, result in zip(batch, results, strict=True):
            self._deliver(job, outcome.Value(result))

    def _deliver(self, job: _Job, result: outcome.Outcome) -> None:
        def finish() -> None:
            job.result = result
            job.done.set()

        self._to_trio(finish)

    # ----- use -------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(entities, *args)`` in a committed transaction on the store thread; return its
        result or raise its error (as StoreError unless it is a TitanError).

        Cancelling the caller does not cancel the job: it still commits (or not) as a
        whole; the caller only stops waiting.
        """
        if self.entities is None or self._closing:
            raise StoreError("the database is not open")
        job = _Job(fn, args)
        self._queue.put(job)
        await job.done.wait()
        assert job.result is not None
        return job.result.unwrap()

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


def _as_store_error(exc: BaseException) -> BaseException:
    if isinstance(exc, TitanError):
        return exc
    err = StoreError(f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err
