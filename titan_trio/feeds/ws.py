"""A market feed over a WebSocket that keeps itself connected: the part every exchange
shares. ``BinanceFeed`` and ``BybitFeed`` add the URL, the subscription, the heartbeat
message and the decoding.

One connection at a time (a LINK) reads messages, decodes them into quotes and publishes
them to the hub. Beside the reader, each link runs:
- a stale-data watchdog: no data message (a quote-bearing message; acknowledgements and
  pongs do not count) for ``stale_after_s`` gives the link up, as a failure;
- a heartbeat when the exchange asks for one (``ping_interval_s``): a JSON ping, and a
  pong expected within ``pong_timeout_s`` or the link is given up. WebSocket ping FRAMES
  from the server (Binance's, every 3 minutes) are answered by trio-websocket's reader
  task itself (wsproto queues the pong, ``_handle_ping_event`` sends it), so they need
  nothing here, only a reader that keeps draining its messages.

A failed link is followed by a new one after a capped exponential backoff with jitter
(``Backoff``), reset after a link that delivered data; each new link subscribes afresh
and starts from the exchange's snapshots (decoding state is per link).

The planned cut (Binance closes every connection after 24 hours): at
``rollover_after_s`` a successor link is opened BESIDE the current one; both publish
(duplicate quotes are harmless: the book keeps the newest), and once the successor has
delivered its first data message the old link is closed. Health stays connected all
along and this counts as a rollover, not a reconnect (a rollover is no fault; counted as
a reconnect it would trip reconnect alerts every day). A successor that fails or stays
silent is dropped and the rollover tried again ``stale_after_s`` later, while the old
link keeps serving.

Nothing from the network stops the feed: a connection error, a close, a timeout is a
WARNING (one per failed link, so at most one per backoff delay) and a reconnect; an
unexpected exception is logged with its traceback and treated the same way. A message
that cannot be decoded, or holds an implausible quote (negative, zero, crossed, not a
number), is dropped before the book, counted in ``malformed`` and logged (a WARNING for
the first one per link, DEBUG after it: a feed gone bad must not flood the log).

Timing (watchdog, heartbeat, rollover, backoff) is on trio's clock, so tests drive it
with a MockClock; health's message age stays on ``time.monotonic`` like the hub's.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio
import trio_websocket

from titan_trio.clock import now_ms
from titan_trio.domain.quotes import Quote
from titan_trio.feeds.backoff import Backoff
from titan_trio.feeds.decoding import BadMessage
from titan_trio.feeds.hub import FeedHealth, MarketHub

log = logging.getLogger("titan.feeds")

STALE_AFTER_S = 15.0  # no data this long: give the connection up
CONNECT_TIMEOUT_S = 10.0  # TCP + TLS + WebSocket handshake
DISCONNECT_TIMEOUT_S = 2.0  # a polite close waits this long for the server's answer
PONG_TIMEOUT_S = 10.0
MESSAGE_QUEUE_SIZE = 64  # messages trio-websocket buffers ahead of the reader

# What the network raises at us: each is a WARNING and a reconnect.
NETWORK_ERRORS = (
    OSError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


@dataclass(eq=False)
class Link:
    """One connection's life. ``state`` is the exchange's decoding state for it (Bybit's
    held book and ticker); a new connection starts from its own snapshots."""

    number: int
    state: Any
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    ready: trio.Event = field(default_factory=trio.Event)  # subscribed, or done
    first_data: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    pong: trio.Event = field(default_factory=trio.Event)
    tasks: trio.CancelScope | None = None  # the reader and its helpers
    opened_at: float = 0.0  # trio clock
    last_data: float = 0.0  # trio clock
    error: str | None = None
    retired: bool = False  # closed on purpose (replaced at a rollover)
    warned: bool = False  # the WARNING for a malformed message was written


class WebSocketFeed(ABC):
    """The connection-keeping half of a market feed. Subclasses set ``name`` and
    ``ping_interval_s`` and implement ``stream_url``, ``subscribe_messages``,
    ``new_state``, ``decode`` and (with a heartbeat) ``ping_message``."""

    name: str = ""
    ping_interval_s: float | None = None  # None: no JSON heartbeat

    def __init__(
        self,
        hub: MarketHub,
        symbols: Sequence[str],
        url: str,
        *,
        stale_after_s: float = STALE_AFTER_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        pong_timeout_s: float = PONG_TIMEOUT_S,
        rollover_after_s: float | None = None,
        backoff: Backoff | None = None,
        message_queue_size: int = MESSAGE_QUEUE_SIZE,
    ) -> None:
        self.hub = hub
        self.symbols = list(symbols)
        self.url = url.rstrip("/")
        self.stale_after_s = stale_after_s
        self.connect_timeout_s = connect_timeout_s
        self.pong_timeout_s = pong_timeout_s
        self.rollover_after_s = rollover_after_s
        self.backoff = backoff if backoff is not None else Backoff()
        self.message_queue_size = message_queue_size
        self.health: FeedHealth = hub.register_feed(self.name)
        self._links = 0

    # ----- what each exchange says ----------------------------------------------------

    @abstractmethod
    def stream_url(self) -> str:
        """The URL to connect to."""

    @abstractmethod
    def subscribe_messages(self) -> list[str]:
        """The text messages to send right after connecting (may be none)."""

    @abstractmethod
    def new_state(self) -> Any:
        """A fresh decoding state for a new connection."""

    @abstractmethod
    def decode(self, link: Link, raw: str | bytes, ts_ms: int) -> list[Quote] | None:
        """The quotes a data message gives (possibly none), or None for a control
        message (an acknowledgement, a pong: call ``link.pong.set()``). Raises
        BadMessage for a message that cannot be used; nothing of it may reach the book."""

    def ping_message(self, number: int) -> str:
        raise NotImplementedError(f"{self.name} has no JSON heartbeat")

    # ----- the service ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Started at once: a feed that cannot connect never holds the service's start
        up; it keeps trying, and its health says so."""
        task_status.started()
        health = self.health
        try:
            while True:
                delivered = await self._chain()
                if delivered:
                    self.backoff.reset()
                health.connected = False
                health.state = "reconnecting"
                delay = self.backoff.next_delay()
                log.warning(
                    "market feed %s: %s; reconnecting in %.1f s",
                    self.name,
                    health.last_error,
                    delay,
                )
                await trio.sleep(delay)
                health.reconnects += 1
        finally:
            health.connected = False
            health.state = "stopped"

    async def _chain(self) -> bool:
        """One connection and the successors it hands over to at each planned cut, until
        one fails (its cause in ``health.last_error``). True when any of them delivered
        data."""
        links: list[Link] = []
        async with trio.open_nursery() as nursery:
            link = await self._start_link(nursery, links)
            if not link.done.is_set():
                self.health.connected = True
                self.health.state = "connected"
                log.info("market feed %s: connected to %s", self.name, self.stream_url())
            next_cut = math.inf
            if self.rollover_after_s is not None:
                next_cut = trio.current_time() + self.rollover_after_s
            while not link.done.is_set():
                with trio.move_on_at(next_cut):
                    await link.done.wait()
                if link.done.is_set():
                    break
                successor = await self._roll_over(nursery, links, link)
                if successor is link:
                    next_cut = trio.current_time() + self.stale_after_s
                else:
                    link = successor
                    assert self.rollover_after_s is not None
                    next_cut = link.opened_at + self.rollover_after_s
            self.health.last_error = link.error
            nursery.cancel_scope.cancel()  # a successor still opening, anything left
        return any(each.first_data.is_set() for each in links)

    async def _roll_over(self, nursery: trio.Nursery, links: list[Link], old: Link) -> Link:
        """Open a successor beside ``old`` and switch to it once it delivers data.
        Returns the link to keep (``old`` when the successor did not work out)."""
        self.health.state = "rolling over"
        successor = await self._start_link(nursery, links)
        if not successor.done.is_set():
            with trio.move_on_after(self.stale_after_s):
                await _first_of(successor.first_data, successor.done)
        if successor.first_data.is_set() and not successor.done.is_set():
            self._retire(old)
            self.health.rollovers += 1
            self.health.state = "connected"
            log.info("market feed %s: rolled over to a new connection", self.name)
            return successor
        why = successor.error or f"no data within {self.stale_after_s:g} s"
        self._retire(successor)
        self.health.state = "connected"
        log.warning(
            "market feed %s: the replacement connection failed (%s); keeping the current one",
            self.name,
            why,
        )
        return old

    async def _start_link(self, nursery: trio.Nursery, links: list[Link]) -> Link:
        """A new link, returned once it is subscribed (or has failed: ``done``)."""
        self._links += 1
        link = Link(self._links, self.new_state())
        links.append(link)
        nursery.start_soon(self._run_link, link)
        await link.ready.wait()
        return link

    def _retire(self, link: Link) -> None:
        """Close ``link`` on purpose: its end is no failure."""
        link.retired = True
        if link.tasks is not None:
            link.tasks.cancel()  # the reader stops; the connection closes politely
        else:
            link.scope.cancel()

    def _fail(self, link: Link, reason: str) -> None:
        """Give ``link`` up (the first reason given is kept) and drop its connection at
        once: nothing is owed to a connection that stopped working."""
        if link.error is None and not link.retired:
            link.error = reason
        link.scope.cancel()

    async def _run_link(self, link: Link) -> None:
        try:
            with link.scope:
                async with trio_websocket.open_websocket_url(
                    self.stream_url(),
                    connect_timeout=self.connect_timeout_s,
                    disconnect_timeout=DISCONNECT_TIMEOUT_S,
                    message_queue_size=self.message_queue_size,
                ) as ws:
                    for text in self.subscribe_messages():
                        await ws.send_message(text)
                    link.opened_at = link.last_data = trio.current_time()
                    link.ready.set()
                    async with trio.open_nursery() as tasks:
                        link.tasks = tasks.cancel_scope
                        if link.retired:
                            tasks.cancel_scope.cancel()
                        tasks.start_soon(self._watchdog, link)
                        if self.ping_interval_s is not None:
                            tasks.start_soon(self._heartbeat, link, ws)
                        tasks.start_soon(self._read, link, ws)
        except NETWORK_ERRORS as exc:
            self._fail(link, _describe(exc))
        except Exception as exc:  # a bug must not stop the prices: logged whole, retried
            log.exception("market feed %s: unexpected error", self.name)
            self._fail(link, f"unexpected error: {exc!r}")
        finally:
            if link.error is None and not link.retired:
                link.error = "the connection ended"
            link.done.set()
            link.ready.set()

    async def _read(self, link: Link, ws: trio_websocket.WebSocketConnection) -> None:
        health, hub = self.health, self.hub
        while True:
            try:
                raw = await ws.get_message()
            except NETWORK_ERRORS as exc:
                self._fail(link, _describe(exc))
                return
            try:
                quotes = self.decode(link, raw, now_ms())
            except BadMessage as exc:
                self._malformed(link, raw, str(exc))
                continue
            except Exception as exc:  # an unforeseen shape is malformed too, not fatal
                self._malformed(link, raw, repr(exc), exc_info=True)
                continue
            if quotes is None:
                continue
            link.last_data = trio.current_time()
            link.first_data.set()
            health.message_received()
            for quote in quotes:
                hub.publish(quote)

    async def _watchdog(self, link: Link) -> None:
        while True:
            deadline = link.last_data + self.stale_after_s
            if trio.current_time() >= deadline:
                self._fail(link, f"no data for {self.stale_after_s:g} s")
                return
            await trio.sleep_until(deadline)

    async def _heartbeat(self, link: Link, ws: trio_websocket.WebSocketConnection) -> None:
        assert self.ping_interval_s is not None
        number = 0
        while True:
            await trio.sleep(self.ping_interval_s)
            number += 1
            link.pong = trio.Event()
            try:
                await ws.send_message(self.ping_message(number))
            except NETWORK_ERRORS as exc:
                self._fail(link, _describe(exc))
                return
            with trio.move_on_after(self.pong_timeout_s):
                await link.pong.wait()
            if not link.pong.is_set():
                self._fail(link, f"no pong within {self.pong_timeout_s:g} s")
                return

    def _malformed(self, link: Link, raw: str | bytes, why: str, *, exc_info: bool = False) -> None:
        self.health.malformed += 1
        self.health.last_error = f"malformed message dropped: {why}"
        shown = raw[:200] if isinstance(raw, str) else repr(raw[:200])
        level = logging.DEBUG if link.warned else logging.WARNING
        link.warned = True
        log.log(
            level,
            "market feed %s: malformed message dropped (%s): %s%s",
            self.name,
            why,
            shown,
            "" if level == logging.DEBUG else " (further ones on this connection at DEBUG)",
            exc_info=exc_info,
        )


async def _first_of(*events: trio.Event) -> None:
    """Return as soon as any of ``events`` is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


def _describe(exc: BaseException) -> str:
    """A short human cause for a network error."""
    if isinstance(exc, trio_websocket.ConnectionClosed):
        reason = exc.reason
        text = f"closed by the server ({reason.code} {reason.name}"
        return text + (f": {reason.reason})" if reason.reason else ")")
    if isinstance(exc, trio_websocket.ConnectionRejected):
        return f"connection refused by the server (HTTP {exc.status_code})"
    if isinstance(exc, trio_websocket.ConnectionTimeout):
        return "the connection timed out"
    if isinstance(exc, trio_websocket.HandshakeError) and exc.__cause__ is not None:
        return f"cannot connect: {exc.__cause__}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
