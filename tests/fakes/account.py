"""The fake's one trading account: orders and their matching against the quotes, with
Bybit v5's field names and refusal codes (positions and the wallet are in ledger.py).

Pure and synchronous (no trio, no I/O): every change also queues what the private
streams must say; the exchange takes those events after each operation (``take_events``).

Matching, as the brief and Bybit's documents describe it, and choices where they are
silent:
- Liquidity at the touch is unlimited: a Market order, and a marketable Limit, fill in
  full at once at the touch (buy at the ask, sell at the bid) as a taker. A resting Limit
  fills in full, as a maker at its own price, when a later quote crosses it (a buy when
  the ask comes down to it, a sell when the bid comes up to it).
- PostOnly that would take: accepted, then Cancelled with ``rejectReason``
  ``EC_PostOnlyWillTakeLiquidity``. IOC/FOK that cannot fill at once: Cancelled with
  ``EC_NoImmediateQtyToFill`` / ``EC_CancelForNoFullFill`` (never partial: the touch is
  unlimited). A user cancel: ``cancelType`` ``CancelByUser``, ``EC_PerCancelRequest``.
- Fees: taker 0.055 %, maker 0.02 % of the fill's value, rounded to 8 decimals.
- reduceOnly: refused with 110017 when there is no position or the order would add to
  it; a quantity larger than the position is cut down to it (Bybit does the same).
- takeProfit/stopLoss on an order are attached to the position when the order fills;
  a position's stop triggers when the mark reaches or crosses it and closes the position
  with a reduce-only Market order (``stopOrderType`` StopLoss/TakeProfit, ``createType``
  CreateByStopLoss/CreateByTakeProfit), after which both stops are cleared. The fake does
  not show the untriggered conditional orders Bybit keeps for position stops.
- A new order is refused for balance (110007) when the initial margin of what it opens
  (at the default leverage 10 unless set) plus its taker fee exceeds the available
  balance.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.fakes.ledger import Ledger, Position
from tests.fakes.market import Market, fmt
from tests.fakes.orders import (
    MAKER_FEE,
    TAKER_FEE,
    TIME_IN_FORCE,
    Execution,
    Order,
    Refusal,
    check_stops,
    decimal_param,
    money,
)


@dataclass
class Account:
    deposit: Decimal
    market: Market
    now_ms: Callable[[], int]
    ledger: Ledger = field(init=False)
    positions: dict[str, Position] = field(init=False)
    orders: dict[str, Order] = field(default_factory=dict)
    link_ids: dict[str, str] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    _order_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _dirty: dict[str, None] = field(default_factory=dict)
    _trades: list[tuple[str, Decimal, Decimal, bool]] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.deposit, self.market, self.now_ms)
        self.positions = self.ledger.positions

    # -- events ------------------------------------------------------------------------

    def take_events(self) -> tuple[list[tuple[str, list[dict[str, Any]]]], list[Any]]:
        """The private messages since the last call, one group per topic (order,
        execution, position, wallet), and the public trades."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for topic, item in self._order_events:
            groups.setdefault(topic, []).append(item)
        if self._dirty:
            groups["position"] = [self.position_view(s, stream=True) for s in self._dirty]
            groups["wallet"] = [self.wallet_view()]
        trades = self._trades
        self._order_events, self._dirty, self._trades = [], {}, []
        return list(groups.items()), trades

    def _order_changed(self, order: Order) -> None:
        order.updated_ms = self.now_ms()
        self._order_events.append(("order", {"category": "linear", **order.view()}))
        self._dirty[order.symbol] = None

    # -- orders --------------------------------------------------------------------------

    def create(self, params: dict[str, Any]) -> Order:
        symbol = self._symbol(params)
        side = params.get("side")
        order_type = params.get("orderType")
        if side not in ("Buy", "Sell"):
            raise Refusal(10001, "params error: side invalid")
        if order_type not in ("Limit", "Market"):
            raise Refusal(10001, "params error: orderType invalid")
        qty = decimal_param(params, "qty", required=True)
        price = decimal_param(params, "price", required=order_type == "Limit")
        tif = params.get("timeInForce") or ("IOC" if order_type == "Market" else "GTC")
        if tif not in TIME_IN_FORCE:
            raise Refusal(10001, "params error: timeInForce invalid")
        if order_type == "Market":
            tif, price = "IOC", None
        link_id = params.get("orderLinkId") or ""
        if not isinstance(link_id, str) or len(link_id) > 36:
            raise Refusal(10001, "params error: orderLinkId is longer than 36 characters")
        if link_id and link_id in self.link_ids:
            raise Refusal(110072, "OrderLinkedID is duplicate")
        if params.get("positionIdx", 0) not in (0, "0"):
            raise Refusal(10001, "position idx not match position mode")
        reduce_only = params.get("reduceOnly", False) in (True, "true", "True", 1)
        inst = self.market.instruments[symbol]
        quote = self.market.quotes[symbol]
        assert qty is not None
        if qty == 0 or qty % inst.step:
            raise Refusal(
                10001, f"params error: qty {fmt(qty)} is not a multiple of {fmt(inst.step)}"
            )
        if price is not None and (price == 0 or price % inst.tick):
            raise Refusal(
                10001, f"params error: price {fmt(price)} is not on the tick {fmt(inst.tick)}"
            )
        if qty < inst.min_qty:
            raise Refusal(10001, "The number of contracts exceeds minimum limit allowed")
        if qty > inst.max_qty:
            raise Refusal(10001, "The number of contracts exceeds maximum limit allowed")
        touch = quote.ask if side == "Buy" else quote.bid
        reference = price if price is not None else touch
        position = self.positions[symbol]
        if reduce_only:
            if position.size == 0:
                raise Refusal(110017, "current position is zero, cannot fix reduce-only order qty")
            if position.side == side:
                raise Refusal(110017, "Reduce-only rule not satisfied")
            qty = min(qty, abs(position.size))
        elif qty * reference < inst.min_notional:
            raise Refusal(
                110094, f"Order does not meet minimum order value {fmt(inst.min_notional)}USDT"
            )
        take_profit = self._stop_param(params, "takeProfit", inst.tick)
        stop_loss = self._stop_param(params, "stopLoss", inst.tick)
        check_stops(side, reference, take_profit, stop_loss)
        if not reduce_only:
            opening = (
                qty if position.side in ("", side) else max(Decimal(0), qty - abs(position.size))
            )
            needed = opening * reference / position.leverage + qty * reference * TAKER_FEE
            if needed > self.available():
                raise Refusal(110007, "ab not enough for new order")
        now = self.now_ms()
        order = Order(
            order_id=str(uuid.uuid4()),
            order_link_id=link_id,
            symbol=symbol,
            side=side,
            order_type=order_type,
            price=price if price is not None else Decimal(0),
            qty=qty,
            time_in_force=tif,
            reduce_only=reduce_only,
            take_profit=take_profit,
            stop_loss=stop_loss,
            created_ms=now,
            updated_ms=now,
        )
        self.orders[order.order_id] = order
        if link_id:
            self.link_ids[link_id] = order.order_id
        self._order_changed(order)
        self._match_new(order)
        return order

    def amend(self, params: dict[str, Any]) -> Order:
        order = self._find(params, "replace")
        if not order.is_open:
            raise Refusal(110008, "The order has been finished or cancelled")
        inst = self.market.instruments[order.symbol]
        qty = decimal_param(params, "qty")
        price = decimal_param(params, "price")
        if qty is None and price is None:
            raise Refusal(10001, "params error: nothing to amend (qty or price)")
        if qty is not None and (qty < inst.min_qty or qty % inst.step or qty <= order.cum_qty):
            raise Refusal(10001, f"params error: qty {fmt(qty)} invalid")
        if price is not None and (order.order_type == "Market" or price == 0 or price % inst.tick):
            raise Refusal(10001, f"params error: price {fmt(price)} invalid")
        if qty is not None:
            order.qty = qty
        if price is not None:
            order.price = price
        self._order_changed(order)
        self._match_new(order)
        return order

    def cancel(self, params: dict[str, Any]) -> Order:
        order = self._find(params, "cancel")
        if not order.is_open:
            raise Refusal(110008, "The order has been finished or cancelled")
        self._cancel(order, "CancelByUser", "EC_PerCancelRequest")
        return order

    def cancel_all(self, params: dict[str, Any]) -> list[Order]:
        symbol = params.get("symbol")
        settle = params.get("settleCoin")
        if not symbol and not settle and not params.get("baseCoin"):
            raise Refusal(10001, "params error: symbol, baseCoin or settleCoin is required")
        if settle and settle != "USDT":
            return []
        chosen = [
            o
            for o in self.orders.values()
            if o.is_open
            and (not symbol or o.symbol == symbol)
            and (not params.get("baseCoin") or o.symbol.removesuffix("USDT") == params["baseCoin"])
        ]
        for order in chosen:
            self._cancel(order, "CancelByUser", "EC_PerCancelRequest")
        return chosen

    def _find(self, params: dict[str, Any], verb: str) -> Order:
        self._symbol(params)
        order_id, link_id = params.get("orderId"), params.get("orderLinkId")
        if not order_id and not link_id:
            raise Refusal(10001, "params error: orderId or orderLinkId is required")
        order = self.orders.get(order_id) if order_id else None
        if order is None and link_id:
            order = self.orders.get(self.link_ids.get(link_id, ""))
        if order is None or order.symbol != params.get("symbol"):
            raise Refusal(110001, f"order not exists or too late to {verb}")
        return order

    def _symbol(self, params: dict[str, Any]) -> str:
        if params.get("category") != "linear":
            raise Refusal(10001, "params error: category only support linear")
        symbol = params.get("symbol")
        if symbol not in self.market.quotes:
            raise Refusal(10001, "params error: symbol invalid")
        return symbol

    def _stop_param(self, params: dict[str, Any], name: str, tick: Decimal) -> Decimal | None:
        value = decimal_param(params, name)
        if value is not None and value % tick:
            raise Refusal(10001, f"params error: {name} is not on the tick {fmt(tick)}")
        return value or None

    def _cancel(self, order: Order, cancel_type: str, reason: str) -> None:
        order.status = "Cancelled"
        order.cancel_type = cancel_type
        order.reject_reason = reason
        self._order_changed(order)

    # -- matching ------------------------------------------------------------------------

    def _match_new(self, order: Order) -> None:
        """A new (or amended) order against the current quote: take, rest or cancel."""
        quote = self.market.quotes[order.symbol]
        touch = quote.ask if order.side == "Buy" else quote.bid
        marketable = order.order_type == "Market" or (
            order.price >= touch if order.side == "Buy" else order.price <= touch
        )
        if not marketable:
            if order.time_in_force == "IOC":
                self._cancel(order, "UNKNOWN", "EC_NoImmediateQtyToFill")
            elif order.time_in_force == "FOK":
                self._cancel(order, "UNKNOWN", "EC_CancelForNoFullFill")
            return
        if order.time_in_force == "PostOnly":
            self._cancel(order, "UNKNOWN", "EC_PostOnlyWillTakeLiquidity")
            return
        self._fill_reducing(order, touch, maker=False)

    def on_quote(self, symbol: str) -> None:
        """A quote moved: fill the resting orders it crosses, then the stops it crosses."""
        quote = self.market.quotes[symbol]
        for order in [o for o in self.orders.values() if o.symbol == symbol and o.is_open]:
            crossed = quote.ask <= order.price if order.side == "Buy" else quote.bid >= order.price
            if crossed:
                self._fill_reducing(order, order.price, maker=True)
        position = self.positions[symbol]
        if position.size == 0:
            return
        mark = quote.mid
        long = position.size > 0
        if position.stop_loss and (
            mark <= position.stop_loss if long else mark >= position.stop_loss
        ):
            self._close_by_stop(position, "StopLoss", position.stop_loss)
        elif position.take_profit and (
            mark >= position.take_profit if long else mark <= position.take_profit
        ):
            self._close_by_stop(position, "TakeProfit", position.take_profit)

    def _close_by_stop(self, position: Position, kind: str, trigger: Decimal) -> None:
        now = self.now_ms()
        order = Order(
            order_id=str(uuid.uuid4()),
            order_link_id="",
            symbol=position.symbol,
            side="Sell" if position.size > 0 else "Buy",
            order_type="Market",
            price=Decimal(0),
            qty=abs(position.size),
            time_in_force="IOC",
            reduce_only=True,
            take_profit=None,
            stop_loss=None,
            created_ms=now,
            updated_ms=now,
            stop_order_type=kind,
            create_type=f"CreateBy{kind}",
            trigger_price=trigger,
        )
        self.orders[order.order_id] = order
        quote = self.market.quotes[position.symbol]
        self._fill(order, order.qty, quote.bid if order.side == "Sell" else quote.ask, maker=False)

    def _fill_reducing(self, order: Order, price: Decimal, maker: bool) -> None:
        """Fill what is left; a reduce-only order only up to the position it reduces."""
        qty = order.leaves
        if order.reduce_only:
            position = self.positions[order.symbol]
            if position.side in ("", order.side):
                self._cancel(order, "CancelByReduceOnly", "EC_ReduceOnlySetButNotReduce")
                return
            qty = min(qty, abs(position.size))
        self._fill(order, qty, price, maker)
        if order.is_open:  # reduce-only remainder beyond the position
            self._cancel(order, "CancelByReduceOnly", "EC_ReduceOnlySetButNotReduce")

    def _fill(self, order: Order, qty: Decimal, price: Decimal, maker: bool) -> None:
        rate = MAKER_FEE if maker else TAKER_FEE
        value = qty * price
        fee = money(value * rate)
        fill = self.ledger.apply_fill(order.symbol, order.side, qty, price, fee)
        position = self.ledger.positions[order.symbol]
        if not order.reduce_only and position.size:
            position.take_profit = order.take_profit or position.take_profit
            position.stop_loss = order.stop_loss or position.stop_loss
        order.cum_qty += qty
        order.cum_value += value
        order.cum_fee += fee
        if order.cum_qty >= order.qty:
            order.status = "Filled"
        else:
            order.status = "PartiallyFilled"
        self._record_execution(order, qty, price, fee, rate, maker, fill.closed)
        self._order_changed(order)
        self._trades.append((order.symbol, price, qty, (order.side == "Buy") == maker))

    def _record_execution(
        self,
        order: Order,
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
        rate: Decimal,
        maker: bool,
        closed: Decimal,
    ) -> None:
        now = self.now_ms()
        self._seq += 1
        mark = fmt(self.market.quotes[order.symbol].mid)
        doc = {
            "symbol": order.symbol,
            "orderId": order.order_id,
            "orderLinkId": order.order_link_id,
            "side": order.side,
            "orderPrice": fmt(order.price),
            "orderQty": fmt(order.qty),
            "leavesQty": fmt(order.leaves),
            "createType": order.create_type,
            "orderType": order.order_type,
            "stopOrderType": order.stop_order_type,
            "execFee": fmt(fee),
            "execId": str(uuid.uuid4()),
            "execPrice": fmt(price),
            "execQty": fmt(qty),
            "execType": "Trade",
            "execValue": fmt(money(qty * price)),
            "execTime": str(now),
            "feeCurrency": "USDT",
            "isMaker": maker,
            "feeRate": fmt(rate),
            "tradeIv": "",
            "markIv": "",
            "markPrice": mark,
            "indexPrice": mark,
            "underlyingPrice": "",
            "blockTradeId": "",
            "closedSize": fmt(closed),
            "seq": self._seq,
        }
        self.executions.append(
            Execution(doc, now, order.symbol, order.order_id, order.order_link_id)
        )
        self._order_events.append(("execution", {"category": "linear", **doc}))

    # -- positions and wallet ------------------------------------------------------------

    def set_leverage(self, params: dict[str, Any]) -> None:
        symbol = self._symbol(params)
        self.ledger.set_leverage(symbol, params)
        self._dirty[symbol] = None

    def trading_stop(self, params: dict[str, Any]) -> None:
        symbol = self._symbol(params)
        self.ledger.trading_stop(symbol, params)
        self._dirty[symbol] = None

    def _order_im(self) -> Decimal:
        total = Decimal(0)
        for order in self.orders.values():
            if order.is_open and not order.reduce_only:
                total += order.leaves * order.price / self.positions[order.symbol].leverage
        return money(total)

    def available(self) -> Decimal:
        return self.ledger.available(self._order_im())

    def position_view(self, symbol: str, stream: bool = False) -> dict[str, Any]:
        return self.ledger.position_view(symbol, stream)

    def wallet_view(self) -> dict[str, Any]:
        return self.ledger.wallet_view(self._order_im())

    def describe(self) -> dict[str, Any]:
        """The account for FakeExchange.state(): every order (with its status)."""
        return {
            "orders": [order.view() for order in self.orders.values()],
            "positions": {s: self.position_view(s) for s, p in self.positions.items() if p.size},
            "wallet": self.wallet_view(),
            "executions": [execution.doc for execution in self.executions],
        }
