"""The equity monitor's loop: every mark reaches the risk controller, and a snapshot the
database refuses is retried soon, never fatal."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import trio
import trio.testing

from titan_trio.domain.equity import EquityTracker
from titan_trio.errors import StoreError
from titan_trio.feeds.hub import MarketHub
from titan_trio.state import records
from titan_trio.state.equity_monitor import SNAPSHOT_RETRY_S, EquityMonitor
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store


class SnapshotsFail:
    """The store, with equity snapshots refused while ``failing``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.failing = True
        self.attempts: list[float] = []

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if fn is records.add_equity_snapshot:
            self.attempts.append(trio.current_time())
            if self.failing:
                raise StoreError("database is locked (SQLITE_BUSY)")
        return await self.store.call(fn, *args, **kwargs)


async def test_a_refused_snapshot_is_retried_soon_and_the_loop_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    marks: list[Decimal] = []
    tracker = EquityTracker(Decimal(1000), Decimal(1000))

    async def on_mark(equity: Decimal, ts_ms: int) -> None:
        marks.append(equity)

    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        failing = SnapshotsFail(store)
        monitor = EquityMonitor(
            ShadowState(Decimal(1000)),
            MarketHub(),
            failing,  # type: ignore[arg-type]
            lambda: tracker,
            on_mark,
            snapshot_interval_s=60,
        )
        await nursery.start(monitor.run)
        await trio.sleep(SNAPSHOT_RETRY_S * 3 + 1)  # three refusals, each retried soon
        assert monitor.snapshot_failures >= 3
        gaps = [b - a for a, b in zip(failing.attempts, failing.attempts[1:], strict=False)]
        assert gaps and all(SNAPSHOT_RETRY_S <= g < SNAPSHOT_RETRY_S + 1.5 for g in gaps)
        failing.failing = False
        await trio.sleep(SNAPSHOT_RETRY_S + 1)
        written = len(failing.attempts)
        await trio.sleep(30)  # back to the normal interval after a success
        assert len(failing.attempts) == written
        assert len(marks) > 20  # marked at least once a second throughout
        nursery.cancel_scope.cancel()
