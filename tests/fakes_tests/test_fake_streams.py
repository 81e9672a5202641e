"""The fake's server and market streams: keep-alive HTTP, Binance bookTicker (combined,
raw, SUBSCRIBE, ping frames, maximum age), Bybit public tickers and orderbook.1, and the
stream faults (drop_ws, stall_ws)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request

from tests.fakes.exchange import FakeExchange
from tests.fakes_tests.conftest import KEY, SECRET, SYMBOLS, eventually


async def receive_json(ws: trio_websocket.WebSocketConnection, limit_s: float = 5) -> Any:
    with trio.fail_after(limit_s):
        return json.loads(await ws.get_message())


async def nothing_within(ws: trio_websocket.WebSocketConnection, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        await ws.get_message()
        return False
    return True


async def test_http_keep_alive_reuses_one_connection(
    fx: FakeExchange, http: httpx.AsyncClient
) -> None:
    for _ in range(3):
        answer = await http.get("/v5/market/time")
        assert answer.json()["retCode"] == 0
    assert fx.state()["tcp_connections"] == 1


async def test_market_time_and_instruments(fx: FakeExchange, http: httpx.AsyncClient) -> None:
    time_doc = (await http.get("/v5/market/time")).json()
    assert set(time_doc) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    assert abs(int(time_doc["result"]["timeSecond"]) * 1000 - fx.server_ms()) < 5000
    doc = (await http.get("/v5/market/instruments-info?category=linear&symbol=SOLUSDT")).json()
    (sol,) = doc["result"]["list"]
    assert sol["priceFilter"]["tickSize"] == "0.01"
    assert sol["lotSizeFilter"] == {**sol["lotSizeFilter"], "qtyStep": "0.1", "minOrderQty": "0.1"}
    assert sol["leverageFilter"]["maxLeverage"] == "50"
    all_doc = (await http.get("/v5/market/instruments-info?category=linear")).json()
    assert {i["symbol"] for i in all_doc["result"]["list"]} == set(SYMBOLS)


async def test_binance_combined_book_ticker_follows_set_price(fx: FakeExchange) -> None:
    url = f"{fx.binance_ws_url}/stream?streams=btcusdt@bookTicker/ethusdt@bookTicker"
    async with trio_websocket.open_websocket_url(url) as ws:
        first = {(m := await receive_json(ws))["stream"]: m["data"] for _ in range(2)}
        assert set(first) == {"btcusdt@bookTicker", "ethusdt@bookTicker"}
        assert first["btcusdt@bookTicker"]["b"] == "95000"
        fx.set_price("BTCUSDT", bid="95010", ask="95010.1")
        moved = await receive_json(ws)
        assert moved["stream"] == "btcusdt@bookTicker"
        data = moved["data"]
        assert set(data) == {"e", "u", "E", "T", "s", "b", "B", "a", "A"}
        assert (data["e"], data["s"], data["b"], data["a"]) == (
            "bookTicker",
            "BTCUSDT",
            "95010",
            "95010.1",
        )
        assert data["u"] > first["btcusdt@bookTicker"]["u"]


async def test_binance_raw_stream_and_subscribe(fx: FakeExchange) -> None:
    async with trio_websocket.open_websocket_url(
        f"{fx.binance_ws_url}/ws/ethusdt@bookTicker"
    ) as ws:
        assert (await receive_json(ws))["s"] == "ETHUSDT"  # unwrapped
        await ws.send_message(
            json.dumps({"method": "SUBSCRIBE", "params": ["solusdt@bookTicker"], "id": 7})
        )
        assert await receive_json(ws) == {"result": None, "id": 7}
        assert (await receive_json(ws))["s"] == "SOLUSDT"
        await ws.send_message(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 8}))
        assert await receive_json(ws) == {
            "result": ["ethusdt@bookTicker", "solusdt@bookTicker"],
            "id": 8,
        }


async def test_binance_aggtrade_and_mark_price(fx: FakeExchange, bybit: Any) -> None:
    url = f"{fx.binance_ws_url}/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s"
    async with trio_websocket.open_websocket_url(url) as ws:
        await bybit.create(side="Buy", orderType="Market", qty="0.01")
        seen = {}
        while len(seen) < 2:
            message = await receive_json(ws, limit_s=5)
            seen[message["stream"]] = message["data"]
        trade = seen["btcusdt@aggTrade"]
        assert (trade["e"], trade["p"], trade["q"], trade["m"]) == (
            "aggTrade",
            "95000.1",
            "0.01",
            False,
        )
        assert seen["btcusdt@markPrice@1s"]["e"] == "markPriceUpdate"


async def raw_client(port: int, target: str) -> tuple[trio.SocketStream, WSConnection]:
    """A bare wsproto client, to see frames trio-websocket would hide (pings, the lack of
    a close frame)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host="127.0.0.1", target=target)))
    while True:
        ws.receive_data(await stream.receive_some(65536))
        if any(isinstance(e, AcceptConnection) for e in ws.events()):
            return stream, ws


async def test_binance_pings_and_cuts_at_max_age_without_close_frame(nursery: trio.Nursery) -> None:
    fx = FakeExchange(
        symbols=SYMBOLS, keys={KEY: SECRET}, binance_ping_s=0.05, binance_max_age_s=0.5
    )
    port = await nursery.start(fx.serve, 0)
    stream, ws = await raw_client(port, "/ws/btcusdt@bookTicker")
    events: list[Any] = []
    with trio.fail_after(5):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            ws.receive_data(data)
            events.extend(ws.events())
    assert any(isinstance(e, Ping) for e in events)
    assert not any(isinstance(e, CloseConnection) for e in events)
    assert fx.state()["ws_connections"]["binance"] == {"open": 0, "opened": 1}


async def test_bybit_public_tickers_and_orderbook(fx: FakeExchange) -> None:
    async with trio_websocket.open_websocket_url(fx.ws_public_url) as ws:
        request = {
            "req_id": "s1",
            "op": "subscribe",
            "args": ["tickers.BTCUSDT", "orderbook.1.BTCUSDT"],
        }
        await ws.send_message(json.dumps(request))
        ack = await receive_json(ws)
        assert {k: ack[k] for k in ("success", "ret_msg", "req_id", "op")} == {
            "success": True,
            "ret_msg": "",
            "req_id": "s1",
            "op": "subscribe",
        }
        ticker = await receive_json(ws)
        assert (ticker["topic"], ticker["type"]) == ("tickers.BTCUSDT", "snapshot")
        assert ticker["data"]["bid1Price"] == "95000" and ticker["data"]["ask1Price"] == "95000.1"
        book = await receive_json(ws)
        assert (book["topic"], book["type"]) == ("orderbook.1.BTCUSDT", "snapshot")
        assert book["data"]["b"] == [["95000", "1"]] and book["data"]["a"] == [["95000.1", "1"]]

        fx.set_price("BTCUSDT", bid="95000", ask="95000.3")
        delta = await receive_json(ws)
        assert delta["type"] == "delta" and delta["cs"] == ticker["cs"] + 1
        # only what changed: the ask and the mid (last/mark/index), never the bid
        assert delta["data"] == {
            "symbol": "BTCUSDT",
            "ask1Price": "95000.3",
            "lastPrice": "95000.2",
            "markPrice": "95000.2",
            "indexPrice": "95000.2",
        }
        moved = await receive_json(ws)
        assert moved["data"]["a"] == [["95000.3", "1"]] and moved["data"]["u"] > book["data"]["u"]

        await ws.send_message(json.dumps({"op": "ping", "req_id": "p1"}))
        pong = await receive_json(ws)
        assert {k: pong[k] for k in ("success", "ret_msg", "req_id", "op")} == {
            "success": True,
            "ret_msg": "pong",
            "req_id": "p1",
            "op": "ping",
        }
        assert pong["conn_id"]


async def test_bybit_public_refuses_unknown_topic(fx: FakeExchange) -> None:
    async with trio_websocket.open_websocket_url(fx.ws_public_url) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "args": ["tickers.NOPEUSDT"]}))
        ack = await receive_json(ws)
        assert ack["success"] is False and "tickers.NOPEUSDT" in ack["ret_msg"]


async def test_orderbook_resent_when_unchanged(nursery: trio.Nursery) -> None:
    fx = FakeExchange(symbols=SYMBOLS, keys={KEY: SECRET}, orderbook_resend_s=0.05)
    await nursery.start(fx.serve, 0)
    async with trio_websocket.open_websocket_url(fx.ws_public_url) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "args": ["orderbook.1.ETHUSDT"]}))
        await receive_json(ws)  # ack
        books = [await receive_json(ws) for _ in range(3)]
        assert len({b["data"]["u"] for b in books}) == 1
        assert all(b["type"] == "snapshot" for b in books)


@pytest.mark.parametrize("channel", ["binance", "all"])
async def test_drop_ws_cuts_without_close_frame(fx: FakeExchange, channel: str) -> None:
    async with trio_websocket.open_websocket_url(
        f"{fx.binance_ws_url}/ws/btcusdt@bookTicker"
    ) as ws:
        await receive_json(ws)
        fx.fault("drop_ws", channel=channel)
        with pytest.raises(trio_websocket.ConnectionClosed) as closed, trio.fail_after(5):
            await ws.get_message()
        assert closed.value.reason.code == 1006  # abnormal: no close frame came
    await eventually(lambda: fx.state()["ws_connections"]["binance"]["open"] == 0)


async def test_drop_ws_spares_other_channels(fx: FakeExchange) -> None:
    async with trio_websocket.open_websocket_url(fx.ws_public_url) as ws:
        fx.fault("drop_ws", channel="binance")
        await ws.send_message(json.dumps({"op": "ping", "req_id": "still"}))
        assert (await receive_json(ws))["req_id"] == "still"


async def test_stall_ws_holds_data_and_pongs_until_it_ends(fx: FakeExchange) -> None:
    async with trio_websocket.open_websocket_url(fx.ws_public_url) as ws:
        await ws.send_message(json.dumps({"op": "subscribe", "args": ["tickers.BTCUSDT"]}))
        await receive_json(ws)
        await receive_json(ws)
        fx.fault("stall_ws", channel="bybit_public", seconds=60)
        fx.set_price("BTCUSDT", bid="94990")
        await ws.send_message(json.dumps({"op": "ping", "req_id": "p"}))
        assert await nothing_within(ws, 0.3)
        assert fx.state()["ws_connections"]["bybit_public"]["open"] == 1
        fx.fault("clear")
        assert (await receive_json(ws))["data"]["bid1Price"] == "94990"
        assert (await receive_json(ws))["ret_msg"] == "pong"


async def test_set_price_validates(fx: FakeExchange) -> None:
    with pytest.raises(ValueError):
        fx.set_price("BTCUSDT", bid="95000.05")  # off the tick
    with pytest.raises(ValueError):
        fx.set_price("BTCUSDT", bid="95000", ask="94000")
    with pytest.raises(KeyError):
        fx.set_price("NOPEUSDT", bid="1")
