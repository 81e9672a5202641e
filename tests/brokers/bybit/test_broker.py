"""The Bybit broker against the fake exchange on loopback (tests/fakes): what the service
would do with real money at stake. An order is made once whatever the wire does (a lost
acknowledgement, a 5xx, "too many"), a refusal is only reported when it is proven, fills
arrive over the private stream, and over REST polling while the stream is down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import trio

from tests.fakes.exchange import FakeExchange
from titan_trio.brokers.base import BalanceEvent, BrokerEvent, FillEvent, OrderEvent
from titan_trio.brokers.bybit import broker as broker_module
from titan_trio.brokers.bybit.broker import BybitBroker
from titan_trio.brokers.bybit.rest import BybitRest
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import OrderRequest, OrderStatus, OrderType, Side, TimeInForce
from titan_trio.errors import BrokerRejected, StartupError

KEY, SECRET = "fake-key-000000000000", "fake-secret-000000000000"
D = Decimal


class Venue:
    def __init__(self, fx: FakeExchange, broker: BybitBroker, nursery: trio.Nursery) -> None:
        self.fx, self.broker, self.nursery = fx, broker, nursery
        self.events: list[BrokerEvent] = []

    async def collect(self, until: object) -> list[BrokerEvent]:
        """Events until ``until(events)`` holds (bounded)."""
        with trio.fail_after(5):
            while not until(self.events):  # type: ignore[operator]
                self.events.append(await self.broker.events.receive())
        return self.events

    def fake_orders(self) -> list[dict[str, object]]:
        return self.fx.state()["orders"]


@pytest.fixture
async def venue(nursery: trio.Nursery) -> AsyncIterator[Venue]:
    fx = FakeExchange(keys={KEY: SECRET})
    await nursery.start(fx.serve, 0)
    instruments: dict[str, Instrument] = {}
    broker = BybitBroker(
        BybitRest(fx.rest_url, KEY, SECRET),
        fx.ws_private_url,
        instruments,
        ["BTCUSDT", "ETHUSDT"],
        poll_interval_s=0.2,
    )
    await nursery.start(broker.run)
    with trio.fail_after(5):
        while not broker.stream.connected:  # noqa: ASYNC110
            await trio.sleep(0.01)
    yield Venue(fx, broker, nursery)


def market_buy(coid: str = "tte" + "1" * 32, qty: str = "0.010") -> OrderRequest:
    return OrderRequest(coid, "BTCUSDT", Side.BUY, OrderType.MARKET, D(qty), leverage=D(5))


def has_fill(events: list[BrokerEvent]) -> bool:
    return any(isinstance(e, FillEvent) for e in events)


async def test_instruments_come_from_the_exchange(venue: Venue) -> None:
    inst = venue.broker.instruments["BTCUSDT"]
    assert (inst.tick_size, inst.qty_step, inst.min_qty) == (D("0.10"), D("0.001"), D("0.001"))
    assert venue.broker.health()["status"] == "healthy"


async def test_an_order_is_made_under_its_id_and_its_fill_arrives_over_the_stream(
    venue: Venue,
) -> None:
    ack = await venue.broker.submit(market_buy())
    assert ack.status is OrderStatus.ACCEPTED and ack.exchange_order_id
    events = await venue.collect(has_fill)
    fill = next(e.fill for e in events if isinstance(e, FillEvent))
    assert (fill.client_order_id, fill.qty, fill.side) == ("tte" + "1" * 32, D("0.010"), Side.BUY)
    assert fill.fee > 0 and not fill.is_maker
    [made] = venue.fake_orders()
    assert made["orderLinkId"] == "tte" + "1" * 32
    [held] = await venue.broker.positions()
    assert (held.symbol, held.size) == ("BTCUSDT", D("0.010"))
    await venue.collect(
        lambda ev: any(isinstance(e, BalanceEvent) and e.balance < 10000 for e in ev)
    )


async def test_the_stop_loss_is_held_by_the_exchange(venue: Venue) -> None:
    await venue.broker.submit(market_buy())
    await venue.collect(has_fill)
    await venue.broker.set_stop_loss("BTCUSDT", D("90000"))
    assert await venue.broker.stop_loss("BTCUSDT") == D("90000")
    venue.fx.set_price("BTCUSDT", "89990", "89990.1")  # the exchange closes it, not us
    await venue.collect(lambda ev: sum(isinstance(e, FillEvent) for e in ev) == 2)
    assert await venue.broker.positions() == []
    with pytest.raises(BrokerRejected) as refused:
        await venue.broker.set_stop_loss("BTCUSDT", D("90000"))
    assert refused.value.reason == "NO_POSITION"


async def test_a_lost_acknowledgement_makes_no_second_order(venue: Venue) -> None:
    venue.fx.fault("lose_ack", path="/v5/order/create", count=1)
    ack = await venue.broker.submit(market_buy())
    # the answer was lost, but the order is found by its id (never sent again)
    assert ack.client_order_id == "tte" + "1" * 32
    assert ack.status in (OrderStatus.FILLED, OrderStatus.ACCEPTED, OrderStatus.SUBMITTED)
    assert len(venue.fake_orders()) == 1
    await venue.collect(has_fill)
    again = await venue.broker.submit(market_buy())  # a repeat of the same order: 110072
    assert again.status is OrderStatus.FILLED
    assert len(venue.fake_orders()) == 1


async def test_a_5xx_proves_nothing_and_the_order_is_left_in_flight(venue: Venue) -> None:
    venue.fx.fault("http_5xx", path="/v5/order/create", count=1)
    ack = await venue.broker.submit(market_buy())
    assert ack.status is OrderStatus.SUBMITTED  # not rejected: the answer proved nothing
    assert venue.fake_orders() == []  # and it was not sent a second time


async def test_an_exchange_error_after_the_order_was_taken_is_settled_by_its_id(
    venue: Venue,
) -> None:
    venue.fx.fault("server_error_after", path="/v5/order/create", count=1)
    ack = await venue.broker.submit(market_buy())
    assert ack.status is OrderStatus.FILLED  # 10016, then found by its id
    assert len(venue.fake_orders()) == 1


async def test_too_many_requests_backs_off_and_sends_the_same_order_once(venue: Venue) -> None:
    venue.fx.fault("rate_limit", path="/v5/order/create", count=2)
    ack = await venue.broker.submit(market_buy())
    assert ack.status is OrderStatus.ACCEPTED
    assert len(venue.fake_orders()) == 1
    assert venue.broker.rest.rate_limited == 2


async def test_a_limit_that_never_lifts_is_a_proven_rate_limited_refusal(venue: Venue) -> None:
    venue.fx.fault("rate_limit", path="/v5/order/create", count=50, http=True)
    with pytest.raises(BrokerRejected) as refused:
        await venue.broker.submit(market_buy())
    assert refused.value.reason == "RATE_LIMITED"
    assert venue.fake_orders() == []


async def test_a_burst_stays_inside_the_limit_and_loses_nothing(venue: Venue) -> None:
    async def one(n: int) -> None:
        request = OrderRequest(
            f"tte{n:032d}",
            "ETHUSDT",
            Side.BUY,
            OrderType.LIMIT,
            D("0.10"),
            D("3000.00"),
            TimeInForce.GTC,
            leverage=D(2),
        )
        await venue.broker.submit(request)

    async with trio.open_nursery() as burst:
        for n in range(25):
            burst.start_soon(one, n)
    assert len(venue.fake_orders()) == 25
    assert len({o["orderLinkId"] for o in venue.fake_orders()}) == 25
    assert len(await venue.broker.open_orders()) == 25


async def test_cancel_and_amend(venue: Venue) -> None:
    request = OrderRequest(
        "tte" + "2" * 32,
        "BTCUSDT",
        Side.BUY,
        OrderType.LIMIT,
        D("0.010"),
        D("94000.0"),
        TimeInForce.POST_ONLY,
        leverage=D(3),
    )
    await venue.broker.submit(request)
    amended = await venue.broker.amend("BTCUSDT", request.client_order_id, D("94100.0"))
    assert amended.price == D("94100.0") and amended.status is OrderStatus.ACCEPTED
    with pytest.raises(BrokerRejected) as off_tick:
        await venue.broker.amend("BTCUSDT", request.client_order_id, D("94100.05"))
    assert off_tick.value.reason == "INVALID_PRICE"
    cancelled = await venue.broker.cancel("BTCUSDT", request.client_order_id)
    assert cancelled.status is OrderStatus.CANCELED
    with pytest.raises(BrokerRejected) as again:
        await venue.broker.cancel("BTCUSDT", request.client_order_id)
    assert again.value.reason in ("ORDER_NOT_OPEN", "ORDER_NOT_FOUND")
    assert await venue.broker.order_status("BTCUSDT", "tte" + "9" * 32) is None


async def test_while_the_stream_is_down_polling_keeps_fills_coming(
    venue: Venue, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciles: list[int] = []
    venue.broker.on_reconnect = lambda: reconciles.append(1)
    monkeypatch.setattr("titan_trio.brokers.bybit.stream.backoff_delay", lambda *a, **k: 1.5)
    venue.fx.fault("drop_ws", channel="bybit_private")
    with trio.fail_after(5):
        while venue.broker.stream.connected:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert venue.broker.health()["stream"]["polling"] is True
    await venue.broker.submit(market_buy())
    # over REST: the stream is not back yet
    await venue.collect(
        lambda ev: (
            has_fill(ev)
            and any(isinstance(e, OrderEvent) and e.order.status is OrderStatus.FILLED for e in ev)
        )
    )
    assert venue.broker.polls >= 1
    assert not venue.broker.stream.connected
    with trio.fail_after(10):
        while not reconciles:  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert venue.broker.stream.reconnects == 1


async def test_a_missed_pong_reconnects(venue: Venue, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = venue.broker.stream
    stream.ping_interval_s, stream.pong_timeout_s = 0.2, 0.3
    monkeypatch.setattr("titan_trio.brokers.bybit.stream.backoff_delay", lambda *a, **k: 0.05)
    venue.fx.fault("drop_ws", channel="bybit_private")  # back with the short heartbeat
    with trio.fail_after(10):
        while stream.reconnects < 1:  # noqa: ASYNC110
            await trio.sleep(0.05)
    venue.fx.fault("stall_ws", channel="bybit_private", seconds=1)  # no pong comes back
    with trio.fail_after(10):
        while stream.reconnects < 2:  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert "pong" in (stream.last_error or "")


async def test_keys_the_exchange_refuses_stop_the_start(nursery: trio.Nursery) -> None:
    fx = FakeExchange(keys={KEY: SECRET})
    await nursery.start(fx.serve, 0)
    broker = BybitBroker(
        BybitRest(fx.rest_url, KEY, "wrong-secret"), fx.ws_private_url, {}, ["BTCUSDT"]
    )
    with pytest.raises(StartupError, match="refused the API key"):
        await broker.run()


async def test_an_exchange_out_of_reach_does_not_stop_the_start(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module, "START_ATTEMPTS", 1)
    broker = BybitBroker(
        BybitRest("http://127.0.0.1:9", KEY, SECRET), "ws://127.0.0.1:9/v5/private", {}, ["BTCUSDT"]
    )
    await nursery.start(broker.run)
    health = broker.health()
    assert health["status"] == "unhealthy" and health["reachable"] is False
    assert health["stream"]["connected"] is False


async def test_a_server_clock_ahead_is_met_by_one_resync(venue: Venue) -> None:
    venue.fx.fault("clock_offset_ms", ms=6000)  # the exchange's clock jumped ahead
    ack = await venue.broker.submit(market_buy())
    assert ack.status is OrderStatus.ACCEPTED
    assert len(venue.fake_orders()) == 1  # refused once (10002), then sent once more
    assert any(r.get("retCode") == 10002 for r in venue.fx.state()["refused"])
    assert 5500 < venue.broker.health()["clock_skew_ms"] < 6500


async def test_cancel_all_cancels_every_open_order(venue: Venue) -> None:
    for n, symbol in enumerate(("BTCUSDT", "ETHUSDT")):
        price = D("90000.0") if symbol == "BTCUSDT" else D("3000.00")
        qty = D("0.010") if symbol == "BTCUSDT" else D("0.10")
        await venue.broker.submit(
            OrderRequest(f"tte{n:032d}", symbol, Side.BUY, OrderType.LIMIT, qty, price)
        )
    cancelled = await venue.broker.cancel_all()
    assert sorted(cancelled) == [f"tte{n:032d}" for n in range(2)]
    assert await venue.broker.open_orders() == []
