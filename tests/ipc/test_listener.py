"""The IPC listener on a real Unix socket (SPEC §5), with small handlers instead of the
service: the socket file's life (mode, stale file, live owner, not-a-socket, removal),
per-connection framing and ordering, BUSY under load, and garbage that must never crash
it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipc.listener import IpcError, IpcListener, Job, rejected
from ipc.protocol import Message, Ping, Reason, Reply, Status
from ipc.refusals import BURST, RefusalLog
from ipc.socket_file import PathState
from tests.helpers import eventually
from tests.ipc.wire import Wire, frame

LIMIT_S = 5.0


class Echo:
    """PING answers pong; anything else is 'aborted' with its id. Jobs may be delayed."""

    def __init__(self, delay: Callable[[Message], float] = lambda m: 0.0) -> None:
        self.delay = delay
        self.admitted: list[Message] = []

    def admit(self, message: Message) -> Job:
        self.admitted.append(message)

        async def job() -> Reply:
            await trio.sleep(self.delay(message))
            status = Status.PONG if isinstance(message, Ping) else Status.ABORTED
            return Reply(message.id, status)

        return job


class Blocking:
    """Every job waits for ``release``."""

    def __init__(self) -> None:
        self.release = trio.Event()

    def admit(self, message: Message) -> Job:
        async def job() -> Reply:
            await self.release.wait()
            return Reply(message.id, Status.PONG)

        return job


class Failing:
    """A job that fails inside the service for ids starting with 'boom'."""

    def admit(self, message: Message) -> Job:
        async def job() -> Reply:
            if str(message.id).startswith("boom"):
                raise RuntimeError("handler bug")
            return Reply(message.id, Status.PONG)

        return job


@asynccontextmanager
async def serving(
    path: Path, handler: Any = None, mode: int = 0o600, **options: Any
) -> AsyncIterator[IpcListener]:
    listener = IpcListener(str(path), mode, handler or Echo(), **options)
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        yield listener
        nursery.cancel_scope.cancel()


def ping(rid: str | int) -> dict[str, Any]:
    return {"type": "PING", "id": rid}


async def assert_pong(path: Path, rid: str = "alive") -> None:
    async with await Wire.connect(str(path)) as wire:
        reply = await wire.request(ping(rid))
    assert (reply["id"], reply["status"]) == (rid, "pong")


# ----- the socket file ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o660])
async def test_socket_is_created_with_the_requested_mode(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "titan.sock"
    old_umask = os.umask(0o002)  # a permissive umask must not widen the socket
    try:
        async with serving(path, mode=mode):
            st_mode = os.stat(path).st_mode
            assert stat.S_ISSOCK(st_mode)
            assert stat.S_IMODE(st_mode) == mode
            await assert_pong(path)
    finally:
        os.umask(old_umask)


async def test_a_deleted_socket_file_is_made_again_and_old_connections_carry_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path) as listener, await Wire.connect(str(path)) as before:
        os.unlink(path)  # a clean-up job, or a careless operator
        assert listener.path_state() is PathState.MISSING  # health sees it at once
        with caplog.at_level(logging.WARNING, logger="titan.ipc"):
            await eventually(lambda: listener.path_state() is PathState.OURS, LIMIT_S)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        await assert_pong(path, "new")  # strategies reach the service again
        assert (await before.request(ping("old")))["status"] == "pong"
    assert any("was deleted" in r.getMessage() for r in caplog.records)


async def test_something_else_put_at_the_path_is_reported_and_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path) as listener:
        os.unlink(path)
        path.write_text("not ours")  # before the listener looked again
        with caplog.at_level(logging.ERROR, logger="titan.ipc"):
            await eventually(
                lambda: any("no longer this service" in r.getMessage() for r in caplog.records),
                LIMIT_S,
            )
        assert listener.path_state() is PathState.REPLACED
        assert path.read_text() == "not ours"
        path.unlink()  # the operator clears it: the socket comes back
        await eventually(lambda: listener.path_state() is PathState.OURS, LIMIT_S)
        await assert_pong(path)
    assert path.exists() is False  # removed at the end: it was ours again


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays behind, as after kill -9
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    async with serving(path):
        await assert_pong(path)


async def test_socket_of_a_live_listener_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path):
        second = IpcListener(str(path), 0o600, Echo())
        with trio.fail_after(LIMIT_S), pytest.raises(IpcError, match="another process"):
            await second.run()
        # The first instance still owns its socket and answers.
        await assert_pong(path)


async def test_regular_file_at_the_path_is_kept_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    path.write_text("precious data")
    listener = IpcListener(str(path), 0o600, Echo())
    with trio.fail_after(LIMIT_S), pytest.raises(IpcError, match="not a socket"):
        await listener.run()
    assert path.read_text() == "precious data"


async def test_socket_file_is_removed_on_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path) as listener:
        assert path.exists()
        assert listener.listening
    assert not path.exists()
    assert not listener.listening


async def test_old_instance_stopping_does_not_remove_the_new_socket(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    async with trio.open_nursery() as outer:
        old = IpcListener(str(path), 0o600, Echo())
        old_scope = trio.CancelScope()

        async def run_old(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with old_scope:
                await old.run(task_status=task_status)

        await outer.start(run_old)
        os.unlink(path)
        new = IpcListener(str(path), 0o600, Echo())
        await outer.start(new.run)
        old_scope.cancel()
        with trio.fail_after(LIMIT_S):
            while old.listening:  # noqa: ASYNC110 - waiting for another task's cleanup
                await trio.sleep(0.001)
        assert path.exists(), "the old instance removed the new instance's socket"
        await assert_pong(path, "new")
        outer.cancel_scope.cancel()


# ----- framing and ordering on one connection -------------------------------------------


async def test_over_long_frame_in_pieces_gets_one_reply_and_the_connection_survives(
    tmp_path: Path,
) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path, max_frame_bytes=256), await Wire.connect(str(path)) as wire:
        for _ in range(10):  # 1000 bytes, arriving in separate reads
            await wire.send_raw(b'{"type":"PING","id":"' + b"x" * 100)
            await trio.sleep(0.002)
        await wire.send_raw(b'"}\n' + frame(ping("after")))
        first = await wire.reply()
        assert first["status"] == "rejected"
        assert first["reason"] == "INVALID_FRAME"
        assert "256" in first["message"]
        second = await wire.reply()
        assert (second["id"], second["status"]) == ("after", "pong")
        # nothing else was queued for the long frame
        assert (await wire.request(ping("again")))["id"] == "again"


async def test_crlf_frames_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path), await Wire.connect(str(path)) as wire:
        await wire.send_raw(b'{"type":"PING","id":"crlf"}\r\n')
        assert (await wire.reply())["id"] == "crlf"


async def test_replies_come_in_request_order_even_when_work_finishes_out_of_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "titan.sock"
    handler = Echo(delay=lambda m: 0.03 if int(m.id) % 2 == 0 else 0.0)
    async with serving(path, handler), await Wire.connect(str(path)) as wire:
        await wire.send(*[ping(i) for i in range(10)])
        replies = await wire.replies(10)
    assert [r["id"] for r in replies] == list(range(10))
    # They ran concurrently: ten 30 ms jobs would take 150 ms one after another.
    assert max(r["latency_us"] for r in replies) < 140_000


async def test_half_closed_client_still_gets_its_replies(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path), await Wire.connect(str(path)) as wire:
        await wire.send(ping("a"), ping("b"))
        await wire.stream.send_eof()
        assert [r["id"] for r in await wire.replies(2)] == ["a", "b"]
        assert await wire.at_eof()


async def test_failing_handler_gets_a_rejection_and_the_connection_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path, Failing()), await Wire.connect(str(path)) as wire:
        await wire.send(ping("boom-1"), ping("fine"))
        failed, fine = await wire.replies(2)
    assert (failed["id"], failed["status"]) == ("boom-1", "rejected")
    assert failed["reason"] and failed["message"]
    assert (fine["id"], fine["status"]) == ("fine", "pong")


# ----- load -----------------------------------------------------------------------------


async def test_busy_when_max_pending_requests_are_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    handler = Blocking()
    async with (
        serving(path, handler, max_pending=1) as listener,
        await Wire.connect(str(path)) as first,
        await Wire.connect(str(path)) as second,
    ):
        await first.send(ping("slow"))
        with trio.fail_after(LIMIT_S):
            while listener.pending < 1:  # noqa: ASYNC110 - the request crosses a socket
                await trio.sleep(0.001)
        busy = await second.request(ping("refused"))
        assert busy["status"] == "rejected"
        assert busy["reason"] == "BUSY"
        assert busy["id"] == "refused"
        assert busy["message"]
        handler.release.set()
        assert (await first.reply())["id"] == "slow"
        # with the slot free again, the second connection is served
        assert (await second.request(ping("later")))["status"] == "pong"


# ----- idle connections and one process's share ----------------------------------------

IDLE_S = 300.0


async def test_idle_connection_is_closed_after_the_timeout_with_a_warning(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "titan.sock"
    caplog.set_level(logging.INFO, logger="titan.ipc")
    async with (
        serving(path, idle_timeout_s=IDLE_S) as listener,
        await Wire.connect(str(path)) as wire,
    ):
        assert (await wire.request(ping("hello")))["status"] == "pong"
        answered = trio.current_time()
        assert await wire.at_eof(within_s=2 * IDLE_S)
        assert IDLE_S <= trio.current_time() - answered < IDLE_S + 1
        await eventually(lambda: listener.connections == 0)
    [warning] = [r for r in caplog.records if "idle" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert f"pid {os.getpid()} uid {os.getuid()}" in warning.getMessage()
    assert "ipc.idleTimeoutS" in warning.getMessage()


async def test_bytes_of_a_frame_keep_a_connection_open(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path, idle_timeout_s=IDLE_S), await Wire.connect(str(path)) as wire:
        for piece in (b'{"type":"PING",', b'"id":', b'"slow-typist"}'):
            await trio.sleep(IDLE_S - 1)
            await wire.send_raw(piece)
        await trio.sleep(IDLE_S - 1)
        assert (await wire.request(b""))["id"] == "slow-typist"


async def test_a_connection_waiting_for_its_reply_is_not_idle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "titan.sock"
    handler = Blocking()
    async with (
        serving(path, handler, idle_timeout_s=IDLE_S),
        await Wire.connect(str(path)) as wire,
    ):
        await wire.send(ping("slow"))
        await trio.sleep(3 * IDLE_S)  # the request is still being handled
        handler.release.set()
        assert (await wire.reply())["id"] == "slow"
        # The idle time counts from the reply.
        answered = trio.current_time()
        assert await wire.at_eof(within_s=2 * IDLE_S)
        assert IDLE_S <= trio.current_time() - answered < IDLE_S + 1


async def test_a_connection_whose_replies_are_being_written_is_not_idle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "titan.sock"
    idle_s = 2.0  # shorter than the write timeout: the replies wait in the socket meanwhile
    count = 20_000  # more replies than the socket buffers hold: the service is mid-write
    async with serving(path, idle_timeout_s=idle_s), await Wire.connect(str(path)) as wire:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wire.send_raw, b"".join(frame(ping(i)) for i in range(count)))
            await trio.sleep(3 * idle_s)  # reading nothing meanwhile
            replies = await wire.replies(count, within_s=60)
        assert [r["id"] for r in replies] == list(range(count))


ANOTHER_PROCESS = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5)
sock.connect(sys.argv[1])
sock.sendall(b'{"type":"PING","id":"other"}\\n')
reply = b""
while not reply.endswith(b"\\n"):
    chunk = sock.recv(4096)
    if not chunk:
        break
    reply += chunk
print(reply.decode())
"""


async def test_one_process_cannot_take_every_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "titan.sock"
    caplog.set_level(logging.WARNING, logger="titan.ipc")
    async with serving(path, max_connections=4, max_connections_per_process=2) as listener:
        first, second = await Wire.connect(str(path)), await Wire.connect(str(path))
        for wire in (first, second):
            assert (await wire.request(ping("in")))["status"] == "pong"
        async with await Wire.connect(str(path)) as third:
            refused = await third.reply()
            assert (refused["status"], refused["reason"]) == ("rejected", "MAX_CONNECTIONS")
            assert "ipc.maxConnectionsPerProcess" in refused["message"], refused
            assert await third.at_eof()
        [warning] = [r for r in caplog.records if "refused connection" in r.getMessage()]
        assert warning.levelno == logging.WARNING
        assert f"pid={os.getpid()} uid={os.getuid()}" in warning.getMessage()
        # The slots this process may not take are there for another one.
        done = await trio.run_process(
            [sys.executable, "-c", ANOTHER_PROCESS, str(path)], capture_stdout=True
        )
        other = json.loads(done.stdout)
        assert (other["id"], other["status"]) == ("other", "pong")
        # Its own share comes back as its connections close.
        await second.aclose()
        await eventually(lambda: listener.connections == 1)
        async with await Wire.connect(str(path)) as again:
            assert (await again.request(ping("again")))["status"] == "pong"
        await first.aclose()


# ----- refusals in the log --------------------------------------------------------------


class Refusing:
    """Every request is refused EXPIRED once ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()

    def admit(self, message: Message) -> Job:
        async def job() -> Reply:
            await self.release.wait()
            return rejected(
                message.id, Reason.EXPIRED, "too old", getattr(message, "signal_id", None)
            )

        return job


def refusal_lines(caplog: pytest.LogCaptureFixture, text: str = "") -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "titan.ipc" and r.getMessage().startswith("refused") and text in r.getMessage()
    ]


async def test_every_refusal_is_logged_once_and_a_flood_is_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "titan.sock"
    caplog.set_level(logging.INFO, logger="titan.ipc")
    listener = IpcListener(str(path), 0o600, Echo())
    # No refill during the test, whatever the machine's speed: the burst is all there is.
    listener.refusals = RefusalLog(logging.getLogger("titan.ipc"), per_second=1e-6)
    flood = 1000
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        async with await Wire.connect(str(path)) as garbage, await Wire.connect(str(path)) as other:
            await garbage.send_raw(b"not json\n" * flood)
            replies = await garbage.replies(flood)
            assert {r["reason"] for r in replies} == {"INVALID_FRAME"}
            bad = {"type": "PREPARE", "id": "p1", "signal_id": "sig-9", "symbol": "BTCUSDT"}
            assert (await other.request(bad))["reason"] == "INVALID_SIGNAL"
        nursery.cancel_scope.cancel()
    floods = refusal_lines(caplog, "reason=INVALID_FRAME")
    assert len(floods) == BURST
    assert all(r.levelno == logging.WARNING for r in floods)
    assert f"pid={os.getpid()} uid={os.getuid()}" in floods[0].getMessage()
    [line] = refusal_lines(caplog, "reason=INVALID_SIGNAL")
    assert line.levelno == logging.INFO
    assert "signal=sig-9" in line.getMessage() and "request=p1" in line.getMessage()
    assert "missing required field" in line.getMessage()


async def test_a_refusal_is_logged_even_when_its_client_has_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "titan.sock"
    caplog.set_level(logging.INFO, logger="titan.ipc")
    handler = Refusing()
    async with serving(path, handler) as listener:
        async with await Wire.connect(str(path)) as wire:
            await wire.send({"type": "CONFIRM", "id": "c1", "signal_id": "sig-gone"})
            await eventually(lambda: listener.pending == 1)
        handler.release.set()  # the client hung up before its answer was made
        await eventually(lambda: refusal_lines(caplog, "signal=sig-gone"))
    [line] = refusal_lines(caplog)
    assert line.getMessage().startswith("refused CONFIRM reason=EXPIRED signal=sig-gone")


# ----- bugs -----------------------------------------------------------------------------


async def test_client_that_disconnects_without_reading_does_not_stop_the_listener(
    tmp_path: Path,
) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path):
        rude = await Wire.connect(str(path))
        await rude.send(ping("never-read"))
        await rude.aclose()
        await trio.sleep(0.05)
        await assert_pong(path)


async def test_invalid_utf8_inside_a_string_is_rejected_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    async with serving(path), await Wire.connect(str(path)) as wire:
        reply = await wire.request(b'{"type":"\xff"}')
        assert (reply["status"], reply["reason"]) == ("rejected", "INVALID_FRAME")
        await assert_pong(path)


# ----- garbage never crashes it ---------------------------------------------------------

fragments = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"\n",
            b"\r\n",
            b"\r",
            b"\xff\xfe",
            b"{",
            b"}",
            b"[1,2]",
            b'"',
            b"x" * 300,  # longer than the frame limit on its own
            b'{"type":"PING","id":"inner"}',
            b'{"type":"NOPE","id":1}',
            b'{"type":"CONFIRM","id":3,"signal_id":"s"}',
        ]
    ),
)


async def test_arbitrary_bytes_in_arbitrary_pieces_never_break_the_listener(
    tmp_path: Path,
) -> None:
    path = tmp_path / "titan.sock"
    examples = 0

    async def one_example(pieces: list[bytes]) -> None:
        nonlocal examples
        examples += 1
        garbage = b"".join(pieces) + b"\n"  # end the last line, whatever it was
        lines = garbage.count(b"\n")
        final = f"final-{examples}"
        async with await Wire.connect(str(path)) as wire:
            for piece in pieces:
                await wire.send_raw(piece)
                await trio.lowlevel.checkpoint()
            await wire.send_raw(b"\n" + frame(ping(final)))
            replies = []
            with trio.fail_after(LIMIT_S):
                while not replies or replies[-1].get("id") != final:
                    replies.append(await wire.reply())
        *for_garbage, last = replies
        assert last["status"] == "pong"
        assert len(for_garbage) == lines, "every complete line gets exactly one reply"
        for reply in for_garbage:
            assert reply["status"] in ("rejected", "pong", "aborted")
            assert isinstance(reply["latency_us"], int)
            if reply["status"] == "rejected":
                assert reply["reason"] and reply["message"]

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(pieces=st.lists(fragments, max_size=12))
    def check(pieces: list[bytes]) -> None:
        trio.from_thread.run(one_example, pieces)

    async with serving(path, max_frame_bytes=128) as listener:
        await trio.to_thread.run_sync(check)
        assert examples >= 50
        await assert_pong(path)
        with trio.fail_after(LIMIT_S):
            while listener.connections:  # noqa: ASYNC110 - closing crosses a socket
                await trio.sleep(0.001)


async def test_a_socket_directory_that_is_gone_is_not_logged_every_second(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    listener = IpcListener(str(run_dir / "titan.sock"), 0o600, Echo())
    caplog.set_level(logging.WARNING, logger="titan.ipc")
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        shutil.rmtree(run_dir)
        await trio.sleep(3600)  # an hour
        nursery.cancel_scope.cancel()
    lines = [r for r in caplog.records if r.name == "titan.ipc"]
    assert [r.levelname for r in lines] == ["WARNING", "ERROR"], [r.getMessage() for r in lines]
