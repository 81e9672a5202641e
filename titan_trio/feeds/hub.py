"""The market hub: the price book plus a wake-up for everyone waiting on new prices.

Feeds publish quotes here; the paper broker, the equity monitor and the risk gates read
the book. How old a quote is (the L2 freshness gate, ``/api/market``) is measured on the
monotonic clock from when it arrived here, never from wall-clock timestamps: a step of
the system clock cannot make a stale book look fresh or a fresh one stale.
Waiters are woken by replacing an Event on every update, so a slow reader never builds a
queue: it simply reads the freshest book when it wakes.

Every source's quotes are kept, but the freshness (``received``, ``age_ms``) and the
wake-ups are about the venue's quotes only (see ``PriceBook``): the L2 freshness gate
must not pass on a neighbouring exchange's fresh price while the venue's feed is down,
and the paper broker matches on the venue's quotes, so another source's quote has
nothing for it to do.

Feed health is each feed's own account (``FeedHealth``): a message is counted when the
feed receives it, whether or not it produced a quote (a Bybit ``tickers`` delta does
not), so publishing here does not touch it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from titan_trio.domain.quotes import PriceBook, Quote


@dataclass
class FeedHealth:
    """What ``/api/health`` and the metrics say about one feed.

    ``state`` is ``connecting`` (first attempt), ``connected``, ``rolling over`` (a
    planned replacement connection is opening while the current one still delivers:
    still connected) or ``reconnecting`` (waiting out the backoff after a failure).
    ``reconnects`` counts connection attempts after the first that a failure made
    necessary; planned rollovers are ``rollovers``, not reconnects (they are no fault
    and would otherwise trip a reconnect alert every day). ``malformed`` counts the
    messages dropped as unreadable or implausible.
    """

    name: str
    connected: bool = False
    state: str = "connecting"
    last_message_monotonic: float | None = None
    reconnects: int = 0
    rollovers: int = 0
    messages: int = 0
    malformed: int = 0
    last_error: str | None = None

    def message_received(self) -> None:
        self.messages += 1
        self.last_message_monotonic = time.monotonic()

    def last_message_age_s(self) -> float | None:
        last = self.last_message_monotonic
        return None if last is None else time.monotonic() - last


class MarketHub:
    def __init__(self, venue: str | None = None) -> None:
        """``venue``: the source whose quotes the gates, marks and paper fills use;
        None takes every source as the venue (a single-feed book)."""
        self.book = PriceBook(venue)
        self.feeds: dict[str, FeedHealth] = {}
        # symbol -> time.monotonic() of the venue's last quote
        self.received: dict[str, float] = {}
        # (source, symbol) -> time.monotonic() of that source's last quote
        self.received_from: dict[tuple[str, str], float] = {}
        self._changed = trio.Event()

    def register_feed(self, name: str) -> FeedHealth:
        return self.feeds.setdefault(name, FeedHealth(name))

    def publish(self, quote: Quote) -> None:
        now = time.monotonic()
        self.received_from[quote.source, quote.symbol] = now
        if self.book.update(quote):
            self.received[quote.symbol] = now
            changed, self._changed = self._changed, trio.Event()
            changed.set()

    def age_ms(self, symbol: str, source: str | None = None) -> int | None:
        """Milliseconds since the venue's (or ``source``'s) quote for ``symbol`` arrived
        (monotonic), None before any."""
        if source is None:
            received = self.received.get(symbol)
        else:
            received = self.received_from.get((source, symbol))
        return None if received is None else int((time.monotonic() - received) * 1000)

    async def wait_for_update(self) -> None:
        await self._changed.wait()
