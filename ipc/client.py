"""The client library strategy processes import to send signals to the service (SPEC §5).

Two clients with the same methods: ``SignalClient`` is blocking (plain ``socket``, no
trio, safe to share between threads), ``TrioSignalClient`` is async and lets several
tasks use one connection at once. Both send one frame per request, signed when a secret
is given, and return the service's ``Reply``; a rejection is a reply with status
``rejected`` and a ``reason``, never an exception. Exceptions (``IpcClientError``) mean
the transport failed: no reply arrived in time, the service could not be reached, or
the connection broke.

Retrying is safe in one way only: with the SAME ``signal_id``. The service accepts a
signal id once (across restarts) and derives exchange order ids from it, so a repeated
PREPARE or CLOSE answers ``DUPLICATE_SIGNAL`` instead of trading twice. A client never
resends a request on its own once it may have reached the service; it reconnects and
sends only when it knows the request was not written.

This module imports nothing from the service and nothing async at import time: trio is
imported only when a ``TrioSignalClient`` is used.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ipc.protocol import Reply, decode_reply, encode_message

if TYPE_CHECKING:
    import trio

__all__ = [
    "IpcClientError",
    "IpcConnectError",
    "IpcConnectionLost",
    "IpcProtocolError",
    "IpcTimeout",
    "SignalClient",
    "TrioSignalClient",
]

Direction = Literal["LONG", "SHORT"]
RequestId = str | int

READ_CHUNK = 65536
BACKOFF_S = 0.05  # first reconnect delay; doubles per attempt


# ----- errors ---------------------------------------------------------------------------


class IpcClientError(Exception):
    """The request could not be carried to the service and back."""


class IpcConnectError(IpcClientError):
    """The service could not be reached (no socket, nobody listening). Nothing was sent."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(f"cannot connect to {path}: {detail}")
        self.path = path
        self.detail = detail


class IpcTimeout(IpcClientError):
    """No reply within the timeout. The service may or may not have acted on the request:
    retry with the same signal id, never a new one."""


class IpcConnectionLost(IpcClientError):
    """The connection broke after the request was written. The service may or may not
    have acted on it: retry with the same signal id, never a new one."""


class IpcProtocolError(IpcClientError):
    """The service sent something that is not a reply."""


# ----- messages -------------------------------------------------------------------------


def prepare_message(
    signal_id: str,
    symbol: str,
    direction: Direction,
    entry_zone: tuple[float, float],
    stop_loss: float,
    take_profits: Sequence[float],
    confidence: float,
    leverage: float,
    *,
    source: str,
    velocity: float | None = None,
    trap_type: str | None = None,
    timestamp: int | None = None,
) -> dict[str, Any]:
    """A PREPARE message without its request id. Numbers may be int, float or Decimal."""
    low, high = entry_zone
    message: dict[str, Any] = {
        "type": "PREPARE",
        "signal_id": signal_id,
        "source": source,
        "symbol": symbol,
        "direction": direction,
        "entry_zone": {"min": float(low), "max": float(high)},
        "stop_loss": float(stop_loss),
        "take_profits": [float(tp) for tp in take_profits],
        "confidence": float(confidence),
        "leverage": float(leverage),
        "timestamp": int(time.time() * 1000) if timestamp is None else int(timestamp),
    }
    if velocity is not None:
        message["velocity"] = float(velocity)
    if trap_type is not None:
        message["trap_type"] = trap_type
    return message


def close_message(signal_id: str, symbol: str, reason: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "CLOSE", "signal_id": signal_id, "symbol": symbol}
    if reason is not None:
        message["reason"] = reason
    return message


class _RequestIds:
    """Request ids unique across clients and processes: a random prefix per client and a
    counter. A late reply to an abandoned request can then never be mistaken for the
    reply to a later one."""

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}-{next(self._counter)}"


def _with_id(message: dict[str, Any], ids: _RequestIds) -> tuple[dict[str, Any], RequestId]:
    """``message`` with a request id: its own if it has one, else a fresh one."""
    if message.get("id") is not None:
        return message, message["id"]
    request_id = ids.next()
    head = {"type": message["type"]} if "type" in message else {}
    return {**head, **message, "id": request_id}, request_id


class _LineBuffer:
    """Bytes in, complete reply lines out; a partial line is kept for the next read."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> None:
        self._data += data

    def lines(self) -> list[bytes]:
        *complete, rest = self._data.split(b"\n")
        self._data = bytearray(rest)
        return [bytes(line) for line in complete if line.strip()]


def _decode(line: bytes) -> Reply:
    try:
        return decode_reply(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IpcProtocolError(f"the service sent a line that is not a reply: {exc}") from None


# ----- the blocking client --------------------------------------------------------------


class SignalClient:
    """A blocking client over one Unix-socket connection (reconnected when needed).

    ``timeout`` bounds each call (connecting, writing, waiting for the reply). When the
    connection is found broken BEFORE a request is written (the service restarted
    between calls, say), the client reconnects, up to ``reconnect_attempts`` times with a
    short backoff, and sends. When it breaks AFTER the request was written, the client
    does not resend: it raises ``IpcConnectionLost``, because the service may already
    have acted. The caller may then retry with the SAME ``signal_id``: the service accepts
    a signal id once, so the retry is answered (``DUPLICATE_SIGNAL`` if the first attempt
    got through) instead of trading twice. A timeout (``IpcTimeout``) is the same case;
    the client drops the connection so that the late reply is never read.

    Methods are named after the messages (``close`` sends CLOSE); ``disconnect`` or the
    end of a ``with`` block closes the socket. Calls from several threads are
    serialised; use ``TrioSignalClient`` for concurrent requests.
    """

    def __init__(
        self,
        path: str,
        secret: str | None = None,
        timeout: float = 5.0,
        reconnect_attempts: int = 3,
    ) -> None:
        self.path = path
        self.secret = secret
        self.timeout = timeout
        self.reconnect_attempts = reconnect_attempts
        self._ids = _RequestIds()
        self._sock: socket.socket | None = None
        self._buffer = _LineBuffer()
        self._lock = threading.Lock()

    # ----- connection -----------------------------------------------------------------

    def connect(self) -> None:
        """Connect now (otherwise the first request does). Raises ``IpcConnectError``."""
        with self._lock:
            self._ensure_connected(time.monotonic() + self.timeout)

    def disconnect(self) -> None:
        """Close the socket; a later request opens a new connection. (``close`` is the
        CLOSE message, like every method named after a message.)"""
        with self._lock:
            self._drop()

    def __enter__(self) -> SignalClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = _LineBuffer()

    def _ensure_connected(self, deadline: float) -> socket.socket:
        if self._sock is not None and self._peer_closed(self._sock):
            self._drop()
        if self._sock is not None:
            return self._sock
        attempt = 0
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.connect(self.path)
            except TimeoutError:
                sock.close()
                raise IpcTimeout(
                    f"could not connect to {self.path} within {self.timeout:g} s"
                ) from None
            except OSError as exc:
                sock.close()
                delay = BACKOFF_S * 2**attempt
                if attempt >= self.reconnect_attempts or time.monotonic() + delay > deadline:
                    raise IpcConnectError(self.path, _connect_problem(exc)) from None
                attempt += 1
                time.sleep(delay)
                continue
            self._sock = sock
            self._buffer = _LineBuffer()
            return sock

    def _peer_closed(self, sock: socket.socket) -> bool:
        """True when the service closed the connection since the last call (its EOF or
        error is waiting): the request has not been written, so reconnecting is safe."""
        sock.settimeout(0.0)  # non-blocking: a socket timeout would make recv wait first
        while True:
            try:
                data = sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True
            if not data:
                return True
            self._buffer.feed(data)  # a late reply to an abandoned request: skipped later

    # ----- requests -------------------------------------------------------------------

    def request(self, message: dict[str, Any]) -> Reply:
        """Send one message (a dict as on the wire) and return its reply. A fresh request
        id is assigned unless the message carries an ``id``. A reply whose id is None
        means the service could not read the frame; it is returned as it is."""
        message, request_id = _with_id(message, self._ids)
        frame = encode_message(message, self.secret)
        with self._lock:
            deadline = time.monotonic() + self.timeout
            sock = self._send(frame, deadline)
            try:
                return self._receive(sock, request_id, deadline)
            except IpcClientError:
                self._drop()
                raise

    def _send(self, frame: bytes, deadline: float) -> socket.socket:
        attempts = 0
        while True:
            sock = self._ensure_connected(deadline)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                sock.sendall(frame)
                return sock
            except TimeoutError:
                # Part of the frame may be written; closing ends it without its newline,
                # so the service discards it.
                self._drop()
                raise IpcTimeout(
                    f"the service at {self.path} did not take the request within {self.timeout:g} s"
                ) from None
            except OSError as exc:
                # The frame's last byte is its newline: a failed write was never a
                # complete request, so sending it again cannot duplicate it.
                self._drop()
                if attempts >= self.reconnect_attempts:
                    raise IpcConnectionLost(
                        f"cannot write to {self.path}: {exc.strerror or exc}"
                    ) from None
                attempts += 1
                time.sleep(BACKOFF_S * 2 ** (attempts - 1))

    def _receive(self, sock: socket.socket, request_id: RequestId, deadline: float) -> Reply:
        while True:
            for line in self._buffer.lines():
                reply = _decode(line)
                if reply.id is None or _same_id(reply.id, request_id):
                    return reply
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IpcTimeout(f"no reply from {self.path} within {self.timeout:g} s")
            sock.settimeout(remaining)
            try:
                data = sock.recv(READ_CHUNK)
            except TimeoutError:
                raise IpcTimeout(f"no reply from {self.path} within {self.timeout:g} s") from None
            except OSError as exc:
                raise IpcConnectionLost(
                    f"connection to {self.path} broke after the request was sent: "
                    f"{exc.strerror or exc}"
                ) from None
            if not data:
                raise IpcConnectionLost(
                    f"the service at {self.path} closed the connection before replying"
                )
            self._buffer.feed(data)

    # ----- messages -------------------------------------------------------------------

    def prepare(
        self,
        signal_id: str,
        symbol: str,
        direction: Direction,
        entry_zone: tuple[float, float],
        stop_loss: float,
        take_profits: Sequence[float],
        confidence: float,
        leverage: float,
        source: str = "ipc-client",
        velocity: float | None = None,
        trap_type: str | None = None,
        timestamp: int | None = None,
    ) -> Reply:
        """PREPARE: size the signal and hold it for CONFIRM. ``entry_zone`` is (min, max);
        ``timestamp`` defaults to now, in ms."""
        return self.request(
            prepare_message(
                signal_id,
                symbol,
                direction,
                entry_zone,
                stop_loss,
                take_profits,
                confidence,
                leverage,
                source=source,
                velocity=velocity,
                trap_type=trap_type,
                timestamp=timestamp,
            )
        )

    def confirm(self, signal_id: str) -> Reply:
        """CONFIRM a prepared signal: the order is placed."""
        return self.request({"type": "CONFIRM", "signal_id": signal_id})

    def abort(self, signal_id: str) -> Reply:
        """ABORT a prepared signal."""
        return self.request({"type": "ABORT", "signal_id": signal_id})

    def close(self, signal_id: str, symbol: str, reason: str | None = None) -> Reply:
        """CLOSE the position on ``symbol`` (reduce-only). ``signal_id`` is a fresh id of
        the exit's own, not the entry's."""
        return self.request(close_message(signal_id, symbol, reason))

    def ping(self) -> Reply:
        return self.request({"type": "PING"})


# ----- the trio client ------------------------------------------------------------------


@dataclass(eq=False)
class _Waiter:
    request_id: RequestId
    done: trio.Event
    reply: Reply | None = None
    error: IpcClientError | None = None


@dataclass(eq=False)
class _Connection:
    """One socket and the requests written on it, in the order they were written (keyed
    by a sequence number: callers of ``request`` may reuse their own ids)."""

    stream: trio.SocketStream
    waiting: OrderedDict[int, _Waiter] = field(default_factory=OrderedDict)
    broken: IpcClientError | None = None
    _sequence: itertools.count[int] = field(default_factory=itertools.count)

    def register(self, waiter: _Waiter) -> int:
        key = next(self._sequence)
        self.waiting[key] = waiter
        return key

    def fail(self, error: IpcClientError) -> None:
        if self.broken is None:
            self.broken = error
        for waiter in self.waiting.values():
            waiter.error = error
            waiter.done.set()
        self.waiting.clear()

    def dispatch(self, reply: Reply) -> None:
        # The service writes replies in request order: a reply goes to the oldest request
        # with its id, and one without an id (a frame the service could not read) to the
        # oldest request still waiting. A reply nobody waits for is dropped.
        key = next(
            (
                k
                for k, waiter in self.waiting.items()
                if reply.id is None or _same_id(waiter.request_id, reply.id)
            ),
            None,
        )
        if key is None:
            return
        waiter = self.waiting.pop(key)
        waiter.reply = reply
        waiter.done.set()


class TrioSignalClient:
    """The async client: same methods as ``SignalClient``, awaited.

    Several tasks may send on one connection at once: a reader task hands each reply to
    the caller whose request id it carries. Open it with ``async with
    TrioSignalClient.open(path) as client:`` (the reader runs in a nursery there).
    Reconnecting and retrying follow the rules of ``SignalClient``: a broken connection
    is replaced before a request is written, never after; callers whose requests were in
    flight get ``IpcConnectionLost`` and may retry with the same signal id. A timeout
    (``IpcTimeout``) leaves the connection to the other callers; the late reply is
    dropped when it arrives.
    """

    def __init__(
        self,
        path: str,
        nursery: trio.Nursery,
        secret: str | None = None,
        timeout: float = 5.0,
        reconnect_attempts: int = 3,
    ) -> None:
        import trio

        self.path = path
        self.secret = secret
        self.timeout = timeout
        self.reconnect_attempts = reconnect_attempts
        self._nursery = nursery
        self._ids = _RequestIds()
        self._connection: _Connection | None = None
        self._connect_lock = trio.Lock()
        self._send_lock = trio.StrictFIFOLock()
        self._closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        path: str,
        secret: str | None = None,
        timeout: float = 5.0,  # noqa: ASYNC109 - each request's limit, not this call's
        reconnect_attempts: int = 3,
    ) -> AsyncIterator[TrioSignalClient]:
        """Connect (raising ``IpcConnectError`` when the service is unreachable) and
        yield the client; the connection closes when the block ends."""
        import trio

        try:
            async with trio.open_nursery() as nursery:
                client = cls(path, nursery, secret, timeout, reconnect_attempts)
                try:
                    await client.connect()
                    yield client
                finally:
                    await client.aclose()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The reader's nursery wraps whatever crosses it, the caller's own errors
            # included; one error comes out as itself.
            if len(group.exceptions) == 1:
                only = group.exceptions[0]
                raise only from only.__cause__
            raise

    async def connect(self) -> None:
        """Connect now if not connected (otherwise the next request does)."""
        import trio

        try:
            with trio.fail_after(self.timeout):
                await self._ensure_connected()
        except trio.TooSlowError:
            raise IpcTimeout(
                f"could not connect to {self.path} within {self.timeout:g} s"
            ) from None

    async def aclose(self) -> None:
        """Close the connection; requests in flight get ``IpcConnectionLost``."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.fail(IpcConnectionLost("the client was closed"))
            await _close_stream(connection.stream)

    async def _ensure_connected(self) -> _Connection:
        import trio

        async with self._connect_lock:
            if self._closed:
                raise IpcClientError("the client is closed")
            connection = self._connection
            if connection is not None and connection.broken is None:
                return connection
            attempt = 0
            while True:
                try:
                    stream = await trio.open_unix_socket(self.path)
                    break
                except OSError as exc:
                    if attempt >= self.reconnect_attempts:
                        raise IpcConnectError(self.path, _connect_problem(exc)) from None
                    await trio.sleep(BACKOFF_S * 2**attempt)
                    attempt += 1
            connection = _Connection(stream)
            self._connection = connection
            self._nursery.start_soon(self._read, connection)
            return connection

    async def _read(self, connection: _Connection) -> None:
        import trio

        buffer = _LineBuffer()
        try:
            while True:
                data = await connection.stream.receive_some(READ_CHUNK)
                if not data:
                    raise IpcConnectionLost(
                        f"the service at {self.path} closed the connection before replying"
                    )
                buffer.feed(data)
                for line in buffer.lines():
                    connection.dispatch(_decode(line))
        except IpcClientError as exc:
            connection.fail(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            connection.fail(
                IpcConnectionLost(f"connection to {self.path} broke after the request was sent")
            )
        finally:
            if self._connection is connection:
                self._connection = None
            await _close_stream(connection.stream)

    async def request(self, message: dict[str, Any]) -> Reply:
        """Send one message (a dict as on the wire) and await its reply; see
        ``SignalClient.request``."""
        import trio

        message, request_id = _with_id(message, self._ids)
        frame = encode_message(message, self.secret)
        waiter = _Waiter(request_id, trio.Event())
        connection: _Connection | None = None
        try:
            with trio.fail_after(self.timeout):
                connection = await self._send(frame, waiter)
                await waiter.done.wait()
        except trio.TooSlowError:
            # The waiter stays registered until its reply comes, which is then dropped:
            # replies are matched in order, so a late one must not shift the rest.
            raise IpcTimeout(f"no reply from {self.path} within {self.timeout:g} s") from None
        if waiter.error is not None:
            raise waiter.error
        assert waiter.reply is not None and connection is not None
        return waiter.reply

    async def _send(self, frame: bytes, waiter: _Waiter) -> _Connection:
        import trio

        attempts = 0
        while True:
            connection = await self._ensure_connected()
            async with self._send_lock:  # the order of ``waiting`` is the order on the wire
                if connection.broken is not None:
                    continue  # broken while we queued: nothing of ours was written
                key = connection.register(waiter)
                try:
                    await connection.stream.send_all(frame)
                    return connection
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    # A failed write never delivered the frame's final newline: it was
                    # not a request, so writing it on a new connection cannot duplicate it.
                    connection.waiting.pop(key, None)
                    connection.fail(IpcConnectionLost(f"connection to {self.path} broke"))
                    await _close_stream(connection.stream)
                    if attempts >= self.reconnect_attempts:
                        raise IpcConnectionLost(f"cannot write to {self.path}: {exc}") from None
                    attempts += 1
                except trio.Cancelled:
                    # Part of the frame may be on the wire; the stream is no longer
                    # framed, so it is closed (the service discards a partial line).
                    connection.waiting.pop(key, None)
                    connection.fail(IpcConnectionLost(f"connection to {self.path} was reset"))
                    with trio.CancelScope(shield=True):
                        await _close_stream(connection.stream)
                    raise
            await trio.sleep(BACKOFF_S * 2 ** (attempts - 1))

    # ----- messages -------------------------------------------------------------------

    async def prepare(
        self,
        signal_id: str,
        symbol: str,
        direction: Direction,
        entry_zone: tuple[float, float],
        stop_loss: float,
        take_profits: Sequence[float],
        confidence: float,
        leverage: float,
        source: str = "ipc-client",
        velocity: float | None = None,
        trap_type: str | None = None,
        timestamp: int | None = None,
    ) -> Reply:
        return await self.request(
            prepare_message(
                signal_id,
                symbol,
                direction,
                entry_zone,
                stop_loss,
                take_profits,
                confidence,
                leverage,
                source=source,
                velocity=velocity,
                trap_type=trap_type,
                timestamp=timestamp,
            )
        )

    async def confirm(self, signal_id: str) -> Reply:
        return await self.request({"type": "CONFIRM", "signal_id": signal_id})

    async def abort(self, signal_id: str) -> Reply:
        return await self.request({"type": "ABORT", "signal_id": signal_id})

    async def close(self, signal_id: str, symbol: str, reason: str | None = None) -> Reply:
        return await self.request(close_message(signal_id, symbol, reason))

    async def ping(self) -> Reply:
        return await self.request({"type": "PING"})


async def _close_stream(stream: trio.SocketStream) -> None:
    import trio

    await trio.aclose_forcefully(stream)


def _same_id(a: RequestId, b: RequestId) -> bool:
    return type(a) is type(b) and a == b  # True is not the id 1


def _connect_problem(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such socket"
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused (nobody is listening)"
    return exc.strerror or str(exc)
