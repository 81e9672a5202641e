"""Equity, peak equity and drawdown, and the equity phase of SPEC §4."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)
HUNDRED = Decimal(100)


@dataclass(slots=True)
class EquityTracker:
    """Peak equity and drawdown from it; the day's starting equity for the daily loss."""

    initial_capital: Decimal
    peak_equity: Decimal
    day: str = ""  # YYYY-MM-DD (UTC) that day_start_equity belongs to
    day_start_equity: Decimal = ZERO
    last_equity: Decimal = ZERO

    def update(self, equity: Decimal, day: str) -> None:
        if day != self.day:
            self.day = day
            self.day_start_equity = equity
        if equity > self.peak_equity:
            self.peak_equity = equity
        self.last_equity = equity

    def rebase(self, equity: Decimal, day: str) -> None:
        """Start judging from ``equity`` afresh: it is the peak and the day's start."""
        self.peak_equity = equity
        self.day = day
        self.day_start_equity = equity
        self.last_equity = equity

    @property
    def drawdown_pct(self) -> Decimal:
        if self.peak_equity <= 0:
            return ZERO
        return max(ZERO, (self.peak_equity - self.last_equity) / self.peak_equity * HUNDRED)

    @property
    def daily_pnl(self) -> Decimal:
        return self.last_equity - self.day_start_equity


def equity_phase(equity: Decimal, phase1_max: Decimal, phase2_max: Decimal) -> int:
    """Phase 1 below ``phase1_max``, phase 2 below ``phase2_max``, phase 3 above."""
    if equity < phase1_max:
        return 1
    if equity < phase2_max:
        return 2
    return 3
