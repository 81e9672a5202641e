"""The fake's Bybit v5 REST: authentication as documented, per-endpoint limits, and the
order life cycle with matching, positions, fees and the wallet."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import trio

from tests.fakes.exchange import FakeExchange
from tests.fakes_tests.conftest import KEY, SECRET, SYMBOLS, BybitClient


async def wallet(bybit: BybitClient) -> dict[str, Any]:
    doc = (await bybit.get("/v5/account/wallet-balance", {"accountType": "UNIFIED"})).json()
    assert doc["retCode"] == 0, doc
    return doc["result"]["list"][0]


async def position(bybit: BybitClient, symbol: str = "BTCUSDT") -> dict[str, Any]:
    doc = (await bybit.get("/v5/position/list", {"category": "linear", "symbol": symbol})).json()
    return doc["result"]["list"][0]


async def order_by_link(bybit: BybitClient, link: str) -> dict[str, Any]:
    doc = (
        await bybit.get("/v5/order/realtime", {"category": "linear", "orderLinkId": link})
    ).json()
    (order,) = doc["result"]["list"]
    return order


async def test_signed_request_passes_with_limit_headers(bybit: BybitClient) -> None:
    answer = await bybit.get("/v5/account/wallet-balance", {"accountType": "UNIFIED"})
    doc = answer.json()
    assert doc["retCode"] == 0 and doc["retMsg"] == "OK" and doc["retExtInfo"] == {}
    assert doc["result"]["list"][0]["totalWalletBalance"] == "10000"
    assert doc["result"]["list"][0]["coin"][0]["coin"] == "USDT"
    assert answer.headers["X-Bapi-Limit"] == "50"
    assert answer.headers["X-Bapi-Limit-Status"] == "49"
    assert int(answer.headers["X-Bapi-Limit-Reset-Timestamp"]) > 0


async def test_authentication_refusals(
    fx: FakeExchange, bybit: BybitClient, http: httpx.AsyncClient
) -> None:
    params = {"accountType": "UNIFIED"}
    path = "/v5/account/wallet-balance"
    assert (await bybit.get(path, params, bad_sign=True)).json()["retCode"] == 10004
    ahead = (await bybit.get(path, params, skew_ms=1500)).json()
    assert ahead["retCode"] == 10002 and "server_timestamp[" in ahead["retMsg"]
    assert (await bybit.get(path, params, skew_ms=-5001)).json()["retCode"] == 10002
    assert (await bybit.get(path, params, skew_ms=-3000, window=10000)).json()["retCode"] == 0
    stranger = BybitClient(http, key="who-is-this", secret=SECRET)
    assert (await stranger.get(path, params)).json()["retCode"] == 10003
    body_signed_differently = await bybit.http.post(
        "/v5/order/cancel-all",
        content=b'{"category":"linear","symbol":"BTCUSDT"}',
        headers=bybit.headers('{"category": "linear", "symbol": "BTCUSDT"}'),
    )
    assert body_signed_differently.json()["retCode"] == 10004
    assert [r["retCode"] for r in fx.state()["refused"]] == [10004, 10002, 10002, 10003, 10004]


async def test_public_endpoints_need_no_auth(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/v5/market/tickers?category=linear&symbol=ETHUSDT")).json()
    assert doc["result"]["list"][0]["bid1Price"] == "3500"
    assert (await http.get("/v5/nope")).status_code == 404


async def test_create_then_realtime_and_duplicate_link_id(bybit: BybitClient) -> None:
    created = await bybit.create(
        side="Buy", orderType="Limit", qty="0.01", price="90000", orderLinkId="L1"
    )
    assert created["retCode"] == 0 and created["result"]["orderLinkId"] == "L1"
    order = await order_by_link(bybit, "L1")
    assert order["orderId"] == created["result"]["orderId"]
    assert (order["orderStatus"], order["leavesQty"], order["cumExecQty"]) == ("New", "0.01", "0")
    open_list = (
        await bybit.get("/v5/order/realtime", {"category": "linear", "symbol": "BTCUSDT"})
    ).json()
    assert [o["orderLinkId"] for o in open_list["result"]["list"]] == ["L1"]
    cancel = {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "L1"}
    assert (await bybit.post("/v5/order/cancel", cancel)).json()["retCode"] == 0
    assert (await bybit.post("/v5/order/cancel", cancel)).json()["retCode"] == 110008
    assert (await order_by_link(bybit, "L1"))["orderStatus"] == "Cancelled"
    again = await bybit.create(
        side="Buy", orderType="Limit", qty="0.01", price="90000", orderLinkId="L1"
    )
    assert again["retCode"] == 110072


async def test_market_order_fills_at_the_touch_with_taker_fee(bybit: BybitClient) -> None:
    created = await bybit.create(side="Buy", orderType="Market", qty="0.01", orderLinkId="M1")
    assert created["retCode"] == 0
    order = await order_by_link(bybit, "M1")
    assert (order["orderStatus"], order["avgPrice"], order["cumExecQty"]) == (
        "Filled",
        "95000.1",
        "0.01",
    )
    executions = (
        await bybit.get("/v5/execution/list", {"category": "linear", "symbol": "BTCUSDT"})
    ).json()
    (fill,) = executions["result"]["list"]
    assert (fill["orderLinkId"], fill["execPrice"], fill["execQty"], fill["isMaker"]) == (
        "M1",
        "95000.1",
        "0.01",
        False,
    )
    assert Decimal(fill["execFee"]) == Decimal("950.001") * Decimal("0.00055")
    held = await position(bybit)
    assert (held["side"], held["size"], held["avgPrice"], held["positionIdx"]) == (
        "Buy",
        "0.01",
        "95000.1",
        0,
    )
    after = await wallet(bybit)
    assert Decimal(after["totalWalletBalance"]) == Decimal(10000) - Decimal(fill["execFee"])
    # sell it back at the bid: realised (95000 - 95000.1) * 0.01 and a second fee
    await bybit.create(side="Sell", orderType="Market", qty="0.01", reduceOnly=True)
    flat = await position(bybit)
    assert (flat["side"], flat["size"]) == ("", "0")
    fees = Decimal("0.52250055") + Decimal("0.5225")
    assert (
        Decimal((await wallet(bybit))["totalWalletBalance"])
        == Decimal(10000) - Decimal("0.001") - fees
    )


async def test_post_only_that_would_take_is_cancelled(bybit: BybitClient) -> None:
    created = await bybit.create(
        side="Buy",
        orderType="Limit",
        qty="0.01",
        price="95000.1",
        timeInForce="PostOnly",
        orderLinkId="P1",
    )
    assert created["retCode"] == 0
    order = await order_by_link(bybit, "P1")
    assert (order["orderStatus"], order["rejectReason"]) == (
        "Cancelled",
        "EC_PostOnlyWillTakeLiquidity",
    )
    assert (await position(bybit))["size"] == "0"


async def test_ioc_not_fillable_is_cancelled(bybit: BybitClient) -> None:
    await bybit.create(
        side="Buy",
        orderType="Limit",
        qty="0.01",
        price="94000",
        timeInForce="IOC",
        orderLinkId="I1",
    )
    assert (await order_by_link(bybit, "I1"))["orderStatus"] == "Cancelled"


async def test_resting_limit_fills_as_maker_when_price_crosses(
    fx: FakeExchange, bybit: BybitClient
) -> None:
    await bybit.create(side="Buy", orderType="Limit", qty="0.01", price="94900", orderLinkId="R1")
    assert (await order_by_link(bybit, "R1"))["orderStatus"] == "New"
    fx.set_price("BTCUSDT", bid="94950", ask="94950.1")  # not yet
    assert (await order_by_link(bybit, "R1"))["orderStatus"] == "New"
    fx.set_price("BTCUSDT", bid="94899.9", ask="94900")
    order = await order_by_link(bybit, "R1")
    assert (order["orderStatus"], order["avgPrice"]) == ("Filled", "94900")
    fills = (
        await bybit.get("/v5/execution/list", {"category": "linear", "orderLinkId": "R1"})
    ).json()
    (fill,) = fills["result"]["list"]
    assert fill["isMaker"] is True and Decimal(fill["execFee"]) == Decimal("949") * Decimal(
        "0.0002"
    )


async def test_amend_moves_a_resting_order(fx: FakeExchange, bybit: BybitClient) -> None:
    await bybit.create(side="Sell", orderType="Limit", qty="0.01", price="96000", orderLinkId="A1")
    amend = {
        "category": "linear",
        "symbol": "BTCUSDT",
        "orderLinkId": "A1",
        "price": "95500",
        "qty": "0.02",
    }
    assert (await bybit.post("/v5/order/amend", amend)).json()["retCode"] == 0
    order = await order_by_link(bybit, "A1")
    assert (order["price"], order["qty"]) == ("95500", "0.02")
    unknown = {"category": "linear", "symbol": "BTCUSDT", "orderLinkId": "nope", "price": "1"}
    assert (await bybit.post("/v5/order/amend", unknown)).json()["retCode"] == 110001
    fx.set_price("BTCUSDT", bid="95500", ask="95500.1")
    assert (await order_by_link(bybit, "A1"))["orderStatus"] == "Filled"
    assert (await bybit.post("/v5/order/amend", amend)).json()["retCode"] == 110008
    assert (await position(bybit))["side"] == "Sell"


async def test_cancel_all(bybit: BybitClient) -> None:
    for n, symbol in enumerate(["BTCUSDT", "ETHUSDT"]):
        price = "90000" if symbol == "BTCUSDT" else "3000"
        await bybit.create(
            symbol=symbol,
            side="Buy",
            orderType="Limit",
            qty="0.01",
            price=price,
            orderLinkId=f"C{n}",
        )
    doc = (
        await bybit.post("/v5/order/cancel-all", {"category": "linear", "settleCoin": "USDT"})
    ).json()
    assert sorted(o["orderLinkId"] for o in doc["result"]["list"]) == ["C0", "C1"]
    unknown = {"category": "linear", "symbol": "BTCUSDT", "orderId": "no-such-order"}
    assert (await bybit.post("/v5/order/cancel", unknown)).json()["retCode"] == 110001


async def test_order_refusals(bybit: BybitClient) -> None:
    async def code(**fields: Any) -> int:
        return (await bybit.create(**fields))["retCode"]

    assert (
        await code(side="Buy", orderType="Limit", qty="0.0105", price="90000") == 10001
    )  # off step
    assert (
        await code(side="Buy", orderType="Limit", qty="0.01", price="90000.05") == 10001
    )  # off tick
    assert await code(side="Buy", orderType="Limit", qty="0.001", price="1000") == 110094  # 1 USDT
    assert await code(side="Buy", orderType="Market", qty="2") == 110007  # 190k at 10x > 10k
    assert await code(side="Sell", orderType="Market", qty="0.01", reduceOnly=True) == 110017
    assert await code(side="Buy", orderType="Stop", qty="0.01") == 10001
    assert await code(side="Buy", orderType="Market", qty="0.01", orderLinkId="x" * 37) == 10001
    raw = await bybit.http.post(
        "/v5/order/create", content=b"not json", headers=bybit.headers("not json")
    )
    assert raw.json()["retCode"] == 10001


async def test_leverage_and_positions_list(bybit: BybitClient) -> None:
    body = {"category": "linear", "symbol": "BTCUSDT", "buyLeverage": "5", "sellLeverage": "5"}
    assert (await bybit.post("/v5/position/set-leverage", body)).json()["retCode"] == 0
    assert (await bybit.post("/v5/position/set-leverage", body)).json()["retCode"] == 110043
    assert (await position(bybit))["leverage"] == "5"
    settle = (
        await bybit.get("/v5/position/list", {"category": "linear", "settleCoin": "USDT"})
    ).json()
    assert settle["result"]["list"] == []
    await bybit.create(symbol="ETHUSDT", side="Sell", orderType="Market", qty="0.1")
    settle = (
        await bybit.get("/v5/position/list", {"category": "linear", "settleCoin": "USDT"})
    ).json()
    assert [(p["symbol"], p["side"]) for p in settle["result"]["list"]] == [("ETHUSDT", "Sell")]


async def test_stop_loss_from_the_order_triggers_a_close(
    fx: FakeExchange, bybit: BybitClient
) -> None:
    await bybit.create(
        side="Buy", orderType="Market", qty="0.01", stopLoss="94000", takeProfit="97000"
    )
    held = await position(bybit)
    assert (held["stopLoss"], held["takeProfit"]) == ("94000", "97000")
    fx.set_price("BTCUSDT", bid="94500", ask="94500.1")
    assert (await position(bybit))["size"] == "0.01"
    fx.set_price("BTCUSDT", bid="94000", ask="94000.2")  # mark 94000.1: not reached yet
    assert (await position(bybit))["size"] == "0.01"
    fx.set_price("BTCUSDT", bid="93990", ask="93990.1")
    flat = await position(bybit)
    assert (flat["size"], flat["stopLoss"], flat["takeProfit"]) == ("0", "0", "0")
    fills = (await bybit.get("/v5/execution/list", {"category": "linear"})).json()["result"]["list"]
    assert (fills[0]["stopOrderType"], fills[0]["side"], fills[0]["execPrice"]) == (
        "StopLoss",
        "Sell",
        "93990",
    )


async def test_trading_stop(fx: FakeExchange, bybit: BybitClient) -> None:
    body = {"category": "linear", "symbol": "BTCUSDT", "stopLoss": "94000", "positionIdx": 0}
    assert (await bybit.post("/v5/position/trading-stop", body)).json()[
        "retCode"
    ] == 10001  # no position
    await bybit.create(side="Sell", orderType="Market", qty="0.01")
    assert (await bybit.post("/v5/position/trading-stop", body)).json()[
        "retCode"
    ] == 10001  # wrong side
    body = {**body, "stopLoss": "96000", "takeProfit": "93000"}
    assert (await bybit.post("/v5/position/trading-stop", body)).json()["retCode"] == 0
    assert (await position(bybit))["stopLoss"] == "96000"
    clear = {**body, "stopLoss": "0"}
    del clear["takeProfit"]
    assert (await bybit.post("/v5/position/trading-stop", clear)).json()["retCode"] == 0
    held = await position(bybit)
    assert (held["stopLoss"], held["takeProfit"]) == ("0", "93000")
    fx.set_price("BTCUSDT", bid="92999.9", ask="93000")  # mid rounds to 93000.0: take profit
    assert (await position(bybit))["size"] == "0"


async def test_execution_list_is_newest_first_and_paged(bybit: BybitClient) -> None:
    for n in range(3):
        await bybit.create(side="Buy", orderType="Market", qty="0.01", orderLinkId=f"E{n}")
    first = (await bybit.get("/v5/execution/list", {"category": "linear", "limit": 2})).json()[
        "result"
    ]
    assert [f["orderLinkId"] for f in first["list"]] == ["E2", "E1"]
    rest = await bybit.get(
        "/v5/execution/list", {"category": "linear", "limit": 2, "cursor": first["nextPageCursor"]}
    )
    assert [f["orderLinkId"] for f in rest.json()["result"]["list"]] == ["E0"]
    assert rest.json()["result"]["nextPageCursor"] == ""


async def test_rate_limit_after_ten_creates_in_one_second(nursery: trio.Nursery) -> None:
    now = [1_700_000_000_000]
    fx = FakeExchange(symbols=SYMBOLS, keys={KEY: SECRET}, clock_ms=lambda: now[0])
    await nursery.start(fx.serve, 0)
    async with httpx.AsyncClient(base_url=fx.rest_url) as http:
        bybit = BybitClient(http, clock_ms=lambda: now[0])
        body = {
            "category": "linear",
            "symbol": "BTCUSDT",
            "side": "Buy",
            "orderType": "Limit",
            "qty": "0.01",
        }
        statuses = []
        for n in range(10):
            answer = await bybit.post(
                "/v5/order/create", {**body, "price": "90000", "orderLinkId": f"r{n}"}
            )
            assert answer.json()["retCode"] == 0
            statuses.append(answer.headers["X-Bapi-Limit-Status"])
        assert statuses == [str(9 - n) for n in range(10)]
        refused = await bybit.post(
            "/v5/order/create", {**body, "price": "90000", "orderLinkId": "r10"}
        )
        assert refused.json()["retCode"] == 10006
        assert refused.headers["X-Bapi-Limit-Status"] == "0"
        assert refused.headers["X-Bapi-Limit-Reset-Timestamp"] == str(now[0] + 1000)
        assert "r10" not in {o["orderLinkId"] for o in fx.state()["orders"]}
        # other endpoints have their own window
        assert (
            await bybit.get("/v5/position/list", {"category": "linear", "symbol": "BTCUSDT"})
        ).json()["retCode"] == 0
        now[0] += 1000
        again = await bybit.post(
            "/v5/order/create", {**body, "price": "90000", "orderLinkId": "r10"}
        )
        assert again.json()["retCode"] == 0
