"""A listener that outlives running out of file descriptors.

``accept(2)`` fails with EMFILE or ENFILE when the process or the system has no
descriptor left, and with ENOMEM or ENOBUFS when the kernel is short of memory. Those are
conditions of the moment, not faults of the listener: the new connection waits in the
kernel's backlog, and a descriptor is free again as soon as any connection closes. Raised
out of an accept loop they used to end the whole service (exit 1). ``BackoffListener``
wraps another listener and, on those four errors only, waits and accepts again, while
the connections already open are served as usual by their own tasks.

Choices, each deliberate:
- Back-off: 0.1 s after the first failure, doubling up to 1 s while the failures go on.
  A full descriptor table then costs about one failed ``accept`` a second, and a freed
  descriptor is used within a second. (trio's ``serve_listeners`` retries every 0.1 s.)
- Logging is rate-limited: one WARNING when accepting starts to fail, at most one more
  every ``REPEAT_WARNING_S`` while it keeps failing (with the number of failed
  attempts), and one WARNING when it works again. trio's ``serve_listeners`` logs an
  ERROR with a traceback for every failed attempt, which floods the log exactly when the
  disk and the operator have the least room for it.

It must never swallow any other error: anything else ``accept`` raises is raised.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Generic, TypeVar

import trio

ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0
REPEAT_WARNING_S = 30.0

StreamT = TypeVar("StreamT", bound=trio.abc.AsyncResource)


class BackoffListener(trio.abc.Listener[StreamT], Generic[StreamT]):
    """``listener``, except that descriptor or memory exhaustion makes ``accept`` wait
    and retry instead of raising. ``name`` says in the log which listener it is."""

    def __init__(self, listener: trio.abc.Listener[StreamT], log: logging.Logger, name: str):
        self.listener = listener
        self.log = log
        self.name = name
        self.failures = 0  # failed attempts in the current episode
        self._failing_since: float | None = None
        self._last_warning = 0.0

    async def accept(self) -> StreamT:
        delay = FIRST_BACKOFF_S
        while True:
            try:
                stream = await self.listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                self._failed(exc.errno)
                await trio.sleep(delay)
                delay = min(2 * delay, MAX_BACKOFF_S)
            else:
                self._recovered()
                return stream

    async def aclose(self) -> None:
        await self.listener.aclose()

    def _failed(self, code: int) -> None:
        now = trio.current_time()
        self.failures += 1
        if self._failing_since is None:
            self._failing_since = self._last_warning = now
            self.log.warning(
                "%s cannot accept connections: %s (%s); open connections are still "
                "served, retrying every %.1f-%.0f s",
                self.name,
                errno.errorcode.get(code, str(code)),
                os.strerror(code),
                FIRST_BACKOFF_S,
                MAX_BACKOFF_S,
            )
        elif now - self._last_warning >= REPEAT_WARNING_S:
            self._last_warning = now
            self.log.warning(
                "%s still cannot accept connections: %s for %.0f s (failed attempts: %d)",
                self.name,
                errno.errorcode.get(code, str(code)),
                now - self._failing_since,
                self.failures,
            )

    def _recovered(self) -> None:
        if self._failing_since is None:
            return
        self.log.warning(
            "%s accepts connections again after %.1f s (failed attempts: %d)",
            self.name,
            trio.current_time() - self._failing_since,
            self.failures,
        )
        self._failing_since = None
        self.failures = 0
