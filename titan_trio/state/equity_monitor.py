"""Marks the account to market on every price update: equity, peak equity, drawdown, the
day's starting equity. The tracker is persisted whenever its peak or day changes, so a
restart keeps the peak (drawdown survives restarts); a snapshot row is written every
``snapshot_interval_s`` for history.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal

import trio

from titan_trio.clock import now_ms
from titan_trio.domain.equity import EquityTracker
from titan_trio.feeds.hub import MarketHub
from titan_trio.state import records
from titan_trio.state.shadow import ShadowState, utc_day
from titan_trio.state.store import Store

log = logging.getLogger("titan.equity")
TRACKER_KEY = "equity.tracker"


class EquityMonitor:
    def __init__(
        self,
        shadow: ShadowState,
        hub: MarketHub,
        store: Store,
        initial_capital: Decimal,
        snapshot_interval_s: float = 60.0,
    ) -> None:
        self.shadow = shadow
        self.hub = hub
        self.store = store
        self.tracker = EquityTracker(initial_capital, peak_equity=initial_capital)
        self.snapshot_interval_s = snapshot_interval_s
        # Told after every mark (the circuit breaker): equity is judged on each price.
        self.listeners: list[Callable[[], Awaitable[None]]] = []

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        saved = await self.store.call(records.kv_get, TRACKER_KEY)
        if saved is not None:
            self.tracker.peak_equity = Decimal(saved["peak_equity"])
            self.tracker.day = saved["day"]
            self.tracker.day_start_equity = Decimal(saved["day_start_equity"])
        await self.mark()
        task_status.started()
        next_snapshot = trio.current_time()
        while True:
            with trio.move_on_after(1.0):  # mark at least once a second, even if quiet
                await self.hub.wait_for_update()
            await self.mark()
            if trio.current_time() >= next_snapshot:
                await self.snapshot()
                next_snapshot = trio.current_time() + self.snapshot_interval_s

    def equity(self) -> Decimal:
        return self.shadow.equity(self.hub.book)

    async def mark(self) -> None:
        t = self.tracker
        before = (t.peak_equity, t.day)
        ts = now_ms()
        t.update(self.equity(), utc_day(ts))
        if (t.peak_equity, t.day) != before:
            await self._save_tracker(ts)
        for listener in self.listeners:
            await listener()

    async def _save_tracker(self, ts: int) -> None:
        t = self.tracker
        await self.store.call(
            records.kv_set,
            TRACKER_KEY,
            {
                "peak_equity": str(t.peak_equity),
                "day": t.day,
                "day_start_equity": str(t.day_start_equity),
            },
            ts,
        )

    async def snapshot(self) -> None:
        t = self.tracker
        await self.store.call(
            records.add_equity_snapshot,
            now_ms(),
            t.last_equity,
            self.shadow.balance,
            self.shadow.unrealized_pnl(self.hub.book),
            t.peak_equity,
            t.drawdown_pct,
        )
