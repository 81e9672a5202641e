"""Trading state and the circuit breaker (SPEC §6). Pure: no clock, no I/O.

Trading states: ACTIVE (everything allowed), REDUCING (only orders that reduce
exposure: a strategy's CLOSE, the service's stops and take profits, flatten), HALTED (no
order from a strategy at all, entries and CLOSE alike; the operator's flatten and
cancels pass, and so does the service's own protection of positions that exist).
``order_allowed`` is that rule, the one gateway every order is asked through.
Operators pause (REDUCING) and resume (ACTIVE); the breaker and emergency flatten set
HALTED. While the breaker is tripped nothing but an operator's reset lifts HALTED.

The breaker trips when drawdown from peak equity exceeds ``maxDrawdownPct``, the day's
loss exceeds ``maxDailyLossPct`` of the day's starting equity, or
``maxConsecutiveLosses`` losing trades close in a row. It remembers why, with figures.
Its inputs (peak equity, the day's starting equity, the losing streak) live in the same
record as the trip itself, ``RiskState``, persisted as one: a reset re-bases all of them
at once, so the breaker never trips again on the loss it was reset after.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from titan_trio.domain.equity import EquityTracker

ZERO = Decimal(0)
HUNDRED = Decimal(100)


class TradingState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def allows_entries(self) -> bool:
        return self is TradingState.ACTIVE

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


def most_restrictive(*states: TradingState) -> TradingState:
    return max(states, key=lambda s: s.severity)


class OrderPurpose(enum.StrEnum):
    """Why an order is sent; the trading state decides by this alone."""

    ENTRY = "entry"  # a strategy's new exposure (CONFIRM)
    CLOSE = "close"  # a strategy's exit (CLOSE)
    PROTECTION = "protection"  # the service's stop loss / take profit of a held position
    FLATTEN = "flatten"  # the operator's or the breaker's flatten, and cancels


_ALLOWED = {
    TradingState.ACTIVE: frozenset(OrderPurpose),
    TradingState.REDUCING: frozenset(
        {OrderPurpose.CLOSE, OrderPurpose.PROTECTION, OrderPurpose.FLATTEN}
    ),
    TradingState.HALTED: frozenset({OrderPurpose.PROTECTION, OrderPurpose.FLATTEN}),
}


def order_allowed(state: TradingState, purpose: OrderPurpose) -> bool:
    """SPEC §6: what passes in each trading state."""
    return purpose in _ALLOWED[state]


@dataclass(frozen=True, slots=True)
class BreakerLimits:
    max_drawdown_pct: Decimal
    max_daily_loss_pct: Decimal
    max_consecutive_losses: int


@dataclass(frozen=True, slots=True)
class Trip:
    cause: str  # "drawdown", "daily_loss" or "consecutive_losses"
    message: str
    figures: dict[str, str]


def evaluate(
    limits: BreakerLimits,
    *,
    equity: Decimal,
    peak_equity: Decimal,
    day_start_equity: Decimal,
    consecutive_losses: int,
) -> Trip | None:
    """The first limit exceeded, or None. Strictly greater than the limit trips."""
    if peak_equity > 0:
        drawdown = (peak_equity - equity) / peak_equity * HUNDRED
        if drawdown > limits.max_drawdown_pct:
            return Trip(
                "drawdown",
                f"drawdown {drawdown:.2f}% exceeds {limits.max_drawdown_pct}% "
                f"(equity {equity:.2f}, peak {peak_equity:.2f})",
                {
                    "drawdown_pct": f"{drawdown:.4f}",
                    "equity": f"{equity:.2f}",
                    "peak_equity": f"{peak_equity:.2f}",
                },
            )
    if day_start_equity > 0:
        loss = (day_start_equity - equity) / day_start_equity * HUNDRED
        if loss > limits.max_daily_loss_pct:
            return Trip(
                "daily_loss",
                f"daily loss {loss:.2f}% exceeds {limits.max_daily_loss_pct}% "
                f"(equity {equity:.2f}, day start {day_start_equity:.2f})",
                {
                    "daily_loss_pct": f"{loss:.4f}",
                    "equity": f"{equity:.2f}",
                    "day_start_equity": f"{day_start_equity:.2f}",
                },
            )
    if consecutive_losses >= limits.max_consecutive_losses:
        return Trip(
            "consecutive_losses",
            f"{consecutive_losses} losing trades in a row (limit {limits.max_consecutive_losses})",
            {"consecutive_losses": str(consecutive_losses)},
        )
    return None


@dataclass(slots=True)
class RiskState:
    """What is persisted, as one record: the trading state, the breaker, and the
    breaker's inputs (the equity tracker's peak and day start, the losing streak)."""

    tracker: EquityTracker
    trading_state: TradingState = TradingState.ACTIVE
    tripped: bool = False
    trip: Trip | None = None
    tripped_at_ms: int | None = None
    consecutive_losses: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # last operator actions
    marked: bool = False  # an equity mark since start (not persisted): nothing to judge before

    @classmethod
    def fresh(cls, initial_capital: Decimal) -> RiskState:
        return cls(EquityTracker(initial_capital, peak_equity=initial_capital))

    def evaluate(self, limits: BreakerLimits) -> Trip | None:
        """The breaker's verdict on the latest mark and streak (None before any mark)."""
        t = self.tracker
        if self.tripped or not self.marked:
            return None
        return evaluate(
            limits,
            equity=t.last_equity,
            peak_equity=t.peak_equity,
            day_start_equity=t.day_start_equity,
            consecutive_losses=self.consecutive_losses,
        )

    def mark(self, equity: Decimal, day: str) -> bool:
        """A new equity mark; True when peak equity or the day changed (save it)."""
        t = self.tracker
        before = (t.peak_equity, t.day)
        t.update(equity, day)
        self.marked = True
        return (t.peak_equity, t.day) != before

    def record_trade(self, net_pnl: Decimal) -> None:
        self.consecutive_losses = self.consecutive_losses + 1 if net_pnl < 0 else 0

    def trip_breaker(self, trip: Trip, now_ms: int) -> bool:
        """Trip (HALTED); False when it was already tripped."""
        if self.tripped:
            return False
        self.tripped = True
        self.trip = trip
        self.tripped_at_ms = now_ms
        self.trading_state = TradingState.HALTED
        return True

    def reset_breaker(
        self,
        who: str,
        now_ms: int,
        equity: Decimal,
        day: str,
        then: TradingState = TradingState.ACTIVE,
    ) -> bool:
        """Operator reset: clears the breaker and re-bases what tripped it (peak equity
        and the day's starting equity become ``equity``, the losing streak starts again),
        leaving trading in ``then`` (ACTIVE, or REDUCING when the operator asks).
        False when there was nothing to reset."""
        if then is TradingState.HALTED:
            raise ValueError("a reset leaves trading ACTIVE or REDUCING")
        if not self.tripped:
            return False
        self._note("breaker_reset", who, now_ms)
        self.tripped = False
        self.trip = None
        self.tripped_at_ms = None
        self.consecutive_losses = 0
        self.tracker.rebase(equity, day)
        self.trading_state = then
        return True

    def pause(self, who: str, now_ms: int) -> None:
        if self.trading_state is TradingState.ACTIVE:
            self.trading_state = TradingState.REDUCING
        self._note("pause", who, now_ms)

    def resume(self, who: str, now_ms: int) -> str | None:
        """Back to ACTIVE, or the reason it cannot be (the breaker is tripped)."""
        if self.tripped:
            return "the circuit breaker is tripped; reset it first"
        self.trading_state = TradingState.ACTIVE
        self._note("resume", who, now_ms)
        return None

    def halt(self, who: str, now_ms: int) -> None:
        self.trading_state = TradingState.HALTED
        self._note("halt", who, now_ms)

    def _note(self, action: str, who: str, now_ms: int) -> None:
        self.history = [*self.history[-19:], {"action": action, "by": who, "at": now_ms}]

    def to_json(self) -> dict[str, Any]:
        return {
            "trading_state": self.trading_state.value,
            "tripped": self.tripped,
            "trip": None
            if self.trip is None
            else {
                "cause": self.trip.cause,
                "message": self.trip.message,
                "figures": self.trip.figures,
            },
            "tripped_at_ms": self.tripped_at_ms,
            "consecutive_losses": self.consecutive_losses,
            "history": self.history,
            "peak_equity": str(self.tracker.peak_equity),
            "day": self.tracker.day,
            "day_start_equity": str(self.tracker.day_start_equity),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], initial_capital: Decimal) -> RiskState:
        """The record as saved. A record written before the breaker's inputs moved into
        it has no peak: ``tracker`` then keeps the initial capital as its peak."""
        trip = data.get("trip")
        tracker = EquityTracker(initial_capital, peak_equity=initial_capital)
        if data.get("peak_equity") is not None:
            tracker.peak_equity = Decimal(data["peak_equity"])
            tracker.day = str(data.get("day") or "")
            tracker.day_start_equity = Decimal(data.get("day_start_equity") or "0")
        return cls(
            tracker=tracker,
            trading_state=TradingState(data["trading_state"]),
            tripped=bool(data["tripped"]),
            trip=None
            if trip is None
            else Trip(trip["cause"], trip["message"], dict(trip["figures"])),
            tripped_at_ms=data.get("tripped_at_ms"),
            consecutive_losses=int(data.get("consecutive_losses", 0)),
            history=list(data.get("history", [])),
        )
