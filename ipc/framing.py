"""NDJSON framing: bytes in, complete lines out, with a size limit.

A line longer than ``max_frame_bytes`` (not counting its newline) is reported once as
``TOO_LONG`` as soon as it is known to be too long, and the rest of it is discarded up to
its newline, so a huge or endless line costs at most ``max_frame_bytes`` of memory.
A trailing ``\\r`` is dropped (CRLF senders work). Pure: no I/O.
"""

from __future__ import annotations

from typing import Final

TOO_LONG: Final = None  # the marker yielded in place of an over-long frame


class LineDecoder:
    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._discarding = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held (a half frame at the end of the stream)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | None]:
        """Complete frames in ``data`` (plus what was held), in order; ``TOO_LONG`` for
        each over-long one."""
        out: list[bytes | None] = []
        start = 0
        limit = self.max_frame_bytes
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                piece = data[start:newline]
                if len(self._buffer) + len(piece) > limit + 1:  # +1: a possible \r
                    self._buffer.clear()
                    out.append(TOO_LONG)
                else:
                    if self._buffer:
                        self._buffer += piece
                        line = bytes(self._buffer)
                        self._buffer.clear()
                    else:
                        line = piece
                    if line.endswith(b"\r"):
                        line = line[:-1]
                    if len(line) > limit:
                        out.append(TOO_LONG)
                    else:
                        out.append(line)
            start = newline + 1
        rest = data[start:]
        if rest and not self._discarding:
            if len(self._buffer) + len(rest) > limit + 1:
                self._buffer.clear()
                self._discarding = True
                out.append(TOO_LONG)
            else:
                self._buffer += rest
        return out
