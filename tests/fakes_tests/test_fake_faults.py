"""Every request fault of the fake shows its effect: refused before anything is done
(http_5xx, rate_limit) or carried out with a spoiled answer (lose_ack, delay_ack,
server_error_after); the clock offset; the control API; the random walk."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio_websocket

from tests.fakes.exchange import FakeExchange
from tests.fakes.faults import FaultError
from tests.fakes_tests.conftest import KEY, SECRET, SYMBOLS, BybitClient, eventually
from tests.fakes_tests.test_fake_private import messages_until, private_stream
from tests.fakes_tests.test_fake_streams import receive_json

MARKET_BUY = {"side": "Buy", "orderType": "Market", "qty": "0.01"}


def links(fx: FakeExchange) -> list[str]:
    return [o["orderLinkId"] for o in fx.state()["orders"]]


async def test_http_5xx_answers_without_doing_anything(
    fx: FakeExchange, bybit: BybitClient
) -> None:
    fx.fault("http_5xx", path="/v5/order/create", count=2, status=503)
    for n in range(2):
        body = {"category": "linear", "symbol": "BTCUSDT", **MARKET_BUY, "orderLinkId": f"H{n}"}
        answer = await bybit.post("/v5/order/create", body)
        assert answer.status_code == 503
    assert links(fx) == []
    assert (await bybit.create(**MARKET_BUY, orderLinkId="H2"))["retCode"] == 0
    assert links(fx) == ["H2"]


@pytest.mark.parametrize("http_status", [False, True])
async def test_rate_limit_fault(fx: FakeExchange, bybit: BybitClient, http_status: bool) -> None:
    fx.fault("rate_limit", path="/v5/order/create", count=1, http=http_status)
    body = {"category": "linear", "symbol": "BTCUSDT", **MARKET_BUY, "orderLinkId": "RL"}
    answer = await bybit.post("/v5/order/create", body)
    assert answer.status_code == (429 if http_status else 200)
    assert answer.json()["retCode"] == 10006
    assert answer.headers["X-Bapi-Limit-Status"] == "0"
    reset = int(answer.headers["X-Bapi-Limit-Reset-Timestamp"])
    assert 0 < reset - fx.server_ms() <= 1000
    assert links(fx) == []
    assert [r["retCode"] for r in fx.state()["refused"]] == [10006]
    assert (await bybit.post("/v5/order/create", body)).json()["retCode"] == 0


async def test_lose_ack_carries_out_then_closes_without_answer(
    fx: FakeExchange, bybit: BybitClient
) -> None:
    async with private_stream(fx) as ws:
        fx.fault("lose_ack")  # /v5/order/create by default
        with pytest.raises(httpx.RemoteProtocolError):
            await bybit.create(**MARKET_BUY, orderLinkId="LOST")
        assert fx.state()["orders"][0]["orderStatus"] == "Filled"
        seen = await messages_until(ws, {"order", "execution"})
        assert seen["execution"][0]["orderLinkId"] == "LOST"
    again = await bybit.create(**MARKET_BUY, orderLinkId="LOST")
    assert again["retCode"] == 110072  # the order exists: settle it, do not resend


async def test_delay_ack_answers_after_carrying_out(fx: FakeExchange, bybit: BybitClient) -> None:
    fx.fault("delay_ack", path="/v5/order/create", seconds=0.5, count=1)
    answered = trio.Event()
    result = {}

    async def create() -> None:
        result.update(await bybit.create(**MARKET_BUY, orderLinkId="SLOW"))
        answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(create)
        await eventually(lambda: links(fx) == ["SLOW"])
        assert not answered.is_set()
    assert result["retCode"] == 0 and result["result"]["orderLinkId"] == "SLOW"


async def test_server_error_after_is_ambiguous(fx: FakeExchange, bybit: BybitClient) -> None:
    fx.fault("server_error_after", path="/v5/order/cancel", count=1)
    await bybit.create(side="Buy", orderType="Limit", qty="0.01", price="90000", orderLinkId="AMB")
    body = {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "AMB"}
    assert (await bybit.post("/v5/order/cancel", body)).json()["retCode"] == 10016
    assert fx.state()["orders"][0]["orderStatus"] == "Cancelled"


async def test_clock_offset_shifts_server_time(
    fx: FakeExchange, bybit: BybitClient, http: httpx.AsyncClient
) -> None:
    fx.fault("clock_offset_ms", ms=-10_000)
    server = int((await http.get("/v5/market/time")).json()["result"]["timeSecond"]) * 1000
    assert 5_000 < bybit.clock_ms() - server < 15_000
    path, params = "/v5/account/wallet-balance", {"accountType": "UNIFIED"}
    assert (await bybit.get(path, params)).json()["retCode"] == 10002  # we are 10 s ahead
    assert (await bybit.get(path, params, skew_ms=-10_000)).json()["retCode"] == 0
    fx.fault("clear")
    assert (await bybit.get(path, params)).json()["retCode"] == 0


async def test_faults_are_checked(fx: FakeExchange) -> None:
    with pytest.raises(FaultError):
        fx.fault("meteor")
    with pytest.raises(FaultError):
        fx.fault("http_5xx")  # no path
    with pytest.raises(FaultError):
        fx.fault("drop_ws", channel="carrier-pigeon")


async def test_control_api(fx: FakeExchange, http: httpx.AsyncClient, bybit: BybitClient) -> None:
    price = await http.post(
        "/fake/price", json={"symbol": "ETHUSDT", "bid": "3400", "ask": "3400.05"}
    )
    assert price.json() == {"ok": True}
    assert fx.state()["quotes"]["ETHUSDT"] == {"bid": "3400", "ask": "3400.05", "mid": "3400.03"}
    fault = {"kind": "http_5xx", "path": "/v5/position/list", "count": 1}
    assert (await http.post("/fake/fault", json=fault)).json() == {"ok": True}
    assert fx.state()["faults"]["requests"][0]["path"] == "/v5/position/list"
    assert (await http.post("/fake/clear")).json() == {"ok": True}
    assert fx.state()["faults"]["requests"] == []
    assert (await http.post("/fake/price", content=b"{")).status_code == 400
    assert (await http.post("/fake/fault", json={"kind": "http_5xx"})).status_code == 400
    await bybit.create(**MARKET_BUY)
    state = (await http.get("/fake/state")).json()
    assert state["positions"]["BTCUSDT"]["size"] == "0.01"
    assert state["requests"]["/v5/order/create"] == 1
    assert state["errors"] == []


async def test_walk_moves_prices_by_itself(nursery: trio.Nursery) -> None:
    fx = FakeExchange(symbols=SYMBOLS, keys={KEY: SECRET}, walk_ms=5, seed=3)
    await nursery.start(fx.serve, 0)
    async with trio_websocket.open_websocket_url(
        f"{fx.binance_ws_url}/ws/btcusdt@bookTicker"
    ) as ws:
        bids = {(await receive_json(ws))["b"] for _ in range(20)}
    assert len(bids) > 1


async def test_walk_is_seeded() -> None:
    def walk(seed: int) -> list[str]:
        fx = FakeExchange(symbols={"BTCUSDT": "95000"}, keys={}, seed=seed)
        bids = []
        for _ in range(10):
            fx.walk_once()
            bids.append(fx.state()["quotes"]["BTCUSDT"]["bid"])
        return bids

    assert walk(11) == walk(11)
    assert walk(11) != walk(12)
