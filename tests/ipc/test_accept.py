"""``BackoffListener`` on a scripted listener, under a mock clock: it retries through
descriptor and memory exhaustion with a growing back-off, logs a handful of WARNING lines
however long that lasts, and raises every other error."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterable

import pytest
import trio
import trio.testing

from ipc.accept import (
    ACCEPT_CAPACITY_ERRNOS,
    FIRST_BACKOFF_S,
    MAX_BACKOFF_S,
    REPEAT_WARNING_S,
    BackoffListener,
)

log = logging.getLogger("tests.accept")


class Scripted(trio.abc.Listener[str]):
    """Each ``accept`` takes the next outcome: an errno is raised as OSError, a string is
    the accepted 'stream'. Records the (mock) time of each attempt."""

    def __init__(self, outcomes: Iterable[int | str]) -> None:
        self.outcomes = list(outcomes)
        self.attempts: list[float] = []

    async def accept(self) -> str:  # type: ignore[override]
        await trio.lowlevel.checkpoint()
        self.attempts.append(trio.current_time())
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, int):
            raise OSError(outcome, "scripted")
        return outcome

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.mark.parametrize("code", sorted(ACCEPT_CAPACITY_ERRNOS))
async def test_exhaustion_waits_and_accepts_again(
    code: int, autojump_clock: trio.testing.MockClock
) -> None:
    scripted = Scripted([code] * 6 + ["conn"])
    listener = BackoffListener(scripted, log, "test listener")
    start = trio.current_time()
    assert await listener.accept() == "conn"
    waits = [b - a for a, b in zip([start, *scripted.attempts], scripted.attempts, strict=False)]
    expected = [0.0, 0.1, 0.2, 0.4, 0.8, MAX_BACKOFF_S, MAX_BACKOFF_S]
    assert FIRST_BACKOFF_S == expected[1]
    assert waits == pytest.approx(expected)


async def test_other_errors_are_raised(autojump_clock: trio.testing.MockClock) -> None:
    listener = BackoffListener(Scripted([errno.EMFILE, errno.EBADF]), log, "test listener")
    with pytest.raises(OSError) as raised:
        await listener.accept()
    assert raised.value.errno == errno.EBADF


async def test_warnings_are_rate_limited(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    failures = 200  # about 200 s of EMFILE at one attempt a second
    scripted = Scripted([errno.EMFILE] * failures + ["a", "b"])
    listener = BackoffListener(scripted, log, "test listener")
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert await listener.accept() == "a"
        assert await listener.accept() == "b"
    lines = [r.getMessage() for r in caplog.records]
    failing_for = scripted.attempts[failures] - scripted.attempts[0]
    assert len(lines) == 1 + int(failing_for // REPEAT_WARNING_S) + 1
    assert lines[0].startswith("test listener cannot accept connections: EMFILE")
    assert all(line.startswith("test listener still cannot accept") for line in lines[1:-1])
    assert lines[-1].startswith("test listener accepts connections again")
    assert f"(failed attempts: {failures})" in lines[-1]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
