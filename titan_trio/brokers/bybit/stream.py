"""Bybit's private WebSocket (EXCHANGES.md, "Bybit WebSockets"): authenticate, subscribe
to ``order``, ``execution``, ``position`` and ``wallet``, keep it alive, and come back
after any failure.

- Auth: ``{"op": "auth", "args": [key, expires, signature]}`` with ``expires`` a few
  seconds ahead on the server's clock; then one subscribe for the four topics. Either
  answer refused (or missing within ANSWER_TIMEOUT_S) is a failed connection.
- Heartbeat: a ``ping`` every PING_INTERVAL_S; no pong within PONG_TIMEOUT_S means the
  connection is dead (a half-open TCP connection looks alive otherwise): it is closed
  and opened again.
- Reconnect: capped exponential back-off with full jitter (a random wait between zero and
  the cap of this attempt: many clients cut at once do not come back in step), reset by a
  connection that authenticated.
- ``on_up`` runs on every authenticated connection (the broker stops polling and, after a
  gap, reconciles), ``on_down`` when one is lost (the broker polls REST meanwhile).
Topic messages go to ``on_items(topic, items)`` in the order they arrived. Nothing the
network or the exchange does stops this loop; a malformed message is logged and skipped.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

log = logging.getLogger("titan.broker.bybit.stream")
TOPICS = ("order", "execution", "position", "wallet")
PING_INTERVAL_S = 20.0
PONG_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
AUTH_EXPIRES_MS = 10_000
BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 30.0


class StreamFailed(Exception):
    """The exchange refused the stream's auth or subscription, or never answered."""


# What the network and the exchange do to a connection (reported, then reconnected).
EXPECTED = (OSError, HandshakeError, ConnectionClosed, StreamFailed, trio.TooSlowError)


def _leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def backoff_delay(attempt: int, rng: random.Random, first: float = BACKOFF_FIRST_S) -> float:
    """Full jitter: a random wait in [0, min(cap, first * 2**attempt)]."""
    return rng.uniform(0, min(BACKOFF_CAP_S, first * (2 ** min(attempt, 16))))


class PrivateStream:
    def __init__(
        self,
        url: str,
        auth_args: Callable[[int], list[str]],
        server_ms: Callable[[], int],
        on_items: Callable[[str, list[dict[str, Any]]], Awaitable[None]],
        *,
        on_up: Callable[[], None] = lambda: None,
        on_down: Callable[[], None] = lambda: None,
        ping_interval_s: float = PING_INTERVAL_S,
        pong_timeout_s: float = PONG_TIMEOUT_S,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.auth_args = auth_args
        self.server_ms = server_ms
        self.on_items = on_items
        self.on_up = on_up
        self.on_down = on_down
        self.ping_interval_s = ping_interval_s
        self.pong_timeout_s = pong_timeout_s
        self.rng = rng or random.Random()
        self.state = "connecting"
        self.connections = 0  # authenticated connections so far
        self.reconnects = 0
        self.last_message: float | None = None  # trio time of the last message
        self.last_error: str | None = None
        self.bad_messages = 0
        self._pong = trio.Event()
        self._req = 0

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        attempt = 0
        while True:
            try:
                await self._connection()
            except Exception as exc:  # nothing stops this loop: report, wait, reconnect
                cause = _leaf(exc)
                self.last_error = (
                    "TooSlowError: the exchange did not answer in time"
                    if isinstance(cause, trio.TooSlowError)
                    else f"{type(cause).__name__}: {cause}"
                )
                if not isinstance(cause, EXPECTED):  # a bug: logged whole, then retried
                    log.error("Bybit private stream: unexpected failure", exc_info=exc)
            if self.state == "connected":
                attempt = 0
            was_up = self.state == "connected"
            self.state = "reconnecting"
            if was_up:
                self.on_down()
                log.warning(
                    "Bybit private stream lost (%s); polling REST meanwhile", self.last_error
                )
            else:
                log.warning("Bybit private stream: cannot connect (%s)", self.last_error)
            await trio.sleep(backoff_delay(attempt, self.rng))
            attempt += 1

    async def _connection(self) -> None:
        async with open_websocket_url(
            self.url, connect_timeout=CONNECT_TIMEOUT_S, disconnect_timeout=1.0
        ) as ws:
            with trio.fail_after(2 * ANSWER_TIMEOUT_S):
                await self._request(ws, "auth", self.auth_args(self.server_ms() + AUTH_EXPIRES_MS))
                await self._request(ws, "subscribe", list(TOPICS))
            self.connections += 1
            if self.connections > 1:
                self.reconnects += 1
            self.state = "connected"
            self.last_message = trio.current_time()
            log.info("Bybit private stream connected (%s)", ", ".join(TOPICS))
            self.on_up()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeat, ws)
                await self._read(ws)

    async def _request(self, ws: WebSocketConnection, op: str, args: list[str]) -> None:
        """Send one op and wait for its answer (messages before it are dispatched)."""
        self._req += 1
        req_id = f"{op}-{self._req}"
        await ws.send_message(json.dumps({"req_id": req_id, "op": op, "args": args}))
        while True:
            msg = await self._next(ws)
            if msg is None:
                continue
            if msg.get("op") == op:
                if msg.get("success") is not True:
                    raise StreamFailed(f"{op} refused: {msg.get('ret_msg')!r}")
                return
            await self._dispatch(msg)

    async def _read(self, ws: WebSocketConnection) -> None:
        while True:
            msg = await self._next(ws)
            if msg is not None:
                await self._dispatch(msg)

    async def _next(self, ws: WebSocketConnection) -> dict[str, Any] | None:
        raw = await ws.get_message()
        self.last_message = trio.current_time()
        try:
            msg = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
            msg = None
        if not isinstance(msg, dict):
            self.bad_messages += 1
            log.warning("Bybit private stream: not a JSON object, skipped: %.200r", raw)
            return None
        return msg

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("op") in ("pong", "ping"):
            self._pong.set()
            return
        topic = msg.get("topic")
        data = msg.get("data")
        if isinstance(topic, str):
            if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
                self.bad_messages += 1
                log.warning("Bybit private stream: %s without a data list, skipped", topic)
                return
            await self.on_items(topic.split(".")[0], data)

    async def _heartbeat(self, ws: WebSocketConnection) -> None:
        """A ping every interval; a pong missing after the timeout fails the connection
        (it is closed, and the loop reconnects)."""
        while True:
            await trio.sleep(self.ping_interval_s)
            self._pong = trio.Event()
            self._req += 1
            await ws.send_message(json.dumps({"req_id": f"ping-{self._req}", "op": "ping"}))
            with trio.move_on_after(self.pong_timeout_s):
                await self._pong.wait()
                continue
            raise StreamFailed(f"no pong within {self.pong_timeout_s:g} s")
