"""Bybit rows to domain objects and back: what a user would see go wrong if a field were
read wrongly (a cancelled partial fill counted as open, a funding payment as a trade, an
exchange-made stop order without an id to follow)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from titan_trio.brokers.bybit import convert
from titan_trio.domain.orders import OrderRequest, OrderStatus, OrderType, Side, TimeInForce

D = Decimal


def order_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "orderId": "1c4e7a2b-0000-4000-8000-000000000001",
        "orderLinkId": "tte0123456789abcdef0123456789abcdef",
        "symbol": "BTCUSDT",
        "side": "Buy",
        "orderType": "Limit",
        "price": "95000.0",
        "qty": "0.010",
        "orderStatus": "New",
        "cumExecQty": "0",
        "avgPrice": "",
        "timeInForce": "PostOnly",
        "reduceOnly": False,
        "createdTime": "1700000000000",
        "updatedTime": "1700000000500",
        "rejectReason": "EC_NoError",
    }
    row.update(changes)
    return row


def test_an_open_order_row_reads_as_our_order() -> None:
    o = convert.order(order_row())
    assert (o.client_order_id, o.symbol, o.side, o.order_type) == (
        "tte0123456789abcdef0123456789abcdef",
        "BTCUSDT",
        Side.BUY,
        OrderType.LIMIT,
    )
    assert (o.status, o.qty, o.price, o.time_in_force) == (
        OrderStatus.ACCEPTED,
        D("0.010"),
        D("95000.0"),
        TimeInForce.POST_ONLY,
    )
    assert o.reject_reason is None and o.avg_fill_price is None
    assert (o.created_ms, o.updated_ms) == (1700000000000, 1700000000500)


@pytest.mark.parametrize(
    ("status", "ours"),
    [
        ("PartiallyFilled", OrderStatus.PARTIALLY_FILLED),
        ("Filled", OrderStatus.FILLED),
        ("Cancelled", OrderStatus.CANCELED),
        ("PartiallyFilledCanceled", OrderStatus.CANCELED),
        ("Rejected", OrderStatus.REJECTED),
        ("Untriggered", OrderStatus.ACCEPTED),
        ("Deactivated", OrderStatus.CANCELED),
    ],
)
def test_order_statuses(status: str, ours: OrderStatus) -> None:
    filled = "0.004" if status.startswith("Partially") else "0"
    if status == "Filled":
        filled = "0.010"
    o = convert.order(order_row(orderStatus=status, cumExecQty=filled, avgPrice="95000.0"))
    assert o.status is ours
    assert o.filled_qty == D(filled)


def test_a_cancelled_partial_fill_keeps_its_fills_and_says_why() -> None:
    o = convert.order(
        order_row(
            orderStatus="Cancelled",
            cumExecQty="0.004",
            avgPrice="94999.5",
            cancelType="CancelByUser",
        )
    )
    assert o.status is OrderStatus.CANCELED and o.status.is_terminal
    assert (o.filled_qty, o.avg_fill_price, o.reject_reason) == (
        D("0.004"),
        D("94999.5"),
        "CancelByUser",
    )


def test_an_order_the_exchange_made_is_followed_by_its_order_id() -> None:
    o = convert.order(order_row(orderLinkId="", orderType="Market", price="0"))
    assert o.client_order_id == "bybit-1c4e7a2b-0000-4000-8000-000000000001"
    assert o.price is None and o.order_type is OrderType.MARKET


@pytest.mark.parametrize(
    "bad",
    [
        {"orderStatus": "Weird"},
        {"qty": "abc"},
        {"qty": "0"},
        {"cumExecQty": "0.02"},
        {"side": "Long"},
        {"symbol": ""},
        {"qty": "NaN"},
        {"orderId": None, "orderLinkId": ""},
    ],
)
def test_a_row_that_cannot_be_an_order_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(convert.BadRow):
        convert.order(order_row(**bad))


def execution_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "execId": "e-1",
        "orderId": "1c4e7a2b-0000-4000-8000-000000000001",
        "orderLinkId": "tte0123456789abcdef0123456789abcdef",
        "symbol": "BTCUSDT",
        "side": "Sell",
        "execPrice": "95010.5",
        "execQty": "0.004",
        "execFee": "0.209",
        "execTime": "1700000001000",
        "isMaker": False,
        "execType": "Trade",
    }
    row.update(changes)
    return row


def test_an_execution_is_a_fill() -> None:
    f = convert.fill(execution_row())
    assert f is not None
    assert (f.exec_id, f.side, f.qty, f.price, f.fee, f.is_maker, f.ts_ms) == (
        "e-1",
        Side.SELL,
        D("0.004"),
        D("95010.5"),
        D("0.209"),
        False,
        1700000001000,
    )


def test_funding_is_not_a_fill() -> None:
    assert convert.fill(execution_row(execType="Funding")) is None


@pytest.mark.parametrize("bad", [{"execQty": "0"}, {"execPrice": "-1"}, {"execId": ""}])
def test_an_execution_that_cannot_be_a_fill_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(convert.BadRow):
        convert.fill(execution_row(**bad))


def test_positions_are_signed_and_flat_ones_are_none() -> None:
    short = convert.position(
        {"symbol": "ETHUSDT", "side": "Sell", "size": "1.5", "avgPrice": "3500.25", "leverage": "5"}
    )
    assert short is not None and (short.size, short.entry_price, short.leverage) == (
        D("-1.5"),
        D("3500.25"),
        D(5),
    )
    assert convert.position({"symbol": "ETHUSDT", "side": "", "size": "0", "avgPrice": "0"}) is None
    assert convert.stop_loss({"stopLoss": ""}) is None
    assert convert.stop_loss({"stopLoss": "0"}) is None
    assert convert.stop_loss({"stopLoss": "3400.5"}) == D("3400.5")


def test_the_usdt_wallet_balance_is_read_from_its_coin() -> None:
    result = {
        "list": [
            {
                "totalWalletBalance": "12000",
                "coin": [
                    {"coin": "BTC", "walletBalance": "0.1"},
                    {"coin": "USDT", "walletBalance": "10000.123"},
                ],
            }
        ]
    }
    assert convert.usdt_balance(result) == D("10000.123")
    with pytest.raises(convert.BadRow):
        convert.usdt_balance({"list": []})


def test_create_params_of_a_post_only_entry_and_a_market_close() -> None:
    entry = OrderRequest(
        "tte0123456789abcdef0123456789abcdef",
        "BTCUSDT",
        Side.BUY,
        OrderType.LIMIT,
        D("0.0100"),
        D("95000.00"),
        TimeInForce.POST_ONLY,
    )
    assert convert.create_params(entry) == {
        "category": "linear",
        "symbol": "BTCUSDT",
        "side": "Buy",
        "orderType": "Limit",
        "qty": "0.01",
        "price": "95000",
        "timeInForce": "PostOnly",
        "orderLinkId": "tte0123456789abcdef0123456789abcdef",
        "reduceOnly": False,
        "positionIdx": 0,
    }
    close = OrderRequest(
        "ttc0123456789abcdef0123456789abcdef",
        "BTCUSDT",
        Side.SELL,
        OrderType.MARKET,
        D("1E+1"),
        reduce_only=True,
    )
    params = convert.create_params(close)
    assert (params["orderType"], params["qty"], params["reduceOnly"]) == ("Market", "10", True)
    assert "price" not in params
    assert len(params["orderLinkId"]) <= 36


def test_leverage_is_on_the_grid_between_one_and_the_instrument_maximum() -> None:
    inst = convert.instrument(
        {
            "symbol": "SOLUSDT",
            "priceFilter": {"tickSize": "0.010"},
            "lotSizeFilter": {"qtyStep": "0.1", "minOrderQty": "0.1", "minNotionalValue": "5"},
            "leverageFilter": {"maxLeverage": "50.00"},
        }
    )
    assert (inst.tick_size, inst.qty_step, inst.max_leverage) == (D("0.010"), D("0.1"), D(50))
    assert convert.leverage_text(D("7.257"), inst) == "7.25"
    assert convert.leverage_text(D("0.3"), inst) == "1"
    assert convert.leverage_text(D("80"), inst) == "50"


def test_a_positions_own_stop_is_not_an_order_until_it_triggers() -> None:
    waiting = order_row(
        orderLinkId="", stopOrderType="StopLoss", orderStatus="Untriggered", qty="0", price="0"
    )
    assert convert.listed_order(waiting) is None
    assert convert.listed_order({**waiting, "orderStatus": "Deactivated"}) is None
    fired = order_row(
        orderLinkId="",
        stopOrderType="StopLoss",
        orderType="Market",
        orderStatus="Filled",
        cumExecQty="0.010",
        avgPrice="93000",
    )
    o = convert.listed_order(fired)
    assert o is not None and o.status is OrderStatus.FILLED
    assert o.client_order_id.startswith("bybit-")
