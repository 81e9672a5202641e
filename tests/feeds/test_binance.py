"""The Binance bookTicker feed against a loopback server speaking the combined-stream
format: quotes into the book, ping frames answered, malformed messages dropped."""

from __future__ import annotations

import json
from decimal import Decimal

import trio
import trio.testing

from tests.feeds.stream_server import Peer, StreamServer, book_ticker, hold
from titan_trio.clock import now_ms
from titan_trio.domain.quotes import Quote
from titan_trio.feeds.binance import BinanceFeed
from titan_trio.feeds.hub import MarketHub

D = Decimal


async def quote_where(hub: MarketHub, symbol: str, source: str, bid: str) -> Quote:
    """The book's quote from ``source`` once its bid is ``bid``."""
    with trio.fail_after(60):
        while True:
            quote = hub.book.get(symbol, source)
            if quote is not None and quote.bid == D(bid):
                return quote
            await hub.wait_for_update()


async def test_combined_book_tickers_become_quotes_with_source_binance(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def quotes(peer: Peer) -> None:
        await peer.send(book_ticker("BTCUSDT", "95000.10", "95000.20", "1.25", "0.75"))
        await peer.send(book_ticker("ETHUSDT", "3500.01", "3500.02"))
        await hold(peer)

    server = StreamServer(quotes)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BinanceFeed(hub, ["BTCUSDT", "ETHUSDT"], server.url + "/")
        await nursery.start(feed.run)
        eth = await quote_where(hub, "ETHUSDT", "binance", "3500.01")
        btc = hub.book.get("BTCUSDT", "binance")
        assert server.peers[0].path == "/stream?streams=btcusdt@bookTicker/ethusdt@bookTicker"
        assert btc is not None
        assert (btc.bid, btc.ask, btc.bid_size, btc.ask_size) == (
            D("95000.10"),
            D("95000.20"),
            D("1.25"),
            D("0.75"),
        )
        assert btc.last == D("95000.15")  # the mid: bookTicker carries no trade
        assert btc.source == eth.source == "binance"
        assert abs(btc.ts_ms - now_ms()) < 60_000  # the service's receive time, not E
        health = feed.health
        assert (health.connected, health.state, health.messages) == (True, "connected", 2)
        nursery.cancel_scope.cancel()
    assert (feed.health.connected, feed.health.state) == (False, "stopped")


async def test_the_servers_ping_frames_are_answered(
    loopback_clock: trio.testing.MockClock,
) -> None:
    answered = trio.Event()

    async def pings(peer: Peer) -> None:
        await peer.send(book_ticker("BTCUSDT", "100", "101"))
        for _ in range(3):  # Binance pings every 3 minutes; no answer in 10 min cuts
            with trio.fail_after(5):
                await peer.ws.ping()
            await trio.sleep(180)
        answered.set()
        await hold(peer)

    server = StreamServer(pings)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await nursery.start(BinanceFeed(hub, ["BTCUSDT"], server.url, stale_after_s=1e6).run)
        with trio.fail_after(1000):
            await answered.wait()
        assert [p.received for p in server.peers] == [[]]  # no JSON pings, one connection
        nursery.cancel_scope.cancel()


async def test_malformed_messages_never_reach_the_book_nor_stop_the_feed(
    loopback_clock: trio.testing.MockClock,
) -> None:
    good = book_ticker("BTCUSDT", "100.0", "100.5")
    bad: list[object] = [
        "not json at all",
        json.dumps([1, 2, 3]),
        {"stream": "btcusdt@bookTicker"},  # no data
        {"stream": "btcusdt@bookTicker", "data": {"s": "BTCUSDT", "b": "1"}},  # fields missing
        book_ticker("BTCUSDT", "-100", "100.5"),  # negative price
        book_ticker("BTCUSDT", "0", "100.5"),  # zero price
        book_ticker("BTCUSDT", "101", "100.5"),  # crossed
        book_ticker("BTCUSDT", "100.5", "100.5"),  # locked
        book_ticker("BTCUSDT", "NaN", "100.5"),
        book_ticker("BTCUSDT", "Infinity", "1e999"),
        book_ticker("BTCUSDT", "100", "100.5", bid_qty="-1"),
        book_ticker("BTCUSDT", "abc", "100.5"),
        {**good, "data": {**good["data"], "b": 100.0}},  # a number, not a decimal string
        book_ticker("XRPUSDT", "1", "2"),  # not subscribed
        {"stream": "btcusdt@bookTicker", "data": {**good["data"], "s": "ETHUSDT"}},
        {"stream": "btcusdt@bookTicker", "data": {**good["data"], "e": "aggTrade"}},
    ]

    async def garbage_then_a_quote(peer: Peer) -> None:
        for message in bad:
            await peer.send(message)
        await peer.ws.send_message(b"\x00\xffbinary")
        await peer.send(good)
        await hold(peer)

    server = StreamServer(garbage_then_a_quote)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BinanceFeed(hub, ["BTCUSDT"], server.url)
        await nursery.start(feed.run)
        quote = await quote_where(hub, "BTCUSDT", "binance", "100.0")
        assert quote.ask == D("100.5")
        assert hub.book.updates == 1  # the only quote the book ever took
        assert hub.book.symbols() == ["BTCUSDT"]
        health = feed.health
        assert health.malformed == len(bad) + 1
        assert (health.connected, health.reconnects, health.messages) == (True, 0, 1)
        assert health.last_error is not None and "malformed" in health.last_error
        assert len(server.peers) == 1
        nursery.cancel_scope.cancel()
