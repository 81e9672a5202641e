"""A small loopback WebSocket server for the feed tests: each connection runs the
behaviour the test gives it (a coroutine taking the ``Peer``), and the server keeps a log
of what happened, on trio's clock, so tests can check order and timing.

Test scaffolding only: the exchange messages are built by the helpers below from the
documented formats (EXCHANGES.md); the full fake exchange lives in tests/fakes/.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
import trio_websocket


@dataclass(eq=False)
class Peer:
    number: int
    path: str
    ws: trio_websocket.WebSocketConnection
    received: list[str] = field(default_factory=list)
    closed: trio.Event = field(default_factory=trio.Event)
    _got: trio.Event = field(default_factory=trio.Event)

    async def send(self, message: object) -> None:
        await self.ws.send_message(message if isinstance(message, str) else json.dumps(message))

    async def receive(self) -> object:
        text = await self.ws.get_message()
        assert isinstance(text, str)
        self.received.append(text)
        got, self._got = self._got, trio.Event()
        got.set()
        return json.loads(text)

    async def wait_received(self, count: int) -> None:
        """Until the client has sent ``count`` messages on this connection."""
        while len(self.received) < count:
            await self._got.wait()

    async def drain(self) -> None:
        """Read (and keep) whatever the client sends until it closes."""
        while True:
            await self.receive()


Behaviour = Callable[[Peer], Awaitable[None]]


class StreamServer:
    def __init__(self, *behaviours: Behaviour, refuse_first: int = 0) -> None:
        """Connection k (1-based) runs ``behaviours[k-1]`` (the last one for every later
        connection); the first ``refuse_first`` handshakes are refused with HTTP 503."""
        self.behaviours = behaviours
        self.refuse_first = refuse_first
        self.attempts = 0
        self.peers: list[Peer] = []
        self.log: list[tuple[float, str, int]] = []  # (trio time, "open"/"close"/"refused", n)
        self._changed = trio.Event()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                trio_websocket.serve_websocket, self._handle, "127.0.0.1", 0, None
            )
            self.port = server.port
            task_status.started()

    def _note(self, what: str, number: int) -> None:
        self.log.append((trio.current_time(), what, number))
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.attempts += 1
        if self.attempts <= self.refuse_first:
            self._note("refused", self.attempts)
            await request.reject(503)
            return
        ws = await request.accept()
        peer = Peer(len(self.peers) + 1, request.path, ws)
        self.peers.append(peer)
        self._note("open", peer.number)
        behaviour = self.behaviours[min(peer.number, len(self.behaviours)) - 1]
        try:
            await behaviour(peer)
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            peer.closed.set()
            self._note("close", peer.number)

    async def wait_for(self, what: str, number: int) -> float:
        """Wait until connection ``number`` has had event ``what``; when it happened."""
        while True:
            for moment, seen, n in self.log:
                if (seen, n) == (what, number):
                    return moment
            await self._changed.wait()


async def hold(peer: Peer) -> None:
    """Keep the connection open, reading whatever the client sends."""
    await peer.drain()


def book_ticker(
    symbol: str, bid: str, ask: str, bid_qty: str = "1.5", ask_qty: str = "2.5"
) -> dict:
    """A Binance combined-stream bookTicker message."""
    return {
        "stream": f"{symbol.lower()}@bookTicker",
        "data": {
            "e": "bookTicker",
            "u": 400900217,
            "E": 1568014460893,
            "T": 1568014460891,
            "s": symbol,
            "b": bid,
            "B": bid_qty,
            "a": ask,
            "A": ask_qty,
        },
    }


def bybit_book(
    symbol: str, bids: list[list[str]], asks: list[list[str]], kind: str = "snapshot"
) -> dict:
    return {
        "topic": f"orderbook.1.{symbol}",
        "type": kind,
        "ts": 1672304484978,
        "data": {"s": symbol, "b": bids, "a": asks, "u": 177400507, "seq": 66544703342},
        "cts": 1672304484976,
    }


def bybit_ticker(symbol: str, kind: str = "snapshot", **fields: str) -> dict:
    return {
        "topic": f"tickers.{symbol}",
        "type": kind,
        "ts": 1673272861686,
        "cs": 24987956059,
        "data": {"symbol": symbol, **fields},
    }
