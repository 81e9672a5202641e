"""Instrument rounding and size filters, equity tracking and phases, the price book."""

from __future__ import annotations

from decimal import Decimal

import pytest

from titan_trio.domain.equity import EquityTracker, equity_phase
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.quotes import PriceBook, Quote

D = Decimal

BTC = Instrument(
    symbol="BTCUSDT",
    tick_size=D("0.10"),
    qty_step=D("0.001"),
    min_qty=D("0.001"),
    min_notional=D("5"),
    max_leverage=D("100"),
)
HALF = Instrument("HALFUSDT", D("0.5"), D("10"), D("10"), D("5"), D("20"))


# ----- rounding -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inst", "qty", "expected"),
    [
        (BTC, "0.0019", "0.001"),
        (BTC, "0.123456", "0.123"),
        (BTC, "0.123", "0.123"),
        (BTC, "1", "1"),
        (BTC, "0.0009", "0"),
        (HALF, "129", "120"),
        (HALF, "130", "130"),
        (HALF, "9.99", "0"),
    ],
)
def test_floor_qty(inst: Instrument, qty: str, expected: str) -> None:
    assert inst.floor_qty(D(qty)) == D(expected)


@pytest.mark.parametrize(
    ("inst", "price", "floor", "ceil"),
    [
        (BTC, "30000.37", "30000.3", "30000.4"),
        (BTC, "30000.30", "30000.3", "30000.3"),  # on tick: both keep it
        (BTC, "30003.30003", "30003.3", "30003.4"),
        (BTC, "29997.29997", "29997.2", "29997.3"),
        (BTC, "0.05", "0", "0.1"),
        (HALF, "100.74", "100.5", "101.0"),
        (HALF, "100.5", "100.5", "100.5"),
        (HALF, "100.01", "100.0", "100.5"),
    ],
)
def test_floor_and_ceil_price(inst: Instrument, price: str, floor: str, ceil: str) -> None:
    assert inst.floor_price(D(price)) == D(floor)
    assert inst.ceil_price(D(price)) == D(ceil)
    assert inst.is_on_tick(inst.floor_price(D(price)))
    assert inst.is_on_tick(inst.ceil_price(D(price)))


def test_is_on_tick_and_step() -> None:
    assert BTC.is_on_tick(D("30000.1"))
    assert BTC.is_on_tick(D("30000"))
    assert not BTC.is_on_tick(D("30000.05"))
    assert BTC.is_on_step(D("0.123"))
    assert not BTC.is_on_step(D("0.0015"))


# ----- size filters -------------------------------------------------------------------


def test_size_problem_below_min_qty() -> None:
    problem = BTC.size_problem(D("0.0005"), D("30000"))
    assert problem == "quantity 0.0005 is below the minimum 0.001 for BTCUSDT"


def test_size_problem_off_step() -> None:
    problem = BTC.size_problem(D("0.0015"), D("30000"))
    assert problem == "quantity 0.0015 is not a multiple of the step 0.001"


def test_size_problem_below_min_notional() -> None:
    # 0.001 * 4000 = 4 < 5
    problem = BTC.size_problem(D("0.001"), D("4000"))
    assert problem == "notional 4.00 is below the minimum 5 for BTCUSDT"


def test_size_problem_checks_min_qty_before_step() -> None:
    problem = BTC.size_problem(D("0.0001"), D("30000"))
    assert problem is not None and "below the minimum 0.001" in problem


@pytest.mark.parametrize(
    ("qty", "price"),
    [
        ("0.001", "5000"),  # notional exactly 5: allowed
        ("0.001", "30000"),
        ("1.234", "30000.1"),
    ],
)
def test_size_ok(qty: str, price: str) -> None:
    assert BTC.size_problem(D(qty), D(price)) is None


# ----- equity -------------------------------------------------------------------------


def test_equity_tracker_peak_drawdown_and_day_rollover() -> None:
    t = EquityTracker(initial_capital=D(1000), peak_equity=D(1000))
    t.update(D(1000), "2024-01-01")
    assert (t.day, t.day_start_equity, t.peak_equity) == ("2024-01-01", D(1000), D(1000))
    assert t.drawdown_pct == 0
    assert t.daily_pnl == 0

    t.update(D(1200), "2024-01-01")
    assert t.peak_equity == D(1200)
    assert t.day_start_equity == D(1000)
    assert t.daily_pnl == D(200)
    assert t.drawdown_pct == 0

    t.update(D(900), "2024-01-01")
    assert t.peak_equity == D(1200)  # a peak never falls
    assert t.drawdown_pct == D(25)  # (1200 - 900) / 1200 * 100
    assert t.daily_pnl == D(-100)

    t.update(D(960), "2024-01-02")  # new day: the day starts from this equity
    assert t.day == "2024-01-02"
    assert t.day_start_equity == D(960)
    assert t.daily_pnl == 0
    assert t.drawdown_pct == D(20)  # (1200 - 960) / 1200 * 100

    t.update(D(1020), "2024-01-02")
    assert t.day_start_equity == D(960)
    assert t.daily_pnl == D(60)
    assert t.drawdown_pct == D(15)

    t.update(D(1300), "2024-01-02")
    assert t.peak_equity == D(1300)
    assert t.drawdown_pct == 0
    assert t.last_equity == D(1300)


def test_equity_tracker_initial_peak_counts() -> None:
    t = EquityTracker(initial_capital=D(1000), peak_equity=D(2000))
    t.update(D(1500), "2024-01-01")
    assert t.peak_equity == D(2000)
    assert t.drawdown_pct == D(25)


def test_drawdown_with_non_positive_peak_is_zero() -> None:
    t = EquityTracker(initial_capital=D(0), peak_equity=D(0))
    t.update(D(-5), "2024-01-01")
    assert t.drawdown_pct == 0


@pytest.mark.parametrize(
    ("equity", "phase"),
    [
        ("0", 1),
        ("999.99", 1),
        ("999.999999", 1),
        ("1000", 2),
        ("1000.00", 2),
        ("4999.99", 2),
        ("5000", 3),
        ("5000.01", 3),
        ("1000000", 3),
    ],
)
def test_equity_phase_boundaries(equity: str, phase: int) -> None:
    assert equity_phase(D(equity), D(1000), D(5000)) == phase


# ----- price book ---------------------------------------------------------------------


def q(ts: int, bid: str = "100", ask: str = "101", symbol: str = "BTCUSDT") -> Quote:
    return Quote(symbol, D(bid), D(ask), D(1), D(1), D(bid), ts, "test")


def test_quote_mid_and_spread() -> None:
    quote = q(1, "99", "101")
    assert quote.mid == D(100)
    assert quote.spread_pct == D(2)


def test_price_book_ignores_older_quotes() -> None:
    book = PriceBook()
    assert book.get("BTCUSDT") is None
    assert book.mark("BTCUSDT") is None
    first = q(1000, "100", "102")
    assert book.update(first) is True
    assert book.update(q(999, "50", "52")) is False  # out of order: ignored
    assert book.get("BTCUSDT") is first
    assert book.mark("BTCUSDT") == D(101)
    assert book.updates == 1

    newer = q(1001, "110", "112")
    assert book.update(newer) is True
    assert book.get("BTCUSDT") is newer
    assert book.updates == 2
    assert book.update(q(1000, "1", "2")) is False
    assert book.get("BTCUSDT") is newer


def test_price_book_same_timestamp_replaces() -> None:
    book = PriceBook()
    book.update(q(1000, "100", "102"))
    again = q(1000, "101", "103")
    assert book.update(again) is True
    assert book.get("BTCUSDT") is again


def test_price_book_symbols_are_independent() -> None:
    book = PriceBook()
    book.update(q(1000, symbol="BTCUSDT"))
    assert book.update(q(10, symbol="ETHUSDT")) is True  # older than BTC's, other symbol
    assert book.symbols() == ["BTCUSDT", "ETHUSDT"]


def test_stops_and_targets_round_toward_the_position() -> None:
    btc = Instrument(
        "BTCUSDT", Decimal("0.1"), Decimal("0.001"), Decimal("0.001"), Decimal(5), Decimal(100)
    )
    # a long's stop below it rounds up, a short's above it rounds down: never wider
    assert btc.stop_price(Decimal("93099.95"), long=True) == Decimal("93100.0")
    assert btc.stop_price(Decimal("96900.05"), long=False) == Decimal("96900.0")
    # a target rounds toward the position too: reached sooner, never later
    assert btc.target_price(Decimal("96900.05"), long=True) == Decimal("96900.0")
    assert btc.target_price(Decimal("93099.95"), long=False) == Decimal("93100.0")
    assert btc.stop_price(Decimal("93100.0"), long=True) == Decimal("93100.0")  # on the grid
