"""The Bybit orderbook.1 + tickers feed against a loopback server speaking the v5 public
format: subscription, merged quotes, deltas, heartbeat, malformed messages."""

from __future__ import annotations

import json
from decimal import Decimal

import trio
import trio.testing

from tests.feeds.stream_server import Peer, StreamServer, bybit_book, bybit_ticker
from tests.feeds.test_binance import quote_where
from titan_trio.feeds.bybit import BybitFeed
from titan_trio.feeds.hub import MarketHub

D = Decimal


async def subscribed(peer: Peer) -> list[str]:
    """Read the subscribe requests for 2 symbols (4 topics, one request) and ack them."""
    request = await peer.receive()
    assert isinstance(request, dict) and request["op"] == "subscribe"
    await peer.send(
        {
            "success": True,
            "ret_msg": "",
            "conn_id": "c1",
            "req_id": request["req_id"],
            "op": "subscribe",
        }
    )
    return request["args"]


async def answer_pings(peer: Peer) -> None:
    while True:
        message = await peer.receive()
        if isinstance(message, dict) and message.get("op") == "ping":
            await peer.send(
                {
                    "success": True,
                    "ret_msg": "pong",
                    "conn_id": "c1",
                    "req_id": message["req_id"],
                    "op": "ping",
                }
            )


def test_subscriptions_go_in_requests_of_at_most_ten_topics() -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT"]
    feed = BybitFeed(MarketHub(), symbols, "ws://127.0.0.1:1")
    requests = [json.loads(m) for m in feed.subscribe_messages()]
    assert [len(r["args"]) for r in requests] == [10, 2]
    assert {r["op"] for r in requests} == {"subscribe"}
    assert len({r["req_id"] for r in requests}) == 2
    topics = [t for r in requests for t in r["args"]]
    assert sorted(topics) == sorted(
        [f"orderbook.1.{s}" for s in symbols] + [f"tickers.{s}" for s in symbols]
    )


async def test_orderbook_and_tickers_make_one_quote_with_last_and_deltas_merge(
    loopback_clock: trio.testing.MockClock,
) -> None:
    topics: list[list[str]] = []

    async def market(peer: Peer) -> None:
        topics.append(await subscribed(peer))
        await peer.send(
            bybit_ticker("BTCUSDT", lastPrice="100.2", markPrice="100.25", bid1Price="100.0")
        )
        await peer.send(bybit_book("BTCUSDT", [["100.0", "1.5"]], [["100.5", "2"]]))
        # A ticker delta carries only what changed; then a book delta (deeper books
        # send them): size "0" deletes a level.
        await peer.send(bybit_ticker("BTCUSDT", "delta", markPrice="100.3"))
        await peer.send(bybit_ticker("BTCUSDT", "delta", lastPrice="100.4"))
        await peer.send(
            bybit_book("BTCUSDT", [["100.0", "0"], ["99.5", "3"]], [["100.5", "4"]], "delta")
        )
        await answer_pings(peer)

    server = StreamServer(market)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BybitFeed(hub, ["BTCUSDT", "ETHUSDT"], server.url)
        await nursery.start(feed.run)
        first = await quote_where(hub, "BTCUSDT", "bybit", "100.0")
        assert (first.ask, first.bid_size, first.ask_size, first.last, first.source) == (
            D("100.5"),
            D("1.5"),
            D("2"),
            D("100.2"),
            "bybit",
        )
        second = await quote_where(hub, "BTCUSDT", "bybit", "99.5")
        assert (second.ask, second.bid_size, second.ask_size, second.last) == (
            D("100.5"),
            D("3"),
            D("4"),
            D("100.4"),
        )
        assert topics == [
            ["orderbook.1.BTCUSDT", "tickers.BTCUSDT", "orderbook.1.ETHUSDT", "tickers.ETHUSDT"]
        ]
        # Ticker messages are data too (the watchdog and health count them), but only
        # the book makes quotes.
        assert (feed.health.messages, hub.book.updates) == (5, 2)
        nursery.cancel_scope.cancel()


async def test_a_missed_pong_reconnects_and_answered_pings_keep_the_connection(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def deaf(peer: Peer) -> None:
        await subscribed(peer)
        await peer.send(bybit_book("BTCUSDT", [["100", "1"]], [["101", "1"]]))
        await peer.drain()  # reads the pings, never answers

    async def polite(peer: Peer) -> None:
        await subscribed(peer)
        await peer.send(bybit_book("BTCUSDT", [["102", "1"]], [["103", "1"]]))
        await answer_pings(peer)

    server = StreamServer(deaf, polite)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        # The watchdog out of the way: this is about the heartbeat.
        feed = BybitFeed(hub, ["BTCUSDT"], server.url, stale_after_s=1e6)
        await nursery.start(feed.run)
        opened = await server.wait_for("open", 1)
        closed = await server.wait_for("close", 1)
        await server.wait_for("open", 2)
        assert closed - opened == 20 + 10  # first ping at 20 s, no pong within 10 s
        pings = [json.loads(m) for m in server.peers[0].received[1:]]
        assert [p["op"] for p in pings] == ["ping"]
        assert feed.health.last_error == "no pong within 10 s"
        await quote_where(hub, "BTCUSDT", "bybit", "102")
        assert feed.health.reconnects == 1
        # The polite server answers: ping after ping, the connection stays.
        with trio.fail_after(1000):
            await server.peers[1].wait_received(1 + 5)
        assert len(server.peers) == 2
        assert (feed.health.connected, feed.health.reconnects) == (True, 1)
        nursery.cancel_scope.cancel()


async def test_malformed_bybit_messages_never_reach_the_book(
    loopback_clock: trio.testing.MockClock,
) -> None:
    bad: list[object] = [
        "{not json",
        {
            "topic": "orderbook.1.BTCUSDT",
            "type": "delta",
            "ts": 1,
            "data": {"s": "BTCUSDT", "b": [["99", "1"]], "a": []},
        },  # delta before snapshot
        bybit_book("BTCUSDT", [["101", "1"]], [["100", "1"]]),  # crossed
        bybit_book("BTCUSDT", [["-1", "1"]], [["100", "1"]]),
        bybit_book("BTCUSDT", [["99", "-1"]], [["100", "1"]]),
        bybit_book("BTCUSDT", [["99"]], [["100", "1"]]),
        bybit_book("BTCUSDT", "99", [["100", "1"]]),
        bybit_book("XRPUSDT", [["1", "1"]], [["2", "1"]]),  # not subscribed
        {**bybit_book("BTCUSDT", [["99", "1"]], [["100", "1"]]), "type": "partial"},
        {**bybit_book("BTCUSDT", [["99", "1"]], [["100", "1"]]), "data": ["x"]},
        bybit_ticker("BTCUSDT", lastPrice="NaN"),
        bybit_ticker("BTCUSDT", lastPrice=-5),  # type: ignore[arg-type]
        {"topic": "kline.1.BTCUSDT", "type": "snapshot", "data": {}},
        {"op": "mystery"},
        [1, 2],
    ]

    async def garbage_then_a_book(peer: Peer) -> None:
        await subscribed(peer)
        for message in bad:
            await peer.send(message)
        await peer.send(bybit_book("BTCUSDT", [["99", "2"]], [["100", "3"]]))
        await answer_pings(peer)

    server = StreamServer(garbage_then_a_book)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BybitFeed(hub, ["BTCUSDT"], server.url)
        await nursery.start(feed.run)
        quote = await quote_where(hub, "BTCUSDT", "bybit", "99")
        assert (quote.ask, quote.last) == (D("100"), D("99.5"))  # no ticker yet: the mid
        assert hub.book.updates == 1
        assert feed.health.malformed == len(bad)
        assert (feed.health.connected, feed.health.reconnects) == (True, 0)
        nursery.cancel_scope.cancel()


async def test_a_refused_subscription_is_reported(
    loopback_clock: trio.testing.MockClock,
) -> None:
    async def refuses(peer: Peer) -> None:
        request = await peer.receive()
        assert isinstance(request, dict)
        await peer.send(
            {
                "success": False,
                "ret_msg": "Invalid topic",
                "conn_id": "c",
                "req_id": request["req_id"],
                "op": "subscribe",
            }
        )
        await answer_pings(peer)

    server = StreamServer(refuses)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        feed = BybitFeed(hub, ["BTCUSDT"], server.url)
        await nursery.start(feed.run)
        # Nothing flows: the watchdog gives the connection up, and the next one
        # subscribes again.
        await server.wait_for("open", 2)
        with trio.fail_after(10):
            await server.peers[1].wait_received(1)
        assert server.peers[1].received[0] == server.peers[0].received[0]
        assert feed.health.malformed == 0
        assert feed.health.last_error == "no data for 15 s"
        nursery.cancel_scope.cancel()
