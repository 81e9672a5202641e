"""The fake's WebSocket sessions: Bybit public, Bybit private and Binance market streams.

Every session sends through one bounded outbox drained by one writer task. That single
path is what makes the faults honest: a stalled channel holds back data, pongs and pings
alike; a cut connection (``cut``) cancels the session, and the stream is then closed with
no close frame. A client too slow to drain ``OUTBOX`` messages is cut, as exchanges do.

Choices where the documents leave room:
- Binance sends the current bookTicker (and mark price) as soon as a stream is
  subscribed: the real stream would send one within milliseconds on a liquid symbol,
  and the fake's quotes move only when told to.
- Bybit public subscribe answers once per request, failing the whole request if a topic
  is unknown (``ret_msg`` names it); topics are ``tickers.{symbol}`` and
  ``orderbook.1.{symbol}``.
- Bybit private refuses an expired or wrongly signed auth with ``success: false`` and
  keeps the connection open; ``subscribe`` before a successful auth is refused likewise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import trio

from tests.fakes.wire import HttpRequest, PingFrame, WebSocket, WebSocketClosed

if TYPE_CHECKING:
    from tests.fakes.exchange import FakeExchange

OUTBOX = 10_000
BINANCE_STREAM_KINDS = ("bookTicker", "markPrice", "markPrice@1s", "aggTrade")
PRIVATE_TOPICS = ("order", "execution", "position", "wallet")


def dumps(doc: Any) -> str:
    return json.dumps(doc, separators=(",", ":"))


class StreamSession:
    """One WebSocket connection of a channel. Subclasses answer client messages and
    decide how a published payload is written for this connection."""

    channel = ""

    def __init__(self, exchange: FakeExchange, ws: WebSocket, request: HttpRequest) -> None:
        self.exchange = exchange
        self.ws = ws
        self.request = request
        self.conn_id = str(uuid.uuid4())
        self.topics: set[str] = set()
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[tuple[str, Any]](OUTBOX)
        self._scope = trio.CancelScope()

    def cut(self) -> None:
        """End the connection at the TCP level: no close frame."""
        self._scope.cancel()

    def push(self, text: str) -> None:
        self._queue(("text", text))

    def _queue(self, item: tuple[str, Any]) -> None:
        try:
            self._outbox_send.send_nowait(item)
        except trio.WouldBlock:
            self.cut()

    def deliver(self, hub_topic: str, payload: dict[str, Any]) -> None:
        self.push(dumps(payload))

    async def run(self) -> None:
        self.exchange.session_opened(self)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    await self.started(nursery)
                    try:
                        await self._reader()
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            self.exchange.session_closed(self)

    async def started(self, nursery: trio.Nursery) -> None:
        """Hook: the session is registered and its writer runs."""

    async def _writer(self) -> None:
        async for kind, value in self._outbox_receive:
            await self.exchange.faults.wait_unstalled(self.channel)
            try:
                if kind == "text":
                    await self.ws.send_text(value)
                elif kind == "pong":
                    await self.ws.send_pong(value)
                elif kind == "ping":
                    await self.ws.send_ping(value)
            except WebSocketClosed:
                self.cut()
                return

    async def _reader(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except WebSocketClosed:
                return
            if isinstance(message, PingFrame):
                self._queue(("pong", message.payload))
                continue
            try:
                doc = json.loads(message)
            except ValueError:
                doc = None
            self.on_message(message, doc)

    def on_message(self, text: str, doc: Any) -> None:
        raise NotImplementedError


class BybitPublicSession(StreamSession):
    channel = "bybit_public"

    def on_message(self, text: str, doc: Any) -> None:
        if not isinstance(doc, dict):
            self.push(dumps(self._ack("", None, False, f"error:invalid json,msg:{text[:100]}")))
            return
        op, req_id = doc.get("op", ""), doc.get("req_id")
        if op == "ping":
            self.push(dumps(self._ack("ping", req_id, True, "pong")))
        elif op in ("subscribe", "unsubscribe"):
            args = doc.get("args")
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                self.push(dumps(self._ack(op, req_id, False, "error:args must be a list")))
                return
            unknown = [topic for topic in args if not self.exchange.public_topic_known(topic)]
            if unknown:
                message = f"Invalid symbol :[{','.join(unknown)}]"
                self.push(dumps(self._ack(op, req_id, False, message)))
                return
            self.push(dumps(self._ack(op, req_id, True, "")))
            for topic in args:
                if op == "subscribe":
                    self.exchange.subscribe(self, f"bybit:{topic}")
                    self.push(dumps(self.exchange.public_snapshot(topic)))
                else:
                    self.exchange.unsubscribe(self, f"bybit:{topic}")
        else:
            self.push(dumps(self._ack(op, req_id, False, f"error:unknown op {op}")))

    def _ack(self, op: str, req_id: Any, success: bool, ret_msg: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "conn_id": self.conn_id}
        if req_id is not None:
            answer["req_id"] = req_id
        answer["op"] = op
        return answer


class BybitPrivateSession(StreamSession):
    channel = "bybit_private"

    def __init__(self, exchange: FakeExchange, ws: WebSocket, request: HttpRequest) -> None:
        super().__init__(exchange, ws, request)
        self.api_key: str | None = None

    def deliver(self, hub_topic: str, payload: dict[str, Any]) -> None:
        topic = hub_topic.removeprefix("private:")
        message = {
            "id": str(uuid.uuid4()),
            "topic": topic,
            "creationTime": payload["creationTime"],
            "data": payload["data"],
        }
        self.push(dumps(message))

    def on_message(self, text: str, doc: Any) -> None:
        if not isinstance(doc, dict):
            self.push(dumps(self._ack("", None, False, "error:invalid json")))
            return
        op, req_id = doc.get("op", ""), doc.get("req_id")
        if op == "ping":
            pong = {"req_id": req_id, "op": "pong", "args": [str(self.exchange.server_ms())]}
            pong["conn_id"] = self.conn_id
            if req_id is None:
                del pong["req_id"]
            self.push(dumps(pong))
        elif op == "auth":
            refusal = self._auth(doc.get("args"))
            self.push(dumps(self._ack("auth", req_id, refusal is None, refusal or "")))
        elif op in ("subscribe", "unsubscribe"):
            args = doc.get("args")
            if self.api_key is None:
                self.push(dumps(self._ack(op, req_id, False, "Request not authorized")))
                return
            valid = (*PRIVATE_TOPICS, *(f"{t}.linear" for t in PRIVATE_TOPICS if t != "wallet"))
            if not isinstance(args, list) or not args or any(a not in valid for a in args):
                self.push(
                    dumps(self._ack(op, req_id, False, f"error:handler not found,topic:{args}"))
                )
                return
            for topic in args:
                if op == "subscribe":
                    self.exchange.subscribe(self, f"private:{topic}")
                else:
                    self.exchange.unsubscribe(self, f"private:{topic}")
            self.push(dumps(self._ack(op, req_id, True, "")))
        else:
            self.push(dumps(self._ack(op, req_id, False, f"error:unknown op {op}")))

    def _auth(self, args: Any) -> str | None:
        """None when the auth is good, else the reason (the check is written here from
        Bybit's documented rule, independent of any client's signing code)."""
        if not isinstance(args, list) or len(args) != 3:
            return "error:args must be [apiKey, expires, signature]"
        key, expires, signature = args
        secret = self.exchange.keys.get(key) if isinstance(key, str) else None
        if secret is None:
            return "error:apikey not found"
        try:
            expires_ms = int(expires)
        except (TypeError, ValueError):
            return "error:expires must be a millisecond timestamp"
        if expires_ms <= self.exchange.server_ms():
            return "Params Error: request expired"
        expected = hmac.new(
            secret.encode(), f"GET/realtime{expires_ms}".encode(), hashlib.sha256
        ).hexdigest()
        if not isinstance(signature, str) or not hmac.compare_digest(expected, signature):
            return "error:signature verification failed"
        self.api_key = key
        return None

    def _ack(self, op: str, req_id: Any, success: bool, ret_msg: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"success": success, "ret_msg": ret_msg, "op": op}
        if req_id is not None:
            answer["req_id"] = req_id
        answer["conn_id"] = self.conn_id
        return answer


class BinanceSession(StreamSession):
    """``/ws/<stream>[/<stream>...]`` (raw) or ``/stream?streams=a/b`` (combined)."""

    channel = "binance"

    def __init__(self, exchange: FakeExchange, ws: WebSocket, request: HttpRequest) -> None:
        super().__init__(exchange, ws, request)
        if request.path.startswith("/stream"):
            self.combined = True
            names = parse_qs(request.query).get("streams", [""])[0]
        else:
            self.combined = False
            names = request.path.removeprefix("/ws").strip("/")
        self.initial = [name for name in names.split("/") if name]

    async def started(self, nursery: trio.Nursery) -> None:
        self._subscribe(self.initial)
        nursery.start_soon(self._pinger)
        nursery.start_soon(self._max_age)

    async def _pinger(self) -> None:
        while True:
            await trio.sleep(self.exchange.binance_ping_s)
            self._queue(("ping", b""))

    async def _max_age(self) -> None:
        await trio.sleep(self.exchange.binance_max_age_s)
        self.cut()

    def _subscribe(self, names: list[str]) -> None:
        for name in names:
            self.exchange.subscribe(self, f"binance:{name}")
            current = self.exchange.binance_current(name)
            if current is not None:
                self.deliver(f"binance:{name}", current)

    def deliver(self, hub_topic: str, payload: dict[str, Any]) -> None:
        if self.combined:
            self.push(dumps({"stream": hub_topic.removeprefix("binance:"), "data": payload}))
        else:
            self.push(dumps(payload))

    def on_message(self, text: str, doc: Any) -> None:
        if not isinstance(doc, dict) or "method" not in doc:
            self.push(dumps({"error": {"code": 2, "msg": "Invalid request"}, "id": None}))
            return
        method, params, req_id = doc.get("method"), doc.get("params", []), doc.get("id")
        if method == "LIST_SUBSCRIPTIONS":
            names = sorted(t.removeprefix("binance:") for t in self.topics)
            self.push(dumps({"result": names, "id": req_id}))
        elif method in ("SUBSCRIBE", "UNSUBSCRIBE") and isinstance(params, list):
            if not all(isinstance(p, str) for p in params):
                self.push(dumps({"error": {"code": 2, "msg": "Invalid params"}, "id": req_id}))
                return
            self.push(dumps({"result": None, "id": req_id}))
            if method == "SUBSCRIBE":
                self._subscribe(params)
            else:
                for name in params:
                    self.exchange.unsubscribe(self, f"binance:{name}")
        else:
            self.push(
                dumps({"error": {"code": 2, "msg": f"Invalid request: {method}"}, "id": req_id})
            )
