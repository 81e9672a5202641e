"""Binance USD-M futures best bid/ask (``bookTicker``) over the combined-streams endpoint.

One connection carries every symbol: ``{wsUrl}/stream?streams=btcusdt@bookTicker/...``
(stream names in lower case); each message arrives wrapped as ``{"stream", "data"}``.
Nothing is sent after connecting (the streams are in the URL) and there is no JSON
heartbeat: the server's ping frames, every 3 minutes, are answered by trio-websocket.
Binance cuts every connection after 24 hours; the feed opens its replacement at 23 h 50 m
(``ROLLOVER_AFTER_S``) so the cut never shows (see ``feeds/ws.py``).

Quote fields (bookTicker carries no trade): bid ``b``, ask ``a``, sizes ``B``/``A``;
``last`` is the mid price, the one price a top-of-book message supports without
inventing a trade; ``ts_ms`` is when the service received it, not the exchange's ``E``
(the book's freshness is the service's own observation). A message with a price that is
not a positive finite number, a negative size, a crossed or locked book (bid >= ask) or
a symbol not subscribed is dropped as malformed.
"""

from __future__ import annotations

from typing import Any

import msgspec

from titan_trio.domain.quotes import Quote
from titan_trio.feeds.decoding import BadMessage, decimal_field, touch_quote
from titan_trio.feeds.ws import Link, WebSocketFeed

FEED_NAME = "binance"
ROLLOVER_AFTER_S = 23 * 3600 + 50 * 60  # the server cuts at 24 h


class BookTicker(msgspec.Struct):
    s: str
    b: str
    B: str
    a: str
    A: str
    e: str = "bookTicker"


class Combined(msgspec.Struct):
    stream: str
    data: BookTicker


_decoder = msgspec.json.Decoder(Combined)


class BinanceFeed(WebSocketFeed):
    name = FEED_NAME

    def __init__(self, *args: Any, rollover_after_s: float | None = ROLLOVER_AFTER_S, **kw: Any):
        """Arguments as ``WebSocketFeed``; ``url`` is ``exchanges.binance.wsUrl`` (the
        base, without ``/stream``)."""
        super().__init__(*args, rollover_after_s=rollover_after_s, **kw)
        self._streams = {f"{s.lower()}@bookTicker": s for s in self.symbols}

    def stream_url(self) -> str:
        return f"{self.url}/stream?streams={'/'.join(self._streams)}"

    def subscribe_messages(self) -> list[str]:
        return []

    def new_state(self) -> None:
        return None

    def decode(self, link: Link, raw: str | bytes, ts_ms: int) -> list[Quote] | None:
        try:
            message = _decoder.decode(raw)
        except msgspec.DecodeError as exc:  # not JSON, or not the expected shape
            raise BadMessage(str(exc)) from None
        data = message.data
        symbol = self._streams.get(message.stream)
        if symbol is None or data.e != "bookTicker" or data.s != symbol:
            raise BadMessage(f"unexpected stream {message.stream!r} ({data.e} {data.s})")
        quote = touch_quote(
            symbol,
            decimal_field(data.b, "bid", positive=True),
            decimal_field(data.a, "ask", positive=True),
            decimal_field(data.B, "bid size", positive=False),
            decimal_field(data.A, "ask size", positive=False),
            None,
            ts_ms,
            FEED_NAME,
        )
        return [quote]
