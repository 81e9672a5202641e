"""Execution styles (SPEC §6), as pure decisions: which style, which price, when to stop.

- maker: a post-only limit at our side's touch (the bid for a buy), inside the entry
  zone; cancelled after ``execution.makerTimeoutMs`` if unfilled; partial fills kept.
- taker: a limit at the far touch (the ask for a buy), re-priced to the new touch every
  ``execution.chaseIntervalMs`` for at most ``execution.chaseMaxMs`` and at most
  ``execution.chaseMaxTicks`` ticks from where it started, never outside the entry zone;
  then whatever is left is cancelled.

Phase 1 uses maker execution, phases 2 and 3 taker; a signal whose ``velocity`` is at
least ``execution.takerVelocity`` (the strategy's own scale) is executed taker in any
phase, because a fast market does not wait for a resting order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from titan_trio.domain.orders import Side
from titan_trio.domain.quotes import Quote


class Style(enum.StrEnum):
    MAKER = "maker"
    TAKER = "taker"


def choose_style(
    phase_execution: str, velocity: float | None, taker_velocity: float | None
) -> Style:
    if velocity is not None and taker_velocity is not None and velocity >= taker_velocity:
        return Style.TAKER
    return Style(phase_execution)


@dataclass(frozen=True, slots=True)
class EntryPlan:
    style: Style
    side: Side
    zone_min: Decimal
    zone_max: Decimal
    tick: Decimal
    start_price: Decimal
    max_ticks: int

    def chase_price(self, quote: Quote) -> Decimal:
        """Where a taker order should be now: the far touch, bounded by the chase limit
        and the entry zone."""
        if self.side is Side.BUY:
            bound = min(self.start_price + self.tick * self.max_ticks, self.zone_max)
            return min(quote.ask, bound)
        bound = max(self.start_price - self.tick * self.max_ticks, self.zone_min)
        return max(quote.bid, bound)


def entry_price(
    style: Style, side: Side, quote: Quote, zone_min: Decimal, zone_max: Decimal
) -> Decimal | None:
    """The first price for an entry, or None when the book is outside the entry zone."""
    if style is Style.TAKER:
        touch = quote.ask if side is Side.BUY else quote.bid
        return touch if zone_min <= touch <= zone_max else None
    # Maker: our side of the book, pulled inside the zone, never crossing.
    if side is Side.BUY:
        price = min(quote.bid, zone_max)
        return price if price >= zone_min and price < quote.ask else None
    price = max(quote.ask, zone_min)
    return price if price <= zone_max and price > quote.bid else None
