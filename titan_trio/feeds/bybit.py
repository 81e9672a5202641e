"""Bybit v5 public linear stream: ``orderbook.1`` (the touch) and ``tickers`` (the last
trade price), per symbol, into quotes with source ``bybit``.

Subscription: ``{"req_id", "op": "subscribe", "args": [...]}`` in requests of at most
10 topics. Bybit documents that limit for spot only ("No args limit for Futures",
https://bybit-exchange.github.io/docs/v5/ws/connect, "Public channel - Args limits"),
but keeping to it costs one more small message per 5 symbols and keeps the feed
working when the URL points at a spot stream. Heartbeat: ``{"req_id", "op": "ping"}``
every 20 s; the public answer is ``{"op": "ping", "ret_msg": "pong", "success": true}``
(the private stream's ``{"op": "pong"}`` is accepted too); no answer within the pong
timeout gives the connection up.

``orderbook.1`` for linear is snapshot-only (one every 10 ms when the top changes, and
every 3 s when it does not), but deltas are handled as documented for deeper books: a
level with size "0" is deleted, others set; a delta before any snapshot is malformed.
``tickers`` sends a snapshot, then deltas with only the changed fields, merged here.
A quote is published on each ``orderbook.1`` message, with the ticker's ``lastPrice``
as ``last`` (the mid until a ticker has arrived on this connection): the touch is what
the gates act on, so the quote's age is the touch's age; a ticker delta refreshes
``last`` for the next quote, it never makes an old touch look fresh. Decoding state is
per connection: a new connection starts from its own snapshots.

A subscription the server refuses (``success: false``) is logged as a WARNING and kept
in ``last_error``; the watchdog reconnects (and so retries) if nothing flows.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec

from titan_trio.domain.quotes import Quote
from titan_trio.feeds.decoding import BadMessage, decimal_field, touch_quote
from titan_trio.feeds.ws import Link, WebSocketFeed

log = logging.getLogger("titan.feeds")

FEED_NAME = "bybit"
PING_INTERVAL_S = 20.0
MAX_ARGS_PER_SUBSCRIBE = 10
BOOK_TOPIC = "orderbook.1."
TICKER_TOPIC = "tickers."


@dataclass
class SymbolState:
    """One symbol's book and ticker as this connection has received them."""

    bids: dict[Decimal, Decimal] | None = None  # None until the first snapshot
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    last: Decimal | None = None


def _levels(raw: object, side: str) -> list[tuple[Decimal, Decimal]]:
    if not isinstance(raw, list):
        raise BadMessage(f"{side} levels are not a list")
    levels = []
    for level in raw:
        if not isinstance(level, list) or len(level) != 2:
            raise BadMessage(f"{side} level is not [price, size]: {level!r}")
        price = decimal_field(level[0], f"{side} price", positive=True)
        size = decimal_field(level[1], f"{side} size", positive=False)
        levels.append((price, size))
    return levels


def _apply(
    held: dict[Decimal, Decimal], levels: list[tuple[Decimal, Decimal]]
) -> dict[Decimal, Decimal]:
    book = dict(held)
    for price, size in levels:
        if size == 0:
            book.pop(price, None)
        else:
            book[price] = size
    return book


class BybitFeed(WebSocketFeed):
    name = FEED_NAME
    ping_interval_s = PING_INTERVAL_S

    def __init__(self, *args: Any, **kw: Any) -> None:
        """Arguments as ``WebSocketFeed``; ``url`` is the public linear stream
        (``bybit_endpoints(cfg.exchanges.bybit)[1]``)."""
        super().__init__(*args, **kw)
        self._known = set(self.symbols)

    def stream_url(self) -> str:
        return self.url

    def subscribe_messages(self) -> list[str]:
        topics = [t for s in self.symbols for t in (f"{BOOK_TOPIC}{s}", f"{TICKER_TOPIC}{s}")]
        return [
            json.dumps(
                {
                    "req_id": f"sub-{n}",
                    "op": "subscribe",
                    "args": topics[i : i + MAX_ARGS_PER_SUBSCRIBE],
                }
            )
            for n, i in enumerate(range(0, len(topics), MAX_ARGS_PER_SUBSCRIBE), start=1)
        ]

    def ping_message(self, number: int) -> str:
        return json.dumps({"req_id": f"ping-{number}", "op": "ping"})

    def new_state(self) -> dict[str, SymbolState]:
        return {s: SymbolState() for s in self.symbols}

    def decode(self, link: Link, raw: str | bytes, ts_ms: int) -> list[Quote] | None:
        try:
            message = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise BadMessage(str(exc)) from None
        if not isinstance(message, dict):
            raise BadMessage("not a JSON object")
        topic = message.get("topic")
        if topic is None:
            return self._control(link, message)
        if not isinstance(topic, str):
            raise BadMessage(f"topic is not a string: {topic!r}")
        kind = message.get("type")
        if kind not in ("snapshot", "delta"):
            raise BadMessage(f"unknown message type {kind!r}")
        data = message.get("data")
        if not isinstance(data, dict):
            raise BadMessage("data is not an object")
        if topic.startswith(BOOK_TOPIC):
            symbol = self._symbol(topic[len(BOOK_TOPIC) :], data.get("s"))
            return self._book(link.state[symbol], symbol, kind, data, ts_ms)
        if topic.startswith(TICKER_TOPIC):
            symbol = self._symbol(topic[len(TICKER_TOPIC) :], data.get("symbol"))
            state = link.state[symbol]
            if "lastPrice" in data:
                state.last = decimal_field(data["lastPrice"], "lastPrice", positive=True)
            elif kind == "snapshot":
                state.last = None
            return []
        raise BadMessage(f"unexpected topic {topic!r}")

    def _symbol(self, from_topic: str, in_data: object) -> str:
        if from_topic not in self._known or in_data != from_topic:
            raise BadMessage(f"unexpected symbol {from_topic!r} / {in_data!r}")
        return from_topic

    def _book(
        self, state: SymbolState, symbol: str, kind: str, data: dict, ts_ms: int
    ) -> list[Quote]:
        bids, asks = _levels(data.get("b"), "bid"), _levels(data.get("a"), "ask")
        if kind == "snapshot":
            new_bids, new_asks = _apply({}, bids), _apply({}, asks)
        elif state.bids is None:
            raise BadMessage(f"orderbook delta for {symbol} before any snapshot")
        else:
            new_bids, new_asks = _apply(state.bids, bids), _apply(state.asks, asks)
        quote = None
        if new_bids and new_asks:
            bid, ask = max(new_bids), min(new_asks)
            # Checked before the state changes: a crossed update is dropped whole.
            quote = touch_quote(
                symbol, bid, ask, new_bids[bid], new_asks[ask], state.last, ts_ms, FEED_NAME
            )
        state.bids, state.asks = new_bids, new_asks
        return [] if quote is None else [quote]

    def _control(self, link: Link, message: dict) -> None:
        op = message.get("op")
        if op == "pong" or (op == "ping" and message.get("ret_msg") == "pong"):
            link.pong.set()
            return None
        if op == "subscribe":
            if message.get("success") is not True:
                why = f"subscription refused: {message.get('ret_msg')!r}"
                self.health.last_error = why
                log.warning("market feed %s: %s", self.name, why)
            return None
        raise BadMessage(f"unknown control message (op {op!r})")
