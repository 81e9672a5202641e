"""The ops API's bearer token: checked in constant time, and guessing it throttled.

``api.token`` is at least 32 characters (config.py), so guessing it is hopeless anyway;
the throttle keeps a careless or hostile client from trying at the speed of the loop
(about 370 attempts a second before) and from flooding the log with refusals. Per client
address, each a decision:

- After ``MAX_FAILURES`` (5) wrong or missing tokens, the client's wrong tokens are
  answered 429 with ``Retry-After`` for ``FIRST_BACKOFF_S`` (1 s) instead of 401, and not
  logged one by one. Every further failure once a refusal has run out doubles it, up to
  ``MAX_BACKOFF_S`` (60 s). Requests refused with 429 do not lengthen it.
- A correct token is always accepted, throttled or not. Everyone on the same address
  (every local process, on a loopback-bound API) shares the throttle, so refusing right
  tokens would let any local process keep the operator's ``titan flatten`` out for good
  (one wrong token each time the refusal runs out). What the throttle does not stop (a
  client guessing on through 429s) the token's length does.
- A correct token also forgets the address's failures; so does ``FORGET_AFTER_S`` (10 min)
  without a failure.
- Only endpoints that need the token are throttled; reads (health, metrics) never are.
- The address is the connection's peer; ``X-Forwarded-For`` is not trusted. Behind a
  reverse proxy every client shares the proxy's address.
- At most ``MAX_CLIENTS`` addresses are remembered; beyond that the longest-quiet ones are
  forgotten first.
- Logging: a WARNING for each refused token (naming the client, the method and path, and
  the count) and one when a client starts to be throttled. The per-client backoff bounds
  what one client can log; on top, at most ``LOG_BUDGET`` such lines go out per
  ``LOG_WINDOW_S`` (60 s) in all, and the next line says how many were left out.

Time is trio's clock (``trio.current_time``), so tests run it on a MockClock. This module
never sees the token itself: comparing it is ``token_matches``.
"""

from __future__ import annotations

import hmac
import logging
import math
from dataclasses import dataclass

import trio

MAX_FAILURES = 5
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
FORGET_AFTER_S = 600.0
MAX_CLIENTS = 4096
LOG_BUDGET = 20
LOG_WINDOW_S = 60.0


def token_matches(given: str, token: str) -> bool:
    """Whether the ``Authorization`` header ``given`` carries ``token``, in constant time."""
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@dataclass
class _Client:
    failures: int = 0
    last_failure: float = -math.inf
    refused_until: float = -math.inf


class _LogBudget:
    """At most ``budget`` lines per ``window_s``; counts the ones left out."""

    def __init__(self, budget: int, window_s: float) -> None:
        self.budget = budget
        self.window_s = window_s
        self._window_start = -math.inf
        self._used = 0
        self.left_out = 0

    def take(self, now: float) -> bool:
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._used = 0
        if self._used >= self.budget:
            self.left_out += 1
            return False
        self._used += 1
        return True


class TokenThrottle:
    """Failed bearer-token attempts per client address (see the module docstring)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self._clients: dict[str, _Client] = {}
        self._log_budget = _LogBudget(LOG_BUDGET, LOG_WINDOW_S)

    def retry_after(self, client: str) -> int | None:
        """Whole seconds ``client`` is still refused for (at least 1), or None."""
        record = self._clients.get(client)
        if record is None:
            return None
        left = record.refused_until - trio.current_time()
        return max(1, math.ceil(left)) if left > 0 else None

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)

    def failed(self, client: str, what: str) -> None:
        """Count a missing or wrong token from ``client`` (``what``: method and path)."""
        now = trio.current_time()
        record = self._clients.pop(client, None)  # re-inserted last: most recent
        if record is None or now - record.last_failure >= FORGET_AFTER_S:
            record = _Client()
        record.failures += 1
        record.last_failure = now
        self._clients[client] = record
        self._forget_beyond_bound()
        self._warn(
            "refused %s from %s: missing or wrong bearer token (%d in a row)",
            what,
            client,
            record.failures,
        )
        if record.failures >= MAX_FAILURES:
            backoff = min(FIRST_BACKOFF_S * 2 ** (record.failures - MAX_FAILURES), MAX_BACKOFF_S)
            record.refused_until = now + backoff
            self._warn(
                "client %s gave %d wrong or missing bearer tokens in a row: its requests "
                "to operator endpoints are refused (429) for %g s",
                client,
                record.failures,
                backoff,
            )

    def _forget_beyond_bound(self) -> None:
        while len(self._clients) > MAX_CLIENTS:
            del self._clients[next(iter(self._clients))]

    def _warn(self, message: str, *args: object) -> None:
        budget = self._log_budget
        if not budget.take(trio.current_time()):
            return
        if budget.left_out:
            message += " (%d such lines left out before this one)"
            args = (*args, budget.left_out)
            budget.left_out = 0
        self.log.warning(message, *args)
