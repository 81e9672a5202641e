"""Fixtures for the fake exchange's own tests: a fake served in the test's nursery, and a
tiny Bybit client that signs by the documented rule with its own code (the fake must
never share signing code with whoever it checks)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import trio

from tests.fakes.exchange import FakeExchange, wall_clock_ms

KEY = "fake-key-000000000000"
SECRET = "fake-secret-000000000000"
SYMBOLS = {"BTCUSDT": "95000", "ETHUSDT": "3500", "SOLUSDT": "180"}


def sign(secret: str, timestamp: int, key: str, window: int, payload: str) -> str:
    text = f"{timestamp}{key}{window}{payload}"
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


class BybitClient:
    """Just enough of a Bybit v5 client to talk to the fake."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        key: str = KEY,
        secret: str = SECRET,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.http = http
        self.key, self.secret, self.clock_ms = key, secret, clock_ms

    def headers(
        self, payload: str, *, skew_ms: int = 0, window: int = 5000, bad_sign: bool = False
    ):
        timestamp = self.clock_ms() + skew_ms
        signature = sign(self.secret, timestamp, self.key, window, payload)
        if bad_sign:
            signature = signature[::-1]
        return {
            "X-BAPI-API-KEY": self.key,
            "X-BAPI-TIMESTAMP": str(timestamp),
            "X-BAPI-RECV-WINDOW": str(window),
            "X-BAPI-SIGN": signature,
            "X-BAPI-SIGN-TYPE": "2",
        }

    async def get(
        self, path: str, params: dict[str, Any] | None = None, **sign_args: Any
    ) -> httpx.Response:
        query = urlencode(params or {})
        return await self.http.get(
            f"{path}?{query}" if query else path, headers=self.headers(query, **sign_args)
        )

    async def post(self, path: str, body: dict[str, Any], **sign_args: Any) -> httpx.Response:
        raw = json.dumps(body)
        headers = {**self.headers(raw, **sign_args), "Content-Type": "application/json"}
        return await self.http.post(path, content=raw.encode(), headers=headers)

    async def create(self, **fields: Any) -> dict[str, Any]:
        body = {"category": "linear", "symbol": "BTCUSDT", **fields}
        return (await self.post("/v5/order/create", body)).json()


async def eventually(predicate: Callable[[], Any], limit_s: float = 5.0) -> Any:
    with trio.fail_after(limit_s):
        while not (result := predicate()):  # noqa: ASYNC110 - state changes in other tasks
            await trio.sleep(0.005)
    return result


@pytest.fixture
async def fx(nursery: trio.Nursery) -> FakeExchange:
    exchange = FakeExchange(symbols=SYMBOLS, keys={KEY: SECRET}, balance="10000")
    await nursery.start(exchange.serve, 0)
    return exchange


@pytest.fixture
async def http(fx: FakeExchange) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fx.rest_url, timeout=5) as client:
        yield client


@pytest.fixture
def bybit(http: httpx.AsyncClient) -> BybitClient:
    return BybitClient(http)
