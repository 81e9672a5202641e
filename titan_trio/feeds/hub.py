"""The market hub: the price book plus a wake-up for everyone waiting on new prices.

Feeds publish quotes here; the paper broker, the equity monitor and the risk gates read
the book. How old a quote is (the L2 freshness gate, ``/api/market``) is measured on the
monotonic clock from when it arrived here, never from wall-clock timestamps: a step of
the system clock cannot make a stale book look fresh or a fresh one stale.
Waiters are woken by replacing an Event on every update, so a slow reader never builds a
queue: it simply reads the freshest book when it wakes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import trio

from titan_trio.domain.quotes import PriceBook, Quote


@dataclass
class FeedHealth:
    name: str
    connected: bool = False
    last_message_monotonic: float | None = None
    reconnects: int = 0
    messages: int = 0
    last_error: str | None = None

    def last_message_age_s(self) -> float | None:
        last = self.last_message_monotonic
        return None if last is None else time.monotonic() - last


class MarketHub:
    def __init__(self) -> None:
        self.book = PriceBook()
        self.feeds: dict[str, FeedHealth] = {}
        self.received: dict[str, float] = {}  # symbol -> time.monotonic() of its last quote
        self._changed = trio.Event()

    def register_feed(self, name: str) -> FeedHealth:
        return self.feeds.setdefault(name, FeedHealth(name))

    def publish(self, quote: Quote) -> None:
        feed = self.feeds.get(quote.source)
        if feed is not None:
            feed.messages += 1
            feed.last_message_monotonic = time.monotonic()
        if self.book.update(quote):
            self.received[quote.symbol] = time.monotonic()
            changed, self._changed = self._changed, trio.Event()
            changed.set()

    def age_ms(self, symbol: str) -> int | None:
        """Milliseconds since ``symbol``'s quote arrived (monotonic), None before any."""
        received = self.received.get(symbol)
        return None if received is None else int((time.monotonic() - received) * 1000)

    async def wait_for_update(self) -> None:
        await self._changed.wait()
