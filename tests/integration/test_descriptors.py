"""The service as a process that runs out of file descriptors (issue #8, defect 12): its
descriptor limit is lowered once it is healthy, then the IPC socket and the HTTP API are
flooded with more connections than it has descriptors for. It must stay up, keep
answering the IPC connection it already had, answer both again once the flood is gone,
and close idle HTTP keep-alive connections after ``api.keepAliveTimeoutS``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import free_port
from tests.descriptor_limit import limit_descriptors
from tests.helpers import eventually
from tests.integration.test_process import spawn, stop, wait_healthy
from tests.ipc.wire import Wire

pytestmark = pytest.mark.slow
SPARE = 12  # descriptors left to the service: fewer than ipc.maxConnections (16)
IPC_MAX_CONNECTIONS = 16  # the default: IPC connections are refused beyond it
EXTRA = 10  # IPC connections beyond the descriptors left
HTTP_FLOOD = 80  # more than api.maxConnections (64); fewer than the listen backlog (100)
KEEP_ALIVE_S = 0.5
LIMIT_S = 10.0  # bound on each wait
REQUEST = b"GET /api/health HTTP/1.1\r\nHost: titan\r\n\r\n"


async def ping(wire: Wire, rid: str) -> str:
    return (await wire.request({"type": "PING", "id": rid}))["status"]


async def test_service_survives_a_descriptor_flood_on_both_sockets(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    port = free_port()
    config = config_file(
        api={"port": port, "keepAliveTimeoutS": KEEP_ALIVE_S},
        # The flood comes from this one process: let it take every slot, as before.
        ipc={"maxConnectionsPerProcess": IPC_MAX_CONNECTIONS},
    )
    socket_path = str(tmp_path / "titan-ipc.sock")
    log_file = tmp_path / "logs" / "titan-execution.log"

    def logged(text: str) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"service exited ({proc.returncode}):\n{log_file.read_text()}")
        return text in log_file.read_text()

    proc = spawn(config, tmp_path)
    try:
        await trio.to_thread.run_sync(wait_healthy, port, proc)
        async with await Wire.connect(socket_path) as steady:
            assert await ping(steady, "before") == "pong"
            free = limit_descriptors(proc.pid, SPARE)
            # Fewer descriptors than IPC connections allowed: EMFILE comes first.
            assert free < IPC_MAX_CONNECTIONS, free

            ipc_flood = [await trio.open_unix_socket(socket_path) for _ in range(free + EXTRA)]
            http_flood: list[trio.SocketStream] = []
            try:
                await eventually(
                    lambda: logged("IPC listener cannot accept connections: EMFILE"), LIMIT_S
                )
                for _ in range(HTTP_FLOOD):  # keep-alive requests, left idle
                    stream = await trio.open_tcp_stream("127.0.0.1", port)
                    http_flood.append(stream)
                    await stream.send_all(REQUEST)
                await eventually(
                    lambda: logged("ops API cannot accept connections: EMFILE"), LIMIT_S
                )
                assert await ping(steady, "during") == "pong"
                assert proc.poll() is None
            finally:
                for stream in ipc_flood + http_flood:
                    await stream.aclose()

            await eventually(lambda: logged("IPC listener accepts connections again"), LIMIT_S)
            await eventually(lambda: logged("ops API accepts connections again"), LIMIT_S)
            async with await Wire.connect(socket_path) as fresh:
                assert await ping(fresh, "after") == "pong"
            assert await ping(steady, "still") == "pong"
        # One WARNING per listener for the episode, not one per failed accept.
        assert log_file.read_text().count("cannot accept connections") == 2
        async with httpx.AsyncClient(timeout=LIMIT_S) as client:
            health = await client.get(f"http://127.0.0.1:{port}/api/health")
        assert health.status_code == 200, health.text

        # An answered keep-alive connection left idle is closed by the service.
        received = b""
        with trio.fail_after(KEEP_ALIVE_S + LIMIT_S):
            async with await trio.open_tcp_stream("127.0.0.1", port) as idle:
                await idle.send_all(REQUEST)
                while chunk := await idle.receive_some():
                    received += chunk
        assert received.startswith(b"HTTP/1.1 200")
    finally:
        code, _took, out = await trio.to_thread.run_sync(stop, proc)
    assert code == 0, out
    assert "Traceback" not in out
