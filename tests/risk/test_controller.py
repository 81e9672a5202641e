"""The risk controller around a database that is slow or refuses writes: the breaker's
verdict and its flatten never wait on a write."""

from __future__ import annotations

import logging
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from titan_trio.clock import now_ms
from titan_trio.config import RiskConfig
from titan_trio.domain.reports import FlattenReport
from titan_trio.errors import StoreError
from titan_trio.risk.breaker import OrderPurpose, TradingState
from titan_trio.risk.controller import RiskController
from titan_trio.state import records
from titan_trio.state.store import Store

LOCK_WAIT_S = 5.0  # what a write waits for another process's lock before it fails


class LockedWrites:
    """The store while another process holds the write lock: every key-value write
    waits out the busy timeout, then fails."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn in (records.kv_set, records.add_event):
            await trio.sleep(LOCK_WAIT_S)
            raise StoreError("database is locked (SQLITE_BUSY)")
        return await self.store.call(fn, *args, **kwargs)


async def test_a_trip_flattens_at_once_while_the_database_is_locked(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    flattened_at: list[float] = []

    async def flatten(reason: str) -> FlattenReport:
        flattened_at.append(trio.current_time())
        return FlattenReport()

    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        risk = RiskController(RiskConfig(), LockedWrites(store), D(10000), lambda: D(10000))  # type: ignore[arg-type]
        risk.flatten = flatten
        await nursery.start(risk.run)
        await risk.mark(D(10000), now_ms())  # the peak; its save fails: the record is unsaved
        assert risk.unsaved
        marked_at = trio.current_time()
        nursery.start_soon(risk.mark, D(9000), now_ms())  # 10 % below the peak
        with trio.fail_after(3 * LOCK_WAIT_S):
            while not flattened_at:  # noqa: ASYNC110
                await trio.sleep(0.001)
        assert risk.state.tripped and risk.trading_state.value == "HALTED"
        assert flattened_at[0] - marked_at < 0.1  # not after one, two or three lock waits
        nursery.cancel_scope.cancel()


class FailingWrites:
    """The store while the database refuses writes (``failing``): key-value writes fail
    at once with SQLite's cause; everything else reaches the real store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failing = True

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.failing and fn is records.kv_set:
            raise StoreError("database is locked (SQLITE_BUSY)")
        return await self.store.call(fn, *args, **kwargs)


async def test_a_long_storage_fault_logs_a_summary_a_minute_not_a_line_per_probe(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten minutes of a failing database with a request refused every second: one line
    when it begins, one summary a minute with the count refused, one when it ends."""
    caplog.set_level(logging.INFO, "titan.risk")
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        writes = FailingWrites(store)
        risk = RiskController(RiskConfig(), writes, D(10000), lambda: D(10000))  # type: ignore[arg-type]
        await nursery.start(risk.run)
        risk.storage_failed("entries", TradingState.REDUCING, "database is locked (SQLITE_BUSY)")
        assert risk.storage_refusal(OrderPurpose.ENTRY) == "database is locked (SQLITE_BUSY)"
        assert risk.storage_refusal(OrderPurpose.CLOSE) is None  # REDUCING lets exits pass
        for _ in range(600):
            risk.storage_refused()
            await trio.sleep(1)
        writes.failing = False
        with trio.fail_after(10):
            while risk.storage_faults:  # noqa: ASYNC110
                await trio.sleep(0.1)
        assert risk.storage_refusal(OrderPurpose.ENTRY) is None
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "titan.risk"]
    assert lines[0].startswith("database writes failing (entries: database is locked")
    summaries = lines[1:-1]
    assert 9 <= len(summaries) <= 10, lines
    for line in summaries:
        assert line.startswith("database still failing after")
        assert "requests refused in the last 60 s" in line
    assert sum(int(line.split("; ")[-1].split()[0]) for line in summaries) <= 600
    assert lines[-1].startswith("database writes work again after 60")
    assert lines[-1].endswith("600 requests refused while they failed")


async def test_an_operator_pause_is_the_answer_not_the_database(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        risk = RiskController(RiskConfig(), store, D(10000), lambda: D(10000))
        await nursery.start(risk.run)
        risk.storage_failed("exits", TradingState.HALTED, "database or disk is full (SQLITE_FULL)")
        assert risk.storage_refusal(OrderPurpose.CLOSE) == "database or disk is full (SQLITE_FULL)"
        await risk.pause("alice")  # REDUCING by the operator: entries are refused for that
        assert risk.storage_refusal(OrderPurpose.ENTRY) is None
        assert risk.refusal(OrderPurpose.ENTRY) is not None
        nursery.cancel_scope.cancel()
