"""Trading state and the circuit breaker (SPEC §6). Pure: no clock, no I/O.

Trading states: ACTIVE (everything allowed), REDUCING (only orders that reduce
exposure: CLOSE, stops, flatten), HALTED (no new orders; cancels and flatten still pass).
Operators pause (REDUCING) and resume (ACTIVE); the breaker and emergency flatten set
HALTED. While the breaker is tripped nothing but an operator's reset lifts HALTED.

The breaker trips when drawdown from peak equity exceeds ``maxDrawdownPct``, the day's
loss exceeds ``maxDailyLossPct`` of the day's starting equity, or
``maxConsecutiveLosses`` losing trades close in a row. It remembers why, with figures.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ZERO = Decimal(0)
HUNDRED = Decimal(100)


class TradingState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def allows_entries(self) -> bool:
        return self is TradingState.ACTIVE


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
    """What is persisted: the trading state, the breaker, the losing streak."""

    trading_state: TradingState = TradingState.ACTIVE
    tripped: bool = False
    trip: Trip | None = None
    tripped_at_ms: int | None = None
    consecutive_losses: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # last operator actions

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

    def reset_breaker(self, who: str, now_ms: int) -> bool:
        """Operator reset: clears the breaker and the losing streak, back to ACTIVE.
        False when there was nothing to reset."""
        if not self.tripped:
            return False
        self._note("breaker_reset", who, now_ms)
        self.tripped = False
        self.trip = None
        self.tripped_at_ms = None
        self.consecutive_losses = 0
        self.trading_state = TradingState.ACTIVE
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
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RiskState:
        trip = data.get("trip")
        return cls(
            trading_state=TradingState(data["trading_state"]),
            tripped=bool(data["tripped"]),
            trip=None
            if trip is None
            else Trip(trip["cause"], trip["message"], dict(trip["figures"])),
            tripped_at_ms=data.get("tripped_at_ms"),
            consecutive_losses=int(data.get("consecutive_losses", 0)),
            history=list(data.get("history", [])),
        )
