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
    the CLI (None stays None). A number no calendar date holds (a client's garbage
    ``timestamp``) is written as the number, never raised."""
    if ms is None:
        return None
    seconds, millis = divmod(ms, 1000)  # exact: no float rounding of the milliseconds
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, ValueError, OSError):
        return f"{ms} ms since the epoch"
    return f"{moment.replace(tzinfo=None).isoformat(timespec='seconds')}.{millis:03d}Z"
