"""The circuit breaker's rules and the trading state machine."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from titan_trio.risk.breaker import (
    BreakerLimits,
    OrderPurpose,
    RiskState,
    TradingState,
    evaluate,
    order_allowed,
)

LIMITS = BreakerLimits(D("7"), D("5"), 5)


def judge(equity: str, peak: str = "10000", day_start: str = "10000", losses: int = 0):
    return evaluate(
        LIMITS,
        equity=D(equity),
        peak_equity=D(peak),
        day_start_equity=D(day_start),
        consecutive_losses=losses,
    )


@pytest.mark.parametrize(
    ("args", "cause"),
    [
        (("9300",), "daily_loss"),  # exactly 7 % from peak (not more), but 7 % > 5 % today
        (("9300", "10000", "9500"), None),  # 7 % from peak (not more), 2.1 % on the day
        (("9299.99", "10000", "9000"), "drawdown"),
        (("9499.99", "10000", "10000"), "daily_loss"),
        (("9600", "10000", "10000", 4), None),
        (("9600", "10000", "10000", 5), "consecutive_losses"),
        (("12000", "13000", "12100"), "drawdown"),  # 7.69 % from a peak made today
    ],
)
def test_limits(args, cause) -> None:
    trip = judge(*args)
    assert (trip.cause if trip else None) == cause
    if trip is not None:
        assert trip.message and trip.figures


def test_trip_is_sticky_until_an_operator_resets() -> None:
    state = RiskState.fresh(D("10000"))
    trip = judge("9000")
    assert trip is not None
    assert state.trip_breaker(trip, 1000)
    assert state.trading_state is TradingState.HALTED
    assert not state.trip_breaker(trip, 2000)  # already tripped
    assert state.tripped_at_ms == 1000
    assert state.resume("op", 3000) is not None  # cannot resume while tripped
    assert state.trading_state is TradingState.HALTED
    restored = RiskState.from_json(state.to_json(), D("10000"))
    assert restored.tripped and restored.trip == trip
    assert restored.trading_state is TradingState.HALTED
    assert restored.reset_breaker("op", 4000, D("9000"), "2026-11-30")
    assert restored.trading_state is TradingState.ACTIVE
    assert not restored.reset_breaker("op", 5000, D("9000"), "2026-11-30")
    assert restored.history[-1] == {"action": "breaker_reset", "by": "op", "at": 4000}


def test_pause_resume_and_losing_streak() -> None:
    state = RiskState.fresh(D("10000"))
    state.pause("op", 1)
    assert state.trading_state is TradingState.REDUCING
    assert not state.trading_state.allows_entries
    assert state.resume("op", 2) is None
    assert state.trading_state.allows_entries
    for pnl in ("-1", "-2", "3", "-1", "-1"):
        state.record_trade(D(pnl))
    assert state.consecutive_losses == 2
    state.record_trade(D("0"))  # break-even ends a losing streak
    assert state.consecutive_losses == 0


def test_a_reset_rebases_peak_day_start_and_streak_so_the_same_loss_does_not_trip_again() -> None:
    state = RiskState.fresh(D("10000"))
    assert state.mark(D("10000"), "2026-11-30")
    state.consecutive_losses = 2
    assert not state.mark(D("9200"), "2026-11-30")  # 8 % down: drawdown and daily loss
    trip = state.evaluate(LIMITS)
    assert trip is not None and trip.cause == "drawdown"
    state.trip_breaker(trip, 1)
    assert state.reset_breaker("op", 2, D("9200"), "2026-11-30", TradingState.REDUCING)
    assert state.trading_state is TradingState.REDUCING
    t = state.tracker
    assert (t.peak_equity, t.day_start_equity, state.consecutive_losses) == (
        D("9200"),
        D("9200"),
        0,
    )
    state.mark(D("9190"), "2026-11-30")  # the next mark, a little lower
    assert state.evaluate(LIMITS) is None
    # one record: what a restart reads back is the re-based breaker
    restored = RiskState.from_json(state.to_json(), D("10000"))
    assert restored.tracker.peak_equity == D("9200")
    assert restored.tracker.day_start_equity == D("9200")
    assert restored.evaluate(LIMITS) is None  # no mark yet after the restart
    with pytest.raises(ValueError):
        state.reset_breaker("op", 3, D("1"), "2026-11-30", TradingState.HALTED)


@pytest.mark.parametrize(
    ("state", "allowed"),
    [
        (TradingState.ACTIVE, {"entry", "close", "protection", "flatten"}),
        (TradingState.REDUCING, {"close", "protection", "flatten"}),
        (TradingState.HALTED, {"protection", "flatten"}),
    ],
)
def test_what_each_trading_state_lets_through(state: TradingState, allowed: set[str]) -> None:
    assert {p.value for p in OrderPurpose if order_allowed(state, p)} == allowed
