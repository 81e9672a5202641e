"""The clock Bybit timestamps follow (EXCHANGES.md): a request is accepted when
``server_time - recv_window <= timestamp < server_time + 1000``. A clock that runs ahead
by more than a second is refused (10002) just like one that lags by more than the window,
so timestamps are the local clock corrected by the measured offset to the server, minus a
small margin that keeps them behind the server's time even if the estimate is a little
off (and well inside the window behind it).
"""

from __future__ import annotations

from dataclasses import dataclass

AHEAD_LIMIT_MS = 1000  # the server refuses timestamps this far ahead of its clock
MARGIN_MS = 300  # timestamps aim this far behind the server's estimated time


def accepted(timestamp_ms: int, server_ms: int, recv_window_ms: int) -> bool:
    """The exchange's rule for a request's timestamp."""
    return server_ms - recv_window_ms <= timestamp_ms < server_ms + AHEAD_LIMIT_MS


@dataclass
class ServerClock:
    """Local time corrected to the server's. ``offset_ms`` is server minus local, measured
    from one ``/v5/market/time`` round trip, assuming the answer was made halfway through
    it; ``uncertainty_ms`` is half the round trip (the estimate is that good)."""

    offset_ms: int = 0
    uncertainty_ms: int = 0
    synced: bool = False

    def observe(self, sent_local_ms: int, server_ms: int, received_local_ms: int) -> None:
        """One server-time answer, with the local times the request left and the answer
        came back."""
        midpoint = (sent_local_ms + received_local_ms) // 2
        self.offset_ms = server_ms - midpoint
        self.uncertainty_ms = max(0, received_local_ms - sent_local_ms) // 2
        self.synced = True

    def server_ms(self, local_ms: int) -> int:
        """The server's estimated time now."""
        return local_ms + self.offset_ms

    def timestamp(self, local_ms: int) -> int:
        """The timestamp to sign now: the server's estimated time, MARGIN_MS behind."""
        return local_ms + self.offset_ms - MARGIN_MS

    @property
    def skew_ms(self) -> int:
        """How far the local clock is behind the server's (negative: ahead)."""
        return self.offset_ms
