"""Client-side rate limits for Bybit v5 (EXCHANGES.md, "Rate limits"): a limiter per
endpoint, sized to the documented per-UID limit, so the service stays inside the limits
instead of learning them from refusals; and a back-off until the reset time when the
exchange still says "too many" (10006, HTTP 429 / 403), with jitter so a restart of many
clients does not come back in step.

Time is trio's clock: tests run it on a MockClock.
"""

from __future__ import annotations

import random
from collections import deque

import trio

# Documented defaults for linear (requests per second, per UID, per endpoint).
ENDPOINT_RATES: dict[str, float] = {
    "/v5/order/create": 10,
    "/v5/order/amend": 10,
    "/v5/order/cancel": 10,
    "/v5/order/cancel-all": 10,
    "/v5/order/realtime": 50,
    "/v5/position/list": 50,
    "/v5/account/wallet-balance": 50,
}
DEFAULT_RATE = 10.0  # an endpoint without a documented figure here
JITTER_S = 0.25  # added at random to a back-off, at most
WINDOW_S = 1.0


class TokenBucket:
    """At most ``rate`` requests in any window of one second (a sliding window of the send
    times, not a refilling bucket: a bucket allows a burst plus a second's refill, twice
    the limit, inside one second). ``acquire`` waits for a place."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.limit = max(1, int(rate))
        self.sent: deque[float] = deque()  # trio times of the sends in the last second
        self.blocked_until = 0.0  # the exchange said "too many": nothing before this

    def _forget(self, now: float) -> None:
        while self.sent and self.sent[0] <= now - WINDOW_S:
            self.sent.popleft()

    @property
    def headroom(self) -> float:
        """Requests that could go now, without waiting (health shows it)."""
        now = trio.current_time()
        if now < self.blocked_until:
            return 0.0
        self._forget(now)
        return float(self.limit - len(self.sent))

    async def acquire(self) -> None:
        while True:
            now = trio.current_time()
            if now < self.blocked_until:
                await trio.sleep_until(self.blocked_until)
                continue
            self._forget(now)
            if len(self.sent) < self.limit:
                self.sent.append(now)
                return
            await trio.sleep_until(self.sent[0] + WINDOW_S)

    def observe(self, remaining: int | None) -> None:
        """The exchange's count of what is left (``X-Bapi-Limit-Status``): never believe
        more than it says (the same key may be used elsewhere)."""
        if remaining is None:
            return
        now = trio.current_time()
        self._forget(now)
        while self.limit - len(self.sent) > max(0, remaining):
            self.sent.append(now)

    def back_off(self, seconds: float, rng: random.Random | None = None) -> float:
        """Refused for going too fast: nothing more for ``seconds`` plus jitter (until the
        reset time the exchange gave). Returns the time it ends (trio's clock)."""
        jitter = (rng or random).uniform(0, JITTER_S)
        self.blocked_until = max(self.blocked_until, trio.current_time() + seconds + jitter)
        return self.blocked_until


class RateLimits:
    """One bucket per endpoint path."""

    def __init__(self, rates: dict[str, float] | None = None) -> None:
        self.rates = dict(ENDPOINT_RATES if rates is None else rates)
        self.buckets: dict[str, TokenBucket] = {}
        self.banned_until = 0.0  # trio time: an IP ban holds every endpoint

    def bucket(self, path: str) -> TokenBucket:
        bucket = self.buckets.get(path)
        if bucket is None:
            bucket = self.buckets[path] = TokenBucket(self.rates.get(path, DEFAULT_RATE))
            bucket.blocked_until = max(bucket.blocked_until, self.banned_until)
        return bucket

    def ban(self, seconds: float, rng: random.Random | None = None) -> float:
        """HTTP 403: the exchange bans this IP for a while, every endpoint at once."""
        for path in set(self.rates) | set(self.buckets):
            self.banned_until = max(self.banned_until, self.bucket(path).back_off(seconds, rng))
        return self.banned_until

    def headroom(self) -> dict[str, float]:
        return {path: round(b.headroom, 2) for path, b in sorted(self.buckets.items())}
