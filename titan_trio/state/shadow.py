"""The shadow state: the service's own record of balance, positions, open orders and
closed trades, kept in memory for speed. Pure: it never touches the database; callers
persist the changes each method returns (see ``state.sync``).

A closed trade is one position's life from flat to flat (or to a flip): its quantity,
average entry and exit, gross P&L, all fees, and net P&L. Partial exits accumulate on the
open position and are reported in the trade when it closes.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from titan_trio.domain.orders import Fill, Order, OrderUpdate, Side
from titan_trio.domain.positions import Position
from titan_trio.domain.quotes import PriceBook

ZERO = Decimal(0)


@dataclass(slots=True)
class PositionRecord:
    position: Position
    signal_id: str | None = None
    stop_loss: Decimal | None = None
    take_profits: list[Decimal] = field(default_factory=list)
    trap_type: str | None = None
    closed_qty: Decimal = ZERO
    exit_notional: Decimal = ZERO
    closed_entry_notional: Decimal = ZERO  # entry price x qty of the parts closed so far


@dataclass(frozen=True, slots=True)
class TradeRecord:
    symbol: str
    side: Side  # the side of the position that closed
    qty: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pnl: Decimal
    fees: Decimal
    opened_ms: int
    closed_ms: int
    signal_id: str | None
    close_reason: str | None

    @property
    def net_pnl(self) -> Decimal:
        return self.realized_pnl - self.fees

    @property
    def day(self) -> str:
        return utc_day(self.closed_ms)


@dataclass(slots=True)
class FillChanges:
    """What one fill changed, for the store: the position (None when it went flat) and
    the trade it closed, if any."""

    fill: Fill
    order: Order | None
    symbol: str
    position: PositionRecord | None
    trade: TradeRecord | None


def utc_day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d")


RECENT_EXEC_IDS = 20_000


class RecentExecIds:
    """The execution ids of the last ``limit`` fills, for de-duplication in memory; memory
    stays bounded however long the service runs. A fill the set no longer covers is
    recognised by its timestamp: at or before ``horizon_ms`` (the newest forgotten one),
    so the caller asks the database (records.fill_recorded) before applying it. New fills
    are never that old, so the hot path never reads the database."""

    def __init__(self, limit: int = RECENT_EXEC_IDS) -> None:
        self.limit = limit
        self.horizon_ms = -1  # nothing forgotten yet
        self._ids: set[str] = set()
        self._order: deque[tuple[str, int]] = deque()

    def __contains__(self, exec_id: object) -> bool:
        return exec_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def add(self, exec_id: str, ts_ms: int) -> None:
        if exec_id in self._ids:
            return
        self._ids.add(exec_id)
        self._order.append((exec_id, ts_ms))
        while len(self._order) > self.limit:
            old, old_ts = self._order.popleft()
            self._ids.discard(old)
            self.horizon_ms = max(self.horizon_ms, old_ts)

    def update(self, fills: Iterable[tuple[str, int]]) -> None:
        for exec_id, ts_ms in fills:
            self.add(exec_id, ts_ms)

    def needs_database_check(self, fill: Fill) -> bool:
        return fill.exec_id not in self._ids and fill.ts_ms <= self.horizon_ms


class ShadowState:
    def __init__(self, balance: Decimal) -> None:
        self.balance = balance
        self.positions: dict[str, PositionRecord] = {}
        self.orders: dict[str, Order] = {}  # open orders only
        # Our orders that finished before all their fills were applied (the fill events
        # follow the order event): they still count as exposure until then.
        self.unsettled: dict[str, Order] = {}
        self.applied_qty: dict[str, Decimal] = {}  # fill quantity applied, per tracked order
        self.seen_exec_ids = RecentExecIds()
        self.refused_updates = 0  # order events the transition table refused

    # ----- reads -----------------------------------------------------------------------

    def marks(self, book: PriceBook) -> dict[str, Decimal]:
        marks: dict[str, Decimal] = {}
        for symbol, rec in self.positions.items():
            mark = book.mark(symbol)
            marks[symbol] = mark if mark is not None else rec.position.entry_price
        return marks

    def unrealized_pnl(self, book: PriceBook) -> Decimal:
        marks = self.marks(book)
        return sum(
            (rec.position.unrealized_pnl(marks[s]) for s, rec in self.positions.items()), ZERO
        )

    def equity(self, book: PriceBook) -> Decimal:
        return self.balance + self.unrealized_pnl(book)

    def total_notional(self, book: PriceBook) -> Decimal:
        marks = self.marks(book)
        return sum((rec.position.notional(marks[s]) for s, rec in self.positions.items()), ZERO)

    def entry_exposure(self) -> list[tuple[Order, Decimal]]:
        """Entry orders and the quantity of each not yet in a position: what is still to
        fill, plus what filled but has not reached the position yet."""
        out = []
        for order in (*self.orders.values(), *self.unsettled.values()):
            if order.reduce_only:
                continue
            unapplied = order.filled_qty - self.applied_qty.get(order.client_order_id, ZERO)
            pending = (order.remaining_qty if order.status.is_open else ZERO) + unapplied
            if pending > 0:
                out.append((order, pending))
        return out

    # ----- changes ---------------------------------------------------------------------

    def track(self, order: Order) -> None:
        """Start tracking an order we are about to send (it counts as exposure now)."""
        self.orders[order.client_order_id] = order
        self.applied_qty.setdefault(order.client_order_id, ZERO)

    def untrack(self, client_order_id: str) -> None:
        """Forget an order that was tracked but never recorded nor sent."""
        self.orders.pop(client_order_id, None)
        if not self.applied_qty.get(client_order_id):
            self.applied_qty.pop(client_order_id, None)

    def apply_order(self, order: Order) -> Order:
        """Apply the broker's view of an order to ours, as an event through the
        transition table, and return ours; open orders are kept, finished ones drop out
        of the open set. An event the table refuses changes nothing (counted in
        ``refused_updates`` unless it merely repeats a final status)."""
        coid = order.client_order_id
        ours = self.orders.get(coid) or self.unsettled.get(coid)
        if ours is None:
            # Adopted: an order the exchange made (a triggered stop) or one sent before a
            # restart; its fills follow, so follow it like our own.
            ours = order
            self.applied_qty.setdefault(coid, ZERO)
        elif ours is not order:  # (our own object: its step is already taken)
            update = OrderUpdate.from_snapshot(order)
            if not ours.apply(update):
                # Refused by the transition table (a stale event): ignored.
                if ours.target_of(update) is not ours.status or not ours.status.is_terminal:
                    self.refused_updates += 1
        if ours.status.is_open:
            self.orders[coid] = ours
            return ours
        self.orders.pop(coid, None)
        applied = self.applied_qty.get(coid)
        if applied is not None and applied < ours.filled_qty:
            self.unsettled[coid] = ours
        else:
            self.unsettled.pop(coid, None)
            self.applied_qty.pop(coid, None)
        return ours

    def settle_fills(self, client_order_id: str) -> None:
        """Count an order's fills as all applied: the ones missing will never come (the
        position was taken from the broker whole instead)."""
        order = self.orders.get(client_order_id) or self.unsettled.get(client_order_id)
        if order is None:
            return
        if client_order_id in self.unsettled:
            del self.unsettled[client_order_id]
            self.applied_qty.pop(client_order_id, None)
        else:
            self.applied_qty[client_order_id] = order.filled_qty

    def apply_fill(self, fill: Fill, close_reason: str | None = None) -> FillChanges | None:
        """Apply a fill once (de-duplicated by exec id); None for a fill already seen."""
        if fill.exec_id in self.seen_exec_ids:
            return None
        self.seen_exec_ids.add(fill.exec_id, fill.ts_ms)
        coid = fill.client_order_id
        order = self.orders.get(coid) or self.unsettled.get(coid)
        if coid in self.applied_qty:
            self.applied_qty[coid] += fill.qty
            done = self.unsettled.get(coid)
            if done is not None and self.applied_qty[coid] >= done.filled_qty:
                del self.unsettled[coid]
                del self.applied_qty[coid]
        elif order is None:
            # a fill ahead of its order's first event (an exchange's topics are not
            # ordered): counted for the order when it comes, so it is not waited for
            self.applied_qty[coid] = fill.qty
        if close_reason is None and order is not None:
            close_reason = order.close_reason
        rec = self.positions.get(fill.symbol)
        if rec is None:
            rec = PositionRecord(Position(fill.symbol))
            self.positions[fill.symbol] = rec
            if order is not None:
                _carry_plan(rec, order)
        side_before = rec.position.side
        opened_before = rec.position.opened_ms
        effect = rec.position.apply_fill(fill.side, fill.qty, fill.price, fill.fee, fill.ts_ms)
        self.balance += effect.realized_pnl - fill.fee
        trade: TradeRecord | None = None
        if effect.closed_qty > 0:
            rec.closed_qty += effect.closed_qty
            rec.exit_notional += effect.closed_qty * fill.price
            assert effect.closed_entry_price is not None
            rec.closed_entry_notional += effect.closed_qty * effect.closed_entry_price
            if rec.position.is_flat or effect.opened_qty > 0:
                assert side_before is not None
                # Fees of the closing fill belong to the trade; a flip's opening part
                # carries on in the new position with a share of this fill's fee.
                opening_fee = fill.fee * effect.opened_qty / fill.qty
                trade = TradeRecord(
                    symbol=fill.symbol,
                    side=side_before,
                    qty=rec.closed_qty,
                    entry_price=rec.closed_entry_notional / rec.closed_qty,
                    exit_price=rec.exit_notional / rec.closed_qty,
                    realized_pnl=rec.position.realized_pnl,
                    fees=rec.position.fees - opening_fee,
                    opened_ms=opened_before,
                    closed_ms=fill.ts_ms,
                    signal_id=rec.signal_id,
                    close_reason=close_reason,
                )
                if rec.position.is_flat:
                    del self.positions[fill.symbol]
                    rec_after: PositionRecord | None = None
                else:
                    rec.position.realized_pnl = ZERO
                    rec.position.fees = opening_fee
                    rec.closed_qty = ZERO
                    rec.exit_notional = ZERO
                    rec.closed_entry_notional = ZERO
                    rec.signal_id = None
                    rec.stop_loss, rec.take_profits, rec.trap_type = None, [], None
                    if order is not None:
                        _carry_plan(rec, order)
                    rec_after = rec
                return FillChanges(fill, order, fill.symbol, rec_after, trade)
        return FillChanges(fill, order, fill.symbol, rec, None)


def _carry_plan(rec: PositionRecord, order: Order) -> None:
    """A position opened by an order carries that order's signal, stop and targets."""
    rec.position.leverage = order.leverage
    rec.signal_id = order.signal_id
    rec.stop_loss = order.stop_loss
    rec.take_profits = list(order.take_profits)
    rec.trap_type = order.trap_type
