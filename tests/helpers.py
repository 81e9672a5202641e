"""Helpers the integration tests share: the service in-process, bounded polling, and
merging configuration sections."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from titan_trio.config import Config
from titan_trio.engine import Engine

POLL_S = 0.005


async def eventually(predicate: Callable[[], Any], limit_s: float = 5.0) -> Any:
    """Poll state that changes behind a socket or the store thread, until ``predicate``
    is truthy; bounded by ``limit_s``."""
    with trio.fail_after(limit_s):
        while not (result := predicate()):  # noqa: ASYNC110 - state changes elsewhere
            await trio.sleep(POLL_S)
    return result


@asynccontextmanager
async def service(cfg: Config) -> AsyncIterator[Engine]:
    """The whole service in this trio run, stopped when the block ends."""
    async with trio.open_nursery() as nursery:
        engine: Engine = await nursery.start(Engine(cfg).run)
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
