"""Emergency flatten: cancel every open order, close every position reduce-only at market.

Used by the operator (POST /api/emergency/flatten-all, ``titan flatten``) and by the
circuit breaker. Idempotent: a second call finds nothing to do and says so. Setting the
trading state to HALTED is the caller's part (the risk controller), so that the state
change and its reason are recorded in one place.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from decimal import Decimal

import trio

from titan_trio.brokers.base import Broker
from titan_trio.clock import now_ms
from titan_trio.domain.orders import Side, market_close
from titan_trio.errors import BrokerRejected
from titan_trio.execution.placement import OrderPlacer
from titan_trio.state.shadow import ShadowState

log = logging.getLogger("titan.flatten")


@dataclass
class FlattenReport:
    cancelled_orders: list[str] = field(default_factory=list)
    closed_positions: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def nothing_to_do(self) -> bool:
        return not (self.cancelled_orders or self.closed_positions or self.errors)


class Flattener:
    def __init__(self, broker: Broker, shadow: ShadowState, placer: OrderPlacer) -> None:
        self.broker = broker
        self.shadow = shadow
        self.placer = placer
        self._lock = trio.Lock()  # two flattens at once would race to close the same size
        self._seq = 0

    async def flatten(self, reason: str) -> FlattenReport:
        async with self._lock:
            report = FlattenReport()
            for order in list(self.shadow.orders.values()):
                if not order.status.is_open:
                    continue
                try:
                    await self.broker.cancel(order.symbol, order.client_order_id)
                    report.cancelled_orders.append(order.client_order_id)
                except BrokerRejected as exc:
                    if exc.reason not in ("ORDER_NOT_OPEN", "ORDER_NOT_FOUND"):
                        report.errors.append(f"cancel {order.client_order_id}: {exc}")
            # Sizes from the exchange (the shadow may lag its latest fills), plus anything
            # only the shadow knows of, so nothing is left open either way.
            held = {p.symbol: p for p in await self.broker.positions() if not p.is_flat}
            for symbol, rec in self.shadow.positions.items():
                if symbol not in held and not rec.position.is_flat:
                    held[symbol] = rec.position
            for symbol, position in sorted(held.items()):
                side = position.side
                assert side is not None
                await self._close(
                    symbol, position.abs_size, side.opposite, reason, report, position.leverage
                )
            if report.nothing_to_do:
                log.info("flatten (%s): nothing to do", reason)
            else:
                log.warning(
                    "flatten (%s): cancelled %d orders, closed %d positions, %d errors",
                    reason,
                    len(report.cancelled_orders),
                    len(report.closed_positions),
                    len(report.errors),
                )
            return report

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
            ack = await self.placer.place(order)
        except BrokerRejected as exc:
            report.errors.append(f"close {symbol}: {exc}")
            return
        report.closed_positions.append(
            {
                "symbol": symbol,
                "side": side.value,
                "qty": str(qty),
                "client_order_id": order.client_order_id,
                "status": ack.status.value,
                "filled_qty": str(ack.filled_qty),
            }
        )
