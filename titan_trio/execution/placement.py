"""Placing an order the safe way, for every caller (signals, flatten, protection,
execution styles): the one path every order takes to the broker.

The order is tracked as exposure, committed (PENDING_SUBMIT, with its signal's new
status, or a new signal's journal entry, in the same transaction when given), asked
through the trading-state gateway (``gate``, the risk controller's rule for the order's
purpose) with no await between that answer and the submit, then sent under its own
deterministic id.
A rejection the exchange proved is recorded before it is reported; anything else
(timeout, dropped connection) propagates with the order left in flight for the
private stream or reconciliation to settle, never re-sent under a new id.

An order that cannot be committed is never sent, and the failure is reported to the
risk controller (``storage_failed``): entries then stop (REDUCING), and when an exit
cannot be committed either, everything from strategies stops (HALTED).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from ipc.protocol import Reason
from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.domain.orders import (
    Order,
    OrderEventKind,
    OrderRequest,
    OrderStatus,
    OrderUpdate,
)
from titan_trio.errors import BrokerRejected, StoreError
from titan_trio.metrics import Metrics
from titan_trio.risk.breaker import OrderPurpose, TradingState
from titan_trio.risk.sizing import EntryRejected
from titan_trio.state import records
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store

log = logging.getLogger("titan.orders")
# A cancel refused with these: the order is already finished at the exchange.
FINISHED_ANSWERS = frozenset({"ORDER_NOT_OPEN", "ORDER_NOT_FOUND"})
CANCELLED_SAVE_S = 1.0  # to record, while stopping, that an order was never sent


class OrderPlacer:
    def __init__(
        self,
        broker: Broker,
        shadow: ShadowState,
        store: Store,
        metrics: Metrics,
        gate: Callable[[OrderPurpose], str | None] = lambda purpose: None,
        storage_failed: Callable[[str, TradingState, str], None] = lambda *args: None,
    ) -> None:
        self.broker = broker
        self.shadow = shadow
        self.store = store
        self.metrics = metrics
        # Asked right before every order is sent: the trading state may have changed
        # (flatten, the breaker) while the order was being journaled.
        self.gate = gate
        self.storage_failed = storage_failed
        self._closing: Counter[str] = Counter()  # symbols a CLOSE is working on
        # Orders being placed right now: their outcome is this process's to record, so
        # nothing else may settle them meanwhile (a repeated CONFIRM, reconciliation).
        self.sending: set[str] = set()
        self._sent: dict[str, trio.Event] = {}  # set when the order's placing is over

    @contextmanager
    def closing(self, symbol: str) -> Iterator[None]:
        """While a CLOSE works on ``symbol``, no entry of it is sent."""
        self._closing[symbol] += 1
        try:
            yield
        finally:
            self._closing[symbol] -= 1
            if not self._closing[symbol]:
                del self._closing[symbol]

    def _refusal(self, order: Order, purpose: OrderPurpose) -> tuple[Reason, str] | None:
        refusal = self.gate(purpose)
        if refusal is not None:
            return Reason.TRADING_HALTED, refusal
        if purpose is OrderPurpose.ENTRY and order.symbol in self._closing:
            return Reason.INVALID_SIGNAL, f"a CLOSE of {order.symbol} is in progress"
        return None

    async def place(
        self,
        order: Order,
        purpose: OrderPurpose,
        *,
        signal_status: str | None = None,
        journal: records.SignalEntry | None = None,
    ) -> Order:
        """Send ``order``; returns the broker's view. Raises BrokerRejected (recorded),
        EntryRejected (TRADING_HALTED, recorded) or StoreError (not sent).

        ``journal``: a new signal to journal at ``signal_status`` in the order's own
        commit; records.SignalUsed (nothing recorded, nothing sent) when its id was used
        before."""
        coid = order.client_order_id
        self.sending.add(coid)
        self._sent[coid] = trio.Event()
        try:
            return await self._place(order, purpose, signal_status, journal)
        except trio.Cancelled:
            if order.status is OrderStatus.PENDING_SUBMIT:  # stopped before it was sent
                with trio.move_on_after(CANCELLED_SAVE_S, shield=True):
                    await self._never_sent(order)
            raise
        finally:
            self.sending.discard(coid)
            self._sent.pop(coid).set()

    async def sent(self, client_order_id: str) -> None:
        """Return once the order is not being placed (its send returned or failed); at
        once when it is not."""
        done = self._sent.get(client_order_id)
        if done is not None:
            await done.wait()

    async def _never_sent(self, order: Order) -> None:
        """The service is stopping between recording an order and sending it: record
        that it was never sent (EXPIRED), so nothing waits for it and nothing sends it."""
        order.apply(
            OrderUpdate(OrderEventKind.EXPIRED, now_ms(), reason="not sent: the service stopped")
        )
        self.shadow.apply_order(order)
        try:
            await self.store.call(records.expire_unsent_order, order)
        except StoreError as exc:  # the next start settles it with the broker instead
            log.warning("order %s: 'never sent' not recorded (%s)", order.client_order_id, exc)

    async def _place(
        self,
        order: Order,
        purpose: OrderPurpose,
        signal_status: str | None,
        journal: records.SignalEntry | None,
    ) -> Order:
        self.shadow.track(order)
        try:
            if journal is not None:
                assert signal_status is not None
                await self.store.call(
                    records.journal_order, journal, signal_status, order, urgent=True
                )
            elif signal_status is not None and order.signal_id is not None:
                await self.store.call(
                    records.set_signal_status,
                    order.signal_id,
                    signal_status,
                    None,
                    order.created_ms,
                    order,
                    urgent=True,
                )
            else:
                await self.store.call(records.save_order, order, urgent=True)
        except BaseException as exc:
            # Never sent and not on disk: it must not hold exposure.
            self.shadow.untrack(order.client_order_id)
            if isinstance(exc, StoreError):
                if purpose is OrderPurpose.ENTRY:
                    self.storage_failed("entries", TradingState.REDUCING, str(exc))
                else:
                    self.storage_failed("exits", TradingState.HALTED, str(exc))
            raise
        refused = self._refusal(order, purpose)
        if refused is not None:  # no await between this check and the submit below
            reason, text = refused
            await self._reject(
                order, f"{reason.value}: {text}", signal_status, reason, OrderStatus.DENIED
            )
            raise EntryRejected(reason, text)
        order.transition(OrderStatus.SUBMITTED, now_ms())
        request = OrderRequest(
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            qty=order.qty,
            price=order.price,
            time_in_force=order.time_in_force,
            reduce_only=order.reduce_only,
            leverage=order.leverage,
            signal_id=order.signal_id,
        )
        try:
            ack = await self.broker.submit(request)
        except BrokerRejected as exc:
            await self._reject(
                order, f"{exc.reason}: {exc.message}", signal_status, Reason.BROKER_REJECTED
            )
            self.metrics.order_finished(order)
            log.warning(
                "Order rejected: %s %s %s %s: %s",
                order.client_order_id,
                order.side,
                order.qty,
                order.symbol,
                order.reject_reason,
            )
            raise
        log.info(
            "order %s placed: %s %s %s @ %s -> %s (filled %s)",
            order.client_order_id,
            order.side,
            order.qty,
            order.symbol,
            order.price or "market",
            ack.status,
            ack.filled_qty,
        )
        return ack

    async def cancel(self, symbol: str, client_order_id: str) -> Order:
        """Ask the broker to cancel an order; the broker's view is returned. The order,
        when we track it, is PENDING_CANCEL until the exchange's answer or event settles
        it, and goes back to what it was when the exchange refuses (BrokerRejected other
        than "not open" / "not found"); an answer that never comes leaves it pending, for
        reconciliation to settle."""
        ours = self.shadow.orders.get(client_order_id)
        if ours is not None:
            ours.apply(OrderUpdate(OrderEventKind.CANCEL_REQUESTED, now_ms()))
        try:
            return await self.broker.cancel(symbol, client_order_id)
        except BrokerRejected as exc:
            if ours is not None and exc.reason not in FINISHED_ANSWERS:
                ours.apply(OrderUpdate(OrderEventKind.CANCEL_REFUSED, now_ms()))
            raise

    async def _reject(
        self,
        order: Order,
        why: str,
        signal_status: str | None,
        reason: Reason,
        status: OrderStatus = OrderStatus.REJECTED,
    ) -> None:
        """Record that ``order`` was refused (REJECTED by the exchange, DENIED by our own
        checks before it was sent): it holds no exposure, and its signal (when the order
        carried one) is REJECTED in the same commit."""
        order.reject_reason = why
        order.transition(status, now_ms())
        self.shadow.apply_order(order)
        if order.signal_id is not None and signal_status is not None:
            await self.store.call(
                records.set_signal_status,
                order.signal_id,
                "REJECTED",
                reason.value,
                now_ms(),
                order,
            )
        else:
            await self.store.call(records.save_order, order)
