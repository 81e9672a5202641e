"""The store: one database thread, group commit, all-or-nothing jobs, clean shutdown,
exact decimals, schema migrations, and a database that fails (a full disk, a write lock
held elsewhere, a WAL past its bound) and recovers without a restart."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.conftest import fill_disk
from tests.helpers import eventually
from tests.state.test_shadow import fill, open_order
from titan_trio.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from titan_trio.errors import IllegalTransition, StoreError
from titan_trio.state import records
from titan_trio.state import store as store_module
from titan_trio.state.schema import SCHEMA_VERSION, Entities, migrate
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store, plain_sql

WAL_BOUND = 4 * 1024 * 1024  # the WAL bound the tests use (the service's is larger)


@asynccontextmanager
async def open_store(
    path: Path,
    *,
    inline: bool = True,
    inline_burst_s: float = 60.0,
    wal_truncate_bytes: int = WAL_BOUND,
) -> AsyncIterator[Store]:
    """A store whose urgent calls run inline whenever the store thread is idle (a budget
    no test exhausts: a slow machine must not send them to the thread instead)."""
    async with trio.open_nursery() as nursery:
        store = await nursery.start(
            Store(
                str(path),
                inline=inline,
                inline_burst_s=inline_burst_s,
                wal_truncate_bytes=wal_truncate_bytes,
            ).run
        )
        yield store
        nursery.cancel_scope.cancel()


def all_kv(e: Entities) -> dict[str, Any]:
    return {row.key: json.loads(row.value) for row in e.KeyValue.select()}


def store_threads(name: str = "titan-store") -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


def schema_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchone()[0]


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return {name for (name,) in rows}


# ----- basics -----------------------------------------------------------------------------


async def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(records.kv_set, "k", 1, 1)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_kv_round_trip(tmp_path: Path) -> None:
    value = {"balance": "10000.00", "list": [1, 2.5, None, True], "text": "é"}
    async with open_store(tmp_path / "t.db") as store:
        assert await store.call(records.kv_get, "missing") is None
        await store.call(records.kv_set, "k", value, 1000)
        assert await store.call(records.kv_get, "k") == value
        await store.call(records.kv_set, "k", "replaced", 2000)
        assert await store.call(records.kv_get, "k") == "replaced"


async def test_committed_values_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(records.kv_set, "k", [1, 2, 3], 1)
    async with open_store(path) as store:
        assert await store.call(records.kv_get, "k") == [1, 2, 3]


def make_orders() -> list[Order]:
    limit = Order(
        client_order_id="c-1",
        symbol="BTCUSDT",
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        qty=Decimal("0.001"),
        price=Decimal("95000.10"),
        time_in_force=TimeInForce.POST_ONLY,
        reduce_only=False,
        leverage=Decimal("12.5"),
        signal_id="sig-1",
        status=OrderStatus.PARTIALLY_FILLED,
        exchange_order_id="ex-1",
        filled_qty=Decimal("0.0005"),
        avg_fill_price=Decimal("95000.1000000000000000000001"),
        created_ms=1_700_000_000_001,
        updated_ms=1_700_000_000_500,
    )
    market = Order(
        client_order_id="c-2",
        symbol="ETHUSDT",
        side=Side.SELL,
        order_type=OrderType.MARKET,
        qty=Decimal("1.20"),
        reduce_only=True,
        status=OrderStatus.SUBMITTED,
        created_ms=1_700_000_000_002,
        updated_ms=1_700_000_000_002,
    )
    filled = Order(
        client_order_id="c-3",
        symbol="SOLUSDT",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        qty=Decimal("3"),
        status=OrderStatus.FILLED,
        filled_qty=Decimal("3"),
        avg_fill_price=Decimal("180.01"),
        created_ms=1_700_000_000_000,
        updated_ms=1_700_000_000_003,
    )
    return [limit, market, filled]


async def test_orders_round_trip_with_exact_decimals(tmp_path: Path) -> None:
    limit, market, filled = make_orders()
    async with open_store(tmp_path / "t.db") as store:
        for order in (market, filled, limit):
            await store.call(records.save_order, order)
        loaded = await store.call(records.load_open_orders)
    # Terminal orders are not open; open ones come back oldest first, field for field.
    assert loaded == [limit, market]
    got = loaded[0]
    assert str(got.qty) == "0.001"
    assert str(got.price) == "95000.10"
    assert str(got.leverage) == "12.5"
    assert str(got.filled_qty) == "0.0005"
    assert str(got.avg_fill_price) == "95000.1000000000000000000001"
    assert str(loaded[1].qty) == "1.20"
    assert loaded[1].price is None
    assert loaded[1].avg_fill_price is None


async def test_saving_an_order_again_updates_it(tmp_path: Path) -> None:
    order = make_orders()[0]
    async with open_store(tmp_path / "t.db") as store:
        await store.call(records.save_order, order)
        order.apply_fill(Decimal("0.0005"), Decimal("95000.30"), now_ms=1_700_000_001_000)
        await store.call(records.save_order, order)
        assert order.status is OrderStatus.FILLED
        assert await store.call(records.load_open_orders) == []
        counts = await store.call(records.table_counts)
    assert counts["orders"] == 1


# ----- all-or-nothing jobs ----------------------------------------------------------------


class Boom(Exception):
    pass


def write_then_raise(e: Entities, exc: Exception) -> None:
    records.kv_set(e, "bad", "must not be committed", 1)
    raise exc


def good_job(e: Entities, i: int) -> int:
    records.kv_set(e, f"good-{i}", i, 1)
    return i


@pytest.mark.parametrize(
    ("raised", "expected"),
    [(Boom("disk says no"), StoreError), (IllegalTransition("bad move"), IllegalTransition)],
    ids=["foreign-error", "titan-error"],
)
async def test_failing_job_rolls_back_alone(
    tmp_path: Path, raised: Exception, expected: type[Exception]
) -> None:
    entered, gate = threading.Event(), threading.Event()

    def hold_the_store_thread(_e: Entities) -> None:
        entered.set()
        assert gate.wait(10), "gate never opened"

    results: dict[int, int] = {}
    errors: list[BaseException] = []

    async def good(i: int) -> None:
        results[i] = await store.call(good_job, i)

    async def bad() -> None:
        try:
            await store.call(write_then_raise, raised)
        except Exception as exc:
            errors.append(exc)

    async with open_store(tmp_path / "t.db", inline=False) as store:
        async with trio.open_nursery() as nursery:
            # Hold the store thread so that every job below lands in one batch.
            nursery.start_soon(store.call, hold_the_store_thread)
            await trio.to_thread.run_sync(entered.wait, 10)
            for i in range(10):
                nursery.start_soon(good, i)
            nursery.start_soon(bad)
            for i in range(10, 20):
                nursery.start_soon(good, i)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        stored = await store.call(all_kv)
        failed_batches = store.stats.failed_batches

    assert len(errors) == 1
    assert isinstance(errors[0], expected)
    if expected is StoreError:
        assert "disk says no" in str(errors[0])
    else:
        assert errors[0] is raised
    assert "bad" not in stored
    assert results == {i: i for i in range(20)}
    assert stored == {f"good-{i}": i for i in range(20)}
    assert failed_batches >= 1  # they really shared the failing batch, then were re-run


async def test_lone_failing_job_changes_nothing(tmp_path: Path) -> None:
    async with open_store(tmp_path / "t.db") as store:
        with pytest.raises(StoreError, match="Boom: nope"):
            await store.call(write_then_raise, Boom("nope"))
        assert await store.call(all_kv) == {}
        # The store keeps working after a failure.
        await store.call(records.kv_set, "after", 1, 1)
        assert await store.call(all_kv) == {"after": 1}


# ----- group commit -----------------------------------------------------------------------


async def test_concurrent_calls_share_commits(tmp_path: Path) -> None:
    async with open_store(tmp_path / "t.db") as store:
        before = store.stats.commits
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(store.call, records.kv_set, f"k{i}", i, 1)
        commits = store.stats.commits - before
        stored = await store.call(all_kv)
    assert 1 <= commits < 20
    assert stored == {f"k{i}": i for i in range(200)}


# ----- shutdown ---------------------------------------------------------------------------


async def test_store_thread_ends_and_releases_the_database(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        assert len(store_threads()) == 1
        await store.call(records.kv_set, "k", "v", 1)
    assert store_threads() == []
    # timeout=0: fail at once instead of waiting if anything still holds a lock.
    conn = sqlite3.connect(path, timeout=0)
    try:
        with conn:
            conn.execute("INSERT INTO kv (key, value, updated_ms) VALUES ('outside', '1', 1)")
        assert conn.execute("SELECT value FROM kv WHERE key = 'k'").fetchone() == ('"v"',)
    finally:
        conn.close()


async def test_call_after_close_is_refused(tmp_path: Path) -> None:
    async with open_store(tmp_path / "t.db") as store:
        pass
    with pytest.raises(StoreError, match="not open"):
        await store.call(records.kv_get, "k")


# ----- opening ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a database\n" * 3,
        bytes(range(256)) * 16,
        b"SQLite format 3\x00" + b"\xff" * 4080,
    ],
    ids=["text", "binary", "bad-header"],
)
async def test_opening_a_file_that_is_not_a_database(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "t.db"
    path.write_bytes(garbage)
    async with trio.open_nursery() as nursery:
        with pytest.raises(StoreError, match="not a database") as info:
            await nursery.start(Store(str(path)).run)
    assert str(path) in str(info.value)
    assert store_threads() == []
    assert path.read_bytes() == garbage  # left as it was


async def test_store_refuses_a_newer_database(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    migrate(str(path))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    async with trio.open_nursery() as nursery:
        with pytest.raises(StoreError, match="newer"):
            await nursery.start(Store(str(path)).run)
    assert store_threads() == []


# ----- migrations -------------------------------------------------------------------------


def test_fresh_database_gets_the_current_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    migrate(str(path))
    assert schema_version(path) == SCHEMA_VERSION


async def test_store_records_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with open_store(path):
        pass
    assert schema_version(path) == SCHEMA_VERSION
    assert {"orders", "kv", "schema_version"} <= table_names(path)


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    migrate(str(path))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        migrate(str(path))
    assert schema_version(path) == SCHEMA_VERSION + 1


def test_migration_hook_runs_once_and_bumps_the_version(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    migrate(str(path))
    assert schema_version(path) == 1
    calls: list[sqlite3.Connection] = []

    def to_v2(conn: sqlite3.Connection) -> None:
        calls.append(conn)
        conn.execute("CREATE TABLE added_in_v2 (x INTEGER)")

    assert migrate(str(path), migrations={2: to_v2}, target=2) == 1
    assert len(calls) == 1
    assert schema_version(path) == 2
    assert "added_in_v2" in table_names(path)
    # Already at version 2: nothing runs again.
    assert migrate(str(path), migrations={2: to_v2}, target=2) == 2
    assert len(calls) == 1


def test_failing_migration_hook_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    migrate(str(path))

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        conn.execute("ALTER TABLE no_such_table ADD COLUMN y TEXT")

    with pytest.raises(StoreError, match="no_such_table"):
        migrate(str(path), migrations={2: broken}, target=2)
    assert schema_version(path) == 1
    assert "half_done" not in table_names(path)


def test_failing_python_migration_hook_keeps_the_version(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    migrate(str(path))

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise Boom("migration bug")

    with pytest.raises(Boom):
        migrate(str(path), migrations={2: broken}, target=2)
    assert schema_version(path) == 1
    assert "half_done" not in table_names(path)


def test_missing_migration_step_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    migrate(str(path))
    with pytest.raises(StoreError, match="no migration to schema version 2"):
        migrate(str(path), migrations={}, target=2)
    assert schema_version(path) == 1


async def test_inline_commits_are_bounded_and_bursts_go_to_the_store_thread(
    tmp_path: Path,
) -> None:
    """An idle store commits small jobs on the calling thread; a burst beyond the inline
    budget is queued for the store thread and group-committed there."""
    async with open_store(tmp_path / "t.db") as store:
        await store.call(records.kv_set, "first", 1, 0)
        assert store.stats.commits == 1  # inline: committed before call returned
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(store.call, records.kv_set, f"burst-{i}", i, 0)
        stored = await store.call(all_kv)
        assert len(stored) == 301
        assert store.stats.commits < 150  # most of the burst shared commits
        with pytest.raises(StoreError):
            await store.call(write_then_raise, Boom("inline failure"))
        assert "bad" not in await store.call(all_kv)


# ----- the inline (plain sqlite3) path writes what the store thread writes ------------------


def _dump_tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("orders", "fills", "positions", "trades", "kv")
        }


async def test_urgent_shadow_writes_inline_match_the_store_thread(tmp_path: Path) -> None:
    """A whole trade (open fill, close fill, orders, position, balance) saved inline on the
    trio thread leaves exactly the rows the store thread's pony session leaves."""

    def writes() -> list[list[tuple[Any, tuple[Any, ...]]]]:
        shadow = ShadowState(Decimal("10000"))
        order = shadow.apply_order(open_order("c1", Side.BUY, "sig-1"))
        opened = shadow.apply_fill(fill("e1", Side.BUY, "0.1", "30000", fee="1.65", ts=1000))
        closed = shadow.apply_fill(
            fill("e2", Side.SELL, "0.1", "30500", fee="1.6775", ts=2000, cid="c2"),
            close_reason="take_profit",
        )
        assert opened is not None and closed is not None and closed.trade is not None
        return [
            [(records.save_order, (order,))],
            [(records.save_fill_changes, (opened, Decimal("9998.35"), 1000))],
            [(records.save_fill_changes, (closed, shadow.balance, 2000))],
        ]

    inline_path, thread_path = tmp_path / "inline.db", tmp_path / "thread.db"
    async with open_store(inline_path) as store:
        for batch in writes():
            await store.call(records.run_all, batch, urgent=True)
        assert store._raw is not None  # they did run on the plain connection
    async with open_store(thread_path, inline=False) as store:
        for batch in writes():
            await store.call(records.run_all, batch, urgent=True)
    inline_rows = _dump_tables(inline_path)
    assert inline_rows == _dump_tables(thread_path)
    assert len(inline_rows["trades"]) == 1 and len(inline_rows["fills"]) == 2
    assert inline_rows["positions"] == []


class _CommitFails:
    """The inline connection with a COMMIT that fails the way a full disk does."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    @property
    def total_changes(self) -> int:
        return self.conn.total_changes

    def close(self) -> None:
        self.conn.close()

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)


async def test_failed_inline_commit_rolls_back_and_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(records.kv_set, "k", 1, 1, urgent=True)
        raw = store._raw
        assert raw is not None
        real = raw.conn
        raw.conn = _CommitFails(real)  # type: ignore[assignment]
        try:
            with pytest.raises(StoreError, match="disk is full"):
                await store.call(records.kv_set, "k", 2, 2, urgent=True)
        finally:
            raw.conn = real
        assert not real.in_transaction
        assert "disk is full" in (store.stats.last_error or "")
        # the same connection and the store thread both write again at once
        await store.call(records.kv_set, "k", 3, 3, urgent=True)
        await store.call(records.kv_set, "other", 4, 4)
        assert await store.call(all_kv) == {"k": 3, "other": 4}


async def test_urgent_pony_function_runs_on_the_store_thread(tmp_path: Path) -> None:
    """Only @plain_sql functions may run on the plain connection; others are queued."""
    async with open_store(tmp_path / "t.db") as store:
        await store.call(records.add_event, 1, "INFO", "test", "hello", urgent=True)
        assert store._raw is None  # nothing ran inline
        pony_write = [(records.add_event, (2, "INFO", "test", "again"))]
        plain_write = [(records.kv_set, ("k", 1, 1))]
        assert not plain_sql(records.run_all, (pony_write + plain_write,))
        assert plain_sql(records.run_all, (plain_write,))
        await store.call(records.run_all, pony_write + plain_write, urgent=True)
        assert store._raw is None
        assert (await store.call(records.table_counts))["system_events"] == 2


async def test_urgent_call_waits_on_the_store_thread_when_the_lock_is_taken(
    tmp_path: Path,
) -> None:
    """Another process writing: the trio thread gives up after a few ms and the store
    thread waits for the lock, so the event loop keeps running meanwhile."""
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(records.kv_set, "k", 1, 1, urgent=True)  # opens the inline path
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        result: list[None] = []

        async def write() -> None:
            result.append(await store.call(records.kv_set, "k", 2, 2, urgent=True))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await eventually(lambda: store._outstanding == 1)  # queued, loop still running
            other.execute("COMMIT")
            other.close()
        assert result == [None]
        assert await store.call(all_kv) == {"k": 2}


async def test_synchronous_full_never_commits_on_the_trio_thread(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), "FULL").run)
        await store.call(records.kv_set, "k", 1, 1, urgent=True)
        assert store._raw is None and not store.inline
        nursery.cancel_scope.cancel()


async def test_store_thread_ends_even_if_closing_the_inline_connection_fails(
    tmp_path: Path,
) -> None:
    class BrokenClose:
        def close(self) -> None:
            raise sqlite3.ProgrammingError("close failed")

    raised = False
    try:
        async with open_store(tmp_path / "t.db") as store:
            await store.call(records.kv_set, "k", 1, 1, urgent=True)
            assert store._raw is not None
            store._raw.close()
            store._raw = BrokenClose()  # type: ignore[assignment]
    except* sqlite3.ProgrammingError:
        raised = True  # reported to the caller...
    assert raised
    assert store_threads() == []  # ...and the store thread ended, or the process would hang


class _CommitAndRollbackFail(_CommitFails):
    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "ROLLBACK":
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)


async def test_inline_connection_that_cannot_roll_back_is_replaced(tmp_path: Path) -> None:
    async with open_store(tmp_path / "t.db") as store:
        await store.call(records.kv_set, "k", 1, 1, urgent=True)
        broken = store._raw
        assert broken is not None
        broken.conn = _CommitAndRollbackFail(broken.conn)  # type: ignore[assignment]
        with pytest.raises(StoreError, match="disk is full"):  # the first error is reported
            await store.call(records.kv_set, "k", 2, 2, urgent=True)
        assert broken.closed
        await store.call(records.kv_set, "k", 3, 3, urgent=True)  # a fresh connection
        assert store._raw is not broken
        await store.call(records.kv_set, "other", 4, 4)  # the lock was released
        assert await store.call(all_kv) == {"k": 3, "other": 4}


async def test_an_inline_connection_that_cannot_write_leaves_the_write_to_the_store_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One notion of "the database takes writes": when only the inline connection cannot
    write (a file made read-only after the store thread's connection opened it), the
    write is the store thread's, and succeeds there; nothing fails, one WARNING says so."""
    async with open_store(tmp_path / "t.db") as store:
        await store.call(records.kv_set, "k", 1, 1, urgent=True)
        raw = store._raw
        assert raw is not None
        raw.conn.execute("PRAGMA query_only = 1")  # it refuses writes: SQLITE_READONLY
        for n in range(2, 5):
            await store.call(records.kv_set, "k", n, n, urgent=True)
        assert await store.call(records.kv_get, "k") == 4
        assert raw.closed  # dropped; urgent writes go to the store thread for a while
        assert store.stats.last_error is None and store.stats.write_failures == 0
        ok, cause = store.takes_writes()
        assert (ok, cause) == (True, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "writes on a second connection" in warnings[0]


# ----- the database failing: a full disk, a write lock held elsewhere ------------------------


def wal_bytes(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size if wal.exists() else 0


def cap_pages(e: Entities, pages: int) -> None:
    """On the store thread's connection: no file beyond ``pages`` pages (at least its size
    now), so a write that needs a new page fails with SQLITE_FULL, as on a full disk."""
    e.db.execute(f"PRAGMA max_page_count = {pages}")


def set_busy_timeout(e: Entities, ms: int) -> None:
    e.db.execute(f"PRAGMA busy_timeout = {ms}")


def big_event(e: Entities, i: int) -> None:
    records.add_event(e, i, "INFO", "test", "x" * 20_000)  # a pony entity: store thread


async def test_full_disk_fails_calls_clearly_and_the_store_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite's max_page_count, on both connections, stands in for a full disk: a write
    needing a new page fails with SQLITE_FULL. A real full disk: the tmpfs test below and
    tests/integration/test_database_failures.py."""
    caplog.set_level(logging.INFO, "titan.store")
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(records.kv_set, "k", 0, 0, urgent=True)  # the inline connection
        raw = store._raw
        assert raw is not None
        await store.call(cap_pages, 1)  # (raised to the file's size by SQLite)
        raw.conn.execute("PRAGMA max_page_count = 1")

        with pytest.raises(StoreError) as on_thread:
            await store.call(big_event, 1)
        with pytest.raises(StoreError) as inline:
            await store.call(records.kv_set, "big", "x" * 20_000, 1, urgent=True)
        for info in (on_thread, inline):  # SQLite's words, not pony's wrapper classes
            assert str(info.value) == "database or disk is full (SQLITE_FULL)"
        assert wal_bytes(path) == 0  # the store truncated the WAL to make room
        assert store.stats.write_failures == 2
        # A read succeeds, but proves nothing about writes: still failing.
        assert await store.call(records.kv_get, "k") == 0
        assert store.stats.last_error == "database or disk is full (SQLITE_FULL)"

        # Space returns: both connections write again, no restart.
        await store.call(cap_pages, 1_000_000)
        raw.conn.execute("PRAGMA max_page_count = 1000000")
        await store.call(records.kv_set, "big", "y" * 20_000, 2, urgent=True)
        assert store._raw is raw and store.stats.last_error is None
        await store.call(big_event, 2)
        assert (await store.call(records.table_counts))["system_events"] == 1
        assert (await store.call(records.kv_get, "big")) == "y" * 20_000
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["database write failed: database or disk is full (SQLITE_FULL)"]
    assert any("database writes succeed again" in r.getMessage() for r in caplog.records)


async def test_write_lock_held_elsewhere_fails_the_batch_once_and_then_clears(
    tmp_path: Path,
) -> None:
    """Another process holding the write lock past the busy timeout: the waiting batch
    fails as a whole, at once (not job by job, each waiting out the timeout again), with
    SQLite's cause; once the lock is released the next calls commit."""
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(records.kv_set, "k", 0, 0, urgent=True)
        raw = store._raw
        await store.call(set_busy_timeout, 50)  # 5 s in service; a test need not wait
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        entered, gate = threading.Event(), threading.Event()

        def hold_the_store_thread(_e: Entities) -> None:
            entered.set()
            assert gate.wait(10), "gate never opened"

        errors: list[StoreError] = []

        async def write(i: int) -> None:
            with pytest.raises(StoreError) as info:
                await store.call(records.kv_set, f"k{i}", i, i)
            errors.append(info.value)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.call, hold_the_store_thread)
                await trio.to_thread.run_sync(entered.wait, 10)
                for i in range(1, 6):
                    nursery.start_soon(write, i)
                await trio.testing.wait_all_tasks_blocked()
                failed_before = store.stats.failed_batches
                gate.set()
            assert [str(e) for e in errors] == ["database is locked (SQLITE_BUSY)"] * 5
            assert store.stats.failed_batches == failed_before + 1
            assert store.stats.last_error == "database is locked (SQLITE_BUSY)"
            assert store.stats.write_failures == 5
        finally:
            other.execute("COMMIT")
            other.close()
        await store.call(records.kv_set, "k", 6, 6, urgent=True)  # inline, the same connection
        assert store._raw is raw and store.stats.last_error is None
        await store.call(records.add_event, 7, "INFO", "test", "on the store thread")
        assert await store.call(all_kv) == {"k": 6}


async def test_a_database_failing_and_recovering_over_and_over_is_logged_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lock another process takes and releases again and again: the same cause is
    logged once (and its recovery once), not twice per round."""
    caplog.set_level(logging.INFO, "titan.store")
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            for i in range(5):
                # 5 s in service, a test need not wait (again each round: pony replaces
                # a connection a write failed on, and the new one has the service's)
                await store.call(set_busy_timeout, 50)
                other.execute("BEGIN IMMEDIATE")
                with pytest.raises(StoreError, match="locked"):
                    await store.call(records.add_event, i, "INFO", "test", "refused")
                other.execute("ROLLBACK")
                await store.call(records.add_event, i, "INFO", "test", "written")
        finally:
            other.close()
        assert store.stats.write_failures == 5 and store.stats.last_error is None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "database write failed: database is locked (SQLITE_BUSY)",
        "database writes succeed again (after: database is locked (SQLITE_BUSY))",
    ]


async def test_a_read_after_a_failed_write_does_not_say_writes_work(tmp_path: Path) -> None:
    """Pony replaces the connection a write failed on; a read on the new one commits
    nothing and must not clear the failure (health would say healthy under the lock)."""
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(set_busy_timeout, 50)  # 5 s in service; a test need not wait
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreError, match="locked"):
                await store.call(records.add_event, 1, "INFO", "test", "refused")
            assert await store.call(records.kv_get, "k") is None  # a read works
            assert store.stats.last_error == "database is locked (SQLITE_BUSY)"
            assert store.takes_writes()[0] is False
        finally:
            other.close()
        await store.call(records.add_event, 2, "INFO", "test", "written")
        assert store.stats.last_error is None


async def test_wal_stays_near_its_bound_while_writes_go_on(tmp_path: Path) -> None:
    """Ten times the bound's worth of frames: the -wal file grows to its bound and is
    then written from its start again (RESTART), never much past it."""
    path = tmp_path / "t.db"
    largest = 0
    async with open_store(path) as store:
        for i in range(600):  # ~40 MB of WAL frames, inline and on the store thread
            value = f"{i:08d}" * 8192  # 64 KiB, new content each time
            await store.call(records.kv_set, f"k{i % 10}", value, i, urgent=i % 2 == 0)
            largest = max(largest, wal_bytes(path))
        content = await store.call(records.kv_get, "k9")
    assert content == "00000599" * 8192  # the last write is there
    # past the bound (a RESTART comes once the WAL outgrew it), never far past it: the
    # checkpoint thread lags writes this fast, more on a slow machine
    assert WAL_BOUND <= largest <= 4 * WAL_BOUND


async def test_the_wals_new_frames_go_to_the_disk_before_each_restart_takes_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before each RESTART, which syncs the WAL with every write waiting, the -wal file's
    dirty pages (the frames committed since the PASSIVE began) are written out with the
    write gate free: the RESTART's own sync is left the last moments' frames, and the
    device flush."""
    events: list[tuple[str, bool]] = []  # what, and whether the checkpoint thread held the gate
    gated = [False]
    real_write_out = store_module.sync_file_range
    real_checkpoint = Store._checkpoint
    real_gate = Store._gate_for_checkpoint

    def write_out(fd: int, offset: int, length: int, flags: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}") == store.wal_path:
            events.append(("write-out", gated[0]))
        real_write_out(fd, offset, length, flags)

    def checkpoint(self: Store, mode: str, **kwargs: Any) -> bool:
        if mode == "RESTART":
            events.append(("RESTART", gated[0]))
        return real_checkpoint(self, mode, **kwargs)

    @contextlib.contextmanager
    def gate(self: Store) -> Iterator[bool]:
        with real_gate(self) as got:
            gated[0] = got
            try:
                yield got
            finally:
                gated[0] = False

    monkeypatch.setattr(store_module, "sync_file_range", write_out)
    monkeypatch.setattr(Store, "_checkpoint", checkpoint)
    monkeypatch.setattr(Store, "_gate_for_checkpoint", gate)
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        with trio.fail_after(60):  # a hang detector, not a speed limit
            for i in range(100_000):  # 64 KiB values: past the bound several times
                await store.call(records.kv_set, f"k{i % 10}", f"{i:08d}" * 8192, i)
                if sum(e == ("RESTART", True) for e in events) >= 3:
                    break
    restarts = [k for k, e in enumerate(events) if e[0] == "RESTART"]
    assert len(restarts) >= 3 and all(events[k][1] for k in restarts)  # under the gate
    for k in restarts:  # a bound's tries follow a write-out made without the gate
        j = k
        while events[j - 1][0] == "RESTART":
            j -= 1
        assert j > 0 and events[j - 1] == ("write-out", False), events


def old_snapshot(path: Path) -> sqlite3.Connection:
    """A reader holding one snapshot, as a backup's copy does: the WAL cannot be
    checkpointed past it, nor reused, until it ends (COMMIT)."""
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sqlite_master").fetchall()
    return reader


async def grow_behind_an_old_reader(store: Store, path: Path) -> int:
    """~13 MB of writes (past 3x the bound) while a reader pins the WAL, then the reader
    gone; the -wal file's size it left."""
    await store.call(records.kv_set, "k", "v", 0)
    reader = old_snapshot(path)
    try:
        with trio.fail_after(30):  # a hang detector, not a speed limit
            for i in range(200):
                value = f"{i:08d}" * 8192
                await store.call(records.kv_set, f"k{i % 10}", value, i, urgent=i % 2 == 0)
        return wal_bytes(path)
    finally:
        reader.execute("COMMIT")
        reader.close()


async def test_a_reader_holding_an_old_snapshot_never_stalls_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup's read transaction keeps the WAL from being reused: the bound's checkpoint
    gives up at once instead of waiting for it, and once the reader is gone the WAL is
    written from its start again (the file grown meanwhile stops growing). The waits a
    checkpoint may do are made a minute long here: a checkpoint that waited for the
    reader would hang the writes."""
    monkeypatch.setattr(store_module, "CHECKPOINT_BUSY_S", 60.0)
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        pinned = await grow_behind_an_old_reader(store, path)
        largest_after = 0
        written = 0
        with trio.fail_after(30):
            # ~52 MB more: the file would grow by all of it unreused. Reused, it grows by
            # what comes in while the checkpoint thread lags (5-7 MB here, 15 MB once on a
            # busy machine); half of the writes leaves room for that.
            for i in range(800):
                value = f"{i:08d}" * 8192
                await store.call(records.kv_set, f"k{i % 10}", value, i, urgent=i % 2 == 0)
                written += len(value)
                largest_after = max(largest_after, wal_bytes(path))
    assert pinned > 3 * WAL_BOUND
    assert largest_after < pinned + written / 2  # reused from its start, not appended to


async def test_the_backlog_an_old_reader_held_back_is_copied_without_the_write_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a backup's snapshot pins the WAL, no RESTART is tried; once the reader has
    gone, a PASSIVE copies what it held back (writers go on meanwhile) before the RESTART,
    which holds the write lock, copies only what came in since. A RESTART straight after
    the reader left copied the whole backlog with the lock held: 73 ms for 118 MB."""
    seen: list[tuple[str, int]] = []  # (mode, frames the checkpoint left behind)
    real = Store._checkpoint

    def checkpoint(self: Store, mode: str, **kw: Any) -> bool:
        done = real(self, mode, **kw)
        seen.append((mode, self._frames_left))
        return done

    monkeypatch.setattr(Store, "_checkpoint", checkpoint)
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        await store.call(records.kv_set, "k", "v", 0)
        reader = old_snapshot(path)
        for i in range(200):  # ~13 MB: past 3x the bound, with the WAL pinned
            await store.call(records.kv_set, f"k{i % 10}", f"{i:08d}" * 8192, i, urgent=True)
        await eventually(lambda: any(left for mode, left in seen if mode == "PASSIVE"))
        held = len(seen)
        reader.execute("COMMIT")
        reader.close()
        for i in range(400):
            await store.call(records.kv_set, f"k{i % 10}", f"{i:08d}" * 8192, i, urgent=True)
        await eventually(lambda: any(mode == "RESTART" for mode, _ in seen[held:]))
    assert not any(mode != "PASSIVE" for mode, _ in seen[:held])  # none tried while pinned
    last_passive_left = None
    for mode, left in seen:
        if mode == "PASSIVE":
            last_passive_left = left
        else:  # the PASSIVE before it had copied every frame
            assert last_passive_left == 0, seen


def kv_in(path: Path) -> dict[str, Any]:
    """Every key's value as a new connection reads it (through the WAL's frames)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM kv")}


async def test_a_wal_grown_behind_an_old_reader_is_cut_back_a_step_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup's snapshot let the -wal file grow to several times the bound. Once the
    reader is gone and writes go on, the file is cut back to the bound, never more than
    WAL_SHRINK_STEP at a time (one TRUNCATE of 300 MB held every write back for hundreds
    of ms in service), while the writes go on, and no committed write is lost."""
    monkeypatch.setattr(store_module, "WAL_SHRINK_STEP", 1024 * 1024)
    # The pause between cuts is a plain thread's sleep (the checkpoint thread, not trio's
    # clock): none here, so the test waits for no real time.
    monkeypatch.setattr(store_module, "WAL_SHRINK_PAUSE_S", 0.0)
    cuts: list[tuple[int, int]] = []  # the -wal file's size before and after each cut
    real_truncate = store_module.os.truncate

    def truncate(path: str, length: int) -> None:
        cuts.append((os.stat(path).st_size, length))
        real_truncate(path, length)

    monkeypatch.setattr(store_module.os, "truncate", truncate)
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        pinned = await grow_behind_an_old_reader(store, path)
        written: dict[str, Any] = {}
        with trio.fail_after(60):  # a hang detector, not a speed limit
            for i in range(100_000):  # small writes: the WAL's content stays short
                written[f"s{i % 50}"] = i
                await store.call(records.kv_set, f"s{i % 50}", i, i, urgent=i % 2 == 0)
                if wal_bytes(path) <= WAL_BOUND:
                    break
        assert wal_bytes(path) <= WAL_BOUND
        assert written.items() <= kv_in(path).items()  # every write there, read off the WAL
    assert pinned > 3 * WAL_BOUND
    assert len(cuts) >= (pinned - WAL_BOUND) // (1024 * 1024)
    assert all(0 < before - after <= 1024 * 1024 for before, after in cuts), cuts
    assert all(after % 4096 == 0 for _, after in cuts), cuts  # never inside a page
    assert cuts[-1][1] == WAL_BOUND  # down to the bound, not below
    assert written.items() <= kv_in(path).items()  # and after the store closed


async def test_the_pause_between_two_cuts_ends_for_a_checkpoint_and_for_the_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An hour between two cuts of the -wal file: a checkpoint asked for meanwhile (every
    CHECKPOINT_EVERY commits) still runs at once, and the cuts go on after it, so the
    file gets back near its bound (within the quarter past it where a RESTART no longer
    asks for cuts); and a store closed in the middle of a pause closes without waiting
    for it (its checkpoint thread is gone)."""
    monkeypatch.setattr(store_module, "WAL_SHRINK_STEP", 1024 * 1024)
    monkeypatch.setattr(store_module, "WAL_SHRINK_PAUSE_S", 3600.0)

    with trio.fail_after(60):  # a hang detector, not a speed limit
        async with open_store(tmp_path / "a.db") as store:
            await grow_behind_an_old_reader(store, tmp_path / "a.db")
            for i in range(100_000):
                await store.call(records.kv_set, f"s{i % 50}", i, i, urgent=i % 2 == 0)
                if wal_bytes(tmp_path / "a.db") <= WAL_BOUND + WAL_BOUND // 4:
                    break
            assert wal_bytes(tmp_path / "a.db") <= WAL_BOUND + WAL_BOUND // 4
        async with open_store(tmp_path / "b.db") as store:
            pinned = await grow_behind_an_old_reader(store, tmp_path / "b.db")
            for i in range(100_000):  # until the first cut: the pause after it has begun
                await store.call(records.kv_set, f"s{i % 50}", i, i, urgent=i % 2 == 0)
                if wal_bytes(tmp_path / "b.db") < pinned:
                    break
            assert store._shrinking
    assert store_threads("titan-checkpoint") == []


async def test_while_a_backup_holds_the_wal_it_grows_instead_of_being_reset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a backup writes (hold_wal_reset), no RESTART and no cut, both of which take
    the write lock and sync with a busy device: past the bound, the -wal file grows
    instead. Let go, the RESTART comes and the file is cut back to the bound, with every
    write still there. Held past WAL_HOLD_LIMIT times the bound, the RESTART goes ahead."""
    monkeypatch.setattr(store_module, "WAL_SHRINK_PAUSE_S", 0.0)  # no real sleeps
    monkeypatch.setattr(store_module, "WAL_HOLD_LIMIT", 4)  # 16 MB with the tests' bound
    modes: list[str] = []
    real_checkpoint = Store._checkpoint

    def checkpoint(self: Store, mode: str, **kwargs: Any) -> bool:
        modes.append(mode)
        return real_checkpoint(self, mode, **kwargs)

    monkeypatch.setattr(Store, "_checkpoint", checkpoint)
    cuts: list[int] = []
    real_truncate = store_module.os.truncate

    def truncate(path: str, length: int) -> None:
        cuts.append(length)
        real_truncate(path, length)

    monkeypatch.setattr(store_module.os, "truncate", truncate)
    path = tmp_path / "t.db"
    written: dict[str, Any] = {}

    async def write(i: int, value: Any) -> None:
        written[f"k{i % 10}"] = value
        await store.call(records.kv_set, f"k{i % 10}", value, i, urgent=i % 2 == 0)

    async with open_store(path) as store:
        store.hold_wal_reset(True)
        with trio.fail_after(60):  # a hang detector, not a speed limit
            for i in range(200):  # ~13 MB of frames: past 3x the bound, short of 4x
                await write(i, f"{i:08d}" * 8192)
            held = wal_bytes(path)
            assert "PASSIVE" in modes and "RESTART" not in modes and cuts == []
            assert held > 3 * WAL_BOUND

            store.hold_wal_reset(False)
            for i in range(200, 100_000):  # small writes: the WAL is reused from its start
                await write(i, i)
                if wal_bytes(path) <= WAL_BOUND:
                    break
        assert "RESTART" in modes and cuts and cuts[-1] == WAL_BOUND
        assert written.items() <= kv_in(path).items()

        modes.clear()
        store.hold_wal_reset(True)
        with trio.fail_after(60):
            for i in range(400):  # ~26 MB: past the limit
                await write(i, f"{i:08d}" * 8192)
        assert "RESTART" in modes
        assert wal_bytes(path) < (store_module.WAL_HOLD_LIMIT + 2) * WAL_BOUND
        store.hold_wal_reset(False)
    assert written.items() <= kv_in(path).items()


def cuts_at_most_to_the_last_frame(store: Store, path: Path) -> None:
    wal = Path(store.wal_path)
    frames_end = wal.stat().st_size
    with open(wal, "ab") as f:  # 1 MB past the last frame, as a reused WAL leaves it
        f.write(b"\0" * (1024 * 1024))
    with contextlib.closing(sqlite3.connect(path, timeout=0.0, isolation_level=None)) as lock:
        page = lock.execute("PRAGMA page_size").fetchone()[0]
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            assert not store._cut_wal(lock, page, frames_end)  # the lock is taken
            assert wal.stat().st_size == frames_end + 1024 * 1024
        finally:
            writer.close()
        assert store._cut_wal(lock, page, frames_end - 4096)  # asked into a frame
        # cut only to where the frames end, at the end of the 4 KiB page they end in
        kept = -(-frames_end // 4096) * 4096
        assert frames_end <= wal.stat().st_size == kept < frames_end + 4096
        assert not store._cut_wal(lock, page, 0)
        assert wal.stat().st_size == kept


def test_the_logs_end_read_from_the_file_is_sqlites_own_count(tmp_path: Path) -> None:
    """Where a cut may go, read from the -wal file's frame headers (no checkpoint under
    the lock), is where SQLite says its log ends: after a reset, the old log's frames
    beyond it, whole and intact but of the old salts, are not counted."""
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        frame = page + store_module.WAL_FRAME_HEADER
        store = Store(str(path))
        for k in range(300):  # the first log: ~2.5 MB of frames
            conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (k % 40, os.urandom(8000)))
        frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert store._log_end(page) == store_module.WAL_HEADER + frames * frame
        assert conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 0
        old_size = os.path.getsize(store.wal_path)
        # no commit since the reset: the file still holds the old log, whole
        assert store._log_end(page) == old_size
        for k in range(5):  # the next log, written from the start over the old one
            conn.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (k, os.urandom(100)))
        frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert 0 < frames * frame < old_size == os.path.getsize(store.wal_path)
        assert store._log_end(page) == store_module.WAL_HEADER + frames * frame
    finally:
        conn.close()


async def test_the_wal_is_never_cut_into_its_frames_nor_while_a_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A cut of the -wal file stops where the WAL's valid frames end, however far it was
    asked to go: commits only in the WAL (not yet checkpointed) survive it. With the
    write lock held elsewhere, nothing is cut and the cut does not wait."""
    path = tmp_path / "t.db"
    async with open_store(path, wal_truncate_bytes=1 << 30) as store:
        for i in range(40):  # ~2.6 MB of frames, never checkpointed (bound 1 GB)
            await store.call(records.kv_set, f"k{i}", f"{i:08d}" * 8192, i)
        cuts_at_most_to_the_last_frame(store, path)
        assert {k: v for k, v in kv_in(path).items() if k.startswith("k")} == {
            f"k{i}": f"{i:08d}" * 8192 for i in range(40)
        }


async def test_the_store_threads_writes_wait_at_the_gate_while_a_cut_holds_it(
    tmp_path: Path,
) -> None:
    """While the checkpoint thread holds the write gate (it does for each RESTART and cut,
    with SQLite's lock), the store thread's next job does not start, and urgent writes do
    not run on the trio thread: they queue. Let go, the job runs at once."""
    ran = threading.Event()

    def job(e: Entities) -> None:
        records.kv_set(e, "k", 2, 2)
        ran.set()

    held, let_go = threading.Event(), threading.Event()
    started_while_held: list[bool] = []

    def cut(store: Store) -> None:
        with store._gate_for_checkpoint() as got:
            assert got
            held.set()
            assert let_go.wait(10)
            started_while_held.append(ran.wait(0.2))  # long enough to see it start

    async with open_store(tmp_path / "t.db") as store:
        await store.call(records.kv_set, "k", 1, 1, urgent=True)  # opens the inline path
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, cut, store)
            await trio.to_thread.run_sync(held.wait, 10)
            # the urgent write first, with nothing queued: it would run inline but for the gate
            nursery.start_soon(lambda: store.call(records.kv_set, "u", 1, 1, urgent=True))
            await eventually(lambda: store._outstanding == 1)
            nursery.start_soon(store.call, job)
            await eventually(lambda: store._outstanding == 2)  # both queued, loop running
            let_go.set()
        assert started_while_held == [False]
        assert await store.call(all_kv) == {"k": 2, "u": 1}


async def test_a_cut_waiting_at_the_gate_gets_it_between_the_store_threads_batches(
    tmp_path: Path,
) -> None:
    """The store thread busy batch after batch: the checkpoint thread still gets the gate
    every time it asks, between two batches (a gate held across batches, or never let
    go, would keep every RESTART and cut out)."""
    tries: list[bool] = []

    def ask_for_the_gate(store: Store) -> None:
        for _ in range(20):
            with store._gate_for_checkpoint() as got:
                tries.append(got)

    async with open_store(tmp_path / "t.db", inline=False) as store:
        async with trio.open_nursery() as nursery:
            for i in range(20_000):  # queued at once: batches of MAX_BATCH, back to back
                nursery.start_soon(store.call, records.kv_set, f"k{i % 100}", "x" * 200, i)
            await eventually(lambda: store.stats.commits > 2)
            await trio.to_thread.run_sync(ask_for_the_gate, store)
            assert store._outstanding > 0  # the batches went on meanwhile
    assert tries == [True] * 20


def rewrite_all(e: Entities, keys: int, version: int) -> None:
    for k in range(keys):
        records.kv_set(e, f"k{k}", f"{version:04d}" * 1000, version)


async def test_full_disk_is_met_by_truncating_the_wal(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real full disk whose space the WAL holds: the write that fails for it checkpoints
    and truncates the WAL, which frees that space, and is run again, successfully."""
    caplog.set_level(logging.INFO, "titan.store")
    path = small_disk / "t.db"
    async with open_store(path) as store:
        await store.call(rewrite_all, 50, 0)  # the pages every later version rewrites
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for version in range(1, 6):  # a WAL of rewritten pages only, well below the bound
            await store.call(rewrite_all, 50, version)
        held = wal_bytes(path)
        assert 500_000 < held < WAL_BOUND
        fill_disk(path.parent)
        await store.call(rewrite_all, 50, 6)
        assert wal_bytes(path) < held
        assert await store.call(records.kv_get, "k49") == "0006" * 1000
        assert store.stats.write_failures == 0 and store.stats.last_error is None
    assert any("the WAL was truncated" in r.getMessage() for r in caplog.records)


def damage_page(path: Path, page: int) -> None:
    """Overwrite one 4 KiB page with garbage, as a failing disk leaves it."""
    with open(path, "r+b") as f:
        f.seek(4096 * page)
        f.write(b"\xde\xad\xbe\xef" * 1024)


async def test_a_damaged_database_stops_the_start_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    async with open_store(path) as store:
        for k in range(200):  # a few pages of rows
            await store.call(records.kv_set, f"k{k}", "x" * 200, k)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damage_page(path, 2)
    with pytest.RaisesGroup(
        pytest.RaisesExc(StoreError, match=rf"{path}.*damaged.*titan restore --latest"),
        flatten_subgroups=True,
    ):
        async with open_store(path):
            pass
