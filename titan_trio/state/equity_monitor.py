"""Marks the account to market on every price update (at least once a second) and hands
each mark to the risk controller, which owns peak equity, the day's start and the
breaker; a snapshot row is written every ``snapshot_interval_s`` for history.

A snapshot that cannot be written (a locked or full database) is logged with its cause
and tried again after ``SNAPSHOT_RETRY_S``; it never stops the service: the history
misses a row, nothing else depends on it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal

import trio

from titan_trio.clock import now_ms
from titan_trio.domain.equity import EquityTracker
from titan_trio.errors import StoreError
from titan_trio.feeds.hub import MarketHub
from titan_trio.state import records
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store

log = logging.getLogger("titan.equity")
SNAPSHOT_RETRY_S = 5.0


class EquityMonitor:
    def __init__(
        self,
        shadow: ShadowState,
        hub: MarketHub,
        store: Store,
        tracker: Callable[[], EquityTracker],
        on_mark: Callable[[Decimal, int], Awaitable[None]],
        snapshot_interval_s: float = 60.0,
        after: trio.Event | None = None,
    ) -> None:
        self.shadow = shadow
        self.hub = hub
        self.store = store
        self.tracker = tracker  # the risk controller's: peak and day start live there
        self.on_mark = on_mark
        self.snapshot_interval_s = snapshot_interval_s
        self.snapshot_failures = 0
        # Marks begin once this is set (the first reconciliation: before it, a fill a
        # kill kept from the shadow state would make a wrong peak or day start).
        self.after = after

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.after is None:
            await self.mark()
            task_status.started()
        else:
            task_status.started()
            await self.after.wait()
            await self.mark()
        next_snapshot = trio.current_time()
        while True:
            with trio.move_on_after(1.0):  # mark at least once a second, even if quiet
                await self.hub.wait_for_update()
            await self.mark()
            if trio.current_time() >= next_snapshot:
                saved = await self.snapshot()
                wait = self.snapshot_interval_s if saved else SNAPSHOT_RETRY_S
                next_snapshot = trio.current_time() + wait

    def equity(self) -> Decimal:
        return self.shadow.equity(self.hub.book)

    async def mark(self) -> None:
        await self.on_mark(self.equity(), now_ms())

    async def snapshot(self) -> bool:
        """Write one history row; False (logged) when the database refuses it."""
        t = self.tracker()
        try:
            await self.store.call(
                records.add_equity_snapshot,
                now_ms(),
                t.last_equity,
                self.shadow.balance,
                self.shadow.unrealized_pnl(self.hub.book),
                t.peak_equity,
                t.drawdown_pct,
            )
        except StoreError as exc:
            self.snapshot_failures += 1
            log.warning("equity snapshot not written (%s); next try in %s s", exc, SNAPSHOT_RETRY_S)
            return False
        return True
