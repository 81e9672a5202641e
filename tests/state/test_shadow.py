"""ShadowState.apply_fill: de-duplication, positions, closed trades and the balance."""

from __future__ import annotations

import copy
from decimal import Decimal

import pytest

from titan_trio.domain.orders import Fill, Order, OrderStatus, OrderType, Side
from titan_trio.state.shadow import ShadowState, TradeRecord, utc_day

D = Decimal
BUY, SELL = Side.BUY, Side.SELL
INITIAL = D("10000")


def fill(
    exec_id: str,
    side: Side,
    qty: str,
    price: str,
    fee: str = "0",
    ts: int = 1000,
    cid: str = "c1",
    symbol: str = "BTCUSDT",
) -> Fill:
    return Fill(
        exec_id=exec_id,
        client_order_id=cid,
        symbol=symbol,
        side=side,
        qty=D(qty),
        price=D(price),
        fee=D(fee),
        is_maker=False,
        ts_ms=ts,
        realized_pnl=D(0),  # the shadow state computes its own
    )


def open_order(cid: str, side: Side, signal_id: str, leverage: str = "5") -> Order:
    return Order(
        client_order_id=cid,
        symbol="BTCUSDT",
        side=side,
        order_type=OrderType.MARKET,
        qty=D("100"),
        leverage=D(leverage),
        signal_id=signal_id,
        status=OrderStatus.ACCEPTED,
    )


def state_of(shadow: ShadowState) -> tuple[object, ...]:
    return (
        shadow.balance,
        copy.deepcopy(shadow.positions),
        copy.deepcopy(shadow.orders),
        set(shadow.seen_exec_ids),
    )


def test_duplicate_exec_id_is_ignored() -> None:
    shadow = ShadowState(INITIAL)
    first = fill("e1", BUY, "0.1", "30000", fee="1.65")
    changes = shadow.apply_fill(first)
    assert changes is not None
    before = state_of(shadow)
    assert shadow.apply_fill(first) is None
    # same exec id, different content: still a replay
    assert shadow.apply_fill(fill("e1", SELL, "0.1", "31000", fee="9")) is None
    assert state_of(shadow) == before
    assert shadow.balance == D("9998.35")


def test_opening_fill_creates_the_position() -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_order(open_order("c1", BUY, "sig-1", leverage="5"))
    changes = shadow.apply_fill(fill("e1", BUY, "0.1", "30000", fee="1.65", ts=1000))
    assert changes is not None
    assert changes.trade is None
    assert changes.symbol == "BTCUSDT"
    assert changes.order is shadow.orders["c1"]
    rec = changes.position
    assert rec is shadow.positions["BTCUSDT"]
    assert (rec.position.size, rec.position.entry_price) == (D("0.1"), D("30000"))
    assert rec.position.leverage == D("5")
    assert rec.position.opened_ms == 1000
    assert rec.signal_id == "sig-1"
    assert shadow.balance == D("9998.35")  # 10000 - 1.65


def test_open_then_close_makes_one_trade() -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_order(open_order("c1", BUY, "sig-1"))
    shadow.apply_fill(fill("e1", BUY, "0.1", "30000", fee="1.65", ts=1_700_000_000_000))
    changes = shadow.apply_fill(
        fill("e2", SELL, "0.1", "30500", fee="1.6775", ts=1_700_000_360_000, cid="c2"),
        close_reason="take_profit",
    )
    assert changes is not None
    assert changes.position is None
    assert shadow.positions == {}
    # realized = (30500 - 30000) * 0.1 = 50; fees = 1.65 + 1.6775 = 3.3275
    assert changes.trade == TradeRecord(
        symbol="BTCUSDT",
        side=BUY,
        qty=D("0.1"),
        entry_price=D("30000"),
        exit_price=D("30500"),
        realized_pnl=D("50.0"),
        fees=D("3.3275"),
        opened_ms=1_700_000_000_000,
        closed_ms=1_700_000_360_000,
        signal_id="sig-1",
        close_reason="take_profit",
    )
    assert changes.trade.net_pnl == D("46.6725")
    assert changes.trade.day == "2023-11-14" == utc_day(1_700_000_360_000)
    assert shadow.balance == D("10046.6725")  # 10000 + 50 - 3.3275


def test_short_open_and_close() -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_fill(fill("e1", SELL, "2", "100", fee="0.1"))
    changes = shadow.apply_fill(fill("e2", BUY, "2", "105", fee="0.105"))
    assert changes is not None and changes.trade is not None
    t = changes.trade
    # a short closed higher loses: (100 - 105) * 2 = -10
    assert (t.side, t.qty, t.entry_price, t.exit_price) == (SELL, D(2), D(100), D(105))
    assert (t.realized_pnl, t.fees, t.net_pnl) == (D(-10), D("0.205"), D("-10.205"))
    assert t.signal_id is None
    assert shadow.balance == D("9989.795")


def test_partial_closes_accumulate_into_one_trade() -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_fill(fill("e1", BUY, "1.0", "100", fee="0.1", ts=1))

    # close 0.4 @ 110: realized (110 - 100) * 0.4 = 4, no trade yet
    changes = shadow.apply_fill(fill("e2", SELL, "0.4", "110", fee="0.05", ts=2))
    assert changes is not None
    assert changes.trade is None
    assert changes.position is shadow.positions["BTCUSDT"]
    assert shadow.positions["BTCUSDT"].position.size == D("0.6")
    assert shadow.positions["BTCUSDT"].closed_qty == D("0.4")
    assert shadow.balance == D("10003.85")  # 10000 - 0.1 + 4 - 0.05

    # close 0.6 @ 120: realized (120 - 100) * 0.6 = 12
    changes = shadow.apply_fill(fill("e3", SELL, "0.6", "120", fee="0.07", ts=3))
    assert changes is not None
    t = changes.trade
    assert t is not None
    assert t.qty == D("1.0")
    assert t.entry_price == D("100")
    assert t.exit_price == D("116")  # (0.4 * 110 + 0.6 * 120) / 1.0 = (44 + 72) / 1
    assert t.realized_pnl == D("16")  # 4 + 12
    assert t.fees == D("0.22")  # 0.1 + 0.05 + 0.07
    assert t.net_pnl == D("15.78")
    assert (t.opened_ms, t.closed_ms) == (1, 3)
    assert shadow.positions == {}
    assert shadow.balance == D("10015.78")  # 10000 + 16 - 0.22


def test_flip_closes_a_trade_and_opens_the_other_side() -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_order(open_order("c1", BUY, "sig-long"))
    shadow.apply_order(open_order("c2", SELL, "sig-short"))
    shadow.apply_fill(fill("e1", BUY, "1", "100", fee="0.1", ts=1, cid="c1"))
    shadow.apply_fill(fill("e1b", BUY, "0.5", "100", fee="0.05", ts=2, cid="c1"))

    # sell 3 @ 110: closes the 1.5 long ((110 - 100) * 1.5 = 15), opens 1.5 short @ 110.
    # fee 0.3: the closing half (0.15) belongs to the trade, the opening half (0.15)
    # carries on with the new position.
    changes = shadow.apply_fill(fill("e2", SELL, "3", "110", fee="0.3", ts=3, cid="c2"))
    assert changes is not None
    t = changes.trade
    assert t is not None
    assert (t.side, t.qty, t.entry_price, t.exit_price) == (BUY, D("1.5"), D(100), D(110))
    assert t.realized_pnl == D(15)
    assert t.fees == D("0.30")  # 0.1 + 0.05 + 0.15
    assert t.net_pnl == D("14.70")
    assert (t.opened_ms, t.closed_ms) == (1, 3)
    assert t.signal_id == "sig-long"

    rec = changes.position
    assert rec is not None and rec is shadow.positions["BTCUSDT"]
    pos = rec.position
    assert (pos.size, pos.entry_price, pos.realized_pnl) == (D("-1.5"), D(110), D(0))
    assert pos.fees == D("0.15")
    assert pos.opened_ms == 3
    assert rec.closed_qty == 0 and rec.exit_notional == 0
    assert rec.signal_id == "sig-short"
    # balance: 10000 - 0.1 - 0.05 + 15 - 0.3 = 10014.55
    assert shadow.balance == D("10014.55")

    # close the short: buy 1.5 @ 105 -> (110 - 105) * 1.5 = 7.5, fee 0.15
    changes = shadow.apply_fill(fill("e3", BUY, "1.5", "105", fee="0.15", ts=4))
    assert changes is not None
    t2 = changes.trade
    assert t2 is not None
    assert (t2.side, t2.qty, t2.entry_price, t2.exit_price) == (SELL, D("1.5"), D(110), D(105))
    assert (t2.realized_pnl, t2.fees, t2.net_pnl) == (D("7.5"), D("0.30"), D("7.20"))
    assert (t2.opened_ms, t2.closed_ms) == (3, 4)
    assert shadow.positions == {}
    assert shadow.balance == D("10021.90")  # 10014.55 + 7.5 - 0.15
    # every cent of the balance change is in a trade
    assert shadow.balance - INITIAL == t.net_pnl + t2.net_pnl


@pytest.mark.parametrize(
    ("side", "qty", "price", "fee", "expected_delta"),
    [
        (BUY, "1", "100", "0.055", "-0.055"),  # adds: only the fee
        (SELL, "0.5", "120", "0.033", "9.967"),  # (120 - 100) * 0.5 - 0.033
        (SELL, "0.5", "90", "0.0248", "-5.0248"),  # (90 - 100) * 0.5 - 0.0248
        (SELL, "3", "100", "0.15", "-0.15"),  # flip at entry: no P&L
    ],
)
def test_balance_moves_by_realized_minus_fee(
    side: Side, qty: str, price: str, fee: str, expected_delta: str
) -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_fill(fill("e1", BUY, "1", "100", fee="0"))
    before = shadow.balance
    shadow.apply_fill(fill("e2", side, qty, price, fee=fee))
    assert shadow.balance - before == D(expected_delta)


def test_symbols_are_independent() -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_fill(fill("e1", BUY, "1", "100", symbol="AAA"))
    shadow.apply_fill(fill("e2", SELL, "2", "50", symbol="BBB"))
    changes = shadow.apply_fill(fill("e3", SELL, "1", "101", symbol="AAA"))
    assert changes is not None and changes.trade is not None
    assert changes.trade.symbol == "AAA"
    assert list(shadow.positions) == ["BBB"]
    assert shadow.positions["BBB"].position.size == D(-2)


def test_trade_entry_is_the_average_entry_of_the_whole_trade() -> None:
    shadow = ShadowState(INITIAL)
    shadow.apply_fill(fill("e1", BUY, "1", "100"))  # long 1 @ 100
    shadow.apply_fill(fill("e2", SELL, "0.5", "110"))  # close 0.5: +5
    shadow.apply_fill(fill("e3", BUY, "1", "130"))  # add: entry (50 + 130) / 1.5 = 120
    changes = shadow.apply_fill(fill("e4", SELL, "1.5", "140"))  # close: (140-120)*1.5 = 30
    assert changes is not None
    t = changes.trade
    assert t is not None
    # The trade bought 2 (1 @ 100, 1 @ 130) and sold 2 (0.5 @ 110, 1.5 @ 140).
    assert t.qty == D(2)
    assert t.exit_price == D("132.5")  # (55 + 210) / 2
    assert t.realized_pnl == D(35)  # 5 + 30
    # A consistent record: realized = (exit - entry) * qty -> entry = 132.5 - 35 / 2
    # = 115 = (100 + 130) / 2, the average price paid for the trade's quantity.
    assert t.entry_price == D(115)
    assert (t.exit_price - t.entry_price) * t.qty == t.realized_pnl


def test_a_fill_ahead_of_its_orders_first_event_is_counted_for_it() -> None:
    """An exchange's topics are not ordered: a stop the exchange triggered may send its
    execution before its order. The order, arriving FILLED, must not wait for that fill
    again (reconciliation would give it up and take the position whole)."""
    shadow = ShadowState(D(1000))
    shadow.apply_fill(fill("e1", Side.BUY, "100", "100", cid="mine"))
    shadow.apply_order(open_order("mine", Side.BUY, "s1"))
    shadow.apply_fill(fill("e2", Side.SELL, "100", "99", cid="bybit-stop-1"))
    stop = open_order("bybit-stop-1", Side.SELL, "")
    stop.signal_id = None
    stop.status, stop.filled_qty, stop.reduce_only = OrderStatus.FILLED, D("100"), True
    shadow.apply_order(stop)
    assert "bybit-stop-1" not in shadow.unsettled
    assert "bybit-stop-1" not in shadow.applied_qty  # settled: nothing left to wait for
    assert "BTCUSDT" not in shadow.positions
