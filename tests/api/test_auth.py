"""The bearer token's throttle: on trio's mock clock for its schedule, and through the
real service for what a client sees (429 with Retry-After; a right token always passes)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
import trio
import trio.testing

from tests.helpers import service
from titan_trio.api.auth import LOG_BUDGET, MAX_CLIENTS, TokenThrottle
from titan_trio.config import Config

TOKEN = "throttle-test-token-0123456789abcdef"
log = logging.getLogger("titan.api")


def fail(throttle: TokenThrottle, client: str, times: int) -> None:
    for _ in range(times):
        assert throttle.retry_after(client) is None  # a refused client is never counted
        throttle.failed(client, "POST /api/trading/pause")


async def test_five_failures_throttle_for_a_time_that_doubles_up_to_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    throttle = TokenThrottle(log)
    fail(throttle, "10.0.0.1", 4)
    assert throttle.retry_after("10.0.0.1") is None
    fail(throttle, "10.0.0.1", 1)
    waits = []
    for _ in range(9):
        wait_s = throttle.retry_after("10.0.0.1")
        assert wait_s is not None
        waits.append(wait_s)
        await trio.sleep(wait_s - 0.5)
        assert throttle.retry_after("10.0.0.1") is not None  # still refused, a bit later
        await trio.sleep(0.5)
        fail(throttle, "10.0.0.1", 1)  # the refusal ran out: one more try, wrong again
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert throttle.retry_after("10.0.0.2") is None  # per client address


async def test_a_right_token_or_ten_quiet_minutes_forget_the_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    throttle = TokenThrottle(log)
    fail(throttle, "10.0.0.1", 4)
    throttle.succeeded("10.0.0.1")
    fail(throttle, "10.0.0.1", 4)
    await trio.sleep(600)
    fail(throttle, "10.0.0.1", 4)
    assert throttle.retry_after("10.0.0.1") is None
    await trio.sleep(599)
    fail(throttle, "10.0.0.1", 1)  # 5 within 10 minutes of each other
    assert throttle.retry_after("10.0.0.1") == 1


async def test_warnings_name_the_client_and_are_rate_limited(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="titan.api")
    throttle = TokenThrottle(log)
    fail(throttle, "10.0.0.1", 5)
    assert [r.getMessage() for r in caplog.records] == [
        *(
            f"refused POST /api/trading/pause from 10.0.0.1: missing or wrong bearer token "
            f"({n} in a row)"
            for n in range(1, 6)
        ),
        "client 10.0.0.1 gave 5 wrong or missing bearer tokens in a row: its requests to "
        "operator endpoints are refused (429) for 1 s",
    ]
    caplog.clear()
    for n in range(100):  # many addresses: the log does not follow them all
        fail(throttle, f"10.1.0.{n}", 1)
    assert len(caplog.records) == LOG_BUDGET - 6
    await trio.sleep(60)
    fail(throttle, "10.2.0.1", 1)
    assert (
        caplog.records[-1]
        .getMessage()
        .endswith(f"(1 in a row) ({100 - (LOG_BUDGET - 6)} such lines left out before this one)")
    )


async def test_the_addresses_remembered_are_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    throttle = TokenThrottle(log)
    fail(throttle, "10.0.0.1", 5)
    assert throttle.retry_after("10.0.0.1") == 1
    for n in range(MAX_CLIENTS):
        fail(throttle, f"client-{n}", 1)
    assert throttle.retry_after("10.0.0.1") is None  # the longest quiet, forgotten first


async def test_a_client_that_keeps_guessing_gets_429_and_the_right_token_still_passes(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="titan.api")
    async with (
        service(make_config(api={"token": TOKEN})) as engine,
        httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client,
    ):
        for n in range(5):
            wrong = {"Authorization": f"Bearer {TOKEN[:-1]}{n}"}
            response = await client.post("/api/trading/pause", headers=wrong)
            assert response.status_code == 401
        wrong = {"Authorization": f"Bearer {TOKEN[:-1]}x"}
        response = await client.post("/api/trading/pause", headers=wrong)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert response.json() == {
            "error": "too_many_attempts",
            "message": "too many wrong or missing bearer tokens from 127.0.0.1; try again in 1 s",
        }
        assert engine.risk.trading_state.value == "ACTIVE"  # nothing happened
        assert (await client.get("/api/risk")).status_code == 200  # reads are not throttled
        # the operator, on the same address, is never kept out
        right = {"Authorization": f"Bearer {TOKEN}"}
        response = await client.post("/api/emergency/flatten-all", headers=right)
        assert response.status_code == 200
        assert engine.risk.trading_state.value == "HALTED"
    assert "client 127.0.0.1 gave 5 wrong or missing bearer tokens in a row" in caplog.text
