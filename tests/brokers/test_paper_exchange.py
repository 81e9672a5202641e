"""The paper exchange's matching model: prices, fees, resting orders, rejections,
persistence. Every expected number is worked out by hand in the comments."""

from __future__ import annotations

import copy
import dataclasses
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from titan_trio.brokers.paper_exchange import PaperExchange, order_to_json
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import (
    Fill,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from titan_trio.domain.quotes import Quote
from titan_trio.errors import BrokerRejected

D = Decimal
S = OrderStatus
BUY, SELL = Side.BUY, Side.SELL

BTC = Instrument(
    symbol="BTCUSDT",
    tick_size=D("0.10"),
    qty_step=D("0.001"),
    min_qty=D("0.001"),
    min_notional=D("5"),
    max_leverage=D("100"),
)
INITIAL = D("10000")
MAKER_PCT = D("0.02")
TAKER_PCT = D("0.055")


def make_exchange() -> PaperExchange:
    return PaperExchange(
        {"BTCUSDT": BTC},
        balance=INITIAL,
        maker_fee_pct=MAKER_PCT,
        taker_fee_pct=TAKER_PCT,
    )


def quote(bid: str, ask: str, bid_size: str = "1", ask_size: str = "1", ts: int = 1000) -> Quote:
    return Quote("BTCUSDT", D(bid), D(ask), D(bid_size), D(ask_size), D(bid), ts, "test")


def req(
    cid: str,
    side: Side,
    qty: str,
    price: str | None = None,
    *,
    tif: TimeInForce = TimeInForce.GTC,
    reduce_only: bool = False,
    leverage: str = "1",
    symbol: str = "BTCUSDT",
    order_type: OrderType | None = None,
) -> OrderRequest:
    if order_type is None:
        order_type = OrderType.MARKET if price is None else OrderType.LIMIT
    return OrderRequest(
        client_order_id=cid,
        symbol=symbol,
        side=side,
        order_type=order_type,
        qty=D(qty),
        price=None if price is None else D(price),
        time_in_force=tif,
        reduce_only=reduce_only,
        leverage=D(leverage),
        signal_id=f"sig-{cid}",
    )


def account(ex: PaperExchange) -> tuple[Any, ...]:
    return (
        ex.balance,
        copy.deepcopy(ex.orders),
        copy.deepcopy(ex.positions),
        ex.order_seq,
        ex.exec_seq,
    )


def assert_rejected(
    ex: PaperExchange, request: OrderRequest, q: Quote | None, reason: str
) -> BrokerRejected:
    """Place must raise BrokerRejected(reason) and leave the whole account unchanged."""
    before = account(ex)
    with pytest.raises(BrokerRejected) as info:
        ex.place(request, q, now_ms=9999)
    assert info.value.reason == reason, info.value
    assert account(ex) == before
    return info.value


# A book at 30000.0 / 30000.1 used by most tests.
BOOK = quote("30000.0", "30000.1")


# ----- market orders ------------------------------------------------------------------
# Within the touch size a market order fills at the touch; walking the depth has its own
# tests in test_paper_depth.py.


@pytest.mark.parametrize(
    ("ask", "expected_fee"),
    [
        # fee = 0.010 * 30000.3 * 0.055 / 100 = 300.003 * 0.00055 = 0.16500165
        ("30000.3", "0.16500165"),
        # fee = 300.00 * 0.00055 = 0.165
        ("30000.0", "0.165"),
    ],
)
def test_market_buy_within_the_touch_fills_at_the_ask(ask: str, expected_fee: str) -> None:
    ex = make_exchange()
    bid = str(D(ask) - D("0.1"))
    order, fills = ex.place(req("m1", BUY, "0.010"), quote(bid, ask), now_ms=1000)

    assert len(fills) == 1
    fill = fills[0]
    assert fill == Fill(
        exec_id="paper-exec-1",
        client_order_id="m1",
        symbol="BTCUSDT",
        side=BUY,
        qty=D("0.010"),
        price=D(ask),
        fee=D(expected_fee),
        is_maker=False,
        ts_ms=1000,
        realized_pnl=D(0),
    )
    assert order.status is S.FILLED
    assert order.history == [S.PENDING_SUBMIT, S.SUBMITTED, S.ACCEPTED]
    assert order.filled_qty == D("0.010")
    assert order.avg_fill_price == D(ask)
    assert order.exchange_order_id == "paper-1"
    assert ex.balance == INITIAL - D(expected_fee)
    pos = ex.positions["BTCUSDT"]
    assert pos.size == D("0.010")
    assert pos.entry_price == D(ask)
    assert pos.fees == D(expected_fee)
    assert ex.open_orders() == []


def test_market_buy_balance_exact() -> None:
    ex = make_exchange()
    ex.place(req("m1", BUY, "0.010"), quote("30000.2", "30000.3"), now_ms=1000)
    assert ex.balance == D("9999.83499835")  # 10000 - 0.16500165


def test_market_sell_within_the_touch_fills_at_the_bid() -> None:
    ex = make_exchange()
    # fee = 0.010 * 30000.3 * 0.00055 = 300.003 * 0.00055 = 0.16500165
    order, fills = ex.place(req("s1", SELL, "0.010"), quote("30000.3", "30000.4"), now_ms=1)
    (fill,) = fills
    assert fill.price == D("30000.3")
    assert fill.fee == D("0.16500165")
    assert fill.is_maker is False
    assert order.status is S.FILLED
    assert ex.balance == D("9999.83499835")
    pos = ex.positions["BTCUSDT"]
    assert pos.size == D("-0.010")
    assert pos.entry_price == D("30000.3")


# ----- resting limit orders -----------------------------------------------------------


def test_limit_buy_below_ask_rests_then_fills_as_maker_at_most_touch_size() -> None:
    ex = make_exchange()
    order, fills = ex.place(req("l1", BUY, "0.200", "29990.0"), BOOK, now_ms=1000)
    assert fills == []
    assert order.status is S.ACCEPTED
    assert ex.balance == INITIAL
    assert ex.positions == {}
    assert ex.open_orders() == [order]

    # ask 29990.1 is above the limit: nothing happens
    assert ex.on_quote(quote("29990.0", "29990.1", ask_size="5"), 1500) == ([], [])
    assert order.status is S.ACCEPTED

    # ask 29990.0 touches the limit with only 0.050 on offer: partial fill of 0.050
    # fee = 0.050 * 29990.0 * 0.02 / 100 = 1499.5 * 0.0002 = 0.2999
    fills, canceled = ex.on_quote(quote("29980.0", "29990.0", ask_size="0.050"), 2000)
    assert canceled == []
    (fill,) = fills
    assert (fill.qty, fill.price, fill.fee, fill.is_maker) == (
        D("0.050"),
        D("29990.0"),
        D("0.2999"),
        True,
    )
    assert fill.ts_ms == 2000
    assert order.status is S.PARTIALLY_FILLED
    assert order.filled_qty == D("0.050")
    assert order.remaining_qty == D("0.150")
    assert ex.balance == D("9999.7001")
    assert ex.positions["BTCUSDT"].size == D("0.050")

    # a better ask (29985.0) still fills at the limit price, the remaining 0.150
    # fee = 0.150 * 29990.0 * 0.0002 = 4498.5 * 0.0002 = 0.8997
    fills, _ = ex.on_quote(quote("29980.0", "29985.0", ask_size="1"), 3000)
    (fill,) = fills
    assert (fill.qty, fill.price, fill.fee, fill.is_maker) == (
        D("0.150"),
        D("29990.0"),
        D("0.8997"),
        True,
    )
    assert order.status is S.FILLED
    assert order.avg_fill_price == D("29990.0")
    assert ex.balance == D("9998.8004")  # 10000 - 0.2999 - 0.8997
    pos = ex.positions["BTCUSDT"]
    assert (pos.size, pos.entry_price, pos.fees) == (D("0.200"), D("29990.0"), D("1.1996"))
    assert ex.open_orders() == []
    assert ex.on_quote(quote("29000.0", "29000.1"), 4000) == ([], [])


def test_limit_sell_rests_and_fills_on_the_bid() -> None:
    ex = make_exchange()
    order, fills = ex.place(req("l1", SELL, "0.100", "30010.0"), BOOK, now_ms=1000)
    assert fills == [] and order.status is S.ACCEPTED
    assert ex.on_quote(quote("30009.9", "30010.0"), 1500) == ([], [])
    # fee = 0.030 * 30010.0 * 0.0002 = 900.3 * 0.0002 = 0.18006
    fills, _ = ex.on_quote(quote("30010.0", "30010.1", bid_size="0.030"), 2000)
    (fill,) = fills
    assert (fill.side, fill.qty, fill.price, fill.fee) == (
        SELL,
        D("0.030"),
        D("30010.0"),
        D("0.18006"),
    )
    assert order.status is S.PARTIALLY_FILLED
    assert ex.positions["BTCUSDT"].size == D("-0.030")


def test_touch_size_is_shared_best_price_first_then_oldest() -> None:
    ex = make_exchange()
    low, _ = ex.place(req("low", BUY, "0.050", "29990.0"), BOOK, now_ms=1000)
    high_old, _ = ex.place(req("high-old", BUY, "0.050", "29995.0"), BOOK, now_ms=2000)
    high_new, _ = ex.place(req("high-new", BUY, "0.050", "29995.0"), BOOK, now_ms=3000)
    # 0.070 on offer at 29990.0: 0.050 to the oldest best-priced, 0.020 to the next.
    fills, _ = ex.on_quote(quote("29980.0", "29990.0", ask_size="0.070"), 4000)
    assert [(f.client_order_id, f.qty, f.price) for f in fills] == [
        ("high-old", D("0.050"), D("29995.0")),
        ("high-new", D("0.020"), D("29995.0")),
    ]
    assert high_old.status is S.FILLED
    assert high_new.status is S.PARTIALLY_FILLED
    assert low.status is S.ACCEPTED
    assert ex.positions["BTCUSDT"].size == D("0.070")


# ----- limit orders that cross on arrival ---------------------------------------------


@pytest.mark.parametrize(
    ("side", "limit", "expected"),
    [
        # within the touch size, a crossing limit fills at the touch, however far its limit
        (BUY, "30001.0", "30000.1"),
        (BUY, "30000.1", "30000.1"),
        (BUY, "30010.0", "30000.1"),
        (SELL, "29999.0", "30000.0"),
        (SELL, "30000.0", "30000.0"),
        (SELL, "29990.0", "30000.0"),
    ],
)
def test_crossing_limit_fills_at_once_as_taker_never_worse_than_limit(
    side: Side, limit: str, expected: str
) -> None:
    ex = make_exchange()
    order, fills = ex.place(req("x1", side, "0.010", limit), BOOK, now_ms=1000)
    (fill,) = fills
    assert fill.price == D(expected)
    assert fill.is_maker is False
    assert fill.qty == D("0.010")
    # taker fee: 0.010 * price * 0.055 / 100
    assert fill.fee == D("0.010") * D(expected) * D("0.00055")
    assert order.status is S.FILLED
    if side is BUY:
        assert fill.price <= D(limit)
    else:
        assert fill.price >= D(limit)


def test_crossing_limit_buy_exact_fee() -> None:
    ex = make_exchange()
    _, (fill,) = ex.place(req("x1", BUY, "0.010", "30001.0"), BOOK, now_ms=1000)
    # 0.010 * 30000.1 = 300.001; * 0.00055 = 0.16500055
    assert fill.fee == D("0.16500055")
    assert ex.balance == D("9999.83499945")


def test_ioc_limit_that_does_not_cross_is_canceled_without_fill() -> None:
    ex = make_exchange()
    order, fills = ex.place(
        req("ioc", BUY, "0.010", "29000.0", tif=TimeInForce.IOC), BOOK, now_ms=1000
    )
    assert fills == []
    assert order.status is S.CANCELED
    assert ex.open_orders() == []
    assert ex.balance == INITIAL


# ----- post-only ----------------------------------------------------------------------


@pytest.mark.parametrize(("side", "price"), [(BUY, "30000.1"), (BUY, "30050.0"), (SELL, "30000.0")])
def test_post_only_that_would_cross_is_rejected(side: Side, price: str) -> None:
    ex = make_exchange()
    assert_rejected(
        ex,
        req("po", side, "0.010", price, tif=TimeInForce.POST_ONLY),
        BOOK,
        "POST_ONLY_WOULD_CROSS",
    )
    assert "po" not in ex.orders
    assert ex.open_orders() == []


def test_post_only_that_does_not_cross_rests_and_fills_as_maker() -> None:
    ex = make_exchange()
    order, fills = ex.place(
        req("po", BUY, "0.010", "30000.0", tif=TimeInForce.POST_ONLY), BOOK, now_ms=1
    )
    assert fills == [] and order.status is S.ACCEPTED
    fills, _ = ex.on_quote(quote("29999.9", "30000.0"), 2)
    (fill,) = fills
    # 0.010 * 30000.0 * 0.0002 = 0.06
    assert (fill.price, fill.fee, fill.is_maker) == (D("30000.0"), D("0.06"), True)


# ----- reduce-only --------------------------------------------------------------------


def test_reduce_only_with_no_position_is_rejected() -> None:
    ex = make_exchange()
    assert_rejected(
        ex, req("ro", SELL, "0.010", reduce_only=True), BOOK, "REDUCE_ONLY_WOULD_NOT_REDUCE"
    )
    assert_rejected(
        ex,
        req("ro", BUY, "0.010", "29000.0", reduce_only=True),
        BOOK,
        "REDUCE_ONLY_WOULD_NOT_REDUCE",
    )


def test_reduce_only_on_the_same_side_as_the_position_is_rejected() -> None:
    ex = make_exchange()
    ex.place(req("open", BUY, "0.010"), BOOK, now_ms=1)
    assert_rejected(
        ex, req("ro", BUY, "0.010", reduce_only=True), BOOK, "REDUCE_ONLY_WOULD_NOT_REDUCE"
    )


def test_reduce_only_larger_than_position_is_clipped() -> None:
    ex = make_exchange()
    # open long 0.010 at the ask 30000.3, fee 0.16500165
    ex.place(req("open", BUY, "0.010"), quote("30000.2", "30000.3"), now_ms=1)
    order, fills = ex.place(
        req("ro", SELL, "0.050", reduce_only=True), quote("30500.0", "30500.1"), now_ms=2
    )
    # clipped to 0.010, sold at the bid 30500.0
    # realized = (30500.0 - 30000.3) * 0.010 = 499.7 * 0.01 = 4.997
    # fee = 0.010 * 30500.0 * 0.00055 = 305 * 0.00055 = 0.16775
    assert order.qty == D("0.010")
    assert order.status is S.FILLED
    (fill,) = fills
    assert (fill.qty, fill.price, fill.realized_pnl, fill.fee) == (
        D("0.010"),
        D("30500.0"),
        D("4.997"),
        D("0.16775"),
    )
    assert ex.positions == {}
    # 10000 - 0.16500165 + 4.997 - 0.16775 = 10004.66424835
    assert ex.balance == D("10004.66424835")


def test_resting_reduce_only_is_clipped_and_canceled_when_the_position_closes() -> None:
    ex = make_exchange()
    ex.place(req("open", BUY, "0.010"), BOOK, now_ms=1)
    ro, fills = ex.place(req("ro", SELL, "1.000", "31000.0", reduce_only=True), BOOK, now_ms=2)
    assert fills == []
    assert ro.qty == D("0.010")
    assert ro.status is S.ACCEPTED
    # the position is closed by another order: the exchange cancels the reduce-only one
    ex.place(req("close", SELL, "0.010"), BOOK, now_ms=3)
    assert ex.positions == {}
    assert ro.status is S.CANCELED
    assert ex.auto_canceled == [ro]
    balance = ex.balance
    fills, canceled = ex.on_quote(quote("31000.0", "31000.1"), 4)
    assert fills == [] and canceled == []
    assert ex.balance == balance
    assert ex.positions == {}


# ----- rejections ---------------------------------------------------------------------


@pytest.mark.parametrize("leverage", ["101", "100.5", "1000", "0", "-1"])
def test_leverage_outside_range_is_rejected(leverage: str) -> None:
    ex = make_exchange()
    assert_rejected(ex, req("lev", BUY, "0.010", leverage=leverage), BOOK, "LEVERAGE_TOO_HIGH")


def test_max_leverage_is_accepted() -> None:
    ex = make_exchange()
    # 1 BTC needs 30000 at 1x but only ~300 at 100x
    assert_rejected(ex, req("lev1", BUY, "1.000"), BOOK, "INSUFFICIENT_BALANCE")
    order, _ = ex.place(req("lev100", BUY, "1.000", leverage="100"), BOOK, now_ms=1)
    assert order.status is S.FILLED
    assert ex.positions["BTCUSDT"].leverage == D(100)


def test_margin_beyond_balance_is_rejected() -> None:
    ex = make_exchange()
    # market: margin = 1.000 * mid 30000.05 / 3 = 10000.0166... > 10000
    assert_rejected(ex, req("m3", BUY, "1.000", leverage="3"), BOOK, "INSUFFICIENT_BALANCE")
    # at 4x: 7500.0125 fits
    order, _ = ex.place(req("m4", BUY, "1.000", leverage="4"), BOOK, now_ms=1)
    assert order.status is S.FILLED


def test_resting_orders_use_margin() -> None:
    ex = make_exchange()
    ex.place(req("a", BUY, "0.300", "29990.0"), BOOK, now_ms=1)  # 8997 of 10000
    # 0.040 * 29990.0 = 1199.6 > 1003 left
    assert_rejected(ex, req("b", BUY, "0.040", "29990.0"), BOOK, "INSUFFICIENT_BALANCE")
    # 0.033 * 29990.0 = 989.67 fits
    order, _ = ex.place(req("c", BUY, "0.033", "29990.0"), BOOK, now_ms=2)
    assert order.status is S.ACCEPTED
    # canceling frees the margin again
    ex.cancel("a", now_ms=3)
    order, _ = ex.place(req("b2", BUY, "0.040", "29990.0"), BOOK, now_ms=4)
    assert order.status is S.ACCEPTED


@pytest.mark.parametrize("price", ["30000.05", "29999.99", "0", "-100.0"])
def test_bad_limit_price_is_rejected(price: str) -> None:
    ex = make_exchange()
    assert_rejected(ex, req("p", BUY, "0.010", price), BOOK, "INVALID_PRICE")


def test_limit_without_price_is_rejected() -> None:
    ex = make_exchange()
    request = req("p", BUY, "0.010", order_type=OrderType.LIMIT)
    assert_rejected(ex, request, BOOK, "INVALID_PRICE")


@pytest.mark.parametrize(
    ("qty", "price", "fragment"),
    [
        ("0.0005", None, "below the minimum 0.001"),
        ("0", None, "below the minimum"),
        ("0.0015", None, "not a multiple of the step"),
        ("0.0015", "29000.0", "not a multiple of the step"),
        ("0.001", "4000.0", "notional 4.00 is below the minimum 5"),
    ],
)
def test_bad_quantity_is_rejected(qty: str, price: str | None, fragment: str) -> None:
    ex = make_exchange()
    err = assert_rejected(ex, req("q", BUY, qty, price), BOOK, "INVALID_QTY")
    assert fragment in err.message


def test_duplicate_client_order_id_is_rejected() -> None:
    ex = make_exchange()
    ex.place(req("dup", BUY, "0.010", "29000.0"), BOOK, now_ms=1)
    assert_rejected(ex, req("dup", SELL, "0.020", "31000.0"), BOOK, "DUPLICATE_ORDER_ID")
    # also once the first one is finished
    ex.place(req("done", BUY, "0.010"), BOOK, now_ms=2)
    assert ex.orders["done"].status is S.FILLED
    assert_rejected(ex, req("done", BUY, "0.010"), BOOK, "DUPLICATE_ORDER_ID")


def test_unknown_symbol_and_no_market_are_rejected() -> None:
    ex = make_exchange()
    assert_rejected(ex, req("u", BUY, "0.010", symbol="DOGEUSDT"), BOOK, "UNKNOWN_SYMBOL")
    assert_rejected(ex, req("n", BUY, "0.010"), None, "NO_MARKET")


# ----- cancel -------------------------------------------------------------------------


def test_cancel_open_order() -> None:
    ex = make_exchange()
    order, _ = ex.place(req("c1", BUY, "0.010", "29000.0"), BOOK, now_ms=1)
    canceled = ex.cancel("c1", now_ms=5)
    assert canceled is order
    assert order.status is S.CANCELED
    assert order.updated_ms == 5
    assert ex.open_orders() == []
    # a later crossing quote fills nothing
    assert ex.on_quote(quote("28999.9", "29000.0"), 6) == ([], [])
    assert ex.balance == INITIAL
    assert ex.positions == {}


def test_cancel_partially_filled_order_keeps_the_fill() -> None:
    ex = make_exchange()
    order, _ = ex.place(req("c1", BUY, "0.100", "29000.0"), BOOK, now_ms=1)
    ex.on_quote(quote("28999.9", "29000.0", ask_size="0.030"), 2)
    ex.cancel("c1", now_ms=3)
    assert order.status is S.CANCELED
    assert order.filled_qty == D("0.030")
    assert ex.positions["BTCUSDT"].size == D("0.030")


def _assert_cancel_rejected(ex: PaperExchange, cid: str, reason: str) -> None:
    before = account(ex)
    with pytest.raises(BrokerRejected) as info:
        ex.cancel(cid, now_ms=99)
    assert info.value.reason == reason
    assert account(ex) == before


def test_cancel_unknown_twice_and_filled() -> None:
    ex = make_exchange()
    _assert_cancel_rejected(ex, "nope", "ORDER_NOT_FOUND")
    ex.place(req("c1", BUY, "0.010", "29000.0"), BOOK, now_ms=1)
    ex.cancel("c1", now_ms=2)
    _assert_cancel_rejected(ex, "c1", "ORDER_NOT_OPEN")
    ex.place(req("m1", BUY, "0.010"), BOOK, now_ms=3)
    _assert_cancel_rejected(ex, "m1", "ORDER_NOT_OPEN")


# ----- round trips --------------------------------------------------------------------


def test_round_trip_long() -> None:
    ex = make_exchange()
    # buy 0.100 at the ask 30000.1: fee = 0.1 * 30000.1 * 0.00055 = 3000.01 * 0.00055
    #   = 1.6500055
    _, (buy,) = ex.place(req("b", BUY, "0.100"), BOOK, now_ms=1)
    assert (buy.price, buy.fee) == (D("30000.1"), D("1.6500055"))
    marks = {"BTCUSDT": D("30000.05")}
    # unrealized at the mid: (30000.05 - 30000.1) * 0.1 = -0.005
    assert ex.equity(marks) == INITIAL - D("1.6500055") - D("0.005")

    # sell 0.100 at the bid 30500.0:
    #   realized = (30500.0 - 30000.1) * 0.1 = 49.99
    #   fee = 0.1 * 30500.0 * 0.00055 = 3050 * 0.00055 = 1.6775
    _, (sell,) = ex.place(req("s", SELL, "0.100"), quote("30500.0", "30500.1"), now_ms=2)
    assert (sell.price, sell.realized_pnl, sell.fee) == (
        D("30500.0"),
        D("49.99"),
        D("1.6775"),
    )
    assert ex.positions == {}
    assert ex.balance == INITIAL + D("49.99") - D("1.6500055") - D("1.6775")
    assert ex.balance == D("10046.6624945")
    assert ex.equity({}) == ex.balance
    assert ex.used_margin({}) == 0


def test_round_trip_short() -> None:
    ex = make_exchange()
    # sell 0.100 at the bid 30000.0; fee = 3000.0 * 0.00055 = 1.65
    ex.place(req("s", SELL, "0.100"), BOOK, now_ms=1)
    # buy back at the ask 29000.1:
    #   realized = (30000.0 - 29000.1) * 0.1 = 99.99
    #   fee = 2900.01 * 0.00055 = 1.5950055
    _, (buy,) = ex.place(req("b", BUY, "0.100"), quote("29000.0", "29000.1"), now_ms=2)
    assert (buy.price, buy.realized_pnl, buy.fee) == (D("29000.1"), D("99.99"), D("1.5950055"))
    assert ex.positions == {}
    assert ex.balance == D("10096.7449945")  # 10000 + 99.99 - 1.65 - 1.5950055


# ----- persistence --------------------------------------------------------------------


def _without_history(orders: list[Any]) -> list[Any]:
    return [dataclasses.replace(o, history=[]) for o in orders]


def test_snapshot_restore_round_trip() -> None:
    ex = make_exchange()
    # long 0.100 at the ask 30003.2: fee = 3000.32 * 0.00055 = 1.650176
    ex.place(req("m1", BUY, "0.100"), quote("30003.1", "30003.2"), now_ms=1000)
    # resting buy 0.100 @ 29900.0, half filled: fee = 0.050 * 29900 * 0.0002 = 0.299
    ex.place(req("r1", BUY, "0.100", "29900.0"), BOOK, now_ms=1100)
    ex.on_quote(quote("29890.0", "29900.0", ask_size="0.050"), 1200)
    # a resting reduce-only take-profit and a canceled order
    ex.place(req("tp", SELL, "0.050", "31000.0", reduce_only=True), BOOK, now_ms=1300)
    ex.place(req("c1", BUY, "0.010", "29000.0"), BOOK, now_ms=1400)
    ex.cancel("c1", now_ms=1500)

    # entry = (0.1 * 30003.2 + 0.05 * 29900.0) / 0.15 = (3000.32 + 1495) / 0.15 = 29968.8
    assert ex.positions["BTCUSDT"].entry_price == D("29968.8")
    assert ex.balance == D("9998.050824")  # 10000 - 1.650176 - 0.299

    snap = json.loads(json.dumps(ex.snapshot()))  # must be JSON-able
    # the resting orders are saved one by one beside the snapshot (paper_orders)
    resting = json.loads(json.dumps([order_to_json(o) for o in ex.open_orders()]))
    fresh = make_exchange()
    fresh.restore(snap, resting)

    assert fresh.balance == ex.balance == D("9998.050824")
    assert fresh.positions == ex.positions
    assert fresh.open_orders() == _without_history(ex.open_orders())
    assert [o.client_order_id for o in fresh.open_orders()] == ["r1", "tp"]
    assert fresh.orders["r1"].status is S.PARTIALLY_FILLED
    assert fresh.orders["r1"].avg_fill_price == D("29900.0")
    assert "m1" not in fresh.orders and "c1" not in fresh.orders  # terminal: not kept
    assert (fresh.exec_seq, fresh.order_seq) == (ex.exec_seq, ex.order_seq) == (2, 4)
    marks = {"BTCUSDT": D("30000")}
    assert fresh.used_margin(marks) == ex.used_margin(marks)
    assert fresh.equity(marks) == ex.equity(marks)

    # the rest of r1 fills on both exchanges in exactly the same way
    q = quote("29890.0", "29900.0", ask_size="1", ts=2000)
    result_fresh = fresh.on_quote(q, 2000)
    result_orig = ex.on_quote(q, 2000)
    assert result_fresh == result_orig
    fills, canceled = result_fresh
    assert canceled == []
    (fill,) = fills
    assert fill.exec_id == "paper-exec-3"
    assert (fill.client_order_id, fill.qty, fill.price, fill.fee, fill.is_maker) == (
        "r1",
        D("0.050"),
        D("29900.0"),
        D("0.299"),
        True,
    )
    assert fresh.orders["r1"].status is S.FILLED
    assert fresh.balance == D("9997.751824")  # 9998.050824 - 0.299
    pos = fresh.positions["BTCUSDT"]
    # (4495.32 + 1495) / 0.2 = 29951.6
    assert (pos.size, pos.entry_price) == (D("0.200"), D("29951.6"))
    assert fresh.positions == ex.positions

    # new orders continue the sequence
    order, _ = fresh.place(req("n1", BUY, "0.010", "29000.0"), q, now_ms=3000)
    assert order.exchange_order_id == "paper-5"


def test_snapshot_of_a_fresh_account() -> None:
    ex = make_exchange()
    snap = ex.snapshot()
    assert snap == {
        "balance": "10000",
        "exec_seq": 0,
        "order_seq": 0,
        "positions": [],
        "stop_losses": {},
    }
    other = make_exchange()
    other.balance = D(1)
    other.restore(snap, [])
    assert other.balance == INITIAL


# ----- property: the account's books always balance -----------------------------------

ticks = st.integers(min_value=-30, max_value=30)
steps = st.integers(min_value=1, max_value=400).map(lambda n: D(n) * D("0.001"))
# Depth behind the touch: (ticks beyond the previous level, size), up to two levels.
depth = st.lists(st.tuples(st.integers(min_value=1, max_value=5), steps), max_size=2)


@st.composite
def actions(draw: st.DrawFn) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(min_value=1, max_value=20))):
        kind = draw(st.sampled_from(["place", "place", "cancel", "amend", "quote", "quote"]))
        if kind == "place":
            out.append(
                (
                    kind,
                    (
                        draw(st.sampled_from([BUY, SELL])),
                        draw(steps),
                        draw(st.one_of(st.none(), ticks)),
                        draw(st.sampled_from(list(TimeInForce))),
                        draw(st.sampled_from([False, False, True])),  # reduce-only
                        draw(st.sampled_from(["1", "5", "20"])),
                    ),
                )
            )
        elif kind == "cancel":
            out.append((kind, draw(st.integers(min_value=0, max_value=10))))
        elif kind == "amend":
            out.append((kind, (draw(st.integers(min_value=0, max_value=10)), draw(ticks))))
        else:
            out.append(
                (
                    kind,
                    (
                        draw(st.integers(min_value=-20, max_value=20)),
                        draw(st.integers(min_value=1, max_value=5)),
                        draw(steps),
                        draw(steps),
                        draw(depth),
                        draw(depth),
                    ),
                )
            )
    return out


def _depth(start: D, levels: list[tuple[int, D]], sign: int) -> tuple[tuple[D, D], ...]:
    out = []
    price = start
    for gap, size in levels:
        price += sign * gap * BTC.tick_size
        out.append((price, size))
    return tuple(out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=actions())
def test_random_sessions_keep_the_books_consistent(script: list[tuple[str, Any]]) -> None:
    ex = make_exchange()
    mid_ticks = 300_000  # 30000.0
    q = quote("29999.9", "30000.0")
    now = 0
    all_fills: list[Fill] = []
    placed: list[str] = []
    # What the current quote's levels gave, by (side taking, level price): never more
    # than the level holds, whichever orders took it, taker or maker.
    taken: dict[tuple[Side, D], D] = {}

    def level_size(side: Side, price: D) -> D:
        return dict(q.levels(side is BUY)).get(price, D(0))

    def check_taker_fills(fills: list[Fill], limit: D | None, size_before: D) -> None:
        prices = [f.price for f in fills]
        for fill in fills:
            assert not fill.is_maker
            assert fill.qty > 0
            assert BTC.is_on_step(fill.qty)
            assert fill.fee == fill.qty * fill.price * TAKER_PCT / 100
            # one fill per level, at the level's price, best first
            assert fill.price in dict(q.levels(fill.side is BUY))
            if limit is not None:  # never worse than the limit
                assert fill.price <= limit if fill.side is BUY else fill.price >= limit
            taken[fill.side, fill.price] = taken.get((fill.side, fill.price), D(0)) + fill.qty
            assert taken[fill.side, fill.price] <= level_size(fill.side, fill.price)
        assert len(set(prices)) == len(prices)
        if fills:
            assert prices == sorted(prices, reverse=fills[0].side is SELL)
            order = ex.orders[fills[0].client_order_id]
            if order.reduce_only:
                pos = ex.positions.get("BTCUSDT")
                size_after = pos.size if pos else D(0)
                assert abs(size_after) < abs(size_before)
                assert size_after * size_before >= 0  # never flips

    for kind, arg in script:
        now += 1
        pos = ex.positions.get("BTCUSDT")
        size_before = pos.size if pos else D(0)
        if kind == "place":
            side, qty, offset, tif, reduce_only, lev = arg
            price = None if offset is None else q.mid + D(offset) * BTC.tick_size
            price = None if price is None else BTC.floor_price(price)
            order_type = OrderType.MARKET if price is None else OrderType.LIMIT
            cid = f"o{len(placed)}"
            placed.append(cid)
            request = OrderRequest(
                cid, "BTCUSDT", side, order_type, qty, price, tif, reduce_only, D(lev)
            )
            before = account(ex)
            try:
                order, fills = ex.place(request, q, now)
            except BrokerRejected:
                assert account(ex) == before
                continue
            assert order.qty <= qty
            assert len(fills) <= len(q.levels(side is BUY))
            check_taker_fills(fills, price, size_before)
            if order_type is OrderType.MARKET or tif is TimeInForce.IOC:
                assert order.status in (S.FILLED, S.CANCELED)
            all_fills += fills
        elif kind == "cancel":
            if not placed:
                continue
            cid = placed[arg % len(placed)]
            before = account(ex)
            try:
                ex.cancel(cid, now)
            except BrokerRejected as exc:
                if cid in ex.orders:  # placed, then finished
                    assert exc.reason == "ORDER_NOT_OPEN"
                    assert not ex.orders[cid].status.is_open
                else:  # its placement was rejected
                    assert exc.reason == "ORDER_NOT_FOUND"
                assert account(ex) == before
            else:
                assert ex.orders[cid].status is S.CANCELED
        elif kind == "amend":
            index, offset = arg
            if not placed:
                continue
            cid = placed[index % len(placed)]
            price = BTC.floor_price(q.mid + D(offset) * BTC.tick_size)
            before = account(ex)
            try:
                order, fills = ex.amend(cid, price, q, now)
            except BrokerRejected:
                assert account(ex) == before
                continue
            assert order.price == price
            check_taker_fills(fills, price, size_before)
            all_fills += fills
        else:
            move, spread, bid_size, ask_size, bid_depth, ask_depth = arg
            mid_ticks += move
            bid = D(mid_ticks) * BTC.tick_size
            ask = bid + spread * BTC.tick_size
            q = Quote(
                "BTCUSDT",
                bid,
                ask,
                bid_size,
                ask_size,
                bid,
                now,
                "test",
                _depth(bid, bid_depth, -1),
                _depth(ask, ask_depth, 1),
            )
            taken = {}
            running = size_before
            fills, canceled = ex.on_quote(q, now)
            for order in canceled:
                assert order.reduce_only and order.status is S.CANCELED
            for fill in fills:
                assert fill.is_maker
                order = ex.orders[fill.client_order_id]
                assert order.price is not None
                assert order.price >= q.ask if fill.side is BUY else order.price <= q.bid
                assert fill.price == order.price
                assert BTC.is_on_step(fill.qty) and fill.qty > 0
                assert fill.fee == fill.qty * fill.price * MAKER_PCT / 100
                size_before, running = running, running + fill.qty * fill.side.sign
                if order.reduce_only:
                    assert abs(running) < abs(size_before)
                    assert running * size_before >= 0  # never flips
                touch = q.ask if fill.side is BUY else q.bid
                taken[fill.side, touch] = taken.get((fill.side, touch), D(0)) + fill.qty
            assert taken.get((BUY, q.ask), D(0)) <= q.ask_size  # at most the touch size
            assert taken.get((SELL, q.bid), D(0)) <= q.bid_size
            all_fills += fills

        # invariants after every step
        realized = sum((f.realized_pnl for f in all_fills), D(0))
        fees = sum((f.fee for f in all_fills), D(0))
        assert abs(ex.balance - (INITIAL + realized - fees)) <= D("1e-12")
        signed = sum((f.qty * f.side.sign for f in all_fills), D(0))
        pos = ex.positions.get("BTCUSDT")
        assert (pos.size if pos else D(0)) == signed
        if pos is not None:
            assert not pos.is_flat
        for order in ex.orders.values():
            assert 0 <= order.filled_qty <= order.qty
            filled = sum(
                (f.qty for f in all_fills if f.client_order_id == order.client_order_id), D(0)
            )
            assert filled == order.filled_qty
            if order.filled_qty == order.qty:
                assert order.status is S.FILLED
        for order in ex.open_orders():
            assert order.order_type is OrderType.LIMIT
            assert order.time_in_force is not TimeInForce.IOC
        assert len({f.exec_id for f in all_fills}) == len(all_fills)


def test_take_profits_that_all_cross_at_once_close_the_position_once() -> None:
    """Two reduce-only targets larger together than the position, both crossed by one
    quote: the first closes the position, the exchange cancels the second, no error."""
    ex = make_exchange()
    ex.place(req("open", BUY, "0.010"), BOOK, now_ms=1)
    ex.place(req("tp1", SELL, "0.010", "30100.0", reduce_only=True), BOOK, now_ms=2)
    ex.place(req("tp2", SELL, "0.010", "30200.0", reduce_only=True), BOOK, now_ms=3)
    fills, _canceled = ex.on_quote(quote("30300.0", "30300.1", bid_size="1"), 4)
    assert [f.client_order_id for f in fills] == ["tp1"]  # the lowest offer first
    assert ex.positions == {}
    assert ex.orders["tp2"].status is S.CANCELED
    assert ex.auto_canceled == [ex.orders["tp2"]]
