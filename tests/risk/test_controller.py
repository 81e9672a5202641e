"""The risk controller around a database that is slow or refuses writes: the breaker's
verdict and its flatten never wait on a write."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path
from typing import Any

import trio
import trio.testing

from titan_trio.clock import now_ms
from titan_trio.config import RiskConfig
from titan_trio.domain.reports import FlattenReport
from titan_trio.errors import StoreError
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
