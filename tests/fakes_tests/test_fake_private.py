"""The fake's Bybit private WebSocket: auth as documented (HMAC of "GET/realtime" +
expires), subscriptions, and the order/execution/position/wallet messages an order
produces."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio_websocket

from tests.fakes.exchange import FakeExchange
from tests.fakes_tests.conftest import KEY, SECRET, BybitClient
from tests.fakes_tests.test_fake_streams import nothing_within, receive_json


def auth_message(expires: int, secret: str = SECRET, key: str = KEY) -> str:
    signature = hmac.new(
        secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256
    ).hexdigest()
    return json.dumps({"req_id": "a", "op": "auth", "args": [key, expires, signature]})


@asynccontextmanager
async def private_stream(fx: FakeExchange) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    async with trio_websocket.open_websocket_url(fx.ws_private_url) as ws:
        await ws.send_message(auth_message(fx.server_ms() + 5000))
        assert (await receive_json(ws))["success"] is True
        topics = ["order", "execution", "position", "wallet"]
        await ws.send_message(json.dumps({"req_id": "s", "op": "subscribe", "args": topics}))
        ack = await receive_json(ws)
        assert (ack["success"], ack["op"], ack["req_id"]) == (True, "subscribe", "s")
        yield ws


async def messages_until(
    ws: trio_websocket.WebSocketConnection, topics: set[str]
) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {}
    while not topics <= set(seen):
        message = await receive_json(ws)
        assert set(message) == {"id", "topic", "creationTime", "data"}
        seen.setdefault(message["topic"], []).extend(message["data"])
    return seen


async def test_market_order_pushes_order_execution_position_wallet(
    fx: FakeExchange, bybit: BybitClient
) -> None:
    async with private_stream(fx) as ws:
        await bybit.create(
            side="Buy", orderType="Market", qty="0.01", orderLinkId="W1", stopLoss="90000"
        )
        seen = await messages_until(ws, {"order", "execution", "position", "wallet"})
        assert (
            seen["order"][-1]["orderLinkId"] == "W1"
            and seen["order"][-1]["orderStatus"] == "Filled"
        )
        assert {
            "orderId",
            "leavesQty",
            "cumExecQty",
            "avgPrice",
            "timeInForce",
            "reduceOnly",
        } <= set(seen["order"][-1])
        (fill,) = seen["execution"]
        assert (fill["orderLinkId"], fill["execQty"], fill["execPrice"], fill["isMaker"]) == (
            "W1",
            "0.01",
            "95000.1",
            False,
        )
        (held,) = seen["position"]
        assert (held["symbol"], held["side"], held["size"], held["entryPrice"]) == (
            "BTCUSDT",
            "Buy",
            "0.01",
            "95000.1",
        )
        assert held["stopLoss"] == "90000" and held["positionIdx"] == 0 and "avgPrice" not in held
        (account,) = seen["wallet"]
        assert account["accountType"] == "UNIFIED"
        assert account["coin"][0]["walletBalance"] == fx.state()["wallet"]["totalWalletBalance"]


async def test_post_only_cancel_is_pushed(fx: FakeExchange, bybit: BybitClient) -> None:
    async with private_stream(fx) as ws:
        await bybit.create(
            side="Sell", orderType="Limit", qty="0.01", price="95000", timeInForce="PostOnly"
        )
        seen = await messages_until(ws, {"order"})
        assert [o["orderStatus"] for o in seen["order"]] == ["New", "Cancelled"]
        assert seen["order"][-1]["rejectReason"] == "EC_PostOnlyWillTakeLiquidity"


async def test_resting_fill_after_set_price_is_pushed(fx: FakeExchange, bybit: BybitClient) -> None:
    async with private_stream(fx) as ws:
        await bybit.create(
            side="Buy", orderType="Limit", qty="0.01", price="94000", orderLinkId="RF"
        )
        await messages_until(ws, {"order", "position", "wallet"})
        fx.set_price("BTCUSDT", bid="93990", ask="94000")
        seen = await messages_until(ws, {"execution"})
        assert (
            seen["execution"][0]["isMaker"] is True and seen["execution"][0]["orderLinkId"] == "RF"
        )


async def test_auth_refusals_and_subscribe_before_auth(fx: FakeExchange) -> None:
    async with trio_websocket.open_websocket_url(fx.ws_private_url) as ws:
        await ws.send_message(json.dumps({"req_id": "early", "op": "subscribe", "args": ["order"]}))
        early = await receive_json(ws)
        assert (early["success"], early["req_id"]) == (False, "early")
        await ws.send_message(auth_message(fx.server_ms() - 1))
        assert (await receive_json(ws))["success"] is False  # expired
        await ws.send_message(auth_message(fx.server_ms() + 5000, secret="wrong"))
        assert (await receive_json(ws))["success"] is False
        await ws.send_message(auth_message(fx.server_ms() + 5000, key="unknown"))
        assert (await receive_json(ws))["success"] is False
        await ws.send_message(auth_message(fx.server_ms() + 5000))
        good = await receive_json(ws)
        assert (good["success"], good["op"], good["ret_msg"]) == (True, "auth", "")


async def test_private_ping_answers_pong_with_server_time(fx: FakeExchange) -> None:
    async with private_stream(fx) as ws:
        await ws.send_message(json.dumps({"req_id": "hb", "op": "ping"}))
        pong = await receive_json(ws)
        assert (pong["op"], pong["req_id"]) == ("pong", "hb")
        assert abs(int(pong["args"][0]) - fx.server_ms()) < 5000 and pong["conn_id"]


async def test_private_silent_loses_messages_for_a_while(
    fx: FakeExchange, bybit: BybitClient
) -> None:
    async with private_stream(fx) as ws:
        fx.fault("private_silent", seconds=60)
        await bybit.create(side="Buy", orderType="Market", qty="0.01", orderLinkId="S1")
        assert await nothing_within(ws, 0.3)
        assert fx.state()["orders"][0]["orderStatus"] == "Filled"  # carried out all the same
        fx.fault("clear")
        await bybit.create(side="Buy", orderType="Market", qty="0.01", orderLinkId="S2")
        seen = await messages_until(ws, {"order"})
        assert {o["orderLinkId"] for o in seen["order"]} == {"S2"}  # S1's messages are gone


async def test_private_stream_can_be_stalled_and_dropped(
    fx: FakeExchange, bybit: BybitClient
) -> None:
    async with private_stream(fx) as ws:
        fx.fault("stall_ws", channel="bybit_private", seconds=60)
        await bybit.create(side="Buy", orderType="Market", qty="0.01", orderLinkId="T1")
        assert await nothing_within(ws, 0.3)
        fx.fault("drop_ws", channel="bybit_private")
        with trio.fail_after(5):
            while True:
                try:
                    await ws.get_message()
                except trio_websocket.ConnectionClosed as closed:
                    assert closed.reason.code == 1006
                    break
