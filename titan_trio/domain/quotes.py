"""Quotes (the touch and the depth behind it), the walk of an order through them, and the
price book every component reads.

``walk_levels`` is the one place that says what an order of a given size takes from a
book: the L2 slippage gate estimates with it and the paper exchange fills with it, so
the gate's estimate and paper's fills cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Quote:
    symbol: str
    bid: Decimal
    ask: Decimal
    bid_size: Decimal
    ask_size: Decimal
    last: Decimal
    ts_ms: int  # when the quote was received (service clock, ms)
    source: str  # the feed that produced it
    # Depth beyond the touch, best first, as (price, size); empty when the feed sends
    # only the top of book.
    bid_levels: tuple[tuple[Decimal, Decimal], ...] = ()
    ask_levels: tuple[tuple[Decimal, Decimal], ...] = ()

    def levels(self, buying: bool) -> list[tuple[Decimal, Decimal]]:
        """The side an order of that direction takes from: the touch, then the depth."""
        if buying:
            return [(self.ask, self.ask_size), *self.ask_levels]
        return [(self.bid, self.bid_size), *self.bid_levels]

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2

    @property
    def spread_pct(self) -> Decimal:
        return (self.ask - self.bid) / self.mid * 100


@dataclass(frozen=True, slots=True)
class LevelTake:
    """What an order takes from one level: the level's position (0 is the touch), its
    price and the quantity taken there."""

    level: int
    price: Decimal
    qty: Decimal


def walk_levels(
    levels: Iterable[tuple[Decimal, Decimal]],
    qty: Decimal,
    *,
    buying: bool,
    limit: Decimal | None = None,
) -> tuple[list[LevelTake], Decimal]:
    """Take ``qty`` from ``levels`` (as ``Quote.levels`` gives them, best first), level by
    level, never past ``limit`` (a buy takes no level above it, a sell none below it).
    Returns what each level gave (levels giving nothing are left out) and the quantity
    the levels could not give."""
    takes: list[LevelTake] = []
    left = qty
    for index, (price, size) in enumerate(levels):
        if left <= 0:
            break
        if limit is not None and (price > limit if buying else price < limit):
            break
        take = min(left, size)
        if take <= 0:
            continue
        takes.append(LevelTake(index, price, take))
        left -= take
    return takes, max(left, Decimal(0))


class PriceBook:
    """The freshest quote per symbol. Newer quotes replace older ones; a quote older than
    the one held (out-of-order delivery) is ignored."""

    def __init__(self) -> None:
        self._quotes: dict[str, Quote] = {}
        self.updates = 0

    def update(self, quote: Quote) -> bool:
        held = self._quotes.get(quote.symbol)
        if held is not None and quote.ts_ms < held.ts_ms:
            return False
        self._quotes[quote.symbol] = quote
        self.updates += 1
        return True

    def get(self, symbol: str) -> Quote | None:
        return self._quotes.get(symbol)

    def mark(self, symbol: str) -> Decimal | None:
        q = self._quotes.get(symbol)
        return q.mid if q is not None else None

    def symbols(self) -> list[str]:
        return sorted(self._quotes)
