"""Orders and their state machine (SPEC §6).

An order changes state only by applying an event (``OrderUpdate``: submitted, accepted,
filled, cancel requested or refused, cancelled, rejected, expired, denied) through the
transition table. ``Order.apply`` refuses an event the table does not allow (a stale
ACCEPTED after FILLED) and returns False: the caller logs it and ignores it, so no event
ever re-opens a finished order, and the filled quantity never goes back. Our own code's
steps (``transition``) raise IllegalTransition instead: for them it is a bug.

An order is REJECTED only when the exchange's answer proves it was not accepted; anything
ambiguous leaves it in flight. An order our own checks refused before it was sent is
DENIED, never REJECTED.
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
    DENIED = "DENIED"  # refused by our own checks before it was sent

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_open(self) -> bool:
        return self not in TERMINAL


S = OrderStatus
# Recorded or sent, the exchange's answer not known yet.
IN_FLIGHT = frozenset({S.PENDING_SUBMIT, S.SUBMITTED})
TERMINAL = frozenset({S.FILLED, S.CANCELED, S.REJECTED, S.EXPIRED, S.DENIED})
TRANSITIONS: dict[OrderStatus, frozenset[OrderStatus]] = {
    # EXPIRED straight from PENDING_SUBMIT: recorded but never sent (the service stopped
    # in between), settled without pretending it was ever submitted.
    S.PENDING_SUBMIT: frozenset({S.SUBMITTED, S.REJECTED, S.DENIED, S.EXPIRED}),
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
    # A cancel can lose the race against a fill, or be refused (back to what it was); one
    # asked while the send was still unanswered can meet the exchange's refusal of it.
    S.PENDING_CANCEL: frozenset(
        {S.CANCELED, S.PARTIALLY_FILLED, S.FILLED, S.ACCEPTED, S.SUBMITTED, S.EXPIRED, S.REJECTED}
    ),
    S.FILLED: frozenset(),
    S.CANCELED: frozenset(),
    S.REJECTED: frozenset(),
    S.EXPIRED: frozenset(),
    S.DENIED: frozenset(),
}


class OrderEventKind(enum.StrEnum):
    SUBMITTED = "submitted"
    ACCEPTED = "accepted"
    FILLED = "filled"  # partly or wholly: the cumulative filled quantity says which
    CANCEL_REQUESTED = "cancel_requested"
    CANCEL_REFUSED = "cancel_refused"  # the exchange kept it: back to what it was
    CANCELED = "canceled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    DENIED = "denied"


_FINAL_KIND = {
    OrderEventKind.CANCELED: S.CANCELED,
    OrderEventKind.REJECTED: S.REJECTED,
    OrderEventKind.EXPIRED: S.EXPIRED,
    OrderEventKind.DENIED: S.DENIED,
}


# What only the exchange can say about an order (so it must have been sent); a cancel
# request or refusal, and a denial, are our own steps.
_FROM_EXCHANGE = frozenset(
    {
        OrderEventKind.ACCEPTED,
        OrderEventKind.FILLED,
        OrderEventKind.CANCELED,
        OrderEventKind.REJECTED,
        OrderEventKind.EXPIRED,
    }
)


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """One event about an order, from the broker's answer, its stream, reconciliation or
    our own steps. ``filled_qty`` is cumulative (what the exchange reports), so an event
    seen twice, or late, never adds a fill twice; fills themselves are de-duplicated by
    execution id elsewhere."""

    kind: OrderEventKind
    ts_ms: int = 0
    filled_qty: Decimal | None = None
    avg_fill_price: Decimal | None = None
    exchange_order_id: str | None = None
    reason: str | None = None
    qty: Decimal | None = None  # amended
    price: Decimal | None = None  # amended

    @classmethod
    def from_snapshot(cls, order: Order) -> OrderUpdate:
        """The event a broker's view of an order stands for."""
        status = order.status
        if status in (S.PARTIALLY_FILLED, S.FILLED):
            kind = OrderEventKind.FILLED
        elif status is S.PENDING_CANCEL:
            kind = OrderEventKind.CANCEL_REQUESTED
        elif status in (S.PENDING_SUBMIT, S.SUBMITTED):
            kind = OrderEventKind.SUBMITTED
        elif status is S.ACCEPTED:
            kind = OrderEventKind.ACCEPTED
        else:
            kind = {v: k for k, v in _FINAL_KIND.items()}[status]
        return cls(
            kind,
            order.updated_ms,
            order.filled_qty,
            order.avg_fill_price,
            order.exchange_order_id,
            order.reject_reason,
            order.qty,
            order.price,
        )


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

    def target_of(self, update: OrderUpdate) -> OrderStatus:
        """The status ``update`` asks for, from this order's status."""
        kind = update.kind
        if kind is OrderEventKind.SUBMITTED:
            return S.SUBMITTED
        if kind is OrderEventKind.ACCEPTED:
            # an acceptance that already carries fills is a fill
            filled = update.filled_qty if update.filled_qty is not None else self.filled_qty
            return S.ACCEPTED if filled <= 0 else self._filled_status(filled, update.qty)
        if kind is OrderEventKind.FILLED:
            filled = update.filled_qty if update.filled_qty is not None else self.filled_qty
            return self._filled_status(filled, update.qty)
        if kind is OrderEventKind.CANCEL_REQUESTED:
            return S.PENDING_CANCEL
        if kind is OrderEventKind.CANCEL_REFUSED:
            if self.status is not S.PENDING_CANCEL:
                return self.status
            before = self.history[-1] if self.history else S.ACCEPTED
            return S.PARTIALLY_FILLED if self.filled_qty > 0 else before
        return _FINAL_KIND[kind]

    def _filled_status(self, filled: Decimal, qty: Decimal | None) -> OrderStatus:
        total = qty if qty is not None else self.qty
        if filled <= 0:
            return self.status if self.status is not S.SUBMITTED else S.ACCEPTED
        return S.FILLED if filled >= total else S.PARTIALLY_FILLED

    def apply(self, update: OrderUpdate) -> bool:
        """Apply one event through the transition table; False (nothing changed) when
        the table refuses it. Repeating the current state is allowed (more fills, an
        amend) but a final order never changes again, and the filled quantity never
        goes back."""
        new = self.target_of(update)
        # The exchange answers about an order still PENDING_SUBMIT: it was sent (the
        # SUBMITTED step was lost, e.g. the service stopped between sending and
        # recording it), so that step is implied.
        implied = (
            self.status is S.PENDING_SUBMIT
            and update.kind in _FROM_EXCHANGE
            and new not in TRANSITIONS[S.PENDING_SUBMIT]
            and new in TRANSITIONS[S.SUBMITTED]
        )
        start = S.SUBMITTED if implied else self.status
        if new is not start and new not in TRANSITIONS[start]:
            return False
        if self.status.is_terminal:
            return False  # even the same final status: nothing may change on it
        if update.filled_qty is not None and update.filled_qty < self.filled_qty:
            return False  # an older view than we have
        if implied:
            self.history.append(self.status)
            self.status = S.SUBMITTED
        if new is not self.status:
            self.history.append(self.status)
            self.status = new
        if update.filled_qty is not None:
            self.filled_qty = update.filled_qty
        if update.avg_fill_price is not None:
            self.avg_fill_price = update.avg_fill_price
        self.exchange_order_id = update.exchange_order_id or self.exchange_order_id
        if update.reason and new in (S.REJECTED, S.DENIED, S.EXPIRED):
            self.reject_reason = update.reason
        if update.qty is not None:
            self.qty = update.qty
        if update.price is not None:
            self.price = update.price
        if update.ts_ms:
            self.updated_ms = update.ts_ms
        return True

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
