"""With the defaults (maxConnections 16, maxConnectionsPerProcess 8), two processes
holding all they may (a strategy leaking connections and a fork of it, kept alive by
PINGs) still leave the last slots to a process that holds none: the next strategy gets
in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio

from ipc.listener import IpcListener
from ipc.protocol import Message, Reply, Status

HOLDER = """
import socket, sys, time
socks = []
for _ in range(8):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(sys.argv[1]); socks.append(s)
print("held", flush=True)
sys.stdin.read()
"""
OTHER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(5); s.connect(sys.argv[1])
s.sendall(b'{"type":"PING","id":"strategy"}\\n')
print(s.recv(4096).decode())
"""


class Echo:
    def admit(self, message: Message):  # type: ignore[no-untyped-def]
        async def job() -> Reply:
            return Reply(message.id, Status.PONG)

        return job


async def test_two_processes_cannot_lock_every_other_strategy_out(tmp_path: Path) -> None:
    path = str(tmp_path / "titan.sock")
    listener = IpcListener(path, 0o600, Echo())  # the service's defaults
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        holders = [
            subprocess.Popen(  # noqa: ASYNC220 - held open during the test
                [sys.executable, "-c", HOLDER, path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for h in holders:
            assert (await trio.to_thread.run_sync(h.stdout.readline)).strip() == "held"
        done = await trio.run_process([sys.executable, "-c", OTHER, path], capture_stdout=True)
        reply = json.loads(done.stdout)
        for h in holders:
            h.stdin.close()
            h.wait(5)
        nursery.cancel_scope.cancel()
    assert reply["status"] == "pong", reply
