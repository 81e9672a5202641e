"""The paper exchange takes liquidity level by level through the quote's depth, with the
walk the L2 slippage gate estimates with, so paper fills and the gate agree. Every
expected number is worked out by hand in the comments."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.brokers.test_paper_exchange import BOOK, BTC, INITIAL, make_exchange, req
from titan_trio.domain.orders import Fill, OrderStatus, Side, TimeInForce
from titan_trio.domain.quotes import Quote
from titan_trio.risk.gates import estimated_average_price, estimated_slippage_pct

D = Decimal
S = OrderStatus
BUY, SELL = Side.BUY, Side.SELL
HUNDRED = D(100)


def book(bids: list[tuple[str, str]], asks: list[tuple[str, str]], ts: int = 1000) -> Quote:
    """A quote from its levels, best first, as (price, size); the first is the touch."""
    (bid, bid_size), *bid_depth = bids
    (ask, ask_size), *ask_depth = asks
    return Quote(
        "BTCUSDT",
        D(bid),
        D(ask),
        D(bid_size),
        D(ask_size),
        D(bid),
        ts,
        "test",
        tuple((D(p), D(s)) for p, s in bid_depth),
        tuple((D(p), D(s)) for p, s in ask_depth),
    )


# 0.040 a side over three levels. Buying it all costs
# 0.010 * 30000.1 + 0.010 * 30000.3 + 0.020 * 30000.8 = 300.001 + 300.003 + 600.016
# = 1200.020, an average of 30000.5; selling it all gives
# 0.010 * 30000.0 + 0.010 * 29999.7 + 0.020 * 29999.2 = 300.000 + 299.997 + 599.984
# = 1199.981, an average of 29999.525.
THIN = book(
    bids=[("30000.0", "0.010"), ("29999.7", "0.010"), ("29999.2", "0.020")],
    asks=[("30000.1", "0.010"), ("30000.3", "0.010"), ("30000.8", "0.020")],
)


def fills_of(fills: list[Fill]) -> list[tuple[Decimal, Decimal]]:
    return [(f.qty, f.price) for f in fills]


# ----- market orders ------------------------------------------------------------------


def test_market_order_larger_than_the_book_fills_level_by_level_and_cancels_the_rest() -> None:
    ex = make_exchange()
    order, fills = ex.place(req("m1", BUY, "0.050"), THIN, now_ms=1000)

    assert fills_of(fills) == [
        (D("0.010"), D("30000.1")),
        (D("0.010"), D("30000.3")),
        (D("0.020"), D("30000.8")),
    ]
    assert [f.exec_id for f in fills] == ["paper-exec-1", "paper-exec-2", "paper-exec-3"]
    assert all(not f.is_maker for f in fills)
    # taker fees: 300.001 * 0.00055 = 0.16500055; 300.003 * 0.00055 = 0.16500165;
    # 600.016 * 0.00055 = 0.3300088; together 0.660011
    assert [f.fee for f in fills] == [D("0.16500055"), D("0.16500165"), D("0.3300088")]
    # the 0.010 the book did not hold is cancelled, and the order says so
    assert order.status is S.CANCELED
    assert order.history == [
        S.PENDING_SUBMIT,
        S.SUBMITTED,
        S.ACCEPTED,
        S.PARTIALLY_FILLED,
        S.PARTIALLY_FILLED,
        S.PARTIALLY_FILLED,
    ]
    assert (order.qty, order.filled_qty, order.remaining_qty) == (
        D("0.050"),
        D("0.040"),
        D("0.010"),
    )
    assert order.avg_fill_price == D("30000.5")  # worse than the touch, 30000.1
    assert ex.open_orders() == []
    pos = ex.positions["BTCUSDT"]
    assert (pos.size, pos.entry_price) == (D("0.040"), D("30000.5"))
    assert ex.balance == D("9999.339989")  # 10000 - 0.660011


def test_market_sell_larger_than_the_book() -> None:
    ex = make_exchange()
    order, fills = ex.place(req("s1", SELL, "0.100"), THIN, now_ms=1000)
    assert fills_of(fills) == [
        (D("0.010"), D("30000.0")),
        (D("0.010"), D("29999.7")),
        (D("0.020"), D("29999.2")),
    ]
    assert order.status is S.CANCELED
    assert order.filled_qty == D("0.040")
    assert order.avg_fill_price == D("29999.525")
    assert ex.positions["BTCUSDT"].size == D("-0.040")


# ----- limit orders that take liquidity -----------------------------------------------


def test_crossing_limit_takes_the_book_up_to_its_price_and_rests_the_rest() -> None:
    ex = make_exchange()
    order, fills = ex.place(req("x1", BUY, "0.050", "30000.3"), THIN, now_ms=1000)
    # the two levels at or below 30000.3, as taker; 30000.8 is beyond the limit
    assert fills_of(fills) == [(D("0.010"), D("30000.1")), (D("0.010"), D("30000.3"))]
    assert all(not f.is_maker for f in fills)
    assert order.status is S.PARTIALLY_FILLED
    assert order.remaining_qty == D("0.030")
    assert ex.open_orders() == [order]

    # the same quote again has nothing left at or below 30000.3 for it
    assert ex.on_quote(THIN, 1100) == ([], [])

    # a later quote crosses the rest: it fills at its price as maker
    # fee = 0.030 * 30000.3 * 0.0002 = 900.009 * 0.0002 = 0.1800018
    fills, _ = ex.on_quote(book([("30000.1", "1")], [("30000.2", "1")], ts=2000), 2000)
    (fill,) = fills
    assert (fill.qty, fill.price, fill.fee, fill.is_maker) == (
        D("0.030"),
        D("30000.3"),
        D("0.1800018"),
        True,
    )
    assert order.status is S.FILLED
    # (300.001 + 300.003 + 900.009) / 0.050 = 1500.013 / 0.05 = 30000.26
    assert order.avg_fill_price == D("30000.26")


def test_crossing_ioc_limit_takes_up_to_its_price_and_cancels_the_rest() -> None:
    ex = make_exchange()
    order, fills = ex.place(
        req("ioc", SELL, "0.050", "29999.7", tif=TimeInForce.IOC), THIN, now_ms=1000
    )
    assert fills_of(fills) == [(D("0.010"), D("30000.0")), (D("0.010"), D("29999.7"))]
    assert order.status is S.CANCELED
    assert order.filled_qty == D("0.020")
    assert ex.open_orders() == []


def test_amend_into_the_book_takes_up_to_the_new_price_and_the_rest_keeps_resting() -> None:
    """The taker style's chase: each re-price that crosses takes what the book offers up
    to it; whatever is left rests until the chase ends and cancels it."""
    ex = make_exchange()
    order, fills = ex.place(req("chase", BUY, "0.050", "29999.0"), THIN, now_ms=1000)
    assert fills == [] and order.status is S.ACCEPTED

    order, fills = ex.amend("chase", D("30000.3"), THIN, now_ms=1100)
    assert fills_of(fills) == [(D("0.010"), D("30000.1")), (D("0.010"), D("30000.3"))]
    assert all(not f.is_maker for f in fills)
    assert order.status is S.PARTIALLY_FILLED and order.price == D("30000.3")

    # one tick further on the same quote: only the level it had not taken yet
    order, fills = ex.amend("chase", D("30000.8"), THIN, now_ms=1200)
    assert fills_of(fills) == [(D("0.020"), D("30000.8"))]
    assert order.status is S.PARTIALLY_FILLED
    assert order.remaining_qty == D("0.010")
    assert ex.open_orders() == [order]

    ex.cancel("chase", now_ms=1300)  # the chase ends
    assert order.status is S.CANCELED
    assert order.filled_qty == D("0.040")
    assert ex.positions["BTCUSDT"].size == D("0.040")


# ----- one quote's liquidity is taken once --------------------------------------------


def test_two_orders_on_one_quote_do_not_take_the_same_level() -> None:
    ex = make_exchange()
    _, first = ex.place(req("m1", BUY, "0.010"), THIN, now_ms=1)
    _, second = ex.place(req("m2", BUY, "0.010"), THIN, now_ms=2)
    assert fills_of(first) == [(D("0.010"), D("30000.1"))]
    assert fills_of(second) == [(D("0.010"), D("30000.3"))]  # the touch is gone
    third, fills = ex.place(req("m3", BUY, "0.030"), THIN, now_ms=3)
    assert fills_of(fills) == [(D("0.020"), D("30000.8"))]
    assert third.status is S.CANCELED and third.filled_qty == D("0.020")

    # the ask side is empty now, on this quote and on one equal to it
    same = book(
        bids=[("30000.0", "0.010"), ("29999.7", "0.010"), ("29999.2", "0.020")],
        asks=[("30000.1", "0.010"), ("30000.3", "0.010"), ("30000.8", "0.020")],
    )
    empty, fills = ex.place(req("m4", BUY, "0.010"), same, now_ms=4)
    assert fills == [] and empty.status is S.CANCELED and empty.filled_qty == 0
    # a crossing limit rests, and the resting orders find nothing left either
    resting, fills = ex.place(req("l1", BUY, "0.010", "30001.0"), THIN, now_ms=5)
    assert fills == [] and resting.status is S.ACCEPTED
    assert ex.on_quote(THIN, 6) == ([], [])
    # buying took nothing from the bids
    _, fills = ex.place(req("s1", SELL, "0.010"), THIN, now_ms=7)
    assert fills_of(fills) == [(D("0.010"), D("30000.0"))]

    # a new quote brings new liquidity: the resting order takes its touch first
    fresh = book(bids=[("30000.0", "1")], asks=[("30000.1", "0.015")], ts=2000)
    fills, _ = ex.on_quote(fresh, 2000)
    assert [(f.client_order_id, f.qty, f.price) for f in fills] == [
        ("l1", D("0.010"), D("30001.0"))
    ]
    _, fills = ex.place(req("m5", BUY, "0.010"), fresh, now_ms=2001)
    assert fills_of(fills) == [(D("0.005"), D("30000.1"))]


# ----- closes larger than the book ----------------------------------------------------


def test_reduce_only_close_larger_than_the_book_reports_its_partial_fill() -> None:
    """A flatten or CLOSE is a reduce-only market order: on a thin book it closes what
    the book holds, and the order shows how much, so the operator sees what is left."""
    ex = make_exchange()
    ex.place(req("open", BUY, "0.100"), BOOK, now_ms=1)  # long 0.100 at 30000.1
    close, fills = ex.place(req("close", SELL, "0.100", reduce_only=True), THIN, now_ms=2)
    assert fills_of(fills) == [
        (D("0.010"), D("30000.0")),
        (D("0.010"), D("29999.7")),
        (D("0.020"), D("29999.2")),
    ]
    # realized: (30000.0 - 30000.1) * 0.010 = -0.001; (29999.7 - 30000.1) * 0.010 = -0.004;
    # (29999.2 - 30000.1) * 0.020 = -0.018
    assert [f.realized_pnl for f in fills] == [D("-0.001"), D("-0.004"), D("-0.018")]
    assert close.status is S.CANCELED
    assert S.PARTIALLY_FILLED in close.history
    assert (close.filled_qty, close.remaining_qty) == (D("0.040"), D("0.060"))
    assert ex.positions["BTCUSDT"].size == D("0.060")

    # the next close, on a new quote, closes the rest
    rest, fills = ex.place(
        req("close2", SELL, "0.100", reduce_only=True),
        book([("30000.0", "1")], [("30000.1", "1")], ts=2000),
        now_ms=3,
    )
    assert rest.qty == D("0.060") and rest.status is S.FILLED
    assert ex.positions == {}


def test_stop_loss_larger_than_the_book_closes_what_it_can_and_fires_again() -> None:
    ex = make_exchange()
    ex.place(req("open", BUY, "0.100"), BOOK, now_ms=1)  # long 0.100 at 30000.1
    ex.set_stop_loss("BTCUSDT", D("29999.5"), BOOK)
    # mid (29999.0 + 29999.1) / 2 = 29999.05 is through the stop; the bids hold 0.050
    low = book([("29999.0", "0.030"), ("29998.5", "0.020")], [("29999.1", "1")], ts=2000)

    stopped = ex.check_stops(low, 2000)
    assert stopped is not None
    order, fills = stopped
    assert order.client_order_id == "paper-sl-2"
    assert order.reduce_only and order.close_reason == "stop loss 29999.5"
    assert fills_of(fills) == [(D("0.030"), D("29999.0")), (D("0.020"), D("29998.5"))]
    assert order.status is S.CANCELED
    assert (order.qty, order.filled_qty) == (D("0.100"), D("0.050"))
    assert ex.positions["BTCUSDT"].size == D("0.050")
    assert ex.stop_losses == {"BTCUSDT": D("29999.5")}  # still protected

    assert ex.check_stops(low, 2100) is None  # this quote has nothing left to give

    later = book([("29999.0", "1")], [("29999.1", "1")], ts=3000)
    stopped = ex.check_stops(later, 3000)
    assert stopped is not None
    order, fills = stopped
    assert fills_of(fills) == [(D("0.050"), D("29999.0"))]
    assert order.status is S.FILLED
    assert ex.positions == {} and ex.stop_losses == {}


# ----- property: paper fills are what the L2 gate estimated ---------------------------

STEP = BTC.qty_step
TICK = BTC.tick_size


@st.composite
def books(draw: st.DrawFn) -> Quote:
    """One to five levels a side on the tick grid, sizes on the step, best first."""
    bid = draw(st.integers(min_value=200_000, max_value=400_000)) * TICK
    ask = bid + draw(st.integers(min_value=1, max_value=10)) * TICK

    def side(touch: Decimal, sign: int) -> list[tuple[Decimal, Decimal]]:
        levels, price = [], touch
        for i in range(draw(st.integers(min_value=1, max_value=5))):
            if i:
                price += sign * draw(st.integers(min_value=1, max_value=20)) * TICK
            levels.append((price, draw(st.integers(min_value=1, max_value=2000)) * STEP))
        return levels

    bids, asks = side(bid, -1), side(ask, 1)
    return Quote(
        "BTCUSDT",
        bid,
        ask,
        bids[0][1],
        asks[0][1],
        bid,
        1000,
        "test",
        tuple(bids[1:]),
        tuple(asks[1:]),
    )


@settings(max_examples=300, deadline=None)
@given(
    quote=books(),
    side=st.sampled_from([BUY, SELL]),
    qty=st.integers(min_value=1, max_value=10_000).map(lambda n: n * STEP),
)
def test_paper_fills_at_the_average_price_the_l2_gate_estimated(
    quote: Quote, side: Side, qty: Decimal
) -> None:
    ex = make_exchange()
    order, fills = ex.place(req("m", side, str(qty), leverage="100"), quote, now_ms=1000)
    depth = sum((size for _, size in quote.levels(side is BUY)), D(0))
    filled = sum((f.qty for f in fills), D(0))
    assert filled == order.filled_qty == min(qty, depth)
    average = sum((f.qty * f.price for f in fills), D(0)) / filled
    assert abs(order.avg_fill_price - average) <= D("1e-18")
    slippage = abs(average - quote.mid) / quote.mid * HUNDRED
    if qty <= depth:
        # the size the book holds: paper's price is the gate's estimate, to the last digit
        assert order.status is S.FILLED
        assert average == estimated_average_price(quote, side, qty)
        assert slippage == estimated_slippage_pct(quote, side, qty)
    else:
        # beyond the book: paper cancels the rest, the gate assumed a worse price for it
        assert order.status is S.CANCELED
        assert estimated_slippage_pct(quote, side, qty) > slippage
    assert ex.balance == INITIAL - sum((f.fee for f in fills), D(0))
