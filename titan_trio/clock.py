"""The service's notion of wall-clock time, in one place so tests can see what is used."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1_000_000
