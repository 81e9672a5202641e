"""Capped exponential backoff with equal jitter, for reconnecting market feeds.

Attempt n (0-based) waits a delay drawn from [c/2, c], where c = min(cap, base * 2**n):
0.25-0.5 s, 0.5-1 s, 1-2 s ... up to 15-30 s, then 15-30 s for every further attempt.

Equal jitter rather than full jitter (a draw from [0, c]): each feed holds ONE connection
per exchange, so the thundering herd full jitter spreads is small here (even many
services restarted together after an exchange outage still spread over half of each
window), while full jitter now and then draws a near-zero wait, and a refusing server
would see a burst of immediate retries. Bybit asks for no more than 500 connections in
5 minutes per domain; equal jitter guarantees the waits really grow.

The caller resets the sequence after a connection that delivered data: a connection
that worked for a while and then dropped is retried quickly, a server that keeps
refusing (or accepting and sending nothing) is retried ever more slowly.

Pure: no clock, no I/O; the random source is injectable so tests are repeatable.
"""

from __future__ import annotations

import random

BASE_S = 0.5
CAP_S = 30.0


class Backoff:
    def __init__(
        self, base_s: float = BASE_S, cap_s: float = CAP_S, rng: random.Random | None = None
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"expected 0 < base_s <= cap_s, got {base_s}, {cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.rng = rng if rng is not None else random.Random()
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay (before jitter)."""
        # min() on the exponent first: 2**attempt never grows without bound.
        exponent = min(self.attempt, 64)
        return min(self.cap_s, self.base_s * 2.0**exponent)

    def next_delay(self) -> float:
        """The wait before the next attempt, in seconds; advances the sequence."""
        ceiling = self.ceiling()
        self.attempt += 1
        return ceiling / 2 + self.rng.uniform(0.0, ceiling / 2)

    def reset(self) -> None:
        """Start again from the base delay (after a connection that delivered data)."""
        self.attempt = 0
