"""Position P&L math on linear perpetuals, with exact Decimals."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from titan_trio.domain.orders import Side
from titan_trio.domain.positions import FillEffect, Position

D = Decimal
BUY, SELL = Side.BUY, Side.SELL


@dataclass(frozen=True)
class Case:
    name: str
    fills: list[tuple[Side, str, str]]  # side, qty, price
    size: str
    entry: str
    realized: str
    last_effect: FillEffect


CASES = [
    Case("open long", [(BUY, "2", "100")], "2", "100", "0", FillEffect(D(0), D(0), D(2), None)),
    Case(
        # (1 * 100 + 3 * 120) / 4 = 460 / 4 = 115
        "add to long: weighted entry",
        [(BUY, "1", "100"), (BUY, "3", "120")],
        "4",
        "115",
        "0",
        FillEffect(D(0), D(0), D(3), None),
    ),
    Case(
        # (110 - 100) * 0.5 = 5
        "partial close of long",
        [(BUY, "2", "100"), (SELL, "0.5", "110")],
        "1.5",
        "100",
        "5",
        FillEffect(D(5), D("0.5"), D(0), D(100)),
    ),
    Case(
        # (90 - 100) * 2 = -20; flat -> entry 0
        "full close of long at a loss",
        [(BUY, "2", "100"), (SELL, "2", "90")],
        "0",
        "0",
        "-20",
        FillEffect(D(-20), D(2), D(0), D(100)),
    ),
    Case(
        "open short",
        [(SELL, "2", "100")],
        "-2",
        "100",
        "0",
        FillEffect(D(0), D(0), D(2), None),
    ),
    Case(
        # (2 * 100 + 2 * 120) / 4 = 440 / 4 = 110
        "add to short: weighted entry",
        [(SELL, "2", "100"), (SELL, "2", "120")],
        "-4",
        "110",
        "0",
        FillEffect(D(0), D(0), D(2), None),
    ),
    Case(
        # short closed lower is a profit: (100 - 90) * 1 = +10
        "short partial close in profit",
        [(SELL, "2", "100"), (BUY, "1", "90")],
        "-1",
        "100",
        "10",
        FillEffect(D(10), D(1), D(0), D(100)),
    ),
    Case(
        # short closed higher is a loss: (100 - 105) * 2 = -10
        "short full close at a loss",
        [(SELL, "2", "100"), (BUY, "2", "105")],
        "0",
        "0",
        "-10",
        FillEffect(D(-10), D(2), D(0), D(100)),
    ),
    Case(
        # close 1 long: (110 - 100) * 1 = 10; the remaining 2 open short at 110
        "flip long to short",
        [(BUY, "1", "100"), (SELL, "3", "110")],
        "-2",
        "110",
        "10",
        FillEffect(D(10), D(1), D(2), D(100)),
    ),
    Case(
        # close 1 short: (100 - 90) * 1 = 10; 0.5 opens long at 90
        "flip short to long",
        [(SELL, "1", "100"), (BUY, "1.5", "90")],
        "0.5",
        "90",
        "10",
        FillEffect(D(10), D(1), D("0.5"), D(100)),
    ),
    Case(
        # partial closes accumulate: (110-100)*0.5 + (90-100)*0.25 = 5 - 2.5 = 2.5
        "two partial closes",
        [(BUY, "1", "100"), (SELL, "0.5", "110"), (SELL, "0.25", "90")],
        "0.25",
        "100",
        "2.5",
        FillEffect(D("-2.5"), D("0.25"), D(0), D(100)),
    ),
    Case(
        # open 1 @ 100, close 0.5 @ 110 (+5), add 0.5 @ 120 -> entry (50 + 60) / 1 = 110
        "add after partial close re-averages the remainder",
        [(BUY, "1", "100"), (SELL, "0.5", "110"), (BUY, "0.5", "120")],
        "1",
        "110",
        "5",
        FillEffect(D(0), D(0), D("0.5"), None),
    ),
    Case(
        # BTC-sized: (30496.9 - 30003.2) * 0.100 = 493.7 * 0.1 = 49.37
        "btc round trip",
        [(BUY, "0.100", "30003.2"), (SELL, "0.100", "30496.9")],
        "0",
        "0",
        "49.37",
        FillEffect(D("49.37"), D("0.100"), D(0), D("30003.2")),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_pnl_table(case: Case) -> None:
    pos = Position("BTCUSDT")
    effect = None
    for side, qty, price in case.fills:
        effect = pos.apply_fill(side, D(qty), D(price))
    assert pos.size == D(case.size)
    assert pos.entry_price == D(case.entry)
    assert pos.realized_pnl == D(case.realized)
    assert effect == case.last_effect
    assert pos.fees == 0


def test_flat_position_properties() -> None:
    pos = Position("BTCUSDT")
    pos.apply_fill(BUY, D("2"), D("100"))
    pos.apply_fill(SELL, D("2"), D("100"))
    assert pos.is_flat
    assert pos.side is None
    assert pos.abs_size == 0
    assert pos.entry_price == 0
    assert pos.unrealized_pnl(D("12345")) == 0


def test_side_and_abs_size() -> None:
    long = Position("X", size=D("1.5"), entry_price=D(10))
    short = Position("X", size=D("-1.5"), entry_price=D(10))
    assert long.side is BUY and short.side is SELL
    assert long.abs_size == short.abs_size == D("1.5")
    assert long.notional(D(20)) == short.notional(D(20)) == D(30)


@pytest.mark.parametrize(
    ("size", "entry", "mark", "expected"),
    [
        ("2", "100", "103", "6"),  # long up: (103 - 100) * 2
        ("2", "100", "97.5", "-5"),  # long down
        ("-2", "100", "103", "-6"),  # short up: loss
        ("-2", "100", "97.5", "5"),  # short down: profit
        ("0.010", "30003.4", "30000.0", "-0.034"),
        ("0", "0", "100", "0"),
    ],
)
def test_unrealized_pnl(size: str, entry: str, mark: str, expected: str) -> None:
    pos = Position("BTCUSDT", size=D(size), entry_price=D(entry))
    assert pos.unrealized_pnl(D(mark)) == D(expected)


def test_fees_accumulate_and_are_not_in_realized() -> None:
    pos = Position("BTCUSDT")
    pos.apply_fill(BUY, D("1"), D("100"), fee=D("0.055"))
    pos.apply_fill(BUY, D("1"), D("100"), fee=D("0.02"))
    pos.apply_fill(SELL, D("2"), D("110"), fee=D("0.121"))
    assert pos.fees == D("0.196")
    assert pos.realized_pnl == D("20")  # gross: (110 - 100) * 2
    assert pos.is_flat


def test_opened_ms_set_on_open_kept_on_add_reset_on_flip() -> None:
    pos = Position("BTCUSDT")
    pos.apply_fill(BUY, D("1"), D("100"), now_ms=1000)
    assert pos.opened_ms == 1000
    pos.apply_fill(BUY, D("1"), D("100"), now_ms=2000)
    assert pos.opened_ms == 1000
    pos.apply_fill(SELL, D("1"), D("100"), now_ms=3000)
    assert pos.opened_ms == 1000
    pos.apply_fill(SELL, D("3"), D("100"), now_ms=4000)  # flip
    assert pos.opened_ms == 4000
    assert pos.size == D("-2")


@pytest.mark.parametrize("qty", ["0", "-1"])
def test_non_positive_fill_raises(qty: str) -> None:
    pos = Position("BTCUSDT", size=D(1), entry_price=D(100))
    before = copy.deepcopy(pos)
    with pytest.raises(ValueError, match="positive"):
        pos.apply_fill(BUY, D(qty), D(100), fee=D(1))
    assert pos == before


# ----- property: P&L equals the cash flow ---------------------------------------------

qtys = st.integers(min_value=1, max_value=5000).map(lambda n: D(n) * D("0.001"))
prices = st.integers(min_value=1, max_value=1_000_000).map(lambda n: D(n) * D("0.1"))
fills = st.lists(st.tuples(st.sampled_from([BUY, SELL]), qtys, prices), max_size=25)

# The weighted-average entry price is a division, which Decimal rounds at 28 significant
# digits (e.g. entry 302/3). Everything else is exact, so the identity holds to far
# better than any money amount.
TOLERANCE = D("1e-12")


@given(fills=fills, mark=prices)
def test_realized_plus_unrealized_equals_cash_flow(
    fills: list[tuple[Side, Decimal, Decimal]], mark: Decimal
) -> None:
    pos = Position("BTCUSDT")
    realized_from_effects = D(0)
    cash = D(0)
    size = D(0)
    for side, qty, price in fills:
        before = abs(pos.size)
        effect = pos.apply_fill(side, qty, price)
        realized_from_effects += effect.realized_pnl
        assert effect.closed_qty + effect.opened_qty == qty
        assert effect.closed_qty <= before
        signed = qty if side is BUY else -qty
        cash -= signed * price
        size += signed
    assert pos.size == size
    assert pos.realized_pnl == realized_from_effects
    if pos.is_flat:
        assert pos.entry_price == 0
    cash_flow_pnl = cash + size * mark
    total = pos.realized_pnl + pos.unrealized_pnl(mark)
    assert abs(total - cash_flow_pnl) <= TOLERANCE, (total, cash_flow_pnl)


@given(
    fills=st.lists(
        st.tuples(
            st.sampled_from([BUY, SELL]),
            qtys,
            prices,
            st.integers(min_value=0, max_value=10_000).map(lambda n: D(n) * D("0.0001")),
        ),
        max_size=20,
    )
)
def test_fees_are_the_sum_of_fill_fees(
    fills: list[tuple[Side, Decimal, Decimal, Decimal]],
) -> None:
    pos = Position("BTCUSDT")
    for side, qty, price, fee in fills:
        pos.apply_fill(side, qty, price, fee)
    assert pos.fees == sum((f[3] for f in fills), D(0))
