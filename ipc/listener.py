"""The IPC listener: a Unix-domain stream socket speaking the protocol of ``protocol.py``.

Guarantees, each a design decision:
- The socket file (``socket_file.py``) is created with the configured mode; a stale one
  is replaced, a live one (another instance) stops start-up. It is checked every
  PATH_CHECK_S: deleted, it is made again (WARNING) and new connections are taken there;
  replaced by something else, that is left alone and reported (ERROR), and health says
  the IPC component is unhealthy while the path is not this service's socket.
- At most ``max_connections`` connections, and at most ``max_connections_per_process``
  of them from one process (its pid, from SO_PEERCRED); the last ``max_connections // 8``
  (rounded down) are kept for processes that hold none yet, so neither one nor a few
  careless or hostile processes can lock every strategy out; a connection refused gets
  a single MAX_CONNECTIONS reply and is closed, with a WARNING naming the peer. A peer
  whose credentials cannot be read (not Linux) counts only toward the total.
- A connection with nothing to do (no request unanswered, no reply being written, no byte
  received) for ``idle_timeout_s`` is closed, with a WARNING naming the peer: idle
  connections cannot hold the slots for ever. A client keeps one open by sending PING.
- Running out of file descriptors (EMFILE, ENFILE) or kernel memory on ``accept`` never
  stops the listener: it backs off (0.1 s doubling to 1 s), logs a rate-limited WARNING,
  keeps serving the connections it has and accepts again once a descriptor is free
  (``accept.py``).
- Requests on one connection are admitted in order (``handler.admit`` runs synchronously
  in arrival order) and run concurrently; replies are written in request order, each
  with its id. Requests from different connections run concurrently.
- Backpressure is per connection: at most ``inflight_per_connection`` unanswered
  requests, after which that connection is simply not read until it catches up. A
  client that does not read its replies, or stalls mid-frame, only ever stalls itself.
- At most ``max_pending`` requests are being handled at once across all connections;
  beyond that a request is answered BUSY at once instead of queueing without bound.
- A bad frame (too long, not UTF-8, not JSON, invalid) gets exactly one rejected reply
  and the connection stays usable; an over-long frame is discarded up to its newline.
- Every rejected reply, whatever made it (framing, schema, signature, load, the
  service's gates), and every refused connection is logged once, through ``_answer``
  and ``_refuse``: rate-limited per reason (``refusals.py``), so operators can grep for
  refusals and a misbehaving client cannot flood the log.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ipc.accept import BackoffListener
from ipc.framing import TOO_LONG, LineDecoder
from ipc.peers import Peer, peer_of
from ipc.protocol import FrameProblem, Message, Reason, Reply, Status, decode_frame, encode_reply
from ipc.refusals import RefusalLog
from ipc.socket_file import IpcError, PathState, SocketFile

log = logging.getLogger("titan.ipc")

PATH_CHECK_S = 1.0  # how often the socket file is checked (and re-created when deleted)
WRITE_TIMEOUT_S = 10.0  # a client that takes longer than this to read a reply is dropped
READ_CHUNK = 65536

Job = Callable[[], Awaitable[Reply]]


class RequestHandler(Protocol):
    def admit(self, message: Message) -> Job:
        """Called synchronously, in arrival order per connection; returns the work."""
        ...


Observer = Callable[[str | None, Reply], None]


@dataclass(eq=False)
class _Slot:
    received_ns: int
    message_type: str | None = None
    message: Message | None = None
    reply: Reply | None = None
    done: trio.Event = field(default_factory=trio.Event)

    def finish(self, reply: Reply) -> None:
        self.reply = reply
        self.done.set()


def rejected(
    request_id: str | int | None, reason: Reason, message: str, signal_id: str | None = None
) -> Reply:
    return Reply(request_id, Status.REJECTED, signal_id=signal_id, reason=reason, message=message)


@dataclass(eq=False)
class _Connection:
    stream: trio.SocketStream
    space: trio.Semaphore  # one token per request in flight on this connection
    peer: Peer = field(default_factory=Peer)
    idle_timeout_s: float | None = None
    slots: deque[_Slot] = field(default_factory=deque)  # unanswered, in request order
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    # Reading runs in this scope; its deadline is idle_timeout_s after the connection last
    # had nothing to do, and infinite while a request is unanswered or a reply is written.
    idle: trio.CancelScope = field(default_factory=trio.CancelScope)
    drained: trio.Event = field(default_factory=trio.Event)
    alive: bool = True
    writing: bool = False

    def busy(self) -> None:
        self.idle.deadline = math.inf

    def rest(self) -> None:
        """Start the idle clock, unless there is still something to do."""
        if self.idle_timeout_s is not None and not self.slots and not self.writing:
            self.idle.deadline = trio.current_time() + self.idle_timeout_s

    def close(self) -> None:
        self.alive = False
        self.scope.cancel()
        self.drained.set()

    async def wait_drained(self) -> None:
        while self.alive and self.slots:
            self.drained = trio.Event()
            await self.drained.wait()


class IpcListener:
    def __init__(
        self,
        path: str,
        mode: int,
        handler: RequestHandler,
        *,
        max_connections: int = 16,
        max_connections_per_process: int = 8,
        idle_timeout_s: float | None = 300.0,
        max_frame_bytes: int = 65536,
        secret: str | None = None,
        max_pending: int = 1024,
        inflight_per_connection: int = 256,
        observer: Observer | None = None,
    ) -> None:
        self.path = path
        self.mode = mode
        self.handler = handler
        self.max_connections = max_connections
        self.max_connections_per_process = max_connections_per_process
        self.idle_timeout_s = idle_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.secret = secret
        self.max_pending = max_pending
        self.inflight_per_connection = inflight_per_connection
        self.observer = observer
        self.refusals = RefusalLog(log)
        self.connections = 0
        self.by_process: Counter[int] = Counter()  # open connections per peer pid
        # The last few slots are kept for processes that hold no connection yet, so a
        # handful of greedy processes cannot lock every other strategy out.
        self.reserved = max_connections // 8
        self.pending = 0
        self.listening = False
        self.admitting = True  # False once the service is stopping: nothing new starts
        self.socket_file = SocketFile(path, mode)
        self._jobs: trio.Nursery | None = None
        self._accepting: trio.CancelScope | None = None

    def stop_admitting(self) -> None:
        """From now on every request is answered BUSY ("stopping") without being run; the
        ones already admitted finish and are answered."""
        self.admitting = False

    # ----- serving ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = self.socket_file.bind()
        try:
            async with trio.open_nursery() as nursery:
                self._jobs = nursery
                await nursery.start(self.refusals.run)
                self._accepting = await nursery.start(self._accept, sock)
                self.listening = True
                task_status.started()
                await self._watch_path(nursery)
        finally:
            self.listening = False
            self.socket_file.remove()

    def path_state(self) -> PathState:
        """Whether the socket path still is this listener's socket (health asks)."""
        return self.socket_file.state()

    async def _watch_path(self, nursery: trio.Nursery) -> None:
        """Every PATH_CHECK_S: a socket file that was deleted is made again, and new
        connections are taken on it (the old socket, which nobody can reach any more, is
        closed; its connections carry on). Something else at the path is left alone and
        reported: health says unhealthy until an operator clears it."""
        reported: PathState | None = None  # what was last logged: each change once
        while True:
            await trio.sleep(PATH_CHECK_S)
            state = self.socket_file.state()
            if state is PathState.MISSING:
                if reported is not PathState.MISSING:
                    log.warning(
                        "IPC socket %s was deleted: strategies could not connect; re-creating it",
                        self.path,
                    )
                try:
                    sock = self.socket_file.bind()
                except IpcError as exc:
                    if reported is not PathState.MISSING:  # tried again every second, quietly
                        log.error("IPC socket %s could not be re-created: %s", self.path, exc)
                    reported = PathState.MISSING
                    continue
                old = self._accepting
                self._accepting = await nursery.start(self._accept, sock)
                if old is not None:
                    old.cancel()
                if reported is PathState.MISSING:
                    log.warning("IPC socket %s is back", self.path)
                state = PathState.OURS
            elif state is PathState.REPLACED and reported is not PathState.REPLACED:
                log.error(
                    "IPC socket path %s is no longer this service's socket (something else "
                    "was put there): strategies cannot reach the service; remove it and the "
                    "service makes its socket again",
                    self.path,
                )
            reported = state

    async def _accept(
        self,
        sock: trio.socket.SocketType,
        *,
        task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take connections on ``sock`` until cancelled (the socket is then closed)."""
        listener = BackoffListener(trio.SocketListener(sock), log, "IPC listener")
        with trio.CancelScope() as scope:
            task_status.started(scope)
            try:
                while True:
                    stream = await listener.accept()
                    peer = peer_of(stream)
                    refusal = self._refusal(peer)
                    assert self._jobs is not None
                    if refusal is not None:
                        self._jobs.start_soon(self._refuse, stream, peer, refusal)
                    else:
                        self.connections += 1
                        if peer.pid is not None:
                            self.by_process[peer.pid] += 1
                        self._jobs.start_soon(self._serve_connection, stream, peer)
            finally:
                with trio.CancelScope(shield=True):
                    await listener.aclose()

    def _refusal(self, peer: Peer) -> str | None:
        """Why a new connection from ``peer`` is refused, or None to serve it."""
        if self.connections >= self.max_connections:
            return f"at most {self.max_connections} connections; try again later"
        holds = 0 if peer.pid is None else self.by_process[peer.pid]
        if holds and self.connections >= self.max_connections - self.reserved:
            return (
                f"this process (pid {peer.pid}) already holds {holds} connections and the "
                f"last {self.reserved} of {self.max_connections} are kept for processes "
                "that hold none; reuse one, or close one first"
            )
        if peer.pid is not None and self.by_process[peer.pid] >= self.max_connections_per_process:
            return (
                f"this process (pid {peer.pid}) already holds "
                f"{self.by_process[peer.pid]} connections, the most one process may "
                "(ipc.maxConnectionsPerProcess); reuse one, or close one first"
            )
        return None

    async def _refuse(self, stream: trio.SocketStream, peer: Peer, text: str) -> None:
        reply = rejected(None, Reason.MAX_CONNECTIONS, text)
        reply.latency_us = 0
        holders = ", ".join(f"pid {pid}: {n}" for pid, n in self.by_process.most_common(3))
        self.refusals.refused(
            "connection",
            reply,
            peer,
            detail=f"{self.connections} open; by process: {holders or 'none known'}",
        )
        with trio.move_on_after(1.0):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(encode_reply(reply))
        self._observe(None, reply)
        await trio.aclose_forcefully(stream)

    async def _serve_connection(self, stream: trio.SocketStream, peer: Peer) -> None:
        log.info("IPC connection opened: %s (%d open)", peer, self.connections)
        conn = _Connection(
            stream, trio.Semaphore(self.inflight_per_connection), peer, self.idle_timeout_s
        )
        try:
            with conn.scope:
                conn.rest()
                with conn.idle:
                    await self._read_requests(conn)
                if conn.idle.cancelled_caught:
                    log.warning(
                        "IPC connection %s closed: idle for %g s (ipc.idleTimeoutS); a client "
                        "keeps its connection open by sending PING",
                        peer,
                        self.idle_timeout_s,
                    )
                    return
                await conn.wait_drained()  # EOF: answer what was asked, then close
        except Exception as exc:  # contained: one connection never takes the others down
            if not _only_disconnects(exc):
                log.error("IPC connection %s failed: %r", peer, exc, exc_info=exc)
        finally:
            conn.close()
            self.connections -= 1
            if peer.pid is not None:
                self.by_process[peer.pid] -= 1
                if self.by_process[peer.pid] <= 0:
                    del self.by_process[peer.pid]
            await trio.aclose_forcefully(stream)
            log.info("IPC connection closed: %s (%d open)", peer, self.connections)

    async def _read_requests(self, conn: _Connection) -> None:
        decoder = LineDecoder(self.max_frame_bytes)
        while True:
            data = await conn.stream.receive_some(READ_CHUNK)
            if not data:
                return
            conn.rest()  # bytes are activity (a frame begun); a whole frame makes it busy
            for frame in decoder.feed(data):
                await conn.space.acquire()  # at most inflight unanswered: then stop reading
                slot = self._admit(frame, conn)
                if slot.reply is not None:
                    await self._flush(conn)

    def _admit(self, frame: bytes | None, conn: _Connection) -> _Slot:
        slot = _Slot(time.perf_counter_ns())
        conn.slots.append(slot)
        conn.busy()
        if frame is TOO_LONG:
            self._answer(
                slot,
                conn,
                rejected(
                    None,
                    Reason.INVALID_FRAME,
                    f"frame longer than {self.max_frame_bytes} bytes; discarded",
                ),
            )
            return slot
        decoded = decode_frame(frame, self.secret)
        if isinstance(decoded, FrameProblem):
            self._answer(
                slot,
                conn,
                rejected(decoded.request_id, decoded.reason, decoded.message, decoded.signal_id),
            )
            return slot
        slot.message_type = type(decoded).__name__.upper()
        slot.message = decoded
        busy = None
        if not self.admitting:
            busy = (
                "the service is stopping: nothing was done; retry with the same ids once it is back"
            )
        elif self.pending >= self.max_pending:
            busy = f"{self.pending} requests in progress; retry shortly"
        if busy is not None:
            signal_id = getattr(decoded, "signal_id", None)
            self._answer(slot, conn, rejected(decoded.id, Reason.BUSY, busy, signal_id))
            return slot
        job = self.handler.admit(decoded)
        self.pending += 1
        # Jobs run in the listener's nursery: a client that hangs up mid-request does not
        # cancel an order on its way to the exchange; only the reply is lost.
        assert self._jobs is not None
        self._jobs.start_soon(self._run_job, job, slot, decoded, conn)
        return slot

    async def _run_job(self, job: Job, slot: _Slot, message: Message, conn: _Connection) -> None:
        try:
            reply = await job()
        except Exception:
            log.exception("IPC request %r failed inside the service", message.id)
            reply = rejected(
                message.id,
                Reason.BUSY,
                "the service failed to handle this request (logged); retrying "
                "with the same ids is safe",
                getattr(message, "signal_id", None),
            )
        finally:
            self.pending -= 1
        self._answer(slot, conn, reply)
        await self._flush(conn)

    def _answer(self, slot: _Slot, conn: _Connection, reply: Reply) -> None:
        """Every reply to a request is made here: a refusal is logged (rate-limited) when
        it is made, whether or not the client is still there to read it."""
        slot.finish(reply)
        if reply.status is not Status.REJECTED:
            return
        message = slot.message
        self.refusals.refused(
            slot.message_type or "frame",
            reply,
            conn.peer,
            symbol=getattr(message, "symbol", None),
            source=getattr(message, "source", None),
        )

    async def _flush(self, conn: _Connection) -> None:
        """Write the finished replies at the head of the connection's queue, in request
        order, from the task that finished one: no hand-over to a writer task, so a
        reply goes out as soon as it and every reply before it are ready. If another task
        is writing, it picks ours up when its write returns."""
        if conn.writing:
            return
        conn.writing = True
        try:
            while conn.alive and conn.slots and conn.slots[0].reply is not None:
                slot = conn.slots.popleft()
                reply = slot.reply
                assert reply is not None
                reply.latency_us = (time.perf_counter_ns() - slot.received_ns) // 1000
                with trio.move_on_after(WRITE_TIMEOUT_S) as timeout:
                    try:
                        await conn.stream.send_all(encode_reply(reply))
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        conn.close()  # the peer went away: stop reading too
                        return
                if timeout.cancelled_caught:
                    log.warning(
                        "IPC client did not read its replies for %.0f s; dropped", WRITE_TIMEOUT_S
                    )
                    conn.close()
                    return
                conn.space.release()
                self._observe(slot.message_type, reply)
        finally:
            conn.writing = False
            if not conn.slots:
                conn.drained.set()
                conn.rest()

    def _observe(self, message_type: str | None, reply: Reply) -> None:
        if self.observer is not None:
            self.observer(message_type, reply)


def _only_disconnects(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_disconnects(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError))
