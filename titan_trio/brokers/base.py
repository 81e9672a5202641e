"""What every broker adapter offers the core (paper now, Bybit later).

Adapters translate the outside world into domain objects and TitanErrors:
``submit`` raises BrokerRejected only when the exchange proved it did not take the order;
anything ambiguous is left for the event stream or reconciliation to settle.
Events flow to the core over a bounded memory channel, in the order they happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import trio

from titan_trio.domain.orders import Fill, Order, OrderRequest
from titan_trio.domain.positions import Position


@dataclass(frozen=True, slots=True)
class OrderEvent:
    order: Order


@dataclass(frozen=True, slots=True)
class FillEvent:
    fill: Fill


@dataclass(frozen=True, slots=True)
class BalanceEvent:
    balance: Decimal


BrokerEvent = OrderEvent | FillEvent | BalanceEvent


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """The broker's account at one moment, how many events it had sent up to it, and
    the fills (executions) it made since the time asked for, oldest first."""

    positions: list[Position]
    open_orders: list[Order]
    balance: Decimal
    events_sent: int
    fills: list[Fill] = field(default_factory=list)


class Broker(Protocol):
    name: str
    events: trio.MemoryReceiveChannel[BrokerEvent]

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    async def submit(self, request: OrderRequest) -> Order: ...

    async def cancel(self, symbol: str, client_order_id: str) -> Order: ...

    async def amend(self, symbol: str, client_order_id: str, price: Decimal) -> Order: ...

    async def order_status(self, symbol: str, client_order_id: str) -> Order | None: ...

    async def set_stop_loss(self, symbol: str, stop_loss: Decimal | None) -> None: ...

    async def stop_loss(self, symbol: str) -> Decimal | None: ...

    async def open_orders(self) -> list[Order]: ...

    async def positions(self) -> list[Position]: ...

    async def balance(self) -> Decimal: ...

    async def account(self, fills_since_ms: int | None = None) -> AccountSnapshot: ...

    def health(self) -> dict[str, Any]: ...
