"""A protocol-exact fake of Bybit v5 (REST, public and private WebSockets) and Binance
USD-M market streams, on one loopback port, with fault injection.

It is built from the exchanges' documents (/work/shared/EXCHANGES.md, then Bybit's and
Binance's public docs), never from the service's code: it checks signatures with its own
code, so a signing bug in the client cannot be mirrored here.

In a test::

    fx = FakeExchange(symbols={"BTCUSDT": "95000"}, keys={"key": "secret"}, balance="10000")
    port = await nursery.start(fx.serve, 0)
    fx.set_price("BTCUSDT", bid="95000", ask="95000.1")
    fx.fault("lose_ack", path="/v5/order/create")
    fx.state()

From another process: ``python -m tests.fakes.exchange --port 0`` prints
``fake exchange listening on http://127.0.0.1:PORT`` and serves until SIGINT/SIGTERM;
the same controls are then ``/fake/price``, ``/fake/fault``, ``/fake/clear`` and
``/fake/state`` on that port (plain JSON, no auth).

The whole fake runs in one trio task tree and mutates its state only between awaits, so
there are no locks: a request is carried out, its stream messages queued, and only then
is its answer written (or lost, or delayed, as a fault says).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import partial
from typing import Any

import trio

from tests.fakes.account import Account
from tests.fakes.bybit_rest import BybitRest
from tests.fakes.control import ControlApi
from tests.fakes.faults import AFTER_KINDS, CHANNELS, REFUSED_KINDS, FaultError, FaultPlan, channels
from tests.fakes.market import (
    Market,
    binance_agg_trade,
    binance_book_ticker,
    binance_mark_price,
    bybit_orderbook,
    bybit_ticker,
)
from tests.fakes.streams import (
    BinanceSession,
    BybitPrivateSession,
    BybitPublicSession,
    StreamSession,
)
from tests.fakes.wire import HttpAnswer, HttpRequest, WebSocket, WebSocketHandler, serve_connection

DEFAULT_SYMBOLS = {"BTCUSDT": "95000", "ETHUSDT": "3500", "SOLUSDT": "180"}
DEFAULT_KEYS = {"fake-key-000000000000": "fake-secret-000000000000"}


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class FakeExchange:
    """The fake exchange: market, one account (one UID for every key), faults, streams."""

    def __init__(
        self,
        symbols: Mapping[str, str | Decimal] | None = None,
        keys: Mapping[str, str] | None = None,
        balance: str | Decimal = "10000",
        *,
        host: str = "127.0.0.1",
        binance_ping_s: float = 180.0,
        binance_max_age_s: float = 24 * 3600.0,
        orderbook_resend_s: float = 3.0,
        walk_ms: int = 0,
        seed: int = 1,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        prices = {s: Decimal(str(p)) for s, p in (symbols or DEFAULT_SYMBOLS).items()}
        self.market = Market(prices)
        self.keys = dict(DEFAULT_KEYS if keys is None else keys)
        self.host = host
        self.binance_ping_s = binance_ping_s
        self.binance_max_age_s = binance_max_age_s
        self.orderbook_resend_s = orderbook_resend_s
        self.tcp_connections = 0
        self.walk_ms = walk_ms
        self._random = random.Random(seed)
        self._clock_ms = clock_ms
        self.faults = FaultPlan()
        self.account = Account(Decimal(str(balance)), self.market, self.server_ms)
        self.rest = BybitRest(self)
        self.control = ControlApi(self)
        self.port: int | None = None
        self.request_counts: Counter[str] = Counter()
        self.refused: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.sessions: dict[str, set[StreamSession]] = {name: set() for name in CHANNELS}
        self.opened: Counter[str] = Counter()
        self._subscribers: dict[str, set[StreamSession]] = {}
        self._tickers = {
            s: bybit_ticker(q, self.server_ms()) for s, q in self.market.quotes.items()
        }
        self._ticker_seq: Counter[str] = Counter()
        self._book_sent_at: dict[str, float] = {}
        self._trade_id = 0

    # -- time and addresses ----------------------------------------------------------

    def server_ms(self) -> int:
        """The exchange's clock in ms, shifted by the ``clock_offset_ms`` fault."""
        return self._clock_ms() + self.faults.clock_offset_ms

    def clock_ms(self) -> int:
        """The unshifted clock (rate-limit windows run on it)."""
        return self._clock_ms()

    def _base(self, scheme: str) -> str:
        if self.port is None:
            raise RuntimeError("the fake exchange is not serving yet")
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return self._base("http")

    @property
    def ws_public_url(self) -> str:
        return self._base("ws") + "/v5/public/linear"

    @property
    def ws_private_url(self) -> str:
        return self._base("ws") + "/v5/private"

    @property
    def binance_ws_url(self) -> str:
        """Base of the Binance market streams: append ``/ws/<stream>`` or
        ``/stream?streams=a/b``."""
        return self._base("ws")

    # -- serving -----------------------------------------------------------------------

    async def serve(self, port: int = 0, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``host:port`` (0: any free port); ``task_status.started(port)``."""
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(
                    trio.serve_tcp, self._connection, port, host=self.host, handler_nursery=nursery
                )
            )
            self.port = listeners[0].socket.getsockname()[1]
            now = trio.current_time()
            self._book_sent_at = dict.fromkeys(self.market.quotes, now)
            nursery.start_soon(self._orderbook_resend_loop)
            nursery.start_soon(self._mark_price_loop)
            if self.walk_ms > 0:
                nursery.start_soon(self._walk_loop)
            task_status.started(self.port)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.tcp_connections += 1
        await serve_connection(stream, self)

    async def http(self, request: HttpRequest) -> HttpAnswer:
        self.request_counts[request.path] += 1
        try:
            if request.path.startswith("/fake/"):
                return self.control.handle(request)
            return await self.rest.handle(request)
        except Exception:
            # A bug in the fake must not take the server down under someone else's test:
            # answer 500 (which a client treats as ambiguous) and keep it for state().
            self.errors.append(traceback.format_exc())
            traceback.print_exc(file=sys.stderr)
            return HttpAnswer.json({"error": "fake exchange bug, see state()['errors']"}, 500)

    def websocket(self, request: HttpRequest) -> WebSocketHandler | None:
        kinds: dict[str, type[StreamSession]] = {
            "/v5/public/linear": BybitPublicSession,
            "/v5/private": BybitPrivateSession,
        }
        kind = kinds.get(request.path)
        if kind is None and (request.path == "/stream" or request.path.startswith("/ws")):
            kind = BinanceSession
        if kind is None:
            return None
        session_kind = kind

        async def run(ws: WebSocket, req: HttpRequest) -> None:
            try:
                await session_kind(self, ws, req).run()
            except Exception:
                # As for HTTP: a bug in a session ends that connection, not the server.
                self.errors.append(traceback.format_exc())
                traceback.print_exc(file=sys.stderr)

        return run

    # -- streams -----------------------------------------------------------------------

    def session_opened(self, session: StreamSession) -> None:
        self.sessions[session.channel].add(session)
        self.opened[session.channel] += 1

    def session_closed(self, session: StreamSession) -> None:
        self.sessions[session.channel].discard(session)
        for topic in list(session.topics):
            self.unsubscribe(session, topic)

    def subscribe(self, session: StreamSession, topic: str) -> None:
        self._subscribers.setdefault(topic, set()).add(session)
        session.topics.add(topic)

    def unsubscribe(self, session: StreamSession, topic: str) -> None:
        self._subscribers.get(topic, set()).discard(session)
        session.topics.discard(topic)

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        for session in list(self._subscribers.get(topic, ())):
            session.deliver(topic, payload)

    def public_topic_known(self, topic: str) -> bool:
        kind, _, symbol = topic.rpartition(".")
        return kind in ("tickers", "orderbook.1") and symbol in self.market.quotes

    def public_snapshot(self, topic: str) -> dict[str, Any]:
        kind, _, symbol = topic.rpartition(".")
        now = self.server_ms()
        if kind == "orderbook.1":
            return bybit_orderbook(self.market.quotes[symbol], now)
        return {
            "topic": topic,
            "type": "snapshot",
            "data": dict(self._tickers[symbol]),
            "cs": self._ticker_seq[symbol],
            "ts": now,
        }

    def binance_current(self, stream: str) -> dict[str, Any] | None:
        """The current bookTicker or mark price for a Binance stream name, if it has one."""
        symbol, _, kind = stream.partition("@")
        quote = self.market.quotes.get(symbol.upper())
        if quote is None:
            return None
        if kind == "bookTicker":
            return binance_book_ticker(quote, self.server_ms())
        if kind in ("markPrice", "markPrice@1s"):
            return binance_mark_price(quote, self.server_ms())
        return None

    def publish_private(self, events: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Private messages, one per topic group; lost while ``private_silent`` holds."""
        if self.faults.private_silent():
            return
        now = self.server_ms()
        for topic, items in events:
            payload = {"creationTime": now, "data": items}
            self.publish(f"private:{topic}", payload)
            if topic != "wallet":
                self.publish(f"private:{topic}.linear", payload)

    def publish_trade(self, symbol: str, price: Decimal, qty: Decimal, buyer_maker: bool) -> None:
        self._trade_id += 1
        message = binance_agg_trade(
            symbol, self._trade_id, price, qty, buyer_maker, self.server_ms()
        )
        self.publish(f"binance:{symbol.lower()}@aggTrade", message)

    def flush_account(self) -> None:
        """Send what the account did since the last flush to the private streams."""
        events, trades = self.account.take_events()
        self.publish_private(events)
        for trade in trades:
            self.publish_trade(*trade)

    # -- market ------------------------------------------------------------------------

    def set_price(self, symbol: str, bid: str | Decimal, ask: str | Decimal | None = None) -> None:
        """Move a symbol's quote: publish it on every stream, then match resting orders
        and position stops against it."""
        quote = self.market.set_price(
            symbol, Decimal(str(bid)), None if ask is None else Decimal(str(ask))
        )
        now = self.server_ms()
        ticker = bybit_ticker(quote, now)
        delta = {k: v for k, v in ticker.items() if self._tickers[symbol].get(k) != v}
        delta["symbol"] = symbol
        self._tickers[symbol] = ticker
        self._ticker_seq[symbol] += 1
        self.publish(
            f"bybit:tickers.{symbol}",
            {
                "topic": f"tickers.{symbol}",
                "type": "delta",
                "data": delta,
                "cs": self._ticker_seq[symbol],
                "ts": now,
            },
        )
        self._publish_book(symbol)
        self.publish(f"binance:{symbol.lower()}@bookTicker", binance_book_ticker(quote, now))
        self.account.on_quote(symbol)
        self.flush_account()

    def _publish_book(self, symbol: str) -> None:
        self._book_sent_at[symbol] = trio.current_time()
        book = bybit_orderbook(self.market.quotes[symbol], self.server_ms())
        self.publish(f"bybit:orderbook.1.{symbol}", book)

    async def _orderbook_resend_loop(self) -> None:
        while True:
            now = trio.current_time()
            for symbol, sent_at in list(self._book_sent_at.items()):
                if now - sent_at >= self.orderbook_resend_s:
                    self._publish_book(symbol)
            await trio.sleep_until(min(self._book_sent_at.values()) + self.orderbook_resend_s)

    async def _mark_price_loop(self) -> None:
        tick = 0
        while True:
            await trio.sleep(1)
            tick += 1
            now = self.server_ms()
            for symbol, quote in self.market.quotes.items():
                message = binance_mark_price(quote, now)
                self.publish(f"binance:{symbol.lower()}@markPrice@1s", message)
                if tick % 3 == 0:
                    self.publish(f"binance:{symbol.lower()}@markPrice", message)

    async def _walk_loop(self) -> None:
        while True:
            await trio.sleep(self.walk_ms / 1000)
            self.walk_once()

    def walk_once(self) -> None:
        """One step of the seeded random walk ``walk_ms`` runs: every symbol's bid moves
        by -3..3 ticks, with a one-tick spread (a step of 0 still publishes a quote)."""
        for symbol, quote in list(self.market.quotes.items()):
            step = self._random.randint(-3, 3) * quote.tick
            bid = max(quote.bid + step, quote.tick)
            self.set_price(symbol, bid, bid + quote.tick)

    # -- faults and state --------------------------------------------------------------

    def fault(self, kind: str, **args: Any) -> None:
        """Arm a fault (see faults.py and the brief's list); raises FaultError."""
        if kind == "clear":
            self.faults.clear()
        elif kind == "drop_ws":
            for name in channels(args.get("channel", "all")):
                for session in list(self.sessions[name]):
                    session.cut()
        elif kind == "stall_ws":
            self.faults.stall(args.get("channel", "all"), float(args.get("seconds", 1.0)))
        elif kind in REFUSED_KINDS or kind in AFTER_KINDS:
            self.faults.add_request_fault(kind, args)
        elif kind == "private_silent":
            self.faults.private_silent_until = trio.current_time() + float(args.get("seconds", 1))
        elif kind == "clock_offset_ms":
            value = args.get("ms", 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise FaultError("clock_offset_ms needs ms (an integer)")
            self.faults.clock_offset_ms = value
        else:
            raise FaultError(f"unknown fault kind {kind!r}")

    def state(self) -> dict[str, Any]:
        """Everything a test may want to assert on, as plain JSON-able data."""
        return {
            **self.account.describe(),
            "quotes": {
                s: {"bid": str(q.bid), "ask": str(q.ask), "mid": str(q.mid)}
                for s, q in self.market.quotes.items()
            },
            "requests": dict(self.request_counts),
            "tcp_connections": self.tcp_connections,
            "ws_connections": {
                name: {"open": len(self.sessions[name]), "opened": self.opened[name]}
                for name in CHANNELS
            },
            "refused": list(self.refused),
            "faults": self.faults.describe(),
            "errors": list(self.errors),
            "server_time_ms": self.server_ms(),
        }


# -- command line ------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.exchange", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--symbols", default=",".join(f"{s}={p}" for s, p in DEFAULT_SYMBOLS.items())
    )
    parser.add_argument("--key", action="append", default=[], help="KEY:SECRET (repeatable)")
    parser.add_argument("--balance", default="10000")
    parser.add_argument("--walk-ms", type=int, default=0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--binance-ping-s", type=float, default=180.0)
    parser.add_argument("--binance-max-age-s", type=float, default=24 * 3600.0)
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    symbols = dict(item.split("=", 1) for item in args.symbols.split(",") if item)
    keys = dict(item.split(":", 1) for item in args.key) if args.key else None
    fx = FakeExchange(
        symbols=symbols,
        keys=keys,
        balance=args.balance,
        host=args.host,
        binance_ping_s=args.binance_ping_s,
        binance_max_age_s=args.binance_max_age_s,
        walk_ms=args.walk_ms,
        seed=args.seed,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(fx.serve, args.port)
            print(f"fake exchange listening on http://{args.host}:{port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    trio.run(_run, _parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
