"""Orders and executions of the fake account as Bybit v5 shows them, the refusal that
carries a retCode, and the checks shared by orders and positions (decimal parameters,
take-profit/stop-loss sides).

Choices where the documents are silent: a missing avgPrice is "" (as the order stream's
documentation says), a missing stop or trigger price is "0"; money is rounded half-up to
8 decimals.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from tests.fakes.market import fmt

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
class Execution:
    doc: dict[str, Any]
    exec_time: int
    symbol: str
    order_id: str
    order_link_id: str


def check_stops(
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
