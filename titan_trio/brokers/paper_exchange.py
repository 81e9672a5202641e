"""The paper exchange: a pure matching model over the quotes' depth.

It plays the exchange's part for the paper broker: it holds the account (wallet balance,
positions, resting orders), accepts or rejects orders with reasons, and fills them.

Taking liquidity. A market order, and a limit order that crosses the touch when placed or
when amended, walks the opposite side of the current quote (the touch, then the depth,
best first) with ``domain.quotes.walk_levels``, never past its limit price: one taker
fill per level, at that level's price, taker fee. The L2 slippage gate estimates with
the same walk, so for any size the visible book holds, paper's average price is the
gate's estimate. One fill per level, not one at the average: that is what an exchange
reports (one execution per level matched), every fill price stays on the tick grid, and
the order's average price and the P&L follow exactly from the fills.

What the visible book cannot give:
- a market order (or an IOC limit) keeps what it got and the rest is cancelled, as Bybit
  does with a market order (an IOC at a protected price): status PARTIALLY_FILLED then
  CANCELED with the filled quantity on the order, or CANCELED with nothing filled when
  the book has nothing left. This holds for reduce-only closes too (CLOSE, flatten): the
  caller sees how much was closed and what is still held. No price is invented beyond
  the last level (the gate assumes one more spread there; paper fills nothing);
- a limit order's remainder rests (GTC), as does a limit amended into the book (the taker
  style's chase): the chase's end cancels what is still resting.

Liquidity taken from a quote is gone for every later order on the same quote, taker or
maker, until a different quote arrives (``paper_liquidity.QuoteLiquidity``).

Resting orders fill at their limit price, maker fee, when a later quote crosses them, at
most what is left of the touch size on that quote (so partial fills happen).

Also:
- post-only orders that would cross on arrival are rejected, as on Bybit;
- reduce-only orders must reduce: they are clipped to the position and rejected when
  there is nothing to reduce;
- leverage above the instrument's maximum, or initial margin above the available
  balance, is rejected;
- a position's stop loss, touched by the mid price, closes it at market through the same
  walk; a position larger than the book is closed as far as the book goes, and the stop
  fires again on the next quote for the rest.

No I/O and no clock: the adapter passes ``now_ms`` and persists ``snapshot()``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from titan_trio.brokers.paper_liquidity import QuoteLiquidity
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import (
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
    market_close,
)
from titan_trio.domain.positions import Position
from titan_trio.domain.quotes import Quote, walk_levels
from titan_trio.errors import BrokerRejected

ZERO = Decimal(0)
HUNDRED = Decimal(100)


class PaperExchange:
    def __init__(
        self,
        instruments: dict[str, Instrument],
        balance: Decimal,
        maker_fee_pct: Decimal,
        taker_fee_pct: Decimal,
    ) -> None:
        self.instruments = instruments
        self.balance = balance  # wallet balance: deposits + realized P&L - fees
        self.maker_fee_pct = maker_fee_pct
        self.taker_fee_pct = taker_fee_pct
        self.orders: dict[str, Order] = {}  # every order this run has seen, by client id
        self.positions: dict[str, Position] = {}
        self.exec_seq = 0
        self.order_seq = 0
        # Position-level stop losses (Bybit's trading-stop): triggered on the mid price,
        # they close the whole position at market. Cleared when the position is flat.
        self.stop_losses: dict[str, Decimal] = {}
        # Orders the exchange cancelled on its own (reduce-only orders left with nothing
        # to reduce when a position went flat), for the adapter to report.
        self.auto_canceled: list[Order] = []
        self.liquidity = QuoteLiquidity()  # a level's size is taken once per quote

    # ----- account -------------------------------------------------------------------

    def unrealized_pnl(self, marks: dict[str, Decimal]) -> Decimal:
        total = ZERO
        for symbol, pos in self.positions.items():
            mark = marks.get(symbol)
            if mark is not None and not pos.is_flat:
                total += pos.unrealized_pnl(mark)
        return total

    def equity(self, marks: dict[str, Decimal]) -> Decimal:
        return self.balance + self.unrealized_pnl(marks)

    def used_margin(self, marks: dict[str, Decimal]) -> Decimal:
        used = ZERO
        for symbol, pos in self.positions.items():
            if not pos.is_flat:
                mark = marks.get(symbol, pos.entry_price)
                used += pos.notional(mark) / pos.leverage
        for order in self.open_orders():
            if not order.reduce_only and order.price is not None:
                used += order.remaining_qty * order.price / order.leverage
        return used

    def open_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if o.status.is_open]

    # ----- orders --------------------------------------------------------------------

    def place(
        self, req: OrderRequest, quote: Quote | None, now_ms: int
    ) -> tuple[Order, list[Fill]]:
        """Accept (and maybe fill) an order, or raise BrokerRejected with the reason."""
        if req.client_order_id in self.orders:
            raise BrokerRejected(
                "DUPLICATE_ORDER_ID", f"order id {req.client_order_id} was already used"
            )
        inst = self.instruments.get(req.symbol)
        if inst is None:
            raise BrokerRejected("UNKNOWN_SYMBOL", f"symbol {req.symbol} is not traded")
        if quote is None:
            raise BrokerRejected("NO_MARKET", f"no price for {req.symbol} yet")
        if req.leverage <= 0 or req.leverage > inst.max_leverage:
            raise BrokerRejected(
                "LEVERAGE_TOO_HIGH",
                f"leverage {req.leverage} is outside 0..{inst.max_leverage} for {req.symbol}",
            )
        if req.order_type is OrderType.LIMIT:
            if req.price is None or req.price <= 0:
                raise BrokerRejected("INVALID_PRICE", "a limit order needs a positive price")
            if not inst.is_on_tick(req.price):
                raise BrokerRejected(
                    "INVALID_PRICE", f"price {req.price} is not a multiple of {inst.tick_size}"
                )
        qty = req.qty
        position = self.positions.get(req.symbol)
        if req.reduce_only:
            if position is None or position.is_flat or position.side is req.side:
                raise BrokerRejected(
                    "REDUCE_ONLY_WOULD_NOT_REDUCE", f"no {req.side.opposite} position to reduce"
                )
            qty = min(qty, position.abs_size)
        ref_price = req.price if req.price is not None else quote.mid
        if not req.reduce_only:
            problem = inst.size_problem(qty, ref_price)
            if problem is not None:
                raise BrokerRejected("INVALID_QTY", problem)
        elif not inst.is_on_step(qty) or qty <= 0:
            raise BrokerRejected("INVALID_QTY", f"quantity {qty} is not a multiple of the step")
        crosses = self._crosses(req.side, req.price, quote) if req.price is not None else True
        if req.time_in_force is TimeInForce.POST_ONLY and crosses:
            raise BrokerRejected(
                "POST_ONLY_WOULD_CROSS",
                f"post-only {req.side} at {req.price} would cross the book "
                f"({quote.bid}/{quote.ask})",
            )
        if not req.reduce_only:
            marks = {quote.symbol: quote.mid}
            margin = qty * ref_price / req.leverage
            available = self.equity(marks) - self.used_margin(marks)
            if margin > available:
                raise BrokerRejected(
                    "INSUFFICIENT_BALANCE",
                    f"initial margin {margin:.2f} exceeds available balance {available:.2f}",
                )
        self.order_seq += 1
        order = Order(
            client_order_id=req.client_order_id,
            symbol=req.symbol,
            side=req.side,
            order_type=req.order_type,
            qty=qty,
            price=req.price,
            time_in_force=req.time_in_force,
            reduce_only=req.reduce_only,
            leverage=req.leverage,
            signal_id=req.signal_id,
            exchange_order_id=f"paper-{self.order_seq}",
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        order.transition(OrderStatus.SUBMITTED, now_ms)
        order.transition(OrderStatus.ACCEPTED, now_ms)
        self.orders[order.client_order_id] = order
        fills: list[Fill] = []
        if crosses:
            fills += self._take(order, quote, now_ms)
        if order.time_in_force is TimeInForce.IOC or order.order_type is OrderType.MARKET:
            if order.status.is_open:
                order.transition(OrderStatus.CANCELED, now_ms)
        return order, fills

    def _open_order(self, client_order_id: str) -> Order:
        order = self.orders.get(client_order_id)
        if order is None:
            raise BrokerRejected("ORDER_NOT_FOUND", f"no order {client_order_id}")
        if not order.status.is_open:
            raise BrokerRejected(
                "ORDER_NOT_OPEN", f"order {client_order_id} is already {order.status}"
            )
        return order

    def cancel(self, client_order_id: str, now_ms: int) -> Order:
        order = self._open_order(client_order_id)
        order.transition(OrderStatus.CANCELED, now_ms)
        return order

    def amend(
        self, client_order_id: str, price: Decimal, quote: Quote | None, now_ms: int
    ) -> tuple[Order, list[Fill]]:
        """Re-price a resting limit order (as Bybit's order/amend). A post-only order that
        would cross is refused; any other order that now crosses takes what the book offers
        up to its new price, as taker, and the rest keeps resting."""
        order = self._open_order(client_order_id)
        if order.order_type is not OrderType.LIMIT:
            raise BrokerRejected("INVALID_PRICE", "only limit orders can be re-priced")
        inst = self.instruments[order.symbol]
        if price <= 0 or not inst.is_on_tick(price):
            raise BrokerRejected(
                "INVALID_PRICE", f"price {price} is not a positive multiple of {inst.tick_size}"
            )
        if quote is None:
            raise BrokerRejected("NO_MARKET", f"no price for {order.symbol} yet")
        crosses = self._crosses(order.side, price, quote)
        if order.time_in_force is TimeInForce.POST_ONLY and crosses:
            raise BrokerRejected(
                "POST_ONLY_WOULD_CROSS",
                f"post-only {order.side} at {price} would cross the book ({quote.bid}/{quote.ask})",
            )
        order.price = price
        order.updated_ms = now_ms
        fills = self._take(order, quote, now_ms) if crosses else []
        return order, fills

    def on_quote(self, quote: Quote, now_ms: int) -> tuple[list[Fill], list[Order]]:
        """Fill resting orders that this quote crosses, at most what is left of the touch
        size. Returns the fills and the orders cancelled because, reduce-only, they can no
        longer reduce anything."""
        fills: list[Fill] = []
        canceled: list[Order] = []
        resting = [o for o in self.open_orders() if o.symbol == quote.symbol]
        # Best-priced first, then oldest: price-time priority within our own orders.
        resting.sort(key=lambda o: (-(o.price or ZERO) * o.side.sign, o.created_ms))
        for order in resting:
            if not order.status.is_open:
                continue  # cancelled by an earlier fill in this loop (position went flat)
            if order.price is None or not self._crosses(order.side, order.price, quote):
                continue
            inst = self.instruments[order.symbol]
            _, touch_left = self.liquidity.offered(quote, order.side, inst)[0]
            qty = inst.floor_qty(
                self._clip_reduce_only(order, min(order.remaining_qty, touch_left))
            )
            if qty <= 0:
                if order.reduce_only and self._reducible(order) <= 0:
                    order.transition(OrderStatus.CANCELED, now_ms)
                    canceled.append(order)
                continue
            self.liquidity.take(quote, order.side, 0, qty)
            fills.append(self._execute(order, qty, order.price, maker=True, now_ms=now_ms))
        return fills, canceled

    # ----- internals -----------------------------------------------------------------

    @staticmethod
    def _crosses(side: Side, price: Decimal | None, quote: Quote) -> bool:
        if price is None:
            return True
        return price >= quote.ask if side is Side.BUY else price <= quote.bid

    def _reducible(self, order: Order) -> Decimal:
        pos = self.positions.get(order.symbol)
        if pos is None or pos.is_flat or pos.side is order.side:
            return ZERO
        return pos.abs_size

    def _clip_reduce_only(self, order: Order, qty: Decimal) -> Decimal:
        return min(qty, self._reducible(order)) if order.reduce_only else qty

    def _take(self, order: Order, quote: Quote, now_ms: int) -> list[Fill]:
        """Fill as taker through the quote's levels up to the order's limit price, one
        fill per level at its price. The caller decides what becomes of the rest."""
        wanted = self._clip_reduce_only(order, order.remaining_qty)
        takes, _ = walk_levels(
            self.liquidity.offered(quote, order.side, self.instruments[order.symbol]),
            wanted,
            buying=order.side is Side.BUY,
            limit=order.price,
        )
        fills = []
        for take in takes:
            self.liquidity.take(quote, order.side, take.level, take.qty)
            fills.append(self._execute(order, take.qty, take.price, maker=False, now_ms=now_ms))
        return fills

    def _execute(
        self, order: Order, qty: Decimal, price: Decimal, *, maker: bool, now_ms: int
    ) -> Fill:
        fee_pct = self.maker_fee_pct if maker else self.taker_fee_pct
        fee = qty * price * fee_pct / HUNDRED
        order.apply_fill(qty, price, now_ms)
        pos = self.positions.setdefault(order.symbol, Position(order.symbol))
        if pos.is_flat:
            pos.leverage = order.leverage
        effect = pos.apply_fill(order.side, qty, price, fee, now_ms)
        self.balance += effect.realized_pnl - fee
        if pos.is_flat:
            del self.positions[order.symbol]
            self._position_closed(order.symbol, order, now_ms)
        self.exec_seq += 1
        return Fill(
            exec_id=f"paper-exec-{self.exec_seq}",
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            fee=fee,
            is_maker=maker,
            ts_ms=now_ms,
            realized_pnl=effect.realized_pnl,
        )

    def _position_closed(self, symbol: str, closing: Order, now_ms: int) -> None:
        """A flat position keeps no stop and no reduce-only orders (as on Bybit)."""
        self.stop_losses.pop(symbol, None)
        for other in self.open_orders():
            if other.symbol == symbol and other.reduce_only and other is not closing:
                other.transition(OrderStatus.CANCELED, now_ms)
                self.auto_canceled.append(other)

    def set_stop_loss(self, symbol: str, stop_loss: Decimal | None, quote: Quote | None) -> None:
        """Set (or clear, with None) the position's stop loss."""
        pos = self.positions.get(symbol)
        if pos is None or pos.is_flat:
            raise BrokerRejected("NO_POSITION", f"no {symbol} position to protect")
        if stop_loss is None:
            self.stop_losses.pop(symbol, None)
            return
        inst = self.instruments[symbol]
        if stop_loss <= 0 or not inst.is_on_tick(stop_loss):
            raise BrokerRejected(
                "INVALID_PRICE", f"stop {stop_loss} is not a positive multiple of {inst.tick_size}"
            )
        if quote is not None:
            wrong = stop_loss >= quote.mid if pos.size > 0 else stop_loss <= quote.mid
            if wrong:
                raise BrokerRejected(
                    "INVALID_PRICE",
                    f"stop {stop_loss} is on the wrong side of the market ({quote.mid})",
                )
        self.stop_losses[symbol] = stop_loss

    def check_stops(self, quote: Quote, now_ms: int) -> tuple[Order, list[Fill]] | None:
        """Close the position at market if its stop loss is touched by the mid price, as
        far as the book goes (the rest of the order is cancelled; the stop stays and fires
        again on a later quote). Nothing happens while this quote has nothing left to
        close into."""
        stop = self.stop_losses.get(quote.symbol)
        pos = self.positions.get(quote.symbol)
        if stop is None or pos is None or pos.is_flat:
            return None
        side = pos.side
        assert side is not None
        if (quote.mid > stop) if side is Side.BUY else (quote.mid < stop):
            return None
        offered = self.liquidity.offered(quote, side.opposite, self.instruments[quote.symbol])
        if all(size <= 0 for _, size in offered):
            return None
        self.order_seq += 1
        order = market_close(
            f"paper-sl-{self.order_seq}",
            quote.symbol,
            side.opposite,
            pos.abs_size,
            pos.leverage,
            now_ms,
            f"stop loss {stop}",
        )
        order.exchange_order_id = f"paper-{self.order_seq}"
        order.transition(OrderStatus.SUBMITTED, now_ms)
        order.transition(OrderStatus.ACCEPTED, now_ms)
        self.orders[order.client_order_id] = order
        fills = self._take(order, quote, now_ms)
        if order.status.is_open:
            order.transition(OrderStatus.CANCELED, now_ms)
        return order, fills

    # ----- persistence ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able snapshot of the account: balance, positions, stops, sequences.
        Orders are not in it: each is saved on its own (the adapter's paper_orders table),
        so a save costs the same with one resting order or ten thousand."""
        return {
            "balance": str(self.balance),
            "exec_seq": self.exec_seq,
            "order_seq": self.order_seq,
            "positions": [
                {
                    "symbol": p.symbol,
                    "size": str(p.size),
                    "entry_price": str(p.entry_price),
                    "realized_pnl": str(p.realized_pnl),
                    "fees": str(p.fees),
                    "opened_ms": p.opened_ms,
                    "leverage": str(p.leverage),
                }
                for p in self.positions.values()
            ],
            "stop_losses": {k: str(v) for k, v in self.stop_losses.items()},
        }

    def restore(self, snap: dict[str, Any], open_orders: list[dict[str, Any]]) -> None:
        self.balance = Decimal(snap["balance"])
        self.exec_seq = int(snap["exec_seq"])
        self.order_seq = int(snap["order_seq"])
        self.positions = {
            p["symbol"]: Position(
                symbol=p["symbol"],
                size=Decimal(p["size"]),
                entry_price=Decimal(p["entry_price"]),
                realized_pnl=Decimal(p["realized_pnl"]),
                fees=Decimal(p["fees"]),
                opened_ms=int(p["opened_ms"]),
                leverage=Decimal(p["leverage"]),
            )
            for p in snap["positions"]
        }
        self.orders = {o["client_order_id"]: order_from_json(o) for o in open_orders}
        self.stop_losses = {k: Decimal(v) for k, v in snap.get("stop_losses", {}).items()}
        self.liquidity.forget()


def order_to_json(o: Order) -> dict[str, Any]:
    return {
        "client_order_id": o.client_order_id,
        "symbol": o.symbol,
        "side": o.side.value,
        "order_type": o.order_type.value,
        "qty": str(o.qty),
        "price": None if o.price is None else str(o.price),
        "time_in_force": o.time_in_force.value,
        "reduce_only": o.reduce_only,
        "leverage": str(o.leverage),
        "signal_id": o.signal_id,
        "status": o.status.value,
        "exchange_order_id": o.exchange_order_id,
        "filled_qty": str(o.filled_qty),
        "avg_fill_price": None if o.avg_fill_price is None else str(o.avg_fill_price),
        "created_ms": o.created_ms,
        "updated_ms": o.updated_ms,
        "close_reason": o.close_reason,
    }


def order_from_json(d: dict[str, Any]) -> Order:
    return Order(
        client_order_id=d["client_order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        order_type=OrderType(d["order_type"]),
        qty=Decimal(d["qty"]),
        price=None if d["price"] is None else Decimal(d["price"]),
        time_in_force=TimeInForce(d["time_in_force"]),
        reduce_only=bool(d["reduce_only"]),
        leverage=Decimal(d["leverage"]),
        signal_id=d["signal_id"],
        status=OrderStatus(d["status"]),
        exchange_order_id=d["exchange_order_id"],
        filled_qty=Decimal(d["filled_qty"]),
        avg_fill_price=None if d["avg_fill_price"] is None else Decimal(d["avg_fill_price"]),
        created_ms=int(d["created_ms"]),
        updated_ms=int(d["updated_ms"]),
        close_reason=d.get("close_reason"),
    )


def fill_to_json(f: Fill) -> dict[str, Any]:
    return {
        "exec_id": f.exec_id,
        "client_order_id": f.client_order_id,
        "symbol": f.symbol,
        "side": f.side.value,
        "qty": str(f.qty),
        "price": str(f.price),
        "fee": str(f.fee),
        "is_maker": f.is_maker,
        "ts_ms": f.ts_ms,
        "realized_pnl": str(f.realized_pnl),
    }


def fill_from_json(d: dict[str, Any]) -> Fill:
    return Fill(
        exec_id=d["exec_id"],
        client_order_id=d["client_order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        qty=Decimal(d["qty"]),
        price=Decimal(d["price"]),
        fee=Decimal(d["fee"]),
        is_maker=bool(d["is_maker"]),
        ts_ms=int(d["ts_ms"]),
        realized_pnl=Decimal(d["realized_pnl"]),
    )
