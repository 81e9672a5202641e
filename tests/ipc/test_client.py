"""The IPC client library (``ipc/client.py``) against the real service in-process, and
against tiny fake servers for the failures a real service does not produce on demand
(silence, a dropped connection, replies split across reads).

Also keeps ``ipc/PROTOCOL.md`` honest: its signed-frame test vector is checked here."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from ipc.client import (
    IpcConnectError,
    IpcConnectionLost,
    IpcTimeout,
    SignalClient,
    TrioSignalClient,
)
from ipc.protocol import Ping, Reason, Reply, Status, decode_frame, encode_message, sign
from tests.helpers import eventually, service
from titan_trio.config import Config
from titan_trio.engine import Engine

PROTOCOL_MD = Path(__file__).parents[2] / "ipc" / "PROTOCOL.md"
SECRET = "x" * 40


def long_signal(engine: Engine, symbol: str) -> dict[str, Any]:
    """PREPARE arguments for a LONG at the touch: zone ±0.2 %, stop 0.6 % below."""
    quote = engine.hub.book.get(symbol)
    assert quote is not None
    ask = float(quote.ask)
    return {
        "symbol": symbol,
        "direction": "LONG",
        "entry_zone": (ask * 0.998, ask * 1.002),
        "stop_loss": ask * 0.994,
        "take_profits": [ask * 1.01, ask * 1.02],
        "confidence": 80,
        "leverage": 10,
        "source": "test",
    }


ENTRY_ATTEMPTS = 5


async def enter(
    send: Callable[..., Awaitable[Reply]], engine: Engine, symbol: str, prefix: str
) -> str:
    """PREPARE and CONFIRM a LONG until it fills; its signal id. ``send(method, *args,
    **kwargs)`` calls a client method. The entry is an IOC limit at the touch read before
    the order is journaled, so a tick in between can cancel it unfilled (``accepted``,
    ``CANCELED``): then try again under a new signal id, as a strategy would."""
    for attempt in range(ENTRY_ATTEMPTS):
        signal_id = f"{prefix}-{attempt}"
        prepared = await send("prepare", signal_id, **long_signal(engine, symbol))
        assert prepared.status == Status.PREPARED, prepared
        assert prepared.signal_id == signal_id
        assert Decimal(prepared.size or "0") > 0
        accepted = await send("confirm", signal_id)
        assert accepted.status == Status.ACCEPTED, accepted
        assert accepted.client_order_id and accepted.client_order_id.startswith("tte")
        if Decimal(accepted.filled_qty or "0") > 0:
            await eventually(lambda: symbol in engine.shadow.positions)
            return signal_id
    raise AssertionError(f"no fill in {ENTRY_ATTEMPTS} entries on {symbol}")


def trio_sender(client: TrioSignalClient) -> Callable[..., Awaitable[Reply]]:
    async def send(method: str, *args: Any, **kwargs: Any) -> Reply:
        reply: Reply = await getattr(client, method)(*args, **kwargs)
        return reply

    return send


def thread_sender(client: SignalClient) -> Callable[..., Awaitable[Reply]]:
    async def send(method: str, *args: Any, **kwargs: Any) -> Reply:
        call = getattr(client, method)
        reply: Reply = await trio.to_thread.run_sync(lambda: call(*args, **kwargs))
        return reply

    return send


# ----- the document ---------------------------------------------------------------------


def test_protocol_md_test_vector_matches_sign() -> None:
    text = PROTOCOL_MD.read_text()
    block = re.search(r"```test-vector\n(.*?)```", text, re.DOTALL)
    assert block is not None, "PROTOCOL.md has no ```test-vector block"
    vector = dict(line.split(": ", 1) for line in block.group(1).strip().splitlines())
    assert set(vector) == {"secret", "payload", "signature", "frame"}
    secret, payload = vector["secret"], vector["payload"]
    assert len(secret) >= 32  # a secret the service accepts
    assert sign(payload, secret) == vector["signature"]
    # independently of ipc.protocol: HMAC-SHA256 over the payload's UTF-8 bytes
    expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    assert vector["signature"] == expected
    assert json.loads(vector["frame"]) == {"payload": payload, "sig": vector["signature"]}
    frame = vector["frame"].encode()
    assert encode_message(json.loads(payload), secret) == frame + b"\n"
    assert decode_frame(frame, secret) == Ping(id=json.loads(payload)["id"])


def test_client_module_imports_neither_the_service_nor_trio() -> None:
    code = (
        "import sys, ipc.client; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('titan_trio', 'trio')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


# ----- the trio client against the service ----------------------------------------------


async def test_trio_client_round_trips(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    async with service(cfg) as engine:
        async with TrioSignalClient.open(cfg.ipc.socket_path) as client:
            pong = await client.ping()
            assert pong.status == Status.PONG
            assert pong.trading_state == "ACTIVE"

            signal_id = await enter(trio_sender(client), engine, "BTCUSDT", "t")

            closed = await client.close("t-exit", "BTCUSDT", reason="test done")
            assert closed.status == Status.CLOSED, closed
            assert closed.client_order_id and closed.client_order_id.startswith("ttc")
            await eventually(lambda: "BTCUSDT" not in engine.shadow.positions)

            again = await client.confirm(signal_id)
            assert again.status == Status.REJECTED
            assert again.reason == Reason.DUPLICATE_SIGNAL


async def test_trio_client_abort_and_rejections(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    async with service(cfg) as engine:
        async with TrioSignalClient.open(cfg.ipc.socket_path) as client:
            assert (await client.prepare("a-1", **long_signal(engine, "ETHUSDT"))).status == (
                Status.PREPARED
            )
            assert (await client.abort("a-1")).status == Status.ABORTED
            unknown = await client.confirm("never-prepared")
            assert (unknown.status, unknown.reason) == (Status.REJECTED, Reason.UNKNOWN_SIGNAL)
            flat = await client.close("c-1", "SOLUSDT")
            assert (flat.status, flat.reason) == (Status.REJECTED, Reason.INVALID_SIGNAL)


async def test_concurrent_requests_on_one_connection_get_their_own_replies(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config()
    async with service(cfg) as engine:
        async with TrioSignalClient.open(cfg.ipc.socket_path) as client:
            results: dict[str, Any] = {}

            async def ping(n: int) -> None:
                results[f"ping-{n}"] = await client.request({"type": "PING", "id": f"ping-{n}"})

            async def bad(n: int) -> None:
                # an id the service cannot read: its reply has id null, matched by order
                results[f"bad-{n}"] = await client.request({"type": "PING", "id": True})

            async def prepare(symbol: str) -> None:
                results[symbol] = await client.prepare(f"c-{symbol}", **long_signal(engine, symbol))

            async with trio.open_nursery() as nursery:
                for n in range(30):
                    nursery.start_soon(ping, n)
                for n in range(5):
                    nursery.start_soon(bad, n)
                for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
                    nursery.start_soon(prepare, symbol)

            for n in range(30):
                reply = results[f"ping-{n}"]
                assert (reply.id, reply.status) == (f"ping-{n}", Status.PONG)
            for n in range(5):
                reply = results[f"bad-{n}"]
                assert (reply.id, reply.status) == (None, Status.REJECTED)
            for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
                reply = results[symbol]
                assert reply.status == Status.PREPARED, reply
                assert (reply.signal_id, reply.symbol) == (f"c-{symbol}", symbol)


# ----- the blocking client against the service ------------------------------------------


async def test_blocking_client_round_trips_in_a_thread(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    async with service(cfg) as engine:
        client = SignalClient(cfg.ipc.socket_path)
        send = thread_sender(client)
        try:
            assert (await send("ping")).status == Status.PONG
            await enter(send, engine, "SOLUSDT", "s")
            closed = await send("close", "s-exit", "SOLUSDT")
            assert closed.status == Status.CLOSED, closed
            await eventually(lambda: "SOLUSDT" not in engine.shadow.positions)
            raw = await send("request", {"type": "PING", "id": 7})
            assert (raw.id, raw.status) == (7, Status.PONG)
        finally:
            client.disconnect()


async def test_blocking_clients_in_several_threads(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    async with service(cfg):
        shared = SignalClient(cfg.ipc.socket_path)
        replies: list[Any] = []

        def pings(client: SignalClient) -> None:
            replies.extend(client.ping() for _ in range(20))

        own = SignalClient(cfg.ipc.socket_path)
        try:
            async with trio.open_nursery() as nursery:
                for _ in range(4):  # serialised on one connection
                    nursery.start_soon(trio.to_thread.run_sync, pings, shared)
                nursery.start_soon(trio.to_thread.run_sync, pings, own)
        finally:
            shared.disconnect()
            own.disconnect()
        assert len(replies) == 100
        assert {r.status for r in replies} == {Status.PONG}
        assert len({r.id for r in replies}) == 100


# ----- signed frames --------------------------------------------------------------------


async def test_signed_mode_right_and_wrong_secret(make_config: Callable[..., Config]) -> None:
    cfg = make_config(ipc={"hmacSecret": SECRET})
    async with service(cfg) as engine:
        async with TrioSignalClient.open(cfg.ipc.socket_path, secret=SECRET) as client:
            assert (await client.ping()).status == Status.PONG
            prepared = await client.prepare("h-1", **long_signal(engine, "BTCUSDT"))
            assert prepared.status == Status.PREPARED, prepared
        async with TrioSignalClient.open(cfg.ipc.socket_path, secret="y" * 40) as client:
            wrong = await client.request({"type": "PING", "id": "wrong-1"})
            assert (wrong.id, wrong.status, wrong.reason) == (
                "wrong-1",
                Status.REJECTED,
                Reason.UNAUTHENTICATED,
            )
            assert wrong.message == "signature does not match the payload"
        async with TrioSignalClient.open(cfg.ipc.socket_path) as client:  # unsigned
            unsigned = await client.request({"type": "PING", "id": "unsigned-1"})
            assert (unsigned.id, unsigned.reason) == ("unsigned-1", Reason.UNAUTHENTICATED)
        with SignalClient(cfg.ipc.socket_path, secret=SECRET) as blocking:
            assert (await trio.to_thread.run_sync(blocking.ping)).status == Status.PONG
        with SignalClient(cfg.ipc.socket_path, secret="y" * 40) as blocking:
            wrong = await trio.to_thread.run_sync(blocking.ping)
            assert wrong.reason == Reason.UNAUTHENTICATED


# ----- reconnecting ---------------------------------------------------------------------


async def run_service_until_cancelled(
    cfg: Config, stopped: trio.Event, *, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    """The service in a scope of its own, so a test can stop it (and know it stopped)
    while its clients live on."""
    try:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(Engine(cfg).run)
                task_status.started(scope)
    finally:
        stopped.set()


async def test_both_clients_reconnect_after_the_service_restarts(
    make_config: Callable[..., Config],
) -> None:
    cfg = make_config()
    path = cfg.ipc.socket_path
    blocking = SignalClient(path, reconnect_attempts=2)
    try:
        async with trio.open_nursery() as nursery:
            stopped = trio.Event()
            first = await nursery.start(run_service_until_cancelled, cfg, stopped)
            async with TrioSignalClient.open(path, reconnect_attempts=2) as client:
                assert (await client.ping()).status == Status.PONG
                assert (await trio.to_thread.run_sync(blocking.ping)).status == Status.PONG
                first.cancel()
                await stopped.wait()
                # down: nothing is sent, and the caller is told so
                with pytest.raises(IpcConnectError):
                    await client.ping()
                with pytest.raises(IpcConnectError):
                    await trio.to_thread.run_sync(blocking.ping)
                second = await nursery.start(run_service_until_cancelled, cfg, trio.Event())
                assert (await client.ping()).status == Status.PONG
                assert (await trio.to_thread.run_sync(blocking.ping)).status == Status.PONG
                second.cancel()
    finally:
        blocking.disconnect()


async def test_blocking_client_reconnects_when_its_connection_was_closed(
    make_config: Callable[..., Config],
) -> None:
    """The service closed the connection between two calls (here: a restart while the
    client kept its old socket): the next call sees that before writing and reconnects."""
    cfg = make_config()
    client = SignalClient(cfg.ipc.socket_path)
    try:
        async with service(cfg):
            assert (await trio.to_thread.run_sync(client.ping)).status == Status.PONG
        async with service(cfg):
            assert (await trio.to_thread.run_sync(client.ping)).status == Status.PONG
    finally:
        client.disconnect()


# ----- failures the fake servers produce ------------------------------------------------


@asynccontextmanager
async def fake_server(
    path: str, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> AsyncIterator[None]:
    """A Unix-socket server running ``handler`` for each connection."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [listener])
        yield
        nursery.cancel_scope.cancel()


async def read_line(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


def silent_listener(path: str) -> socket.socket:
    """A socket that accepts connections (in the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(4)
    return sock


async def test_trio_client_times_out(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = str(tmp_path / "silent.sock")
    with silent_listener(path):
        async with TrioSignalClient.open(path, timeout=5.0) as client:
            with pytest.raises(IpcTimeout):
                await client.ping()
            with pytest.raises(IpcTimeout):
                await client.confirm("whatever")


def test_blocking_client_times_out(tmp_path: Path) -> None:
    path = str(tmp_path / "silent.sock")
    with silent_listener(path), SignalClient(path, timeout=0.2) as client:
        with pytest.raises(IpcTimeout):
            client.ping()


async def test_connection_lost_after_writing_is_not_resent(tmp_path: Path) -> None:
    """The server reads the request and hangs up: the client must raise, not resend."""
    path = str(tmp_path / "drop.sock")
    frames: list[bytes] = []

    async def hang_up(stream: trio.SocketStream) -> None:
        frames.append(await read_line(stream, bytearray()))
        await stream.aclose()

    async with fake_server(path, hang_up):
        async with TrioSignalClient.open(path) as client:
            with pytest.raises(IpcConnectionLost):
                await client.confirm("sig-1")
        assert len(frames) == 1
        blocking = SignalClient(path)
        try:
            with pytest.raises(IpcConnectionLost):
                await trio.to_thread.run_sync(blocking.confirm, "sig-2")
        finally:
            blocking.disconnect()
        assert len(frames) == 2
        assert [json.loads(f)["signal_id"] for f in frames] == ["sig-1", "sig-2"]


async def test_replies_split_across_reads_and_stale_replies(tmp_path: Path) -> None:
    """A reply arriving in pieces is reassembled; a reply for another id (a late one for
    an abandoned request) is skipped."""
    path = str(tmp_path / "split.sock")

    async def dribble(stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while True:
            try:
                request = json.loads(await read_line(stream, buffer))
            except EOFError:
                return
            reply = json.dumps({"id": request["id"], "status": "pong", "latency_us": 1})
            stale = json.dumps({"id": "someone-else", "status": "pong"})
            data = (stale + "\n" + reply + "\n").encode()
            for i in range(0, len(data), 7):
                await stream.send_all(data[i : i + 7])
                await trio.lowlevel.checkpoint()

    async with fake_server(path, dribble):
        async with TrioSignalClient.open(path) as client:
            for _ in range(3):
                reply = await client.ping()
                assert reply.status == Status.PONG and reply.id != "someone-else"
        with SignalClient(path) as blocking:
            for _ in range(3):
                reply = await trio.to_thread.run_sync(blocking.ping)
                assert reply.status == Status.PONG and reply.id != "someone-else"


async def test_unreachable_service_raises_connect_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.sock")
    with pytest.raises(IpcConnectError) as caught:
        async with TrioSignalClient.open(path, reconnect_attempts=1):
            pass
    assert caught.value.path == path
    with pytest.raises(IpcConnectError):
        await trio.to_thread.run_sync(SignalClient(path, reconnect_attempts=1).ping)


async def test_client_hanging_up_early_does_not_stop_the_service(
    make_config: Callable[..., Config],
) -> None:
    """What SignalClient does after a timeout: close with requests in flight."""
    cfg = make_config()
    async with service(cfg) as engine:
        stream = await trio.open_unix_socket(cfg.ipc.socket_path)
        frames = b"".join(
            encode_message({"type": "CONFIRM", "id": n, "signal_id": f"gone-{n}"})
            for n in range(20)
        )
        await stream.send_all(frames)
        await stream.aclose()  # before any reply: each needs a database look-up
        assert engine.ipc is not None
        await eventually(lambda: engine.ipc.connections == 0)
        async with TrioSignalClient.open(cfg.ipc.socket_path) as client:
            assert (await client.ping()).status == Status.PONG
