"""Protection: every position carries the stop loss and take profits its signal asked for.

- The stop loss is set on the position at the exchange (Bybit's trading-stop; the paper
  exchange models it) as soon as the entry's first fill makes the position exist, so a
  crash of this service never leaves a position without its stop.
- The take profits are reduce-only limit orders, placed when the entry order is finished,
  splitting the filled quantity evenly (rounded down to the step; the last one takes the
  remainder). Their ids derive from the entry's id, so they can never be placed twice.
- When the position closes (stop, targets, CLOSE or flatten) the exchange drops the stop
  and cancels the reduce-only orders left: nothing stays behind.
With pyramiding, the latest entry's stop replaces the position's stop.

Failures are contained per position: whatever goes wrong placing one position's stop or
targets (an exchange refusal, or a bug) is logged at ERROR with the position named,
counted in ``titan_protection_failures_total`` (an alert), and the service carries on;
a failing take profit never touches the position's stop loss. A stop the exchange refuses
because the position is gone (closed between our look and the request: a CLOSE right
behind its entry) is no failure: there is nothing left to protect.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import trio

from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Order, OrderType, Side, TimeInForce, market_close
from titan_trio.domain.positions import Position, adopted_stop
from titan_trio.errors import BrokerRejected, TitanError
from titan_trio.execution.placement import OrderPlacer
from titan_trio.feeds.hub import MarketHub
from titan_trio.risk.breaker import OrderPurpose
from titan_trio.state import records
from titan_trio.state.shadow import FillChanges, PositionRecord

log = logging.getLogger("titan.protection")
NO_POSITION = "NO_POSITION"  # the exchange's answer to a stop for a position it does not hold


def split_targets(qty: Decimal, targets: int, instrument: Instrument) -> list[Decimal]:
    """``qty`` over ``targets`` orders: equal parts on the step, the remainder on the last;
    parts below the minimum are folded into the last."""
    if targets <= 0 or qty <= 0:
        return []
    part = instrument.floor_qty(qty / targets)
    if part < instrument.min_qty:
        return [qty]
    parts = [part] * (targets - 1)
    parts.append(qty - part * (targets - 1))
    return parts


class Protector:
    def __init__(
        self,
        broker: Broker,
        placer: OrderPlacer,
        instruments: dict[str, Instrument],
        hub: MarketHub,
        adopted_stop_pct: Decimal = Decimal(2),
    ) -> None:
        self.hub = hub
        self.adopted_stop_pct = adopted_stop_pct
        self.broker = broker
        self.placer = placer
        self.instruments = instruments
        self._nursery: trio.Nursery | None = None
        self.active = 0  # protection work scheduled and not finished (a clean stop waits)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    # Called by the shadow sync after each commit; the work runs in our own nursery so the
    # sync (which the broker's events feed) never waits on the broker.

    def notice_fill(self, changes: FillChanges) -> None:
        order = changes.order
        rec = changes.position
        if (
            (order is None or order.stop_loss is None)
            and rec is not None
            and rec.stop_loss is None
            and not rec.position.is_flat
            and self._nursery is not None
        ):
            # a position no order of ours opened (made at the exchange by hand, or by
            # an order from before): it gets the adopted stop, never none
            self.active += 1
            self._nursery.start_soon(
                self._contained, f"adopted stop of {changes.symbol}", self._adopt_stop, rec
            )
            return
        if (
            order is None
            or order.reduce_only
            or order.stop_loss is None
            or changes.position is None
            or self._nursery is None
        ):
            return
        self.active += 1
        self._nursery.start_soon(
            self._contained,
            f"stop loss of {order.symbol}",
            self._set_stop,
            order.symbol,
            order.stop_loss,
        )

    def notice_order_finished(self, order: Order) -> None:
        if (
            order.reduce_only
            or not order.take_profits
            or order.filled_qty <= 0
            or self._nursery is None
        ):
            return
        self.active += 1
        self._nursery.start_soon(
            self._contained, f"take profits of {order.symbol}", self._place_targets, order
        )

    async def _contained(self, what: str, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one position's protection work; any failure stays with that position."""
        try:
            await fn(*args)
        except Exception:
            self.placer.metrics.protection_failures.inc()
            log.exception("protection failed: %s (a bug; the service carries on)", what)
        finally:
            self.active -= 1

    def _adopted_stop_for(self, symbol: str, position: Position) -> Decimal:
        """``adopted_stop_pct`` from the market (the entry price without one), toward
        the position's side."""
        assert position.side is not None
        return adopted_stop(
            position.side.sign > 0,
            self.hub.book.mark(symbol) or position.entry_price,
            self.adopted_stop_pct,
            self.instruments.get(symbol),
        )

    async def _adopt_stop(self, rec: PositionRecord) -> None:
        """A position with no stop known gets one ``adopted_stop_pct`` from the market
        (reconciliation's rule), recorded with the position and set at the exchange: the
        service never leaves a position it holds unprotected."""
        symbol = rec.position.symbol
        side = rec.position.side
        if side is None or rec.stop_loss is not None:
            return
        rec.stop_loss = self._adopted_stop_for(symbol, rec.position)
        log.warning(
            "position %s has no stop loss known: adopting %s (%s %% from the market)",
            symbol,
            rec.stop_loss,
            self.adopted_stop_pct,
        )
        await self.placer.store.call(records.set_position, symbol, rec)
        await self._set_stop(symbol, rec.stop_loss)

    async def _set_stop(self, symbol: str, stop: Decimal) -> None:
        try:
            held = {p.symbol: p for p in await self.broker.positions() if not p.is_flat}
            position = held.get(symbol)
            if position is None or position.side is None:
                return  # already closed again
            long = position.side.sign > 0
            instrument = self.instruments[symbol]
            stop = instrument.stop_price(stop, long)
            quote = self.hub.book.get(symbol)
            if quote is not None and (quote.mid <= stop if long else quote.mid >= stop):
                log.error(
                    "stop loss %s on %s is already breached (market %s): closing the "
                    "position at market",
                    stop,
                    symbol,
                    quote.mid,
                )
                await self._close_now(symbol, f"stop loss {stop} (already breached)")
                return
            if await self.broker.stop_loss(symbol) == stop:
                return
            await self.broker.set_stop_loss(symbol, stop)
            log.info("stop loss %s set on %s", stop, symbol)
        except TitanError as exc:
            if isinstance(exc, BrokerRejected) and exc.reason == NO_POSITION:
                # closed since we looked (a CLOSE right behind the entry): nothing to protect
                log.info("stop loss %s not set on %s: the position is closed", stop, symbol)
                return
            self.placer.metrics.protection_failures.inc()
            log.error(
                "position %s is NOT protected: setting stop loss %s failed: %s", symbol, stop, exc
            )

    async def _close_now(self, symbol: str, reason: str) -> None:
        held = {p.symbol: p for p in await self.broker.positions() if not p.is_flat}
        position = held.get(symbol)
        if position is None or position.side is None:
            return
        now = now_ms()
        digest = hashlib.sha256(f"{symbol}|{reason}|{now}".encode()).hexdigest()
        order = market_close(
            f"tts{digest[:32]}",
            symbol,
            position.side.opposite,
            position.abs_size,
            position.leverage,
            now,
            reason,
        )
        try:
            await self.placer.place(order, OrderPurpose.PROTECTION)
        except TitanError as exc:
            self.placer.metrics.protection_failures.inc()
            log.error("position %s is NOT protected and could not be closed: %s", symbol, exc)

    async def _place_targets(self, entry: Order) -> None:
        await self._place_targets_for(
            entry.symbol,
            entry.side,
            entry.filled_qty,
            list(entry.take_profits),
            entry.leverage,
            entry.signal_id,
            entry.client_order_id,
        )

    async def _place_targets_for(
        self,
        symbol: str,
        side: Side,
        qty: Decimal,
        take_profits: list[Decimal],
        leverage: Decimal,
        signal_id: str | None,
        seed: str,
    ) -> None:
        """Reduce-only limits splitting ``qty`` of a ``side`` position over its targets;
        their ids derive from ``seed`` (the entry's id), so they are never placed twice."""
        instrument = self.instruments[symbol]
        parts = split_targets(qty, len(take_profits), instrument)
        targets = take_profits[: len(parts)]
        if len(parts) < len(take_profits):
            targets = [take_profits[-1]]  # too small to split: all at the last target
        for n, (price, part) in enumerate(zip(targets, parts, strict=True), start=1):
            digest = hashlib.sha256(f"{seed}|tp|{n}".encode()).hexdigest()
            now = now_ms()
            order = Order(
                client_order_id=f"ttt{digest[:32]}",
                symbol=symbol,
                side=side.opposite,
                order_type=OrderType.LIMIT,
                qty=part,
                price=instrument.target_price(price, side.sign > 0),
                time_in_force=TimeInForce.GTC,
                reduce_only=True,
                leverage=leverage,
                signal_id=signal_id,
                created_ms=now,
                updated_ms=now,
                close_reason=f"take profit {n}",
            )
            try:
                await self.placer.place(order, OrderPurpose.PROTECTION)
            except TitanError as exc:
                self.placer.metrics.protection_failures.inc()
                log.error("take profit %d of %s refused: %s", n, symbol, exc)

    async def protect_held(self, known: dict[str, PositionRecord]) -> list[str]:
        """At start: every position the exchange holds gets back the stop loss and take
        profits its record asks for when the exchange has none (a stop never set because
        the service stopped right after the fill, targets never placed). Each one placed
        again is a WARNING; one with no stop known gets the adopted stop. This never
        writes a position record for a position the shadow state does not hold: the
        exchange's list is read before the awaits that follow, and a record made from it
        would bring back a position a fill closed meanwhile (reconciliation records
        positions we have no record of, from a consistent snapshot). Returns what was
        placed again."""
        placed: list[str] = []
        held = {p.symbol: p for p in await self.broker.positions() if not p.is_flat}
        resting = await self.broker.open_orders()
        for symbol, position in sorted(held.items()):
            side = position.side
            if side is None or symbol not in self.instruments:
                continue
            stop_at_exchange = await self.broker.stop_loss(symbol)
            # Read after the awaits: the lists above may be older than the shadow state
            # (a fill applied meanwhile closed the position here).
            rec = known.get(symbol)
            if stop_at_exchange is None:
                if rec is None:
                    # Held there, not here: closed by a fill since the broker's list was
                    # read, or a difference reconciliation left for its next run. The
                    # record is reconciliation's to make (from one consistent snapshot,
                    # never from this list); the exchange gets a stop meanwhile.
                    stop = self._adopted_stop_for(symbol, position)
                    log.warning(
                        "position %s at the exchange has no stop loss and no record here: "
                        "setting %s (%s %% from the market); reconciliation records it",
                        symbol,
                        stop,
                        self.adopted_stop_pct,
                    )
                    await self._set_stop(symbol, stop)
                    placed.append(f"{symbol}: adopted stop {stop} (not recorded)")
                elif rec.stop_loss is None:
                    await self._adopt_stop(rec)
                    placed.append(f"{symbol}: adopted stop {rec.stop_loss}")
                else:
                    log.warning(
                        "position %s had no stop loss at the exchange: placing %s again",
                        symbol,
                        rec.stop_loss,
                    )
                    await self._set_stop(symbol, rec.stop_loss)
                    placed.append(f"stop loss {symbol}")
            targets_rest = any(
                o.symbol == symbol and o.reduce_only and o.side is side.opposite for o in resting
            )
            # An entry still working places its targets when it finishes (never twice).
            entry_open = any(o.symbol == symbol and not o.reduce_only for o in resting)
            if rec is not None and rec.take_profits and not targets_rest and not entry_open:
                log.warning(
                    "position %s had no take profits at the exchange: placing %s again",
                    symbol,
                    ", ".join(str(tp) for tp in rec.take_profits),
                )
                await self._place_targets_for(
                    symbol,
                    side,
                    position.abs_size,
                    list(rec.take_profits),
                    position.leverage,
                    rec.signal_id,
                    f"{symbol}|{rec.signal_id}|restart|{now_ms()}",
                )
                placed.append(f"take profits {symbol}")
        return placed
