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
    """The freshest quote per (source, symbol), and the venue's quote per symbol.

    Every feed's quotes are kept (``/api/market`` shows them side by side), but only one
    source is the VENUE: the exchange orders go to. ``get(symbol)`` and ``mark(symbol)``
    answer with the venue's quote, because the gates (spread, slippage, freshness), the
    paper broker's fills and the marks must describe the book the orders meet, not a
    neighbouring exchange's. ``venue=None`` makes every source the venue (the newest
    quote of any source wins): the book of a single feed, and of tests.

    Per slot, a newer quote replaces the held one; an older one (out-of-order delivery)
    is ignored.
    """

    def __init__(self, venue: str | None = None) -> None:
        self.venue = venue
        self._quotes: dict[str, Quote] = {}  # symbol -> the venue's quote
        self._by_source: dict[str, dict[str, Quote]] = {}  # symbol -> source -> quote
        self.updates = 0  # venue quotes taken

    def is_venue(self, source: str) -> bool:
        return self.venue is None or source == self.venue

    def update(self, quote: Quote) -> bool:
        """Keep ``quote``; True when it is now the venue's quote for its symbol (what
        ``get(symbol)`` returns), False for an older quote or another source's."""
        sources = self._by_source.setdefault(quote.symbol, {})
        held = sources.get(quote.source)
        if held is None or quote.ts_ms >= held.ts_ms:
            sources[quote.source] = quote
        if not self.is_venue(quote.source):
            return False
        held = self._quotes.get(quote.symbol)
        if held is not None and quote.ts_ms < held.ts_ms:
            return False
        self._quotes[quote.symbol] = quote
        self.updates += 1
        return True

    def get(self, symbol: str, source: str | None = None) -> Quote | None:
        """The venue's quote for ``symbol``, or the given source's."""
        if source is None:
            return self._quotes.get(symbol)
        return self._by_source.get(symbol, {}).get(source)

    def mark(self, symbol: str) -> Decimal | None:
        """The venue's mid price."""
        q = self._quotes.get(symbol)
        return q.mid if q is not None else None

    def quotes(self, symbol: str) -> dict[str, Quote]:
        """Every source's newest quote for ``symbol``, by source name."""
        return dict(sorted(self._by_source.get(symbol, {}).items()))

    def symbols(self) -> list[str]:
        """Every symbol some source has quoted."""
        return sorted(self._by_source)
