"""What the paper exchange's own orders have taken from the current quote.

The book a feed sends does not see paper orders: without this, two orders on the same
quote would both fill against the same level, and the resting remainder of a limit order
would be offered the touch it had just taken. Each level gives its size once per quote:
what was taken is counted per symbol until a different quote for that symbol arrives (a
quote equal to the last one is the same book). Pure; nothing here outlives a quote, so
nothing is persisted.
"""

from __future__ import annotations

from decimal import Decimal

from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Side
from titan_trio.domain.quotes import Quote

ZERO = Decimal(0)


class QuoteLiquidity:
    def __init__(self) -> None:
        # Per symbol, the quote being matched and what its levels have given so far, by
        # (taker side, level index; 0 is the touch).
        self._taken: dict[str, tuple[Quote, dict[tuple[Side, int], Decimal]]] = {}

    def _taken_on(self, quote: Quote) -> dict[tuple[Side, int], Decimal]:
        held = self._taken.get(quote.symbol)
        if held is None or held[0] != quote:
            held = (quote, {})
            self._taken[quote.symbol] = held
        return held[1]

    def offered(
        self, quote: Quote, side: Side, instrument: Instrument
    ) -> list[tuple[Decimal, Decimal]]:
        """The levels an order on ``side`` takes from, best first, as (price, size still
        on offer); sizes rounded down to the instrument's step (an exchange fills whole
        steps)."""
        taken = self._taken_on(quote)
        return [
            (price, max(ZERO, instrument.floor_qty(size) - taken.get((side, level), ZERO)))
            for level, (price, size) in enumerate(quote.levels(side is Side.BUY))
        ]

    def take(self, quote: Quote, side: Side, level: int, qty: Decimal) -> None:
        taken = self._taken_on(quote)
        taken[(side, level)] = taken.get((side, level), ZERO) + qty

    def forget(self) -> None:
        """Drop every count (the account was reloaded: what undone orders took was never
        taken)."""
        self._taken = {}
