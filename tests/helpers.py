"""Helpers the integration tests share: the service in-process or as a process of its
own, bounded polling, and merging configuration sections."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio

from titan_trio.config import Config
from titan_trio.engine import Engine

POLL_S = 0.005


def exact(response: httpx.Response) -> Any:
    """An API answer with its numbers read exactly (the API writes decimals as JSON
    numbers with every digit; a float would round them)."""
    return json.loads(response.text, parse_float=Decimal)


async def eventually(predicate: Callable[[], Any], limit_s: float = 5.0) -> Any:
    """Poll state that changes behind a socket or the store thread, until ``predicate``
    is truthy; bounded by ``limit_s``."""
    with trio.fail_after(limit_s):
        while not (result := predicate()):  # noqa: ASYNC110 - state changes elsewhere
            await trio.sleep(POLL_S)
    return result


@asynccontextmanager
async def service(cfg: Config, *, ready: bool = True) -> AsyncIterator[Engine]:
    """The whole service in this trio run, stopped when the block ends; with ``ready``,
    once its first reconciliation finished (it takes entries from then on)."""
    async with trio.open_nursery() as nursery:
        engine: Engine = await nursery.start(Engine(cfg).run)
        if ready:
            with trio.fail_after(10):
                await engine.reconciler.ready.wait()
        try:
            yield engine
        finally:
            nursery.cancel_scope.cancel()


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, section by section."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# ----- the service as a process of its own ----------------------------------------------

START_LIMIT_S = 20.0
PROCESS_POLL_S = 0.05


def spawn(config: Path, cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "titan_trio", "run", "--config", str(config)],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_healthy(port: int, proc: subprocess.Popen[str]) -> dict:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"service exited early:\n{proc.stdout.read()}")
        try:
            body = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).json()
            if body["status"] == "healthy":
                return body
        except httpx.HTTPError:
            pass
        time.sleep(PROCESS_POLL_S)
    raise AssertionError("service did not become healthy in time")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, float, str]:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"service ignored {sig}:\n{out}") from None
    return proc.returncode, time.monotonic() - started, out
