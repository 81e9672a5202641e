"""The price book keeps every source; gates, marks, freshness and wake-ups follow the
venue's quotes only."""

from __future__ import annotations

from decimal import Decimal

import trio
import trio.testing

from titan_trio.config import parse_config
from titan_trio.domain.quotes import PriceBook, Quote
from titan_trio.feeds.hub import MarketHub

D = Decimal


def q(source: str, bid: str, ts: int = 1000, symbol: str = "BTCUSDT") -> Quote:
    return Quote(symbol, D(bid), D(bid) + 1, D(1), D(1), D(bid), ts, source)


def test_the_book_answers_with_the_venues_quote_and_keeps_every_source() -> None:
    book = PriceBook("bybit")
    assert book.update(q("binance", "100")) is False  # kept, but not the venue's
    assert book.get("BTCUSDT") is None and book.mark("BTCUSDT") is None
    bybit = q("bybit", "90")
    assert book.update(bybit) is True
    binance = q("binance", "101", ts=2000)  # newer, from the other exchange
    assert book.update(binance) is False
    assert book.get("BTCUSDT") is bybit
    assert book.mark("BTCUSDT") == D("90.5")
    assert book.get("BTCUSDT", "binance") is binance
    assert book.quotes("BTCUSDT") == {"binance": binance, "bybit": bybit}
    assert book.update(q("bybit", "1", ts=500)) is False  # out of order: ignored
    assert book.get("BTCUSDT", "bybit") is bybit
    assert book.symbols() == ["BTCUSDT"]


def test_without_a_venue_every_source_counts() -> None:
    book = PriceBook()
    first, second = q("a", "100", 1000), q("b", "101", 1001)
    assert book.update(first) and book.update(second)
    assert book.get("BTCUSDT") is second
    assert book.update(q("a", "99", 999)) is False  # older than what is held


async def test_freshness_and_wake_ups_follow_the_venue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = MarketHub("bybit")
    woken = trio.Event()

    async def waiter() -> None:
        await hub.wait_for_update()
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        hub.publish(q("binance", "100"))
        await trio.testing.wait_all_tasks_blocked()
        assert not woken.is_set()
        assert hub.age_ms("BTCUSDT") is None  # the L2 freshness gate sees no venue quote
        assert hub.age_ms("BTCUSDT", "binance") is not None
        hub.publish(q("bybit", "100"))
        with trio.fail_after(1):
            await woken.wait()
        assert hub.age_ms("BTCUSDT") is not None


def test_the_venue_is_the_bybit_broker_else_the_first_feed() -> None:
    assert parse_config({"feeds": ["binance", "simulated"]}, environ={}).venue == "binance"
    cfg = parse_config(
        {
            "mode": "live",
            "broker": {"name": "bybit"},
            "feeds": ["binance", "bybit"],
            "api": {"token": "t" * 32},
            "ipc": {"hmacSecret": "s" * 32},
        },
        environ={},
    )
    assert cfg.venue == "bybit"
