"""Fixtures for the feed tests: a mock clock that loopback sockets cannot fool."""

from __future__ import annotations

import pytest
import trio.testing


@pytest.fixture
def loopback_clock() -> trio.testing.MockClock:
    """Virtual time (rate 0) that jumps to the next timer once every task has been
    idle for 0.1 s of REAL time. With ``autojump_threshold=0`` the clock would jump
    while a loopback message is still in flight (a task waiting on a socket counts as
    idle), firing watchdogs and heartbeats that real time would never reach; a loopback
    delivery takes far less than 0.1 s, so only genuine waits (backoff, silence, a
    heartbeat interval) are skipped. Timings asserted are virtual, so exact."""
    return trio.testing.MockClock(autojump_threshold=0.1)
