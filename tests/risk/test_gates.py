"""Entry gates: book freshness, spread, slippage, positions."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from ipc.protocol import Reason
from titan_trio.domain.orders import Side
from titan_trio.domain.quotes import Quote
from titan_trio.risk.gates import (
    Exposure,
    L2Limits,
    check_book,
    check_positions,
    estimated_slippage_pct,
)
from titan_trio.risk.sizing import EntryRejected

LIMITS = L2Limits(max_age_ms=1000, max_spread_pct=D("0.1"), max_slippage_pct=D("0.2"))
Q = Quote("BTCUSDT", D("99.9"), D("100.1"), D("5"), D("5"), D("100"), ts_ms=10_000, source="test")


def test_fresh_tight_book_passes() -> None:
    quote = Quote("BTCUSDT", D("99.99"), D("100.01"), D("5"), D("5"), D("100"), 10_000, "t")
    check_book(quote, 500, Side.BUY, D("1"), LIMITS)


@pytest.mark.parametrize(
    ("quote", "age_ms", "qty", "limits", "reason"),
    [
        (None, None, D("1"), LIMITS, Reason.L2_STALE),
        (Q, 1001, D("1"), LIMITS, Reason.L2_STALE),
        # spread 0.2 / 100 = 0.2 % > 0.1 %
        (Q, 0, D("1"), LIMITS, Reason.SPREAD_TOO_WIDE),
        # within the touch: half spread 0.1 % <= 0.2 %; ten touch sizes beyond: too much
        (Q, 0, D("55"), L2Limits(1000, D("1"), D("0.2")), Reason.SLIPPAGE_TOO_HIGH),
    ],
)
def test_book_refusals(quote, age_ms, qty, limits, reason) -> None:
    with pytest.raises(EntryRejected) as info:
        check_book(quote, age_ms, Side.BUY, qty, limits)
    assert info.value.reason is reason


def test_slippage_grows_with_size_beyond_the_touch() -> None:
    within = estimated_slippage_pct(Q, Side.BUY, D("5"))
    assert within == D("0.1")  # (100.1 - 100) / 100
    assert estimated_slippage_pct(Q, Side.SELL, D("5")) == D("0.1")
    beyond = [estimated_slippage_pct(Q, Side.BUY, D(q)) for q in ("6", "10", "20", "50")]
    assert beyond == sorted(beyond)
    assert beyond[0] > within


def test_positions_gate() -> None:
    held = Exposure({"BTCUSDT": Side.BUY, "ETHUSDT": Side.SELL}, D("0"))
    check_positions("SOLUSDT", Side.BUY, held, 3, False)
    with pytest.raises(EntryRejected) as info:
        check_positions("SOLUSDT", Side.BUY, held, 2, False)
    assert info.value.reason is Reason.MAX_POSITIONS
    with pytest.raises(EntryRejected) as info:
        check_positions("BTCUSDT", Side.BUY, held, 5, False)
    assert info.value.reason is Reason.MAX_POSITIONS
    check_positions("BTCUSDT", Side.BUY, held, 2, True)  # pyramiding does not add a position
    with pytest.raises(EntryRejected) as info:
        check_positions("BTCUSDT", Side.SELL, held, 5, True)
    assert info.value.reason is Reason.INVALID_SIGNAL
    assert "CLOSE it first" in info.value.message


def test_slippage_walks_the_depth() -> None:
    deep = Quote(
        "BTCUSDT",
        D("99.9"),
        D("100.1"),
        D("5"),
        D("5"),
        D("100"),
        0,
        "t",
        bid_levels=((D("99.8"), D("5")),),
        ask_levels=((D("100.2"), D("5")), (D("100.3"), D("10"))),
    )
    assert estimated_slippage_pct(deep, Side.BUY, D("10")) == D("0.15")  # avg 100.15
    assert estimated_slippage_pct(deep, Side.BUY, D("20")) == D("0.225")  # avg 100.225
    # past the last level: one spread beyond it (100.3 + 0.2 = 100.5 for the last 10)
    expected = D("3009.5") / D(30) - D(100)  # mid is 100, so this is the percent
    assert estimated_slippage_pct(deep, Side.BUY, D("30")) == expected
    assert estimated_slippage_pct(deep, Side.SELL, D("10")) == D("0.15")  # avg 99.85
