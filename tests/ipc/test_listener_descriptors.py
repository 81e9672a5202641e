"""The IPC listener out of file descriptors (issue #8, defect 12): ``accept`` fails with
EMFILE, and the listener must stay up, keep answering the connections it has, and accept
again once descriptors are free. The listener runs in a child process
(``listener_process.py``) whose descriptor limit is lowered, so pytest keeps its own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.helpers import eventually
from tests.ipc.test_listener import assert_pong, ping
from tests.ipc.wire import Wire

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SPARE = 8  # descriptors the child can still open once it listens
EXTRA = 6  # connections beyond those
START_LIMIT_S = 20.0  # bound on the child's start-up (imports, on a loaded machine)
LIMIT_S = 10.0  # bound on each later wait for the child


@dataclass
class Child:
    process: trio.Process
    free: int = 0
    lines: list[str] = field(default_factory=list)

    async def saw(self, text: str, limit_s: float = LIMIT_S) -> None:
        """Wait until the child has printed ``text``; fail at once if it exited."""

        def seen() -> bool:
            if any(text in line for line in self.lines):
                return True
            if self.process.returncode is not None:
                output = "\n".join(self.lines)
                raise AssertionError(
                    f"listener process exited ({self.process.returncode}):\n{output}"
                )
            return False

        await eventually(seen, limit_s)


@asynccontextmanager
async def listener_process(path: Path) -> AsyncIterator[Child]:
    command = [sys.executable, "-m", "tests.ipc.listener_process", str(path), str(SPARE)]
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                command,
                cwd=ROOT,
                check=False,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        child = Child(process)
        nursery.start_soon(_collect_lines, process, child.lines)
        await child.saw("ready", START_LIMIT_S)
        child.free = int(next(line for line in child.lines if line.startswith("ready")).split()[1])
        yield child
        nursery.cancel_scope.cancel()  # run_process terminates the child


async def _collect_lines(process: trio.Process, lines: list[str]) -> None:
    assert process.stdout is not None
    pending = b""
    async for chunk in process.stdout:
        *complete, pending = (pending + chunk).split(b"\n")
        lines.extend(line.decode(errors="replace") for line in complete)


async def test_listener_survives_running_out_of_descriptors(tmp_path: Path) -> None:
    path = tmp_path / "titan.sock"
    async with listener_process(path) as child:
        async with await Wire.connect(str(path)) as steady:
            assert (await steady.request(ping("before")))["status"] == "pong"
            # ``steady`` holds one of the free descriptors: the flood needs more than the rest.
            flood = [await trio.open_unix_socket(str(path)) for _ in range(child.free + EXTRA)]
            try:
                await child.saw("IPC listener cannot accept connections: EMFILE")
                # The open connection is still answered, and the process is still there.
                assert (await steady.request(ping("during")))["status"] == "pong"
                assert child.process.returncode is None
            finally:
                for stream in flood:
                    await stream.aclose()
            # Descriptors are free again: the connections that waited in the backlog are
            # accepted (and find their clients gone), then new ones are served.
            await child.saw("IPC listener accepts connections again")
            await assert_pong(path, "after")
            assert (await steady.request(ping("still")))["status"] == "pong"
        failing = [line for line in child.lines if "cannot accept" in line]
        assert len(failing) == 1, failing  # one line for the episode, not one per attempt
