"""Keeps the shadow state in step with the broker: restores it from the database at
start-up, then applies the broker's events (orders, fills, balance) and commits each
change before it counts.

A fill already recorded (same exchange execution id) is ignored, in memory and on disk.

When a save fails after its retries the changes stay in memory (they happened at the
broker) and are kept, in order, as unsaved: they go first into the next save, and
``flush_unsaved`` (the risk controller's storage probe) writes them as soon as the
database takes writes again. Meanwhile ``on_storage_failure`` has told the risk
controller, which stops new entries until everything is on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any

import trio

from titan_trio.brokers.base import BalanceEvent, BrokerEvent, FillEvent, OrderEvent
from titan_trio.clock import now_ms
from titan_trio.domain.orders import Fill, Order
from titan_trio.errors import StoreError
from titan_trio.state import records
from titan_trio.state.shadow import (
    RECENT_EXEC_IDS,
    ZERO,
    FillChanges,
    RecentExecIds,
    ShadowState,
    TradeRecord,
)
from titan_trio.state.store import Store

log = logging.getLogger("titan.state")

# Execution ids loaded into memory at a restart: fills of the last 7 days, at most the
# newest RECENT_EXEC_IDS. A replay of anything older is looked up in the database before
# it is applied (shadow.RecentExecIds), so memory stays bounded and nothing applies twice.
EXEC_ID_MEMORY_MS = 7 * 24 * 3600 * 1000
# Finished orders restored as waiting for their fills: those updated since the newest
# recorded fill, less this (an order's fills are recorded in the order they happened, so
# one whose fills a kill lost was updated after the last fill that was recorded).
UNSETTLED_WINDOW_MS = 10 * 60 * 1000
MAX_BATCH = 256  # broker events applied and committed together
SAVE_ATTEMPTS = 3
# A save this small (one order's events: its update, its fill, the position) commits on
# the trio thread when the store thread is idle: two thread wake-ups cost more than the
# few rows (measured: service CPU per pair down by a quarter at 100 pairs/s). Bigger
# batches, and any save while the store thread is busy, are group-committed there.
INLINE_WRITES = 8


async def restore_shadow(
    store: Store, initial_balance: Decimal, exec_id_memory: int = RECENT_EXEC_IDS
) -> ShadowState:
    """The shadow state as the database last committed it."""
    balance = await store.call(records.kv_get, "shadow.balance")
    shadow = ShadowState(Decimal(balance) if balance is not None else initial_balance)
    shadow.seen_exec_ids = RecentExecIds(exec_id_memory)
    for rec in await store.call(records.load_positions):
        shadow.positions[rec.position.symbol] = rec
    recorded = await store.call(records.recorded_fill_qty_of_open_orders)
    for order in await store.call(records.load_open_orders):
        shadow.orders[order.client_order_id] = order
        # what its recorded fills put in the position before the restart (a fill a kill
        # kept from the database is replayed by reconciliation and counts then)
        shadow.applied_qty[order.client_order_id] = recorded.get(order.client_order_id, ZERO)
    # Finished orders whose last fills a kill kept from the database: reconciliation
    # replays those fills, and they must find their order (its signal, stop and targets).
    newest_fill = await store.call(records.newest_fill_ms)
    since = (newest_fill or 0) - UNSETTLED_WINDOW_MS
    for order, recorded in await store.call(records.load_unsettled_orders, since):
        shadow.unsettled[order.client_order_id] = order
        shadow.applied_qty[order.client_order_id] = recorded
    since = now_ms() - EXEC_ID_MEMORY_MS
    seen = shadow.seen_exec_ids
    recent = await store.call(records.recent_exec_ids, since, seen.limit)
    # Anything older than what is loaded is checked against the database if it comes
    # again: fills before the window, or before the newest `limit` when there are more.
    seen.horizon_ms = since if len(recent) < seen.limit else recent[0][1]
    seen.update(recent)
    if balance is None:
        await store.call(records.kv_set, "shadow.balance", str(shadow.balance), now_ms())
    return shadow


class ShadowSync:
    def __init__(
        self, shadow: ShadowState, store: Store, events: trio.MemoryReceiveChannel[BrokerEvent]
    ) -> None:
        self.shadow = shadow
        self.store = store
        self.events = events
        self.fills_applied = 0
        # Told of every closed trade (the circuit breaker's losing streak).
        self.on_trade: Callable[[TradeRecord], Awaitable[None]] | None = None
        # Told of every tracked order that reaches a final status (metrics, protection),
        # and of every fill applied (protection), after the commit.
        self.order_finished_listeners: list[Callable[[Order], None]] = []
        self.fill_listeners: list[Callable[[FillChanges], None]] = []
        # Told when a save failed after its retries (the cause, in words).
        self.on_storage_failure: Callable[[str], None] = lambda cause: None
        self.unsaved: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._saving = trio.Lock()  # a flush and a save never write the same changes
        self.bad_writes = 0  # writes dropped because they can never pass
        self.applying = False
        self.events_done = 0  # broker events applied (and committed, or kept as unsaved)
        self._applied = trio.Event()  # set, and replaced, whenever events were applied

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            batch = [await self.events.receive()]
            while len(batch) < MAX_BATCH:  # whatever else is already waiting
                try:
                    batch.append(self.events.receive_nowait())
                except trio.WouldBlock:
                    break
            self.applying = True
            try:
                await self.apply(batch)
            finally:
                self.applying = False
                self.events_done += len(batch)

    def idle(self, events_sent: int) -> bool:
        """Every one of the broker's ``events_sent`` events applied and committed (a
        clean stop waits for this). Counted, not read off the channel: an event handed
        straight to this task is in no buffer while it waits to run."""
        return not self.applying and self.events_done >= events_sent

    async def applied(self) -> None:
        """Return once the next broker events are applied to the shadow state (in
        memory: their commit may still be under way)."""
        await self._applied.wait()

    async def _save(self, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        """Commit what is unsaved and ``writes``, retrying a failing database a few
        times; the memory state is already changed, so giving up keeps the writes as
        unsaved and reports it (never raises: the broker's events keep flowing)."""
        async with self._saving:
            await self._save_locked([*self.unsaved, *writes])

    async def _save_locked(self, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            try:
                await self.store.call(records.run_all, writes, urgent=len(writes) <= INLINE_WRITES)
            except StoreError as exc:
                if not exc.database_failing:
                    writes = await self._set_aside_bad_writes(writes)
                    continue
                if attempt == SAVE_ATTEMPTS:
                    log.critical(
                        "shadow state NOT saved after %d attempts (%s): %d changes kept in "
                        "memory and saved when the database takes writes again",
                        attempt,
                        exc,
                        len(writes),
                    )
                    self.unsaved = writes
                    self.on_storage_failure(str(exc))
                    return
                log.error("saving the shadow state failed (%s); retrying", exc)
                await trio.sleep(0.5 * attempt)
            else:
                if self.unsaved:
                    log.warning("shadow state saved again: %d kept changes written", len(writes))
                self.unsaved = []
                return

    async def _set_aside_bad_writes(
        self, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[tuple[Callable[..., Any], tuple[Any, ...]]]:
        """One write that can never pass (its own error, not the database's) must not
        hold every later save back: find it by trying each alone, drop it (CRITICAL: the
        memory state has it, the database will not), keep the rest in order."""
        kept = []
        for write in writes:
            try:
                await self.store.call(records.run_all, [write])
            except StoreError as exc:
                if exc.database_failing:
                    kept.append(write)  # the database itself: saved later with the rest
                else:
                    self.bad_writes += 1
                    log.critical(
                        "a shadow state change can never be saved (%s): %s%r dropped; "
                        "reconcile with the exchange",
                        exc,
                        getattr(write[0], "__name__", write[0]),
                        write[1][:1],
                    )
        return kept

    async def flush_unsaved(self) -> None:
        """Write the changes a failed save kept; raises StoreError while it still fails."""
        async with self._saving:
            if not self.unsaved:
                return
            writes = self.unsaved
            await self.store.call(records.run_all, writes)
            self.unsaved = []
        log.warning("shadow state saved again: %d kept changes written", len(writes))

    async def _recorded_long_ago(self, fill: Fill) -> bool:
        """A replayed fill older than the exec ids memory holds: the database decides.
        When the database cannot answer (after a few tries), it counts as recorded: a
        fill that old is almost surely a replay, and applying one twice is the worse error
        (a missed fill is fetched again by reconciliation)."""
        if not self.shadow.seen_exec_ids.needs_database_check(fill):
            return False
        for attempt in range(1, SAVE_ATTEMPTS + 1):
            try:
                return await self.store.call(records.fill_recorded, fill.exec_id, urgent=True)
            except StoreError as exc:
                if attempt == SAVE_ATTEMPTS:
                    log.critical(
                        "fill %s (%s) not applied: the database cannot tell whether it was "
                        "(%s); reconcile with the exchange",
                        fill.exec_id,
                        fill.client_order_id,
                        exc,
                    )
                    return True
                await trio.sleep(0.5 * attempt)
        return True  # not reached

    async def _finished_long_ago(self, order: Order) -> bool:
        """A finished order this shadow state no longer follows but the database has
        (settled: its fills applied, then forgotten), told again (polling after a
        restart, a repeated stream message): adopting it anew would wait for fills that
        were applied long ago."""
        coid = order.client_order_id
        if not order.status.is_terminal or coid in self.shadow.orders:
            return False
        if coid in self.shadow.unsettled or coid in self.shadow.applied_qty:
            return False  # followed (or its fills came first): applied as usual
        try:
            return await self.store.call(records.order_known, coid, urgent=True)
        except StoreError:
            return False  # applied as an event: reconciliation heals what it changes

    async def replay(self, fills: list[Fill], orders: Sequence[Order] = ()) -> list[Fill]:
        """Fills the broker made that never reached us as events (reconciliation found
        them), after ``orders`` (the broker's view of their orders this service never
        heard of: a stop the exchange triggered meanwhile): applied exactly like live
        ones, each once; returns the fills applied."""
        events: list[BrokerEvent] = [OrderEvent(o) for o in orders]
        return await self.apply(events + [FillEvent(f) for f in fills])

    async def apply(self, events: list[BrokerEvent]) -> list[Fill]:
        """Apply events in order in memory, commit everything they changed in one
        transaction, then tell the listeners (metrics, the circuit breaker); returns the
        fills applied (a fill seen before is not)."""
        writes: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        finished: list[Order] = []
        fills: list[FillChanges] = []
        for event in events:
            if isinstance(event, OrderEvent):
                if await self._finished_long_ago(event.order):
                    log.info(
                        "order %s: %s again, finished and settled here already; ignored",
                        event.order.client_order_id,
                        event.order.status,
                    )
                    continue
                was_open = event.order.client_order_id in self.shadow.orders
                refused = self.shadow.refused_updates
                merged = self.shadow.apply_order(event.order)
                if self.shadow.refused_updates != refused:
                    log.warning(
                        "order %s: %s event ignored, the order is %s (a stale event)",
                        merged.client_order_id,
                        event.order.status,
                        merged.status,
                    )
                    continue
                writes.append((records.save_order, (merged,)))
                if was_open and merged.status.is_terminal:
                    finished.append(merged)
            elif isinstance(event, FillEvent):
                if await self._recorded_long_ago(event.fill):
                    log.info("fill %s already recorded; ignored", event.fill.exec_id)
                    continue
                changes = self.shadow.apply_fill(event.fill)
                if changes is None:
                    log.info("fill %s already applied; ignored", event.fill.exec_id)
                    continue
                writes.append((records.save_fill_changes, (changes, self.shadow.balance, now_ms())))
                fills.append(changes)
            elif isinstance(event, BalanceEvent) and event.balance != self.shadow.balance:
                log.warning(
                    "balance drift: shadow %s, broker %s; taking the broker's",
                    self.shadow.balance,
                    event.balance,
                )
                self.shadow.balance = event.balance
                writes.append((records.kv_set, ("shadow.balance", str(event.balance), now_ms())))
        self._applied.set()  # whoever waits for an order to move on looks again
        self._applied = trio.Event()
        if writes or self.unsaved:
            await self._save(writes)
        for changes in fills:
            for fill_listener in self.fill_listeners:
                fill_listener(changes)
        for order in finished:
            for listener in self.order_finished_listeners:
                listener(order)
        for changes in fills:
            self.fills_applied += 1
            f = changes.fill
            log.info(
                "fill %s: %s %s %s @ %s fee %s (order %s)",
                f.exec_id,
                f.side,
                f.qty,
                f.symbol,
                f.price,
                f.fee,
                f.client_order_id,
            )
            t = changes.trade
            if t is not None:
                log.info(
                    "trade closed: %s %s %s entry %s exit %s net P&L %s",
                    t.symbol,
                    t.side,
                    t.qty,
                    t.entry_price,
                    t.exit_price,
                    t.net_pnl,
                )
                if self.on_trade is not None:
                    await self.on_trade(t)
        return [changes.fill for changes in fills]
