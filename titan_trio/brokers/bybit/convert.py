"""Bybit v5 rows (REST lists and private-stream items) to domain objects, and our order
requests to Bybit's parameters (EXCHANGES.md). Pure functions: every foreign field is read
here, and a row that does not make sense raises BadRow, which the adapter logs and skips
(a malformed answer never reaches the shadow state).

Choices where the documents are silent:
- An order the exchange made itself (a triggered stop loss or take profit) has an empty
  ``orderLinkId``; it is followed under ``bybit-<orderId>``, so its fills still belong
  to one order.
- ``Untriggered``/``Triggered`` (conditional orders waiting or just fired) count as
  ACCEPTED; ``Deactivated`` as CANCELED; ``PartiallyFilledCanceled`` as CANCELED with
  its fills.
- Executions that move no position (``Funding``, ``Settle``) are not fills: their money
  reaches the balance through the wallet, which reconciliation compares.
- ``Fill.realized_pnl`` is left at zero: the shadow state computes the realized P&L from
  its own position (the execution rows do not carry it).
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import (
    Fill,
    Order,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from titan_trio.domain.positions import Position

ZERO = Decimal(0)
EXCHANGE_MADE_PREFIX = "bybit-"
NOT_FILLS = frozenset({"Funding", "Settle"})

# Why an order the exchange triggered closes a position (the trade's close reason).
EXCHANGE_STOPS = {
    "StopLoss": "stop loss (at the exchange)",
    "TakeProfit": "take profit (at the exchange)",
    "TrailingStop": "trailing stop (at the exchange)",
}
STATUS = {
    "Created": OrderStatus.SUBMITTED,
    "New": OrderStatus.ACCEPTED,
    "PartiallyFilled": OrderStatus.PARTIALLY_FILLED,
    "Filled": OrderStatus.FILLED,
    "Cancelled": OrderStatus.CANCELED,
    "PartiallyFilledCanceled": OrderStatus.CANCELED,
    "Rejected": OrderStatus.REJECTED,
    "Untriggered": OrderStatus.ACCEPTED,
    "Triggered": OrderStatus.ACCEPTED,
    "Deactivated": OrderStatus.CANCELED,
}
TIME_IN_FORCE = {
    TimeInForce.GTC: "GTC",
    TimeInForce.IOC: "IOC",
    TimeInForce.POST_ONLY: "PostOnly",
}
FROM_TIME_IN_FORCE = {"GTC": TimeInForce.GTC, "IOC": TimeInForce.IOC, "FOK": TimeInForce.IOC}
FROM_TIME_IN_FORCE["PostOnly"] = TimeInForce.POST_ONLY


class BadRow(ValueError):
    """A row from the exchange that cannot be what it claims to be."""


def decimal(row: dict[str, Any], key: str, *, default: Decimal | None = None) -> Decimal:
    value = row.get(key)
    if value in (None, "") and default is not None:
        return default
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise BadRow(f"{key}: expected a decimal string, got {value!r}")
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise BadRow(f"{key}: expected a decimal string, got {value!r}") from None
    if not number.is_finite():
        raise BadRow(f"{key}: expected a finite number, got {value!r}")
    return number


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value:
        raise BadRow(f"{key}: expected text, got {value!r}")
    return value


def _int(row: dict[str, Any], key: str, default: int = 0) -> int:
    value = row.get(key)
    if value in (None, ""):
        return default
    try:
        return int(str(value))
    except ValueError:
        raise BadRow(f"{key}: expected an integer, got {value!r}") from None


def side(value: Any) -> Side:
    if value == "Buy":
        return Side.BUY
    if value == "Sell":
        return Side.SELL
    raise BadRow(f"side: expected Buy or Sell, got {value!r}")


def link_id(row: dict[str, Any]) -> str:
    """Our client order id of a row: its ``orderLinkId``, or for an order the exchange
    made itself, ``bybit-<orderId>``."""
    link = row.get("orderLinkId")
    if isinstance(link, str) and link:
        return link
    return EXCHANGE_MADE_PREFIX + _text(row, "orderId")


def order(row: dict[str, Any]) -> Order:
    """An order row (``/v5/order/realtime`` or the ``order`` topic)."""
    status_text = row.get("orderStatus")
    status = STATUS.get(status_text) if isinstance(status_text, str) else None
    if status is None:
        raise BadRow(f"orderStatus: expected one of {sorted(STATUS)}, got {status_text!r}")
    order_type = OrderType.MARKET if row.get("orderType") == "Market" else OrderType.LIMIT
    qty = decimal(row, "qty")
    filled = decimal(row, "cumExecQty", default=ZERO)
    if qty <= 0 or filled < 0 or filled > qty:
        raise BadRow(f"qty {qty} / cumExecQty {filled}: not an order's quantities")
    avg = decimal(row, "avgPrice", default=ZERO)
    price = decimal(row, "price", default=ZERO)
    reject = row.get("rejectReason")
    result = Order(
        client_order_id=link_id(row),
        symbol=_text(row, "symbol"),
        side=side(row.get("side")),
        order_type=order_type,
        qty=qty,
        price=price if order_type is OrderType.LIMIT and price > 0 else None,
        time_in_force=FROM_TIME_IN_FORCE.get(str(row.get("timeInForce")), TimeInForce.GTC),
        reduce_only=bool(row.get("reduceOnly")),
        status=status,
        exchange_order_id=_text(row, "orderId"),
        filled_qty=filled,
        avg_fill_price=avg if filled > 0 and avg > 0 else None,
        reject_reason=str(reject) if reject and reject != "EC_NoError" else None,
        created_ms=_int(row, "createdTime"),
        updated_ms=_int(row, "updatedTime"),
    )
    result.close_reason = EXCHANGE_STOPS.get(str(row.get("stopOrderType")))
    if result.status is OrderStatus.CANCELED and row.get("cancelType") not in (None, ""):
        result.reject_reason = result.reject_reason or str(row.get("cancelType"))
    return result


POSITION_STOP_STATES = frozenset({"Untriggered", "Deactivated"})


def listed_order(row: dict[str, Any]) -> Order | None:
    """An order row, or None for a position's own stop loss or take profit (Bybit lists
    them as conditional orders with a ``stopOrderType``, quantity often "0", waiting or
    dropped): nobody placed them as orders. Once triggered, one is a market order like
    any other, and its fills are followed."""
    if row.get("stopOrderType") not in (None, "", "UNKNOWN") and (
        row.get("orderStatus") in POSITION_STOP_STATES
    ):
        return None
    return order(row)


def fill(row: dict[str, Any]) -> Fill | None:
    """An execution row (``/v5/execution/list`` or the ``execution`` topic); None for one
    that moves no position (funding, settlement)."""
    if row.get("execType") in NOT_FILLS:
        return None
    qty = decimal(row, "execQty")
    price = decimal(row, "execPrice")
    if qty <= 0 or price <= 0:
        raise BadRow(f"execQty {qty} / execPrice {price}: not a fill")
    return Fill(
        exec_id=_text(row, "execId"),
        client_order_id=link_id(row),
        symbol=_text(row, "symbol"),
        side=side(row.get("side")),
        qty=qty,
        price=price,
        fee=decimal(row, "execFee", default=ZERO),
        is_maker=row.get("isMaker") in (True, "true", "True", 1),
        ts_ms=_int(row, "execTime"),
        realized_pnl=ZERO,
    )


def position(row: dict[str, Any]) -> Position | None:
    """A position row; None when flat (Bybit lists flat positions with size 0)."""
    size = decimal(row, "size", default=ZERO)
    if size == 0:
        return None
    if size < 0:
        raise BadRow(f"size: expected >= 0, got {size}")
    signed = size if side(row.get("side")) is Side.BUY else -size
    entry_key = "avgPrice" if row.get("avgPrice") not in (None, "") else "entryPrice"
    return Position(
        symbol=_text(row, "symbol"),
        size=signed,
        entry_price=decimal(row, entry_key, default=ZERO),
        opened_ms=_int(row, "createdTime"),
        leverage=decimal(row, "leverage", default=Decimal(1)),
    )


def stop_loss(row: dict[str, Any]) -> Decimal | None:
    """A position row's stop loss; None when there is none ("" or "0")."""
    value = decimal(row, "stopLoss", default=ZERO)
    return value if value > 0 else None


def usdt_balance(result: Any) -> Decimal:
    """The USDT wallet balance (realized: without unrealized P&L) from a wallet-balance
    result or a ``wallet`` topic item."""
    accounts = result.get("list") if isinstance(result, dict) else result
    if not isinstance(accounts, list) or not accounts or not isinstance(accounts[0], dict):
        raise BadRow(f"wallet: expected list[0], got {accounts!r}")
    coins = accounts[0].get("coin")
    if not isinstance(coins, list):
        raise BadRow(f"wallet: expected coin[], got {coins!r}")
    for coin in coins:
        if isinstance(coin, dict) and coin.get("coin") == "USDT":
            return decimal(coin, "walletBalance")
    return decimal(accounts[0], "totalWalletBalance")


def instrument(row: dict[str, Any]) -> Instrument:
    """An instruments-info row."""
    prices = row.get("priceFilter") or {}
    lots = row.get("lotSizeFilter") or {}
    leverage = row.get("leverageFilter") or {}
    if not all(isinstance(x, dict) for x in (prices, lots, leverage)):
        raise BadRow("filters: expected objects")
    result = Instrument(
        symbol=_text(row, "symbol"),
        tick_size=decimal(prices, "tickSize"),
        qty_step=decimal(lots, "qtyStep"),
        min_qty=decimal(lots, "minOrderQty"),
        min_notional=decimal(lots, "minNotionalValue", default=Decimal(5)),
        max_leverage=decimal(leverage, "maxLeverage", default=Decimal(1)),
    )
    if result.tick_size <= 0 or result.qty_step <= 0 or result.min_qty <= 0:
        raise BadRow(f"{result.symbol}: tick size, step and minimum must be positive")
    return result


def plain(number: Decimal) -> str:
    """A decimal as Bybit wants it: plain digits, no exponent, no trailing zeros."""
    text = format(number.normalize(), "f")
    return text


def create_params(request: OrderRequest) -> dict[str, Any]:
    """The ``/v5/order/create`` body of an order request (one-way mode)."""
    params: dict[str, Any] = {
        "category": "linear",
        "symbol": request.symbol,
        "side": "Buy" if request.side is Side.BUY else "Sell",
        "orderType": "Market" if request.order_type is OrderType.MARKET else "Limit",
        "qty": plain(request.qty),
    }
    if request.order_type is OrderType.LIMIT:
        if request.price is None:
            raise ValueError(f"limit order {request.client_order_id} has no price")
        params["price"] = plain(request.price)
        params["timeInForce"] = TIME_IN_FORCE[request.time_in_force]
    else:
        params["timeInForce"] = "IOC"
    params["orderLinkId"] = request.client_order_id
    params["reduceOnly"] = request.reduce_only
    params["positionIdx"] = 0
    return params


def leverage_text(requested: Decimal, inst: Instrument | None) -> str:
    """The leverage to set for a symbol: the request's, on Bybit's 0.01 grid, between 1
    and the instrument's maximum."""
    value = max(Decimal(1), requested)
    if inst is not None:
        value = min(value, inst.max_leverage)
    return plain(value.quantize(Decimal("0.01"), rounding="ROUND_FLOOR"))
