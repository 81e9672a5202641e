"""The IPC listener alone in a process with almost no file descriptors left, for tests
that need a real EMFILE without lowering the descriptor limit of pytest itself.

``python -m tests.ipc.listener_process SOCKET_PATH SPARE`` serves ``Echo`` (PING answers
pong) on SOCKET_PATH, then lowers its own RLIMIT_NOFILE so that only SPARE more
descriptors can be opened, prints ``ready <free descriptors>`` and serves until it is
terminated. Log lines go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys

import trio

from ipc.listener import IpcListener
from tests.descriptor_limit import limit_descriptors
from tests.ipc.test_listener import Echo


async def main(path: str, spare: int) -> None:
    listener = IpcListener(
        path, 0o600, Echo(), max_connections=1000, max_connections_per_process=1000
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(listener.run)
        print("ready", limit_descriptors(os.getpid(), spare), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    trio.run(main, sys.argv[1], int(sys.argv[2]))
