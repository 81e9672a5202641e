"""Orders and their state machine (SPEC §6).

An order is REJECTED only when the exchange's answer proves it was not accepted; anything
ambiguous leaves it in flight. Illegal transitions raise IllegalTransition instead of
silently corrupting the record.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal

from titan_trio.errors import IllegalTransition


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(enum.StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"


class TimeInForce(enum.StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    POST_ONLY = "POST_ONLY"


class OrderStatus(enum.StrEnum):
    PENDING_SUBMIT = "PENDING_SUBMIT"
    SUBMITTED = "SUBMITTED"
    ACCEPTED = "ACCEPTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    PENDING_CANCEL = "PENDING_CANCEL"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_open(self) -> bool:
        return self not in TERMINAL


S = OrderStatus
TERMINAL = frozenset({S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED})
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING_SUBMIT: frozenset({S.SUBMITTED, S.REJECTED}),
    S.SUBMITTED: frozenset(
        {
            S.ACCEPTED,
            S.REJECTED,
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.PENDING_CANCEL,
            S.CANCELED,
            S.EXPIRED,
        }
    ),
    S.ACCEPTED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}),
    S.PARTIALLY_FILLED: frozenset(
        {S.PARTIALLY_FILLED, S.FILLED, S.PENDING_CANCEL, S.CANCELED, S.EXPIRED}
    ),
    # A cancel can lose the race against a fill, or be refused (back to ACCEPTED).
    S.PENDING_CANCEL: frozenset({S.CANCELED, S.PARTIALLY_FILLED, S.FILLED, S.ACCEPTED, S.EXPIRED}),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
}


@dataclass(slots=True)
class Order:
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    reduce_only: bool = False
    leverage: Decimal = Decimal(1)
    signal_id: str | None = None
    status: OrderStatus = OrderStatus.PENDING_SUBMIT
    exchange_order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    avg_fill_price: Decimal | None = None
    reject_reason: str | None = None
    created_ms: int = 0
    updated_ms: int = 0
    # What the position this order opens carries (entry orders only).
    stop_loss: Decimal | None = None
    take_profits: tuple[Decimal, ...] = ()
    trap_type: str | None = None
    close_reason: str | None = None  # why a reduce-only order closes (CLOSE reason, flatten)
    history: list[OrderStatus] = field(default_factory=list)

    @property
    def remaining_qty(self) -> Decimal:
        return self.qty - self.filled_qty

    def update_from(self, other: Order) -> None:
        """Take the exchange's view of this order (status, fills, ids), keeping what only
        we know (signal, stop and targets)."""
        self.status = other.status
        self.filled_qty = other.filled_qty
        self.avg_fill_price = other.avg_fill_price
        self.exchange_order_id = other.exchange_order_id or self.exchange_order_id
        self.reject_reason = other.reject_reason or self.reject_reason
        self.qty = other.qty
        self.price = other.price
        self.updated_ms = other.updated_ms or self.updated_ms

    def transition(self, new: OrderStatus, now_ms: int = 0) -> None:
        if new not in TRANSITIONS[self.status]:
            raise IllegalTransition(
                f"order {self.client_order_id}: {self.status} -> {new} is not allowed"
            )
        self.history.append(self.status)
        self.status = new
        if now_ms:
            self.updated_ms = now_ms

    def apply_fill(self, qty: Decimal, price: Decimal, now_ms: int = 0) -> None:
        """Record a fill of ``qty`` at ``price``: average price and status move with it."""
        if qty <= 0:
            raise IllegalTransition(f"order {self.client_order_id}: fill of {qty} is not positive")
        if qty > self.remaining_qty:
            raise IllegalTransition(
                f"order {self.client_order_id}: fill of {qty} exceeds remaining "
                f"{self.remaining_qty}"
            )
        new_status = S.FILLED if qty == self.remaining_qty else S.PARTIALLY_FILLED
        self.transition(new_status, now_ms)
        previous = self.avg_fill_price or Decimal(0)
        total = self.filled_qty + qty
        self.avg_fill_price = (previous * self.filled_qty + price * qty) / total
        self.filled_qty = total


@dataclass(frozen=True, slots=True)
class OrderRequest:
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    reduce_only: bool = False
    leverage: Decimal = Decimal(1)
    signal_id: str | None = None


@dataclass(frozen=True, slots=True)
class Fill:
    exec_id: str
    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal
    is_maker: bool
    ts_ms: int
    realized_pnl: Decimal  # gross P&L this fill realized on the position


def market_close(
    client_order_id: str,
    symbol: str,
    side: Side,
    qty: Decimal,
    leverage: Decimal,
    now_ms: int,
    reason: str,
    signal_id: str | None = None,
) -> Order:
    """A reduce-only market order that exits (part of) a position, saying why."""
    return Order(
        client_order_id=client_order_id,
        symbol=symbol,
        side=side,
        order_type=OrderType.MARKET,
        qty=qty,
        time_in_force=TimeInForce.IOC,
        reduce_only=True,
        leverage=leverage,
        signal_id=signal_id,
        created_ms=now_ms,
        updated_ms=now_ms,
        close_reason=reason,
    )
