"""What keeps a feed connected: reconnecting with backoff after a drop, the stale-data
watchdog, refused handshakes, and Binance's 24-hour cut taken by a rollover that never
shows a gap. Virtual time (see conftest), so the timings asserted are exact."""

from __future__ import annotations

import itertools
import random
from typing import Any

import trio
import trio.testing

from tests.feeds.stream_server import Peer, StreamServer, book_ticker, bybit_book, hold
from tests.feeds.test_binance import quote_where
from tests.feeds.test_bybit import answer_pings, subscribed
from titan_trio.feeds.backoff import Backoff
from titan_trio.feeds.binance import BinanceFeed
from titan_trio.feeds.bybit import BybitFeed
from titan_trio.feeds.hub import FeedHealth, MarketHub


class RecordingHealth(FeedHealth):
    """The feed's real health record, which also notes every (connected, state) it
    passes through, so a test can see a moment no poll would catch."""

    def __init__(self, name: str) -> None:
        self.history: list[tuple[bool, str]] = []
        super().__init__(name)

    def __setattr__(self, key: str, value: Any) -> None:
        super().__setattr__(key, value)
        if key in ("connected", "state") and hasattr(self, "state"):
            self.history.append((self.connected, self.state))


async def test_a_dropped_connection_is_reopened_after_a_backoff_and_resubscribed(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def then_drop(peer: Peer) -> None:
        await subscribed(peer)
        await peer.send(bybit_book("BTCUSDT", [["100", "1"]], [["101", "1"]]))
        await peer.ws.aclose()

    async def steady(peer: Peer) -> None:
        await subscribed(peer)
        await peer.send(bybit_book("BTCUSDT", [["102", "1"]], [["103", "1"]]))
        await answer_pings(peer)

    server = StreamServer(then_drop, steady)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BybitFeed(hub, ["BTCUSDT", "ETHUSDT"], server.url)
        await nursery.start(feed.run)
        await quote_where(hub, "BTCUSDT", "bybit", "100")
        closed = await server.wait_for("close", 1)
        reopened = await server.wait_for("open", 2)
        # The first connection delivered: the backoff starts again from 0.25-0.5 s.
        assert 0.25 <= reopened - closed <= 0.5
        await quote_where(hub, "BTCUSDT", "bybit", "102")  # fresh prices again
        assert server.peers[1].received[0] == server.peers[0].received[0]  # resubscribed
        health = feed.health
        assert (health.connected, health.state, health.reconnects) == (True, "connected", 1)
        assert health.last_error is not None and "closed by the server" in health.last_error
        nursery.cancel_scope.cancel()


async def test_refused_handshakes_are_retried_ever_more_slowly(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def quotes(peer: Peer) -> None:
        await peer.send(book_ticker("BTCUSDT", "100", "101"))
        await hold(peer)

    server = StreamServer(quotes, refuse_first=5)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BinanceFeed(hub, ["BTCUSDT"], server.url, backoff=Backoff(rng=random.Random(5)))
        await nursery.start(feed.run)
        assert not feed.health.connected  # started without waiting for a connection
        await quote_where(hub, "BTCUSDT", "binance", "100")
        attempts = [moment for moment, what, _ in server.log if what in ("refused", "open")]
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        ceilings = [0.5, 1, 2, 4, 8]
        assert len(gaps) == len(ceilings)
        for gap, ceiling in zip(gaps, ceilings, strict=True):
            assert ceiling / 2 <= gap <= ceiling
        health = feed.health
        assert (health.connected, health.reconnects) == (True, 5)
        assert health.last_error == "connection refused by the server (HTTP 503)"
        nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_given_up_by_the_watchdog(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def falls_silent(peer: Peer) -> None:
        await peer.send(book_ticker("BTCUSDT", "100", "101"))
        await trio.sleep(10)
        await peer.send(book_ticker("BTCUSDT", "100.5", "101"))
        await hold(peer)  # connected, and silent

    async def talks(peer: Peer) -> None:
        await peer.send(book_ticker("BTCUSDT", "102", "103"))
        await hold(peer)

    server = StreamServer(falls_silent, talks)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BinanceFeed(hub, ["BTCUSDT"], server.url, stale_after_s=15)
        await nursery.start(feed.run)
        opened = await server.wait_for("open", 1)
        closed = await server.wait_for("close", 1)
        assert closed - opened == 10 + 15  # 15 s after the LAST message, not the first
        await quote_where(hub, "BTCUSDT", "binance", "102")
        assert feed.health.last_error == "no data for 15 s"
        assert feed.health.reconnects == 1
        nursery.cancel_scope.cancel()


async def test_pongs_alone_do_not_keep_a_connection_that_sends_no_data(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def only_pongs(peer: Peer) -> None:
        await subscribed(peer)
        await answer_pings(peer)

    server = StreamServer(only_pongs)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BybitFeed(hub, ["BTCUSDT"], server.url, stale_after_s=45)
        await nursery.start(feed.run)
        opened = await server.wait_for("open", 1)
        closed = await server.wait_for("close", 1)
        assert closed - opened == 45  # two pongs (20 s, 40 s) did not count as data
        await server.wait_for("open", 2)
        assert feed.health.last_error == "no data for 45 s"
        nursery.cancel_scope.cancel()


async def test_the_daily_cut_is_taken_by_a_rollover_that_never_shows_a_gap(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def quotes(peer: Peer) -> None:
        bid = 100 + peer.number
        await peer.send(book_ticker("BTCUSDT", str(bid), str(bid + 1)))
        await hold(peer)

    server = StreamServer(quotes)
    hub = MarketHub()
    health = hub.feeds["binance"] = RecordingHealth("binance")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        # Shortened: the real feed rolls over at 23 h 50 m.
        feed = BinanceFeed(hub, ["BTCUSDT"], server.url, rollover_after_s=100, stale_after_s=1e6)
        assert feed.health is health
        await nursery.start(feed.run)
        await quote_where(hub, "BTCUSDT", "binance", "101")
        start = await server.wait_for("open", 1)
        successor = await server.wait_for("open", 2)
        await server.wait_for("close", 1)
        await quote_where(hub, "BTCUSDT", "binance", "102")
        await server.wait_for("open", 3)  # and again the next "day"
        await server.wait_for("close", 2)
        events = [(what, n) for _, what, n in server.log]
        assert events[:5] == [("open", 1), ("open", 2), ("close", 1), ("open", 3), ("close", 2)]
        assert successor - start == 100
        assert (health.reconnects, health.rollovers) == (0, 2)
        # Connected from the first connection on, through both rollovers.
        first_up = health.history.index((True, "connected"))
        assert all(connected for connected, _ in health.history[first_up:])
        assert (True, "rolling over") in health.history
        nursery.cancel_scope.cancel()


async def test_a_failed_rollover_keeps_the_current_connection_and_tries_again(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def quotes(peer: Peer) -> None:
        while True:  # a quote every 10 s keeps the watchdog (30 s) satisfied
            await peer.send(book_ticker("BTCUSDT", str(100 + peer.number), "200"))
            await trio.sleep(10)

    async def mute(peer: Peer) -> None:
        await hold(peer)

    server = StreamServer(quotes, mute, quotes)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BinanceFeed(hub, ["BTCUSDT"], server.url, rollover_after_s=100, stale_after_s=30)
        await nursery.start(feed.run)
        await server.wait_for("close", 2)  # the mute successor, dropped after 30 s
        await quote_where(hub, "BTCUSDT", "binance", "103")  # the next one takes over
        await server.wait_for("close", 1)
        events = [(what, n) for _, what, n in server.log]
        assert events[:5] == [("open", 1), ("open", 2), ("close", 2), ("open", 3), ("close", 1)]
        health = feed.health
        assert (health.connected, health.reconnects, health.rollovers) == (True, 0, 1)
        nursery.cancel_scope.cancel()
