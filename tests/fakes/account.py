"""The fake's one trading account: orders, matching against the quotes, one-way
positions, fees and the unified wallet, with Bybit v5's field names and refusal codes.

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
- Fees: taker 0.055 %, maker 0.02 % of the fill's value, rounded to 8 decimals. The
  wallet balance is the deposit plus realised P&L minus fees; equity adds unrealised P&L
  at the mark (the mid); available is equity minus position and order initial margin.
- reduceOnly: refused with 110017 when there is no position or the order would add to
  it; a quantity larger than the position is cut down to it (Bybit does the same).
- takeProfit/stopLoss on an order are attached to the position when the order fills;
  a position's stop triggers when the mark crosses it and closes the whole position
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
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from tests.fakes.market import Market, fmt

TAKER_FEE = Decimal("0.00055")
MAKER_FEE = Decimal("0.0002")
DEFAULT_LEVERAGE = Decimal("10")
MONEY = Decimal("0.00000001")
OPEN = ("New", "PartiallyFilled", "Untriggered")
TIME_IN_FORCE = ("GTC", "IOC", "FOK", "PostOnly")


class Refusal(Exception):
    """A Bybit retCode refusal: nothing was done."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


def money(value: Decimal) -> Decimal:
    return value.quantize(MONEY, rounding=ROUND_HALF_UP)


def decimal_param(params: dict[str, Any], name: str, required: bool = False) -> Decimal | None:
    """A decimal string parameter (numbers are tolerated); 10001 when malformed."""
    value = params.get(name)
    if value is None or value == "":
        if required:
            raise Refusal(10001, f"params error: {name} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Refusal(10001, f"params error: {name} must be a decimal string")
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise Refusal(10001, f"params error: {name} invalid") from exc
    if not number.is_finite() or number < 0:
        raise Refusal(10001, f"params error: {name} invalid")
    return number


@dataclass
class Order:
    order_id: str
    order_link_id: str
    symbol: str
    side: str
    order_type: str
    price: Decimal
    qty: Decimal
    time_in_force: str
    reduce_only: bool
    take_profit: Decimal | None
    stop_loss: Decimal | None
    created_ms: int
    updated_ms: int
    status: str = "New"
    cum_qty: Decimal = Decimal(0)
    cum_value: Decimal = Decimal(0)
    cum_fee: Decimal = Decimal(0)
    reject_reason: str = "EC_NoError"
    cancel_type: str = "UNKNOWN"
    stop_order_type: str = ""
    create_type: str = "CreateByUser"
    trigger_price: Decimal | None = None

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    @property
    def leaves(self) -> Decimal:
        return self.qty - self.cum_qty if self.is_open else Decimal(0)

    def view(self) -> dict[str, Any]:
        """An item of /v5/order/realtime (and of the ``order`` stream)."""
        avg = fmt(money(self.cum_value / self.cum_qty)) if self.cum_qty else ""
        return {
            "orderId": self.order_id,
            "orderLinkId": self.order_link_id,
            "blockTradeId": "",
            "symbol": self.symbol,
            "price": fmt(self.price),
            "qty": fmt(self.qty),
            "side": self.side,
            "isLeverage": "",
            "positionIdx": 0,
            "orderStatus": self.status,
            "createType": self.create_type,
            "cancelType": self.cancel_type,
            "rejectReason": self.reject_reason,
            "avgPrice": avg,
            "leavesQty": fmt(self.leaves),
            "leavesValue": fmt(money(self.leaves * self.price)),
            "cumExecQty": fmt(self.cum_qty),
            "cumExecValue": fmt(money(self.cum_value)),
            "cumExecFee": fmt(self.cum_fee),
            "timeInForce": self.time_in_force,
            "orderType": self.order_type,
            "stopOrderType": self.stop_order_type,
            "orderIv": "",
            "triggerPrice": fmt(self.trigger_price or Decimal(0)),
            "takeProfit": fmt(self.take_profit or Decimal(0)),
            "stopLoss": fmt(self.stop_loss or Decimal(0)),
            "tpslMode": "Full" if self.take_profit or self.stop_loss else "",
            "tpTriggerBy": "MarkPrice" if self.take_profit else "",
            "slTriggerBy": "MarkPrice" if self.stop_loss else "",
            "triggerDirection": 0,
            "triggerBy": "",
            "reduceOnly": self.reduce_only,
            "closeOnTrigger": self.create_type != "CreateByUser",
            "smpType": "None",
            "smpGroup": 0,
            "smpOrderId": "",
            "createdTime": str(self.created_ms),
            "updatedTime": str(self.updated_ms),
        }


@dataclass
class Position:
    symbol: str
    size: Decimal = Decimal(0)  # signed: > 0 long, < 0 short
    avg_price: Decimal = Decimal(0)
    leverage: Decimal = DEFAULT_LEVERAGE
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None
    cum_realised: Decimal = Decimal(0)
    cur_realised: Decimal = Decimal(0)
    created_ms: int = 0
    updated_ms: int = 0
    seq: int = 0

    @property
    def side(self) -> str:
        return "Buy" if self.size > 0 else "Sell" if self.size < 0 else ""


@dataclass
class Execution:
    doc: dict[str, Any]
    exec_time: int
    symbol: str
    order_id: str
    order_link_id: str


@dataclass
class Account:
    deposit: Decimal
    market: Market
    now_ms: Callable[[], int]
    wallet_balance: Decimal = field(init=False)
    orders: dict[str, Order] = field(default_factory=dict)
    link_ids: dict[str, str] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    _order_events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _dirty: dict[str, None] = field(default_factory=dict)
    _trades: list[tuple[str, Decimal, Decimal, bool]] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.wallet_balance = self.deposit
        for symbol in self.market.quotes:
            self.positions[symbol] = Position(symbol)

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
        _check_stops(side, reference, take_profit, stop_loss)
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
        position = self.positions[order.symbol]
        signed = qty if order.side == "Buy" else -qty
        realised = Decimal(0)
        closed = Decimal(0)
        if position.size and (position.size > 0) != (signed > 0):
            direction = 1 if position.size > 0 else -1
            closed = min(qty, abs(position.size))
            realised = money(closed * (price - position.avg_price) * direction)
            position.size -= direction * closed
            rest = qty - closed
            if position.size == 0:
                position.avg_price = Decimal(0)
                position.take_profit = position.stop_loss = None
            if rest:
                position.size = rest if signed > 0 else -rest
                position.avg_price = price
                position.created_ms = self.now_ms()
        else:
            if position.size == 0:
                position.created_ms = self.now_ms()
                position.cur_realised = Decimal(0)
            new_size = position.size + signed
            position.avg_price = money(
                (abs(position.size) * position.avg_price + value) / abs(new_size)
            )
            position.size = new_size
        position.cum_realised += realised - fee
        position.cur_realised += realised - fee
        position.updated_ms = self.now_ms()
        self.wallet_balance += realised - fee
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
        self._record_execution(order, qty, price, fee, rate, maker, closed)
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

    # -- positions and wallet ----------------------------------------------------------------

    def set_leverage(self, params: dict[str, Any]) -> None:
        symbol = self._symbol(params)
        buy = decimal_param(params, "buyLeverage", required=True)
        sell = decimal_param(params, "sellLeverage", required=True)
        if buy != sell:
            raise Refusal(
                10001, "params error: buyLeverage must equal sellLeverage in one-way mode"
            )
        assert buy is not None
        if not 1 <= buy <= self.market.instruments[symbol].max_leverage:
            raise Refusal(10001, f"params error: leverage {fmt(buy)} out of range")
        position = self.positions[symbol]
        if buy == position.leverage:
            raise Refusal(110043, "Set leverage not modified")
        position.leverage = buy
        self._dirty[symbol] = None

    def trading_stop(self, params: dict[str, Any]) -> None:
        symbol = self._symbol(params)
        if params.get("positionIdx", 0) not in (0, "0"):
            raise Refusal(10001, "position idx not match position mode")
        position = self.positions[symbol]
        tick = self.market.instruments[symbol].tick
        take_profit = decimal_param(params, "takeProfit")
        stop_loss = decimal_param(params, "stopLoss")
        if take_profit is None and stop_loss is None:
            raise Refusal(10001, "params error: takeProfit or stopLoss is required")
        if position.size == 0:
            raise Refusal(10001, "can not set tp/sl/ts for zero position")
        for name, value in (("takeProfit", take_profit), ("stopLoss", stop_loss)):
            if value and value % tick:
                raise Refusal(10001, f"params error: {name} is not on the tick {fmt(tick)}")
        _check_stops(position.side, self.market.quotes[symbol].mid, take_profit, stop_loss)
        if take_profit is not None:
            position.take_profit = take_profit or None
        if stop_loss is not None:
            position.stop_loss = stop_loss or None
        position.updated_ms = self.now_ms()
        self._dirty[symbol] = None

    def _unrealised(self, position: Position) -> Decimal:
        mark = self.market.quotes[position.symbol].mid
        return money(position.size * (mark - position.avg_price))

    def _position_im(self, position: Position) -> Decimal:
        return money(abs(position.size) * position.avg_price / position.leverage)

    def _order_im(self) -> Decimal:
        total = Decimal(0)
        for order in self.orders.values():
            if order.is_open and not order.reduce_only:
                leverage = self.positions[order.symbol].leverage
                total += order.leaves * order.price / leverage
        return money(total)

    def available(self) -> Decimal:
        unrealised = sum((self._unrealised(p) for p in self.positions.values()), Decimal(0))
        position_im = sum((self._position_im(p) for p in self.positions.values()), Decimal(0))
        return max(Decimal(0), self.wallet_balance + unrealised - position_im - self._order_im())

    def position_view(self, symbol: str, stream: bool = False) -> dict[str, Any]:
        """An item of /v5/position/list, or of the ``position`` stream (which names the
        average entry ``entryPrice`` where the REST list says ``avgPrice``)."""
        position = self.positions[symbol]
        position.seq += 1
        view: dict[str, Any] = {
            "positionIdx": 0,
            "riskId": 1,
            "riskLimitValue": "2000000",
            "symbol": symbol,
            "side": position.side,
            "size": fmt(abs(position.size)),
            "avgPrice": fmt(position.avg_price),
            "positionValue": fmt(money(abs(position.size) * position.avg_price)),
            "tradeMode": 0,
            "autoAddMargin": 0,
            "positionStatus": "Normal",
            "leverage": fmt(position.leverage),
            "markPrice": fmt(self.market.quotes[symbol].mid),
            "liqPrice": "",
            "bustPrice": "",
            "positionIM": fmt(self._position_im(position)),
            "positionMM": fmt(money(self._position_im(position) / 20)),
            "positionBalance": fmt(self._position_im(position)),
            "takeProfit": fmt(position.take_profit or Decimal(0)),
            "stopLoss": fmt(position.stop_loss or Decimal(0)),
            "trailingStop": "0",
            "sessionAvgPrice": "",
            "unrealisedPnl": fmt(self._unrealised(position)),
            "curRealisedPnl": fmt(position.cur_realised),
            "cumRealisedPnl": fmt(position.cum_realised),
            "adlRankIndicator": 2 if position.size else 0,
            "isReduceOnly": False,
            "mmrSysUpdatedTime": "",
            "leverageSysUpdatedTime": "",
            "tpslMode": "Full",
            "createdTime": str(position.created_ms),
            "updatedTime": str(position.updated_ms),
            "seq": position.seq,
        }
        if stream:
            view["entryPrice"] = view.pop("avgPrice")
            view["category"] = "linear"
        return view

    def wallet_view(self) -> dict[str, Any]:
        """list[0] of /v5/account/wallet-balance (accountType UNIFIED), and the
        ``wallet`` stream's item."""
        unrealised = sum((self._unrealised(p) for p in self.positions.values()), Decimal(0))
        position_im = sum((self._position_im(p) for p in self.positions.values()), Decimal(0))
        order_im = self._order_im()
        equity = self.wallet_balance + unrealised
        available = self.available()
        cum_realised = sum((p.cum_realised for p in self.positions.values()), Decimal(0))
        return {
            "accountType": "UNIFIED",
            "accountIMRate": fmt(money(position_im / equity)) if equity > 0 else "0",
            "accountMMRate": fmt(money(position_im / 20 / equity)) if equity > 0 else "0",
            "accountLTV": "0",
            "totalEquity": fmt(equity),
            "totalWalletBalance": fmt(self.wallet_balance),
            "totalMarginBalance": fmt(equity),
            "totalAvailableBalance": fmt(available),
            "totalPerpUPL": fmt(unrealised),
            "totalInitialMargin": fmt(position_im + order_im),
            "totalMaintenanceMargin": fmt(money(position_im / 20)),
            "coin": [
                {
                    "coin": "USDT",
                    "equity": fmt(equity),
                    "usdValue": fmt(equity),
                    "walletBalance": fmt(self.wallet_balance),
                    "free": "",
                    "locked": "0",
                    "availableToWithdraw": fmt(available),
                    "availableToBorrow": "",
                    "borrowAmount": "0",
                    "accruedInterest": "0",
                    "totalOrderIM": fmt(order_im),
                    "totalPositionIM": fmt(position_im),
                    "totalPositionMM": fmt(money(position_im / 20)),
                    "unrealisedPnl": fmt(unrealised),
                    "cumRealisedPnl": fmt(cum_realised),
                    "bonus": "0",
                    "collateralSwitch": True,
                    "marginCollateral": True,
                }
            ],
        }

    def describe(self) -> dict[str, Any]:
        """The account for FakeExchange.state(): every order (with its status)."""
        return {
            "orders": [order.view() for order in self.orders.values()],
            "positions": {s: self.position_view(s) for s, p in self.positions.items() if p.size},
            "wallet": self.wallet_view(),
            "executions": [execution.doc for execution in self.executions],
        }


def _check_stops(
    side: str, reference: Decimal, take_profit: Decimal | None, stop_loss: Decimal | None
) -> None:
    """Bybit refuses (10001) a take-profit or a stop-loss on the wrong side of the price."""
    base = fmt(reference)
    if side == "Buy":
        if take_profit and take_profit <= reference:
            detail = f"TakeProfit:{fmt(take_profit)} set for Buy position should be higher"
            raise Refusal(10001, f"{detail} than base_price:{base}")
        if stop_loss and stop_loss >= reference:
            detail = f"StopLoss:{fmt(stop_loss)} set for Buy position should lower"
            raise Refusal(10001, f"{detail} than base_price:{base}")
    elif side == "Sell":
        if take_profit and take_profit >= reference:
            detail = f"TakeProfit:{fmt(take_profit)} set for Sell position should be lower"
            raise Refusal(10001, f"{detail} than base_price:{base}")
        if stop_loss and stop_loss <= reference:
            detail = f"StopLoss:{fmt(stop_loss)} set for Sell position should greater"
            raise Refusal(10001, f"{detail} than base_price:{base}")
