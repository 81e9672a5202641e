"""The ops API's connection handling, with the whole service in this process: an idle
keep-alive connection is closed after ``api.keepAliveTimeoutS``, and beyond
``api.maxConnections`` a client waits until a connection closes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
import trio

from tests.helpers import eventually, service
from titan_trio.config import Config

LIMIT_S = 5.0
REQUEST = b"GET /api/health HTTP/1.1\r\nHost: titan\r\n\r\n"


async def connect(api_url: str | None) -> trio.SocketStream:
    assert api_url is not None
    address = urlsplit(api_url)
    assert address.hostname is not None and address.port is not None
    return await trio.open_tcp_stream(address.hostname, address.port)


async def read_response(stream: trio.SocketStream) -> bytes:
    """One response with a content-length body; the connection stays open."""
    data = b""
    with trio.fail_after(LIMIT_S):
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some()
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive_some()
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


async def test_idle_keep_alive_connection_is_closed(make_config: Callable[..., Config]) -> None:
    async with service(make_config(api={"keepAliveTimeoutS": 0.2})) as engine:
        async with await connect(engine.api_url) as stream:
            await stream.send_all(REQUEST)
            await read_response(stream)
            with trio.fail_after(LIMIT_S):
                assert await stream.receive_some() == b""  # closed by the service


async def test_connections_beyond_the_bound_wait_for_a_free_one(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config(api={"maxConnections": 2, "keepAliveTimeoutS": 60})
    caplog.set_level(logging.WARNING, logger="titan.api")
    async with service(cfg) as engine:
        held = [await connect(engine.api_url) for _ in range(2)]
        for stream in held:  # answered, then left open (keep-alive)
            await stream.send_all(REQUEST)
            await read_response(stream)
        await eventually(lambda: "ops API has 2 connections open" in caplog.text)
        async with await connect(engine.api_url) as waiting:
            await waiting.send_all(REQUEST)
            await held[0].aclose()
            await read_response(waiting)
        await held[1].aclose()
