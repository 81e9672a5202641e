"""The executor: places an entry in its style and looks after it until it is done.

``place_entry`` answers as soon as the exchange acknowledged the first order (that is
what CONFIRM replies with); if the order rests, a task in the executor's nursery follows
it: a maker order is cancelled after ``makerTimeoutMs``, a taker order is re-priced every
``chaseIntervalMs`` (amended in place, same order id) until ``chaseMaxMs``, then what is
left is cancelled. Partial fills are kept. Shutdown cancels the followers; the resting
orders they leave are for reconciliation at the next start, like any order in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

import trio

from titan_trio.brokers.base import Broker
from titan_trio.config import ExecutionConfig
from titan_trio.domain.orders import Order, TimeInForce
from titan_trio.errors import BrokerRejected, TitanError
from titan_trio.execution.placement import FINISHED_ANSWERS, OrderPlacer
from titan_trio.execution.styles import EntryPlan, Style
from titan_trio.feeds.hub import MarketHub
from titan_trio.risk.breaker import OrderPurpose

log = logging.getLogger("titan.executor")


class Executor:
    def __init__(
        self, cfg: ExecutionConfig, broker: Broker, placer: OrderPlacer, hub: MarketHub
    ) -> None:
        self.cfg = cfg
        self.broker = broker
        self.placer = placer
        self.hub = hub
        self._nursery: trio.Nursery | None = None
        self.following: dict[str, EntryPlan] = {}
        self.following_allowed = True
        self._scopes: set[trio.CancelScope] = set()
        self._resumed: set[str] = set()  # resting entries taken up by resume()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def place_entry(
        self, order: Order, plan: EntryPlan, *, signal_status: str | None = None
    ) -> Order:
        """Send the entry; returns the exchange's acknowledgement (BrokerRejected when
        refused). A resting order is followed in the background."""
        ack = await self.placer.place(order, OrderPurpose.ENTRY, signal_status=signal_status)
        if ack.status.is_open and self._nursery is not None and self.following_allowed:
            self.following[order.client_order_id] = plan
            self._nursery.start_soon(self._follow, order, plan)
        return ack

    def stop_following(self) -> None:
        """A clean stop: every follower ends at once (between broker calls, never inside
        one: they are shielded in the broker), and no new one starts. The orders they
        leave resting are for the next start, like any order in flight."""
        self.following_allowed = False
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def _stoppable(self) -> Iterator[None]:
        """A follower's scope, which ``stop_following`` cancels."""
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                yield
            finally:
                self._scopes.discard(scope)

    async def _follow(self, order: Order, plan: EntryPlan) -> None:
        with self._stoppable():
            await self._work(order, plan)

    async def _work(self, order: Order, plan: EntryPlan) -> None:
        try:
            if plan.style is Style.MAKER:
                await self._wait_done(order, self.cfg.maker_timeout_ms / 1000)
            else:
                await self._chase(order, plan)
            if order.status.is_open:
                await self._cancel_rest(order, plan)
        except TitanError as exc:  # one order's trouble must not stop the service
            log.error(
                "following %s stopped: %s; it may still rest at the exchange",
                order.client_order_id,
                exc,
            )
        except Exception:  # a bug in following one order must not stop the service
            log.exception(
                "following %s failed (a bug); it may still rest at the exchange",
                order.client_order_id,
            )
        finally:
            self.following.pop(order.client_order_id, None)

    async def _wait_done(self, order: Order, timeout_s: float) -> None:
        """Until the order is finished (the shadow state updates it) or the time is up."""
        step = self.cfg.chase_interval_ms / 1000
        with trio.move_on_after(timeout_s):
            while order.status.is_open:
                await trio.sleep(step)
                refusal = self.placer.gate(OrderPurpose.ENTRY)
                if refusal is not None:  # paused or halted: a resting entry adds no more
                    log.info("%s no longer rests: %s", order.client_order_id, refusal)
                    return

    async def _chase(self, order: Order, plan: EntryPlan) -> None:
        step = self.cfg.chase_interval_ms / 1000
        deadline = trio.current_time() + self.cfg.chase_max_ms / 1000
        while True:
            # Sleep to the next step, but never call the exchange past the deadline, and
            # never cancel a call half-way: the deadline is checked between calls.
            await trio.sleep(min(step, max(0.0, deadline - trio.current_time())))
            if trio.current_time() >= deadline or not order.status.is_open:
                return
            refusal = self.placer.gate(OrderPurpose.ENTRY)
            if refusal is not None:  # halted or paused meanwhile: stop working the entry
                log.info("chase of %s stopped: %s", order.client_order_id, refusal)
                return
            quote = self.hub.book.get(order.symbol)
            if quote is None:
                continue
            price = plan.chase_price(quote)
            if price == order.price:
                continue
            try:
                ack = await self.broker.amend(order.symbol, order.client_order_id, price)
            except BrokerRejected as exc:
                if exc.reason in FINISHED_ANSWERS:
                    return  # it finished meanwhile
                log.warning("chase of %s stopped: %s", order.client_order_id, exc)
                return
            order.price = price
            log.info(
                "chased %s to %s (%s, filled %s)",
                order.client_order_id,
                price,
                ack.status,
                ack.filled_qty,
            )
            if not ack.status.is_open:
                return

    def resume(self, orders: list[Order], now_ms: int) -> list[str]:
        """At start: entries still resting from before get their timeout again. A maker
        entry rests for what is left of ``makerTimeoutMs`` since it was made, then the
        rest is cancelled; a taker entry's chase window is long over, so it is cancelled
        now. Reconciliation hands over resting entries it adopts the same way. An entry
        already taken up is not taken up twice. Returns one line per entry taken up (each
        logged)."""
        taken: list[str] = []
        assert self._nursery is not None
        for order in orders:
            coid = order.client_order_id
            if order.reduce_only or not order.status.is_open:
                continue
            if coid in self._resumed or coid in self.following:
                continue
            self._resumed.add(coid)
            style = Style.MAKER if order.time_in_force is TimeInForce.POST_ONLY else Style.TAKER
            left_s = 0.0
            if style is Style.MAKER:
                left_s = max(0.0, (order.created_ms + self.cfg.maker_timeout_ms - now_ms) / 1000)
            line = (
                f"{style.value} entry {order.client_order_id} ({order.symbol}) still rests "
                f"from before the restart: cancelled in {left_s:.1f} s unless it fills"
            )
            log.warning("%s", line)
            taken.append(line)
            self._nursery.start_soon(self._expire, order, style, left_s)
        return taken

    async def _expire(self, order: Order, style: Style, wait_s: float) -> None:
        with self._stoppable():
            try:
                await self._wait_done(order, wait_s)
                if order.status.is_open:
                    await self._cancel_rest(order, style)
            except TitanError as exc:
                log.error("cancelling %s failed: %s", order.client_order_id, exc)
            finally:
                self._resumed.discard(order.client_order_id)

    async def _cancel_rest(self, order: Order, plan: EntryPlan | Style) -> None:
        style = plan if isinstance(plan, Style) else plan.style
        try:
            ack = await self.placer.cancel(order.symbol, order.client_order_id)
        except BrokerRejected as exc:
            if exc.reason not in FINISHED_ANSWERS:
                log.warning("cancel of %s failed: %s", order.client_order_id, exc)
            return
        filled = ack.filled_qty
        log.info(
            "%s entry %s: %s of %s filled, rest cancelled",
            style.value,
            order.client_order_id,
            filled,
            ack.qty,
        )
        if filled == Decimal(0):
            log.info("%s entry %s: nothing filled", style.value, order.client_order_id)
