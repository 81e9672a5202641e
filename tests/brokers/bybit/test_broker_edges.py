"""Edges of the Bybit broker a review found (issue 11), each a defect that would lose
money or stop the service: a code that proves nothing taken as a refusal, instruments
beyond the first page, a wallet push ahead of its execution, a start with Bybit out of
reach and an order in flight. The exchange is an httpx MockTransport (or nothing at
all), so each test sets up exactly the answer it is about."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from titan_trio.brokers.base import BalanceEvent, BrokerEvent, FillEvent
from titan_trio.brokers.bybit import broker as broker_module
from titan_trio.brokers.bybit.broker import BybitBroker
from titan_trio.brokers.bybit.rest import BybitRest
from titan_trio.config import Config
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Order, OrderRequest, OrderStatus, OrderType, Side
from titan_trio.engine import Engine
from titan_trio.errors import BrokerRejected
from titan_trio.state import records
from titan_trio.state.store import Store

KEY, SECRET = "review-key-0000000000", "review-secret-0000000000"
D = Decimal
COID = "tte" + "7" * 32


def envelope(code: int = 0, msg: str = "OK", result: Any = None) -> dict[str, Any]:
    return {"retCode": code, "retMsg": msg, "result": result or {}, "retExtInfo": {}, "time": 1}


def broker_on(handler: Callable[[httpx.Request], httpx.Response]) -> BybitBroker:
    rest = BybitRest("http://bybit.test", KEY, SECRET, transport=httpx.MockTransport(handler))
    instruments: dict[str, Instrument] = {}
    return BybitBroker(rest, "ws://127.0.0.1:9/never", instruments, ["BTCUSDT", "ETHUSDT"])


def order_row(status: str = "New") -> dict[str, Any]:
    return {
        "orderId": "exch-1",
        "orderLinkId": COID,
        "symbol": "BTCUSDT",
        "side": "Buy",
        "orderType": "Market",
        "qty": "0.010",
        "cumExecQty": "0",
        "orderStatus": status,
        "category": "linear",
    }


async def test_a_server_timeout_code_on_create_is_not_a_rejection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bybit answers ``retCode 10000`` ("Server Timeout") with HTTP 200 when its back end
    did not answer in time: the order may well have been made. classify() treats every
    code it does not list as proof of refusal, so the order is recorded REJECTED while it
    rests or fills at the exchange."""
    monkeypatch.setattr(broker_module, "FOUND_AFTER_AMBIGUOUS_S", 0.0)
    made: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v5/position/set-leverage":
            return httpx.Response(200, json=envelope())
        if path == "/v5/order/create":
            made.append(json.loads(request.content)["orderLinkId"])  # carried out ...
            return httpx.Response(200, json=envelope(10000, "Server Timeout"))  # ... unsaid
        if path == "/v5/order/realtime":
            rows = [order_row()] if made else []
            return httpx.Response(200, json=envelope(result={"list": rows}))
        return httpx.Response(200, json=envelope(result={"list": []}))

    broker = broker_on(handler)
    request = OrderRequest(COID, "BTCUSDT", Side.BUY, OrderType.MARKET, D("0.010"), leverage=D(5))
    try:
        ack = await broker.submit(request)
    except BrokerRejected as exc:
        pytest.fail(f"reported REJECTED ({exc.reason}) while the exchange holds {made}")
    assert ack.client_order_id == COID
    assert ack.status in (OrderStatus.SUBMITTED, OrderStatus.ACCEPTED)


async def test_instruments_on_a_second_page_are_loaded() -> None:
    """``/v5/market/instruments-info`` pages (500 rows by default, ``nextPageCursor``);
    linear has more than 500 symbols. _load_instruments reads the first page only, so a
    traded symbol on a later page keeps the configured tick size, step and minimum (or
    none), and health says the exchange does not list it."""

    def row(symbol: str) -> dict[str, Any]:
        return {
            "symbol": symbol,
            "status": "Trading",
            "priceFilter": {"tickSize": "0.01"},
            "lotSizeFilter": {"qtyStep": "0.01", "minOrderQty": "0.01", "minNotionalValue": "5"},
            "leverageFilter": {"maxLeverage": "100"},
        }

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") == "page-2":
            page = {"list": [row("ETHUSDT")], "nextPageCursor": ""}
        else:
            page = {"list": [row("BTCUSDT")], "nextPageCursor": "page-2"}
        return httpx.Response(200, json=envelope(result={"category": "linear", **page}))

    broker = broker_on(handler)
    await broker._load_instruments()
    assert set(broker.instruments) == {"BTCUSDT", "ETHUSDT"}


async def test_a_wallet_push_just_before_its_execution_is_sent_after_the_fill(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bybit's topics are separate messages with no documented order between them. A
    ``wallet`` push that arrives just before the ``execution`` it includes is sent as a
    BalanceEvent at once (no execution in the last second), then the FillEvent applies
    the same fee and P&L again: the shadow balance is off by the fill's P&L until the
    next wallet push or reconciliation (and the daily-loss check sees it doubled)."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no REST call expected: {request.url}")

    broker = broker_on(handler)
    events: list[BrokerEvent] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(broker._wallet_loop)
        await trio.sleep(5)  # long after any earlier execution
        wallet = [{"accountType": "UNIFIED", "coin": [{"coin": "USDT", "walletBalance": "9990"}]}]
        await broker._on_items("wallet", wallet)  # already holds the fee of exec-1 below
        await trio.sleep(0.05)
        execution = {
            "category": "linear",
            "execId": "exec-1",
            "orderId": "exch-1",
            "orderLinkId": COID,
            "symbol": "BTCUSDT",
            "side": "Buy",
            "execQty": "0.010",
            "execPrice": "95000",
            "execFee": "10",
            "execTime": "1700000000000",
            "execType": "Trade",
            "isMaker": False,
        }
        await broker._on_items("execution", [execution])
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    while True:
        try:
            events.append(broker.events.receive_nowait())
        except trio.WouldBlock:
            break
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["FillEvent", "BalanceEvent"], kinds
    assert isinstance(events[0], FillEvent) and isinstance(events[1], BalanceEvent)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: connections are refused


async def test_the_service_starts_while_bybit_is_unreachable_with_an_order_in_flight(
    make_config: Callable[..., Config],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """broker.run and the balance at start tolerate an unreachable exchange, but
    settle_in_flight (engine._start_services) asks order_status unguarded: one order left
    in flight by a kill (the likeliest moment for both) makes BrokerUnavailable escape
    and the service does not start, so nothing manages the open position's stops."""
    monkeypatch.setattr(broker_module, "START_ATTEMPTS", 1)
    monkeypatch.setenv("TITAN_BYBIT_API_KEY", KEY)
    monkeypatch.setenv("TITAN_BYBIT_API_SECRET", SECRET)
    port = _closed_port()
    cfg = make_config(
        mode="live",
        api={"token": "review-token-" + "t" * 30},
        ipc={"hmacSecret": "review-hmac-" + "h" * 30},
        broker={"name": "bybit"},
        feeds=["bybit"],
        exchanges={
            "bybit": {
                "restUrl": f"http://127.0.0.1:{port}",
                "wsPublicUrl": f"ws://127.0.0.1:{port}/public",
                "wsPrivateUrl": f"ws://127.0.0.1:{port}/private",
            }
        },
    )
    async with trio.open_nursery() as nursery:  # an order sent just before a kill
        store = await nursery.start(Store(cfg.database.path, always_inline=True).run)
        in_flight = Order(
            COID,
            "BTCUSDT",
            Side.BUY,
            OrderType.MARKET,
            D("0.010"),
            status=OrderStatus.SUBMITTED,
            created_ms=1,
            updated_ms=1,
        )
        await store.call(records.save_order, in_flight)
        nursery.cancel_scope.cancel()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            engine: Engine = await nursery.start(Engine(cfg).run)
            assert engine.shadow.orders[COID].status is OrderStatus.SUBMITTED  # still open
            nursery.cancel_scope.cancel()
