"""The REST client's rules for what an answer proves, at the transport: a connection that
never opened proves the request was not sent, a timeout proves nothing, 10002 re-syncs the
clock once and repeats the same request, and "too many" waits for the exchange's reset
time before the same request goes again. The exchange here is an httpx MockTransport:
each test decides what the wire does."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import trio
import trio.testing

from titan_trio.brokers.bybit.answers import Outcome
from titan_trio.brokers.bybit.auth import signature
from titan_trio.brokers.bybit.rest import BybitRest
from titan_trio.clock import now_ms

KEY, SECRET = "test-key-0000", "test-secret-0000"


def envelope(code: int = 0, result: object = None, msg: str = "OK") -> dict[str, object]:
    return {
        "retCode": code,
        "retMsg": msg,
        "result": result or {},
        "retExtInfo": {},
        "time": now_ms(),
    }


def client(handler: Callable[[httpx.Request], httpx.Response]) -> BybitRest:
    return BybitRest("http://bybit.test", KEY, SECRET, transport=httpx.MockTransport(handler))


def server_time(offset_ms: int = 0) -> httpx.Response:
    ms = now_ms() + offset_ms
    return httpx.Response(
        200, json=envelope(result={"timeSecond": str(ms // 1000), "timeNano": str(ms * 1_000_000)})
    )


async def test_a_post_is_signed_over_the_exact_bytes_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=envelope(result={"orderId": "1", "orderLinkId": "x"}))

    rest = client(handler)
    answer = await rest.call("POST", "/v5/order/create", {"category": "linear", "qty": "0.01"})
    assert answer.outcome is Outcome.OK
    request = seen[0]
    h = request.headers
    assert h["X-BAPI-SIGN"] == signature(
        SECRET, int(h["X-BAPI-TIMESTAMP"]), KEY, int(h["X-BAPI-RECV-WINDOW"]), request.content
    )
    assert json.loads(request.content) == {"category": "linear", "qty": "0.01"}


async def test_a_connection_that_never_opened_proves_nothing_was_sent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    answer = await client(handler).call("POST", "/v5/order/create", {"orderLinkId": "a"})
    assert answer.outcome is Outcome.REJECTED and answer.proven_not_taken
    assert answer.reason == "EXCHANGE_UNAVAILABLE"


async def test_a_timeout_after_sending_proves_nothing() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("no answer", request=request)

    rest = client(handler)
    answer = await rest.call("POST", "/v5/order/create", {"orderLinkId": "a"})
    assert answer.outcome is Outcome.AMBIGUOUS and not answer.proven_not_taken
    assert not rest.reachable and "ReadTimeout" in (rest.last_error or "")


async def test_a_timestamp_refusal_resyncs_the_clock_and_repeats_the_same_request_once() -> None:
    creates: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v5/market/time":
            return server_time(offset_ms=4000)  # the server runs 4 s ahead of us
        creates.append(request)
        ts = int(request.headers["X-BAPI-TIMESTAMP"])
        server = now_ms() + 4000
        window = int(request.headers["X-BAPI-RECV-WINDOW"])
        if not server - window <= ts < server + 1000:  # the first one, on our own clock
            return httpx.Response(200, json=envelope(10002, msg="timestamp outside recv_window"))
        return httpx.Response(200, json=envelope(result={"orderId": "1"}))

    rest = client(handler)
    rest.recv_window_ms = 1000
    answer = await rest.call("POST", "/v5/order/create", {"orderLinkId": "same-id"})
    assert answer.outcome is Outcome.OK
    assert len(creates) == 2
    assert creates[0].content == creates[1].content  # the same order, the same id
    assert 3000 < rest.clock.skew_ms < 5000


async def test_a_second_timestamp_refusal_is_not_repeated() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/v5/market/time":
            return server_time()
        return httpx.Response(200, json=envelope(10002, msg="timestamp outside recv_window"))

    answer = await client(handler).call("POST", "/v5/order/create", {"orderLinkId": "a"})
    assert answer.outcome is Outcome.CLOCK and answer.proven_not_taken
    assert calls == ["/v5/order/create", "/v5/market/time", "/v5/order/create"]


async def test_too_many_requests_waits_for_the_reset_time_then_sends_the_same_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    sent_at: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent_at.append(trio.current_time())
        if len(sent_at) == 1:
            return httpx.Response(
                200,
                json=envelope(10006, msg="Too many visits!"),
                headers={
                    "X-Bapi-Limit": "10",
                    "X-Bapi-Limit-Status": "0",
                    "X-Bapi-Limit-Reset-Timestamp": str(now_ms() + 2000),
                },
            )
        return httpx.Response(200, json=envelope(result={"orderId": "1"}))

    rest = client(handler)
    answer = await rest.call_patiently("POST", "/v5/order/create", {"orderLinkId": "a"})
    assert answer.outcome is Outcome.OK
    assert len(sent_at) == 2 and rest.rate_limited == 1
    waited = sent_at[1] - sent_at[0]
    assert 1.5 <= waited <= 2.5  # until the reset (the clock margin and jitter aside)


async def test_an_http_429_counts_as_rate_limited_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, text="Too Many Requests")

    rest = client(handler)
    answer = await rest.call_patiently("POST", "/v5/order/cancel", {"orderLinkId": "a"})
    assert answer.outcome is Outcome.RATE_LIMITED
    assert rest.rate_limited == 4  # PATIENCE_ATTEMPTS, each after a back-off


async def test_the_exchanges_remaining_count_is_believed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json=envelope(result={"list": []}), headers={"X-Bapi-Limit-Status": "3"}
        )

    rest = client(handler)
    await rest.call("GET", "/v5/order/realtime", {"category": "linear"})
    assert rest.limits.headroom()["/v5/order/realtime"] == 3.0


async def test_an_ip_ban_holds_every_endpoint(autojump_clock: trio.testing.MockClock) -> None:
    sent: list[tuple[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, trio.current_time()))
        if len(sent) == 1:
            return httpx.Response(403, text="Forbidden")
        return httpx.Response(200, json=envelope(result={"list": []}))

    rest = client(handler)
    answer = await rest.call("POST", "/v5/order/create", {"orderLinkId": "a"})
    assert answer.outcome is Outcome.RATE_LIMITED
    await rest.call("GET", "/v5/position/list", {"category": "linear"})  # another endpoint
    assert sent[1][0] == "/v5/position/list"
    assert sent[1][1] - sent[0][1] >= 60  # it waited for the ban too


def test_an_unknown_code_proves_nothing_and_not_modified_is_fine() -> None:
    from titan_trio.brokers.bybit.answers import classify

    assert classify(200, envelope(10000, msg="Server Timeout")).outcome is Outcome.AMBIGUOUS
    assert classify(200, envelope(99999, msg="new code")).outcome is Outcome.AMBIGUOUS
    assert classify(200, envelope(34040, msg="not modified")).outcome is Outcome.OK
    assert classify(200, envelope(110007, msg="ab not enough")).proven_not_taken
