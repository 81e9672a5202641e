"""Whether the database takes writes now, and the one place the store's write failures
and recoveries are logged.

The answer comes from what the database did, never from a guess on file permissions:
every write's outcome counts (a failure sets ``stats.last_error`` to SQLite's cause, a
transaction that wrote clears it), and a write probe (a one-row upsert of the kv key
PROBE_KEY that the store runs on its own thread, waiting at most PROBE_BUSY_MS for
another connection's lock) is asked for when health wants an answer and the last probe
is PROBE_EVERY_S old, so a scrape storm costs at most one small commit a second. A probe
still waiting after PROBE_LATE_S (the store thread stuck behind a lock or a hung disk)
counts as failing.

The log says a failure once per cause, with SQLite's words, and the recovery once; the
same cause failing again within FAILURE_REPEAT_S of its WARNING is not logged again (nor
that episode's recovery), so a database that fails and recovers over and over writes two
lines a minute, not two per request.

Bookkeeping only, on the trio thread: it never touches a connection and never waits.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from titan_trio.state.store import StoreStats

log = logging.getLogger("titan.store")

PROBE_EVERY_S = 1.0
PROBE_BUSY_MS = 200
PROBE_LATE_S = 1.0
PROBE_KEY = "store.write_probe"
PROBE_SQL = (
    "INSERT INTO kv (key, value, updated_ms) VALUES ($key, 'null', $now) "
    "ON CONFLICT(key) DO UPDATE SET updated_ms = excluded.updated_ms"
)
FAILURE_REPEAT_S = 60.0


class WriteHealth:
    def __init__(self, stats: StoreStats) -> None:
        self.stats = stats
        self._probe_queued_at: float | None = None  # monotonic, while a probe is queued
        self._probed_at: float | None = None  # monotonic, when the last probe finished
        self._warned: tuple[str, float] | None = None  # the last WARNING: cause, when
        self._episode_logged = False  # whether this failure episode logged a WARNING

    def failed(self, cause: str, jobs: int) -> None:
        """``jobs`` calls failed for the database (a probe: 0) with SQLite's ``cause``."""
        self.stats.write_failures += jobs
        if cause != self.stats.last_error:
            if self.stats.last_error is None:
                self._episode_logged = False
            now = time.monotonic()
            warned = self._warned
            if warned is None or warned[0] != cause or now - warned[1] >= FAILURE_REPEAT_S:
                log.warning("database write failed: %s", cause)
                self._warned = (cause, now)
                self._episode_logged = True
        self.stats.last_error = cause

    def succeeded(self) -> None:
        """A transaction that wrote committed: the database takes writes."""
        if self.stats.last_error is not None:
            if self._episode_logged:
                log.info("database writes succeed again (after: %s)", self.stats.last_error)
            self.stats.last_error = None

    def probe_due(self) -> bool:
        """Whether to queue a probe now (then it counts as queued)."""
        now = time.monotonic()
        if self._probe_queued_at is not None:
            return False
        if self._probed_at is not None and now - self._probed_at < PROBE_EVERY_S:
            return False
        self._probe_queued_at = now
        return True

    def probe_finished(self, cause: str | None) -> None:
        """The probe's outcome: None when it committed, else SQLite's cause."""
        self._probe_queued_at = None
        self._probed_at = time.monotonic()
        self.stats.write_probes += 1
        if cause is None:
            self.succeeded()
        else:
            self.failed(cause, jobs=0)  # no request failed

    def verdict(self) -> tuple[bool, str | None]:
        """Whether the database takes writes now, and if not, why."""
        queued = self._probe_queued_at
        if queued is not None and (waited := time.monotonic() - queued) > PROBE_LATE_S:
            return False, (
                f"no write has completed for {waited:.1f} s: the database is locked by "
                "another process or the disk does not answer"
            )
        if self.stats.last_error is not None:
            return False, self.stats.last_error
        return True, None
