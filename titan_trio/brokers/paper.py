"""The paper broker: the PaperExchange behind the same interface a real exchange has.

Its account (balance, positions, resting orders, id sequences) is saved in the
database's key-value table after every change, before the change is reported, so a
restart resumes the same account. Resting limit orders are matched on every new quote.

Every change is all or nothing, like an exchange's: one the database cannot record (a
full disk, a lock held too long) is undone by reloading the account as last saved. A
request then fails with BrokerRejected ``EXCHANGE_UNAVAILABLE`` (nothing changed, so the
refusal is proven); matching on a quote is skipped with a WARNING and tried again on
the next quote. It never stops the service.
"""

from __future__ import annotations

import copy
import logging
import time
from decimal import Decimal
from typing import Any

import trio

from titan_trio.brokers.base import (
    AccountSnapshot,
    BalanceEvent,
    BrokerEvent,
    FillEvent,
    OrderEvent,
)
from titan_trio.brokers.paper_exchange import (
    PaperExchange,
    fill_from_json,
    fill_to_json,
    order_from_json,
    order_to_json,
)
from titan_trio.clock import now_ms
from titan_trio.config import BrokerConfig
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Fill, Order, OrderRequest
from titan_trio.domain.positions import Position
from titan_trio.domain.quotes import Quote
from titan_trio.errors import BrokerRejected, StoreError, TitanError
from titan_trio.feeds.hub import MarketHub
from titan_trio.state import records
from titan_trio.state.store import Store

log = logging.getLogger("titan.broker.paper")
ACCOUNT_KEY = "paper.account"
COMMIT_DEADLINE_S = 10.0  # a save that hangs longer (a stalled disk) counts as failed
FILLS_PAGE = 1000  # fills read from the journal per query


class PaperStorageFailed(TitanError):
    """The paper account could not be saved; the change was undone."""


def _unavailable(exc: PaperStorageFailed) -> BrokerRejected:
    return BrokerRejected(
        "EXCHANGE_UNAVAILABLE",
        f"the paper exchange cannot record changes ({exc}); nothing was changed",
    )


class PaperBroker:
    name = "paper"

    def __init__(
        self,
        cfg: BrokerConfig,
        instruments: dict[str, Instrument],
        hub: MarketHub,
        store: Store,
        event_buffer: int = 1024,
    ) -> None:
        self.hub = hub
        self.store = store
        self.exchange = PaperExchange(
            instruments,
            balance=Decimal(repr(cfg.initial_capital)),
            maker_fee_pct=Decimal(repr(cfg.maker_fee_pct)),
            taker_fee_pct=Decimal(repr(cfg.taker_fee_pct)),
        )
        self._send, self.events = trio.open_memory_channel[BrokerEvent](event_buffer)
        self._lock = trio.Lock()  # one change to the account at a time
        self.last_latency_s: float | None = None
        self.events_sent = 0  # a clean stop waits until the shadow sync applied them all
        self._stale = False  # memory may be ahead of the saved account: reload first
        self._matched: dict[str, Quote] = {}  # each quote's size is offered to resting orders once
        self.resumed = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        snap = await self.store.call(records.kv_get, ACCOUNT_KEY)
        if snap is not None:
            await self._reload(snap)
            self.resumed = True
            log.info(
                "paper account resumed: balance %s, %d positions, %d open orders",
                self.exchange.balance,
                len(self.exchange.positions),
                len(self.exchange.open_orders()),
            )
        else:
            await self._commit([], [])
            log.info("paper account opened with %s USDT", self.exchange.balance)
        task_status.started()
        while True:
            await self.hub.wait_for_update()
            async with self._lock:
                await self._match()

    async def _reload(self, snap: dict[str, Any]) -> None:
        """The account as last saved: the snapshot and the resting orders."""
        self.exchange.restore(snap, await self.store.call(records.paper_open_orders))

    async def _commit(self, *args: Any, **kwargs: Any) -> None:
        """Save and report a change the exchange already made in memory. Shielded: once
        the exchange has changed, being cancelled half-way would save it without telling
        the shadow state (a fill it never hears of). The save either lands, or the change
        is undone and PaperStorageFailed raised. Bounded: a save that hangs past
        COMMIT_DEADLINE_S counts as failed and the account is reloaded before its next
        use (if that save lands late, its change is in the reloaded account without its
        events: reconciliation with the broker is what settles that)."""
        with trio.move_on_after(COMMIT_DEADLINE_S, shield=True) as bounded:
            try:
                await self._save_and_report(*args, **kwargs)
            except records.DuplicateOrderId:
                raise
            except StoreError as exc:
                self.exchange.auto_canceled = []
                self._stale = True
                await self._refresh()
                raise PaperStorageFailed(str(exc)) from None
        if bounded.cancelled_caught:  # the database hangs: memory is not to be trusted
            self.exchange.auto_canceled = []
            self._stale = True
            raise PaperStorageFailed(f"the save did not finish within {COMMIT_DEADLINE_S:g} s")

    async def _ready(self) -> None:
        """Before a request: the account as saved, or EXCHANGE_UNAVAILABLE."""
        try:
            await self._refresh()
        except PaperStorageFailed as exc:
            raise _unavailable(exc) from None

    async def _refresh(self) -> None:
        """Reload the account as last saved when memory may be ahead of it (a change
        that could not be saved); PaperStorageFailed while even that read fails (on a
        full disk, reads share the store's batches with failing writes)."""
        if not self._stale:
            return
        try:
            await self._reload(await self.store.call(records.kv_get, ACCOUNT_KEY))
        except StoreError as exc:
            raise PaperStorageFailed(f"the account cannot be reloaded: {exc}") from None
        self._stale = False
        log.warning("paper exchange: account reloaded as last saved")

    async def _match(self) -> None:
        """Match resting orders and stops on the newest quotes; a change the database
        cannot record waits for the next quote."""
        try:
            await self._refresh()
        except PaperStorageFailed:
            return  # tried again on the next quote
        fills: list[Fill] = []
        canceled: list[Order] = []
        for symbol in sorted({o.symbol for o in self.exchange.open_orders()}):
            quote = self.hub.book.get(symbol)
            if quote is None or quote is self._matched.get(symbol):
                continue
            self._matched[symbol] = quote
            new_fills, new_canceled = self.exchange.on_quote(quote, now_ms())
            fills += new_fills
            canceled += new_canceled
        for symbol in sorted(self.exchange.stop_losses):
            quote = self.hub.book.get(symbol)
            if quote is None:
                continue
            stopped = self.exchange.check_stops(quote, now_ms())
            if stopped is not None:
                order, stop_fills = stopped
                log.warning(
                    "stop loss hit: %s %s of %s closed at %s%s",
                    symbol,
                    order.filled_qty,
                    order.qty,
                    order.avg_fill_price,
                    ""
                    if order.filled_qty == order.qty
                    else "; the book held no more, the stop fires again on the next quote",
                )
                canceled.append(order)
                fills += stop_fills
        if fills or canceled:
            try:
                await self._commit(fills, canceled)
            except PaperStorageFailed as exc:
                log.warning(
                    "paper exchange: matching undone, the account cannot be saved (%s)", exc
                )

    async def _save_and_report(
        self,
        fills: list[Fill],
        touched_orders: list[Order],
        new_order_id: str | None = None,
        *,
        urgent: bool = False,
    ) -> None:
        """Save the account, the orders touched and the fills in one transaction, then
        report what changed (orders, fills, balance). Finished orders then leave memory:
        the paper_orders table remembers them, and paper_fills every execution (what a
        reconciliation replays when a kill kept the events from the shadow state)."""
        touched = {o.client_order_id: o for o in touched_orders}
        for f in fills:
            touched[f.client_order_id] = self.exchange.orders[f.client_order_id]
        for auto in self.exchange.auto_canceled:
            touched[auto.client_order_id] = auto
        self.exchange.auto_canceled = []
        await self.store.call(
            records.save_paper_account,
            ACCOUNT_KEY,
            self.exchange.snapshot(),
            [order_to_json(o) for o in touched.values()],
            now_ms(),
            new_order_id,
            [fill_to_json(f) for f in fills],
            urgent=urgent,
        )
        events: list[BrokerEvent] = []
        for order in touched.values():
            if order.status.is_terminal:
                self.exchange.orders.pop(order.client_order_id, None)
            events.append(OrderEvent(_copy(order)))
        events += [FillEvent(fill) for fill in fills]
        if fills:
            events.append(BalanceEvent(self.exchange.balance))
        for event in events:
            try:  # no checkpoint while there is room: the caller gets its answer sooner
                self._send.send_nowait(event)
            except trio.WouldBlock:
                await self._send.send(event)
            self.events_sent += 1

    async def submit(self, request: OrderRequest) -> Order:
        started = time.perf_counter()
        async with self._lock:
            # Optimistic: place in memory, and let the commit refuse an id used before
            # (it checks the paper_orders table in the same transaction); then undo by
            # reloading the account as last saved, which is the state before this order.
            await self._ready()
            quote = self.hub.book.get(request.symbol)
            order, fills = self.exchange.place(request, quote, now_ms())  # may raise
            try:
                await self._commit(
                    fills, [order], new_order_id=request.client_order_id, urgent=True
                )
            except records.DuplicateOrderId:
                await self._reload(await self.store.call(records.kv_get, ACCOUNT_KEY))
                raise BrokerRejected(
                    "DUPLICATE_ORDER_ID", f"order id {request.client_order_id} was already used"
                ) from None
            except PaperStorageFailed as exc:
                raise _unavailable(exc) from None
        self.last_latency_s = time.perf_counter() - started
        return _copy(order)

    async def cancel(self, symbol: str, client_order_id: str) -> Order:
        async with self._lock:
            await self._ready()
            order = self.exchange.cancel(client_order_id, now_ms())
            try:
                await self._commit([], [order], urgent=True)
            except PaperStorageFailed as exc:
                raise _unavailable(exc) from None
        return _copy(order)

    async def amend(self, symbol: str, client_order_id: str, price: Decimal) -> Order:
        async with self._lock:
            await self._ready()
            quote = self.hub.book.get(symbol)
            order, fills = self.exchange.amend(client_order_id, price, quote, now_ms())
            try:
                await self._commit(fills, [order], urgent=True)
            except PaperStorageFailed as exc:
                raise _unavailable(exc) from None
        return _copy(order)

    async def set_stop_loss(self, symbol: str, stop_loss: Decimal | None) -> None:
        async with self._lock:
            await self._ready()
            self.exchange.set_stop_loss(symbol, stop_loss, self.hub.book.get(symbol))
            try:
                await self._commit([], [], urgent=True)
            except PaperStorageFailed as exc:
                raise _unavailable(exc) from None

    async def stop_loss(self, symbol: str) -> Decimal | None:
        return self.exchange.stop_losses.get(symbol)

    async def order_status(self, symbol: str, client_order_id: str) -> Order | None:
        """The exchange's view of one order, open or finished; None if it never saw it."""
        order = self.exchange.orders.get(client_order_id)
        if order is not None:
            return _copy(order)
        body = await self.store.call(records.paper_order, client_order_id)
        return None if body is None else order_from_json(body)

    async def account(self, fills_since_ms: int | None = None) -> AccountSnapshot:
        """Positions, open orders and balance as of one moment, with the number of
        events sent up to it (reconciliation compares once the shadow applied them) and
        every fill made at or after ``fills_since_ms``, oldest first (read page by page,
        all of them: a comparison on part of the history would be wrong)."""
        async with self._lock:
            await self._ready()
            fills: list[Fill] = []
            after = 0
            while fills_since_ms is not None:
                page = await self.store.call(
                    records.paper_fills_since, fills_since_ms, after, FILLS_PAGE
                )
                fills += [fill_from_json(body) for _rowid, body in page]
                if len(page) < FILLS_PAGE:
                    break
                after = page[-1][0]
            return AccountSnapshot(
                positions=[copy.copy(p) for p in self.exchange.positions.values()],
                open_orders=[_copy(o) for o in self.exchange.open_orders()],
                balance=self.exchange.balance,
                events_sent=self.events_sent,
                fills=fills,
            )

    async def open_orders(self) -> list[Order]:
        return [_copy(o) for o in self.exchange.open_orders()]

    async def positions(self) -> list[Position]:
        return [copy.copy(p) for p in self.exchange.positions.values()]  # values are immutable

    async def balance(self) -> Decimal:
        return self.exchange.balance

    def health(self) -> dict[str, Any]:
        return {
            "status": "healthy",
            "name": self.name,
            "reachable": True,
            "last_latency_ms": None
            if self.last_latency_s is None
            else round(self.last_latency_s * 1000, 3),
            "rate_limit_headroom": None,
        }


def _copy(order: Order) -> Order:
    """A copy the caller may keep: the fields are immutable values but the history list."""
    duplicate = copy.copy(order)
    duplicate.history = list(order.history)
    return duplicate


__all__ = ["BrokerRejected", "PaperBroker"]
