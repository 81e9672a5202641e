"""A tiny raw-socket IPC client for tests: NDJSON frames over a trio Unix socket.

Deliberately independent of ``ipc/client.py`` and of the service's encoder: frames are
built with the standard library's ``json`` and signed with ``hmac`` exactly as SPEC §5
describes, so the tests check the wire contract, not our own helpers against themselves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import trio

REPLY_TIMEOUT_S = 5.0


def frame(message: dict[str, Any] | bytes, secret: str | None = None) -> bytes:
    """One line for ``message`` (bytes are sent as they are, plus the newline)."""
    if isinstance(message, bytes):
        return message + b"\n"
    body = json.dumps(message, separators=(",", ":"))
    if secret is None:
        return body.encode() + b"\n"
    sig = hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"payload": body, "sig": sig}).encode() + b"\n"


class Wire:
    """One connection: send frames, read replies (one JSON object per line)."""

    def __init__(self, stream: trio.SocketStream, secret: str | None = None) -> None:
        self.stream = stream
        self.secret = secret
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, path: str, secret: str | None = None) -> Wire:
        return cls(await trio.open_unix_socket(path), secret)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, *messages: dict[str, Any] | bytes) -> None:
        """All ``messages`` in one write (pipelined)."""
        await self.stream.send_all(b"".join(frame(m, self.secret) for m in messages))

    async def reply(self, within_s: float = REPLY_TIMEOUT_S) -> dict[str, Any]:
        """The next reply; EOFError when the service closed the connection first."""
        with trio.fail_after(within_s):
            while b"\n" not in self._buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("connection closed by the service")
                self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        decoded = json.loads(line)
        assert isinstance(decoded, dict), line
        return decoded

    async def replies(self, count: int, within_s: float = REPLY_TIMEOUT_S) -> list[dict[str, Any]]:
        with trio.fail_after(within_s):
            return [await self.reply() for _ in range(count)]

    async def request(self, message: dict[str, Any] | bytes) -> dict[str, Any]:
        await self.send(message)
        return await self.reply()

    async def at_eof(self, within_s: float = REPLY_TIMEOUT_S) -> bool:
        """True when the service closes the connection (after any buffered replies)."""
        with trio.fail_after(within_s):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True
                self._buffer += data

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> Wire:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
