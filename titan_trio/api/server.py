"""Serves the ops API with Hypercorn's trio connection handler inside the engine's nursery.

The API must never be what exhausts the process's file descriptors: every descriptor it
holds is one the IPC listener, the store and the broker cannot have. Hence, each a
decision:

- Idle keep-alive connections close after ``api.keepAliveTimeoutS`` (5 s by default:
  longer than a client needs between two calls of one task, and a scraper that polls
  every 15 s simply reconnects). Hypercorn has that timer (``keep_alive_timeout``), but
  with quart-trio it was never armed after a response: Hypercorn hands the app
  ``http.disconnect`` from inside the app's last ``send``, quart-trio cancels its request
  tasks on that message, and the cancellation landed in Hypercorn's restart of the idle
  timer, so an answered connection stayed open for ever. The app's last ``send`` of each
  response therefore runs shielded (bounded by ``FINISH_RESPONSE_S``), which lets
  Hypercorn finish it.
- At most ``api.maxConnections`` connections (64 by default) are open at once. Hypercorn
  0.18 has no such bound (its ``max_requests`` restarts the worker after N requests,
  ``keep_alive_max_requests`` counts requests per connection, ``backlog`` sizes the
  kernel's queue), so this module runs the accept loop itself instead of
  ``hypercorn.trio.run.worker_serve`` and takes a slot before each ``accept``. A client
  beyond the bound waits in the kernel's listen backlog (``backlog``, 100), holding no
  descriptor of ours, until a connection closes.
- A connection is closed as soon as its client has gone. Hypercorn 0.18's ``TCPServer``
  kept one whose client hung up while it was idle until its keep-alive timer ended,
  holding the descriptor (and here the slot) for those seconds; ``_Connection`` stops
  that timer once reading has ended.
- Running out of descriptors on ``accept`` (EMFILE, ENFILE) backs off, logs a rate-limited
  WARNING and accepts again later (``ipc.accept.BackoffListener``); open connections are
  served meanwhile. (``trio.serve_listeners``, which ``worker_serve`` uses, also survives
  it, but logs an ERROR with a traceback every 100 ms.)

Only the loop that accepts connections is ours; each connection is Hypercorn's
``TCPServer`` (with the one change above), and the app's start-up and shutdown are
Hypercorn's ``Lifespan``, used as ``worker_serve`` uses them. Shutdown is cancellation,
as everywhere in the service: open connections are closed with the nursery.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ASGIFramework, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from ipc.accept import REPEAT_WARNING_S, BackoffListener
from titan_trio.api.app import create_app
from titan_trio.errors import StartupError

if TYPE_CHECKING:
    from titan_trio.engine import Engine

log = logging.getLogger("titan.api")

FINISH_RESPONSE_S = 5.0  # bound on the shielded last send of a response


async def serve_api(
    engine: Engine, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    cfg = engine.cfg.api
    hc = HypercornConfig()
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    hc.bind = [f"{host}:{cfg.port}"]
    hc.accesslog = None
    hc.errorlog = logging.getLogger("titan.http")
    hc.shutdown_timeout = 1.0
    hc.keep_alive_timeout = cfg.keep_alive_timeout_s
    app = wrap_app(finish_responses_shielded(create_app(engine)), hc.wsgi_max_body_size, "asgi")
    try:
        sockets = hc.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(hc.backlog)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {cfg.port} on {cfg.host} is already in use (another titan instance, "
                "or set api.port / TITAN_API_PORT)"
            ) from None
        raise StartupError(f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}") from None
    await _serve(app, hc, sockets, cfg.max_connections, task_status=task_status)


def finish_responses_shielded(app: ASGIFramework) -> ASGIFramework:
    """``app``, with the last ``send`` of each HTTP response shielded from the app's own
    cancellation (see the module docstring: otherwise keep-alive never times out)."""

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_last_shielded(message: Any) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                with trio.move_on_after(FINISH_RESPONSE_S, shield=True):
                    await send(message)
            else:
                await send(message)

        await app(scope, receive, send_last_shielded)

    return asgi


async def _serve(
    app: AppWrapper,
    hc: HypercornConfig,
    sockets: Sockets,
    max_connections: int,
    *,
    task_status: trio.TaskStatus[list[str]],
) -> None:
    lifespan_state: dict[str, Any] = {}
    lifespan = Lifespan(app, hc, lifespan_state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        state = ConnectionState(lifespan_state.copy())
        slots = trio.Semaphore(max_connections, max_value=max_connections)

        async def serve(stream: trio.SocketStream) -> None:
            await _Connection(app, hc, context, state, stream).run()  # type: ignore[arg-type]

        try:
            async with trio.open_nursery() as nursery:
                binds = []
                for sock in sockets.insecure_sockets:
                    listener = BackoffListener(
                        trio.SocketListener(trio.socket.from_stdlib_socket(sock)), log, "ops API"
                    )
                    binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
                    nursery.start_soon(_accept, listener, slots, serve, nursery)
                task_status.started(binds)
        finally:
            await context.terminated.set()  # idle connections close, none is recycled
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()


class _Connection(TCPServer):
    """Hypercorn's connection, which ends when reading ends (the client closed or broke
    the connection, or Hypercorn closed it): the keep-alive timer is stopped then, so
    the socket is closed at once instead of when the timer runs out."""

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


async def _accept(
    listener: BackoffListener[trio.SocketStream],
    slots: trio.Semaphore,
    serve: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Take a slot, then accept: beyond ``slots`` connections, clients wait in the
    kernel's backlog. The slot is given back when the connection is closed."""

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await serve(stream)
        finally:
            try:
                await trio.aclose_forcefully(stream)
            finally:
                slots.release()

    last_warning = -math.inf
    async with listener:
        while True:
            if slots.value == 0 and trio.current_time() - last_warning >= REPEAT_WARNING_S:
                last_warning = trio.current_time()
                log.warning(
                    "ops API has %d connections open (api.maxConnections); new ones wait",
                    slots.max_value,
                )
            await slots.acquire()
            try:
                stream = await listener.accept()
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(connection, stream)
