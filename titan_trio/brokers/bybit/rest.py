"""The Bybit v5 REST client: one signed request at a time per call, on httpx with trio.

Every call goes through ``call``: it waits for its endpoint's rate limiter, signs the
exact bytes it sends with a timestamp on the server's clock, sends, and classifies the
answer (answers.classify) into what it proves. The rules, in one place:
- A connection that could not be opened never carried the request: proven not taken.
  A timeout, a connection dropped after sending, a 5xx or 10016 may hide a request the
  exchange carried out: AMBIGUOUS. The caller never re-sends an order under a new id.
- 10002 (timestamp outside the window): the clock is synced again and the request sent
  once more with the same parameters (an order keeps its ``orderLinkId``, so the repeat
  cannot make a second order: 110072 would say it exists).
- 10006 / HTTP 429 / 403: the endpoint's limiter is blocked until the reset time the
  exchange gave (``X-Bapi-Limit-Reset-Timestamp``) plus jitter; ``call`` returns the
  answer and the caller decides whether to try again (``call_patiently``).
- ``X-Bapi-Limit-Status`` (what is left) is believed: the same key may be used elsewhere.
What it saw last (latency, error, reachability) feeds health ``broker``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx

from titan_trio.brokers.bybit.answers import Answer, Outcome, classify
from titan_trio.brokers.bybit.auth import (
    DEFAULT_RECV_WINDOW_MS,
    encode_body,
    query_string,
    signed_headers,
    stream_auth_args,
)
from titan_trio.brokers.bybit.clock import ServerClock
from titan_trio.brokers.bybit.limits import RateLimits
from titan_trio.clock import now_ms

log = logging.getLogger("titan.broker.bybit")
REQUEST_TIMEOUT_S = 10.0
PATIENCE_ATTEMPTS = 4  # a rate-limited call is sent at most this often by call_patiently
MAX_BACK_OFF_S = 10.0  # a reset time further away than this is not believed
IP_BAN_S = 60.0  # HTTP 403: Bybit bans the IP (600 requests in 5 s); every endpoint waits


class BybitRest:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        api_secret: str,
        *,
        recv_window_ms: int = DEFAULT_RECV_WINDOW_MS,
        limits: RateLimits | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._secret = api_secret
        self.recv_window_ms = recv_window_ms
        self.limits = limits or RateLimits()
        self.clock = ServerClock()
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout_s,
            transport=transport,
            headers={"Content-Type": "application/json"},
        )
        self.reachable = False
        self.last_latency_s: float | None = None
        self.last_error: str | None = None
        self.requests = 0
        self.rate_limited = 0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def sync_time(self) -> None:
        """Measure the offset to the server's clock (``/v5/market/time``)."""
        sent = now_ms()
        answer = await self.call("GET", "/v5/market/time", {}, signed=False, resync=False)
        received = now_ms()
        if answer.outcome is not Outcome.OK or not isinstance(answer.result, dict):
            raise TimeSyncFailed(f"server time: {answer.message}")
        try:
            nano = int(answer.result["timeNano"])
            server_ms = nano // 1_000_000
        except (KeyError, TypeError, ValueError):
            try:
                server_ms = int(answer.result["timeSecond"]) * 1000
            except (KeyError, TypeError, ValueError):
                raise TimeSyncFailed(f"server time: unreadable {answer.result!r}") from None
        self.clock.observe(sent, server_ms, received)

    async def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any],
        *,
        signed: bool = True,
        resync: bool = True,
    ) -> Answer:
        """One request; never raises for what the network or the exchange does."""
        bucket = self.limits.bucket(path)
        await bucket.acquire()
        if method == "GET":
            payload: str | bytes = query_string(params)
            request = self._client.build_request(
                "GET",
                path + (f"?{payload}" if payload else ""),
                headers=self._auth(payload) if signed else None,
            )
        else:
            payload = encode_body(params)
            request = self._client.build_request(
                "POST", path, content=payload, headers=self._auth(payload) if signed else None
            )
        started = time.perf_counter()
        self.requests += 1
        try:
            response = await self._client.send(request)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # the connection never opened: the request was not sent
            return self._failed(Outcome.REJECTED, "EXCHANGE_UNAVAILABLE", path, exc)
        except httpx.HTTPError as exc:
            # sent (or maybe sent): a timeout or a connection lost before the answer
            return self._failed(Outcome.AMBIGUOUS, "EXCHANGE_UNAVAILABLE", path, exc)
        self.last_latency_s = time.perf_counter() - started
        try:
            body: Any = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        answer = classify(response.status_code, body)
        remaining = _int_header(response.headers, "X-Bapi-Limit-Status")
        bucket.observe(remaining)
        if answer.outcome is Outcome.RATE_LIMITED:
            self.rate_limited += 1
            reset_ms = _int_header(response.headers, "X-Bapi-Limit-Reset-Timestamp")
            wait_s = 1.0
            if reset_ms is not None:
                server_now = self.clock.server_ms(now_ms())
                wait_s = min(MAX_BACK_OFF_S, max(0.0, (reset_ms - server_now) / 1000))
            if response.status_code == 403:
                wait_s = IP_BAN_S
                self.limits.ban(wait_s)
            else:
                bucket.back_off(wait_s)
            log.warning("Bybit %s: rate limited (%s); waiting %.2f s", path, answer.message, wait_s)
        if answer.outcome is Outcome.CLOCK and resync:
            log.warning(
                "Bybit %s: %s; syncing the clock and trying once more", path, answer.message
            )
            try:
                await self.sync_time()
            except TimeSyncFailed as exc:
                log.warning("Bybit clock sync failed: %s", exc)
                return answer
            return await self.call(method, path, params, signed=signed, resync=False)
        self.reachable = answer.outcome is not Outcome.AMBIGUOUS
        self.last_error = None if answer.outcome is Outcome.OK else f"{path}: {answer.message}"
        return answer

    async def call_patiently(
        self, method: str, path: str, params: Mapping[str, Any], *, signed: bool = True
    ) -> Answer:
        """``call``, sent again while the exchange says "too many" (the limiter waits
        for the reset time in between), at most PATIENCE_ATTEMPTS times."""
        answer = await self.call(method, path, params, signed=signed)
        for _ in range(PATIENCE_ATTEMPTS - 1):
            if answer.outcome is not Outcome.RATE_LIMITED:
                break
            answer = await self.call(method, path, params, signed=signed)
        return answer

    def _auth(self, payload: str | bytes) -> dict[str, str]:
        ts = self.clock.timestamp(now_ms())
        return signed_headers(self._key, self._secret, ts, payload, self.recv_window_ms)

    def _failed(self, outcome: Outcome, reason: str, path: str, exc: Exception) -> Answer:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.reachable = False
        self.last_error = f"{path}: {text}"
        return Answer(outcome, reason, text, None)

    def stream_auth(self, expires_ms: int) -> list[str]:
        """The private stream's ``auth`` arguments, with this client's key."""
        return stream_auth_args(self._key, self._secret, expires_ms)


class TimeSyncFailed(Exception):
    pass


def _int_header(headers: httpx.Headers, name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
