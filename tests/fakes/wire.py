"""HTTP/1.1 and WebSocket on one TCP port, written by hand over h11 and wsproto.

Why not hypercorn or trio-websocket's server: the fake must misbehave on purpose. It
closes a TCP stream in the middle of a request with no answer (a lost acknowledgement),
holds an answer back, and cuts a WebSocket without a close frame. Those faults need the
raw stream in hand, so this module owns the socket from accept to close.

One connection is one task: HTTP requests are answered in turn on the same connection
(keep-alive, as httpx reuses connections); a request that asks for a WebSocket upgrade on
a path the router knows is answered 101 and the connection belongs to the WebSocket
handler from then on. WebSocket extensions (permessage-deflate) are never negotiated, so
frames stay plain.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import h11
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

RECEIVE_BYTES = 65536
MAX_REQUEST_BODY = 1 << 20


@dataclass
class HttpRequest:
    """One HTTP request as it arrived: the raw query string and body bytes are kept
    exactly, because Bybit signs those bytes and the fake checks the signature on them."""

    method: str
    target: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class HttpAnswer:
    """What to send back. ``drop`` closes the TCP stream instead of answering (the
    request may have been carried out: that is the point); ``delay_s`` holds the answer
    back first."""

    status: int = 200
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    delay_s: float = 0.0
    drop: bool = False

    @classmethod
    def json(cls, doc: Any, status: int = 200, headers: list[tuple[str, str]] | None = None):
        body = json.dumps(doc, separators=(",", ":")).encode()
        return cls(status, body, [("Content-Type", "application/json"), *(headers or [])])


class WebSocketClosed(Exception):
    """The peer closed the WebSocket or the TCP stream under it."""


class WebSocket:
    """The server side of one WebSocket over a trio stream.

    Sending is serialised by a lock (trio refuses two concurrent ``send_all`` on one
    stream). Ping frames from the client are not answered here: ``receive`` returns them
    as ``PingFrame`` so the owner answers through its own outgoing queue, which is what a
    stalled stream must hold back too.
    """

    def __init__(self, stream: trio.abc.Stream, leftover: bytes) -> None:
        self._stream = stream
        self._ws = Connection(ConnectionType.SERVER, trailing_data=leftover)
        self._send_lock = trio.Lock()
        self._text_parts: list[str] = []
        self._pending: list[str | PingFrame] = []
        self._drain_events()

    async def send_text(self, text: str) -> None:
        await self._send(self._encode(Message(data=text)))

    async def send_ping(self, payload: bytes = b"") -> None:
        await self._send(self._encode(Ping(payload=payload)))

    async def send_pong(self, payload: bytes) -> None:
        await self._send(self._encode(Pong(payload=payload)))

    def _encode(self, event: Message | Ping | Pong) -> bytes:
        if self._ws.state is not ConnectionState.OPEN:
            raise WebSocketClosed
        return self._ws.send(event)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """A clean close frame (then the stream is closed by the owner)."""
        if self._ws.state is ConnectionState.OPEN:
            await self._send(self._ws.send(CloseConnection(code=code, reason=reason)))

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise WebSocketClosed from exc

    async def receive(self) -> str | PingFrame:
        """The next text message or client ping; raises WebSocketClosed at the end."""
        while not self._pending:
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise WebSocketClosed from exc
            if not data:
                raise WebSocketClosed
            self._ws.receive_data(data)
            await self._drain_async()
        return self._pending.pop(0)

    def _drain_events(self) -> list[CloseConnection]:
        closes = []
        for event in self._ws.events():
            if isinstance(event, TextMessage):
                self._text_parts.append(event.data)
                if event.message_finished:
                    self._pending.append("".join(self._text_parts))
                    self._text_parts.clear()
            elif isinstance(event, BytesMessage):
                if event.message_finished:  # the exchanges speak text only: ignored
                    continue
            elif isinstance(event, Ping):
                self._pending.append(PingFrame(bytes(event.payload)))
            elif isinstance(event, CloseConnection):
                closes.append(event)
        return closes

    async def _drain_async(self) -> None:
        for close in self._drain_events():
            if self._ws.state is ConnectionState.REMOTE_CLOSING:
                await self._send(self._ws.send(close.response()))
            raise WebSocketClosed


@dataclass(frozen=True)
class PingFrame:
    """A ping frame from the client; its owner answers with a pong of the same payload."""

    payload: bytes


WebSocketHandler = Callable[[WebSocket, HttpRequest], Awaitable[None]]


class Router(Protocol):
    async def http(self, request: HttpRequest) -> HttpAnswer: ...

    def websocket(self, request: HttpRequest) -> WebSocketHandler | None: ...


async def serve_connection(stream: trio.SocketStream, router: Router) -> None:
    """Serve one TCP connection until it closes (or its handler gives it up)."""
    try:
        await _serve(stream, router)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        with trio.move_on_after(1) as cleanup:
            cleanup.shield = True
            await stream.aclose()


async def _serve(stream: trio.SocketStream, router: Router) -> None:
    conn = h11.Connection(h11.SERVER)
    while True:
        request = await _read_request(conn, stream)
        if request is None:
            return
        if request.headers.get("upgrade", "").lower() == "websocket":
            handler = router.websocket(request)
            if handler is None:
                await _answer(conn, stream, HttpAnswer.json({"error": "no such stream"}, 404))
                return
            key = request.headers.get("sec-websocket-key", "")
            accept = h11.InformationalResponse(
                status_code=101,
                headers=[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Accept", generate_accept_token(key.encode())),
                ],
            )
            await stream.send_all(conn.send(accept))
            leftover, _ = conn.trailing_data
            await handler(WebSocket(stream, bytes(leftover)), request)
            return
        answer = await router.http(request)
        if answer.drop:
            return  # closed by serve_connection: no status line at all
        if answer.delay_s > 0:
            await trio.sleep(answer.delay_s)
        await _answer(conn, stream, answer)
        if conn.our_state is h11.MUST_CLOSE:
            return
        conn.start_next_cycle()


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> Any:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> HttpRequest | None:
    event = await _next_event(conn, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        return None
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_REQUEST_BODY:
                return None
        elif isinstance(part, h11.EndOfMessage) or part is h11.PAUSED:
            break
        elif isinstance(part, h11.ConnectionClosed):
            return None
    target = event.target.decode("latin-1")
    split = urlsplit(target)
    headers = {name.decode().lower(): value.decode("latin-1") for name, value in event.headers}
    return HttpRequest(
        method=event.method.decode(),
        target=target,
        path=split.path,
        query=split.query,
        headers=headers,
        body=bytes(body),
    )


async def _answer(conn: h11.Connection, stream: trio.SocketStream, answer: HttpAnswer) -> None:
    headers = [*answer.headers, ("Content-Length", str(len(answer.body)))]
    data = conn.send(h11.Response(status_code=answer.status, headers=headers))
    data += conn.send(h11.Data(data=answer.body)) if answer.body else b""
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)
