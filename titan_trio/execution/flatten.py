"""Emergency flatten: cancel every open order, close every position reduce-only at market.

Used by the operator (POST /api/emergency/flatten-all, ``titan flatten``) and by the
circuit breaker. Idempotent: a second call finds nothing to do and says so. Setting the
trading state to HALTED is the caller's part (the risk controller), so that the state
change and its reason are recorded in one place.

What it must never do: miss an order or a position because one source did not know of
it, or stop half-way on one failure. It cancels the open orders the broker reports for
the traded symbols and those the shadow state knows, closes every position the broker
or the shadow state holds, carries on past each error and reports every one. It is
bounded: after ``deadline_s`` (a broker that does not answer) it stops and reports what
it could not finish, so a shutdown never waits on it for longer than that.
"""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal

import trio

from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.domain.orders import Order, Side, market_close
from titan_trio.domain.positions import Position
from titan_trio.domain.reports import FlattenReport
from titan_trio.errors import BrokerRejected, TitanError
from titan_trio.execution.placement import FINISHED_ANSWERS, OrderPlacer
from titan_trio.risk.breaker import OrderPurpose
from titan_trio.state.shadow import ShadowState

log = logging.getLogger("titan.flatten")

FLATTEN_DEADLINE_S = 5.0  # a market close answers in well under a second when healthy


class Flattener:
    def __init__(
        self,
        broker: Broker,
        shadow: ShadowState,
        placer: OrderPlacer,
        symbols: list[str],
        deadline_s: float = FLATTEN_DEADLINE_S,
    ) -> None:
        self.broker = broker
        self.shadow = shadow
        self.placer = placer
        self.symbols = set(symbols)
        self.deadline_s = deadline_s
        self._lock = trio.Lock()  # two flattens at once would race to close the same size
        self._seq = 0

    async def flatten(self, reason: str) -> FlattenReport:
        report = FlattenReport()
        with trio.move_on_after(self.deadline_s) as scope:
            async with self._lock:
                await self._cancel_all(report)
                await self._close_all(reason, report)
        if scope.cancelled_caught:
            report.errors.append(
                f"flatten stopped after {self.deadline_s:g} s: the broker did not answer in "
                "time; check open orders and positions at the exchange"
            )
            log.error(
                "flatten (%s) did NOT finish within %g s: cancelled %d orders, closed %d "
                "positions so far; check the exchange",
                reason,
                self.deadline_s,
                len(report.cancelled_orders),
                len(report.closed_positions),
            )
        elif report.nothing_to_do:
            log.info("flatten (%s): nothing to do", reason)
        else:
            log.warning(
                "flatten (%s): cancelled %d orders, closed %d positions, %d errors%s",
                reason,
                len(report.cancelled_orders),
                len(report.closed_positions),
                len(report.errors),
                "".join(f"; {e}" for e in report.errors),
            )
        return report

    async def close_position(self, symbol: str, reason: str) -> FlattenReport:
        """Close one symbol's position at market, sized from the broker (reconciliation's
        answer to a position it must not adopt); bounded like a flatten, errors reported."""
        report = FlattenReport()
        with trio.move_on_after(self.deadline_s) as scope:
            async with self._lock:
                held = [p for p in await self.broker.positions() if p.symbol == symbol]
                for position in held:
                    side = position.side
                    if side is not None:
                        await self._close(
                            symbol,
                            position.abs_size,
                            side.opposite,
                            reason,
                            report,
                            position.leverage,
                        )
        if scope.cancelled_caught:
            report.errors.append(f"closing {symbol} did not finish within {self.deadline_s:g} s")
        for error in report.errors:
            log.error("closing %s (%s): %s", symbol, reason, error)
        return report

    async def _cancel_all(self, report: FlattenReport) -> None:
        """Every open order of the traded symbols, wherever it is known."""
        targets: dict[str, str] = {}  # client order id -> symbol
        try:
            for order in await self.broker.open_orders():
                if order.symbol in self.symbols or order.client_order_id in self.shadow.orders:
                    targets[order.client_order_id] = order.symbol
        except TitanError as exc:
            report.errors.append(f"listing open orders at the broker: {exc}")
        for order in list(self.shadow.orders.values()):
            if order.status.is_open:
                targets.setdefault(order.client_order_id, order.symbol)
        for coid, symbol in targets.items():
            try:
                await self.placer.cancel(symbol, coid)
                report.cancelled_orders.append(coid)
            except BrokerRejected as exc:
                if exc.reason not in FINISHED_ANSWERS:
                    report.errors.append(f"cancel {coid}: {exc}")
            except TitanError as exc:
                report.errors.append(f"cancel {coid}: {exc}")

    async def _close_all(self, reason: str, report: FlattenReport) -> None:
        """Every position, sized from the exchange (the shadow may lag its latest
        fills), plus anything only the shadow knows of, so nothing is left open."""
        held: dict[str, Position] = {}
        try:
            held = {p.symbol: p for p in await self.broker.positions() if not p.is_flat}
        except TitanError as exc:
            report.errors.append(f"listing positions at the broker: {exc}")
        for symbol, rec in self.shadow.positions.items():
            if symbol not in held and not rec.position.is_flat:
                held[symbol] = rec.position
        for symbol, position in sorted(held.items()):
            side = position.side
            assert side is not None
            await self._close(
                symbol, position.abs_size, side.opposite, reason, report, position.leverage
            )

    async def _close(
        self,
        symbol: str,
        qty: Decimal,
        side: Side,
        reason: str,
        report: FlattenReport,
        leverage: Decimal,
    ) -> None:
        self._seq += 1
        now = now_ms()
        digest = hashlib.sha256(f"{reason}|{symbol}|{now}|{self._seq}".encode()).hexdigest()
        order = market_close(
            f"ttf{digest[:32]}", symbol, side, qty, leverage, now, f"flatten: {reason}"
        )
        try:
            ack = await self.placer.place(order, OrderPurpose.FLATTEN)
        except TitanError as exc:  # refused, or not recorded: report it, close the rest
            report.errors.append(f"close {symbol}: {exc}")
            return
        report.closed_positions.append(_closed(order, side, qty, ack))


def _closed(order: Order, side: Side, qty: Decimal, ack: Order) -> dict[str, str]:
    return {
        "symbol": order.symbol,
        "side": side.value,
        "qty": str(qty),
        "client_order_id": order.client_order_id,
        "status": ack.status.value,
        "filled_qty": str(ack.filled_qty),
    }
