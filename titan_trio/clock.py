"""The service's notion of wall-clock time, in one place so tests can see what is used."""

from __future__ import annotations

import datetime as dt
import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch (UTC)."""
    return time.time_ns() // 1_000_000


def iso_utc(ms: int | None) -> str | None:
    """A moment (epoch milliseconds) as ISO 8601 UTC with milliseconds, e.g.
    ``2026-11-30T09:03:07.341Z``: how every moment is written in the API, the logs and
    the CLI (None stays None)."""
    if ms is None:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
