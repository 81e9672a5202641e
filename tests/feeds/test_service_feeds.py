"""The whole service with exchange feeds (real clock, loopback servers): it starts and
answers while a feed cannot connect, shows every source in /api/market, and reports
reconnects in /api/health and /metrics."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import httpx
import trio

from tests.conftest import free_port
from tests.feeds.stream_server import Peer, StreamServer, book_ticker, bybit_book
from tests.feeds.test_bybit import answer_pings, subscribed
from tests.helpers import eventually, service
from titan_trio.config import Config


async def test_the_service_starts_and_answers_while_its_feed_cannot_connect(
    make_config: Callable[..., Config],
) -> None:
    nobody = f"ws://127.0.0.1:{free_port()}"  # nothing listens: connections are refused
    cfg = make_config(feeds=["binance"], exchanges={"binance": {"wsUrl": nobody}})
    async with service(cfg) as engine, httpx.AsyncClient(base_url=engine.api_url) as client:
        await eventually(lambda: engine.hub.feeds["binance"].last_error)
        answer = await client.get("/api/health")
        # A feed down degrades the service (it still manages what it holds): HTTP 200.
        assert (answer.status_code, answer.json()["status"]) == (200, "degraded")
        websocket = answer.json()["websocket"]
        binance = websocket["feeds"]["binance"]
        assert websocket["status"] == binance["status"] == "unhealthy"
        assert binance["connected"] is False
        assert binance["state"] in ("connecting", "reconnecting")
        assert binance["last_error"].startswith("cannot connect")
        assert binance["venue"] is True
        assert (await client.get("/api/state/equity")).status_code == 200


async def test_market_shows_every_source_and_health_counts_the_reconnect(
    make_config: Callable[..., Config],
) -> None:
    async def then_drop(peer: Peer) -> None:
        await peer.send(book_ticker("BTCUSDT", "95000.1", "95000.2"))
        await peer.ws.aclose()

    async def steady(peer: Peer) -> None:
        while True:
            await peer.send(book_ticker("BTCUSDT", "95001.1", "95001.2"))
            await trio.sleep(0.05)

    server = StreamServer(then_drop, steady)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        cfg = make_config(
            feeds=["binance", "simulated"], exchanges={"binance": {"wsUrl": server.url}}
        )
        async with service(cfg) as engine, httpx.AsyncClient(base_url=engine.api_url) as client:

            async def market() -> dict:
                return (await client.get("/api/market")).json()

            reconnected = Decimal("95001.1")
            await eventually(
                lambda: getattr(engine.hub.book.get("BTCUSDT"), "bid", 0) == reconnected
            )
            view = await market()
            btc, eth = view["BTCUSDT"], view["ETHUSDT"]
            assert (btc["source"], btc["ask"]) == ("binance", 95001.2)  # the venue's
            assert set(btc["sources"]) == {"binance", "simulated"}
            assert btc["sources"]["binance"]["bid"] == 95001.1
            assert btc["sources"]["simulated"]["age_ms"] < 5000
            # Binance sends no ETHUSDT: the venue has no quote, the simulated feed has.
            assert (eth["bid"], eth["source"], eth["age_ms"]) == (None, "binance", None)
            assert set(eth["sources"]) == {"simulated"}

            health = (await client.get("/api/health")).json()["websocket"]
            binance = health["feeds"]["binance"]
            assert (binance["status"], binance["state"], binance["connected"]) == (
                "healthy",
                "connected",
                True,
            )
            assert binance["reconnects"] == 1 and binance["messages"] >= 2
            assert health["feeds"]["simulated"]["venue"] is False
            metrics = (await client.get("/metrics")).text
            assert 'titan_ws_reconnects_total{exchange="binance"} 1.0' in metrics
            assert 'titan_ws_reconnects_total{exchange="simulated"} 0.0' in metrics
            age = next(
                line
                for line in metrics.splitlines()
                if line.startswith('titan_ws_last_message_age_seconds{exchange="binance"}')
            )
            assert float(age.split()[-1]) < 5
        nursery.cancel_scope.cancel()


async def test_the_bybit_feed_is_wired_to_its_public_url(
    make_config: Callable[..., Config],
) -> None:
    async def market(peer: Peer) -> None:
        await subscribed(peer)
        await peer.send(bybit_book("BTCUSDT", [["95000.0", "1"]], [["95000.5", "1"]]))
        await answer_pings(peer)

    server = StreamServer(market)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        cfg = make_config(
            feeds=["simulated", "bybit"],
            exchanges={"bybit": {"wsPublicUrl": server.url, "testnet": True}},
        )
        async with service(cfg) as engine:
            quote = await eventually(lambda: engine.hub.book.get("BTCUSDT", "bybit"))
            assert quote.bid == 95000
            assert engine.hub.book.get("BTCUSDT").source == "simulated"  # the venue
        nursery.cancel_scope.cancel()
