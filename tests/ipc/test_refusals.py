"""The refusal log on trio's mock clock: one line per refusal with what an operator greps
for, WARNING for the reasons worth a look, and a per-reason rate limit whose suppressed
lines are counted and reported once the reason may log again."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from ipc.peers import Peer
from ipc.protocol import Reason, Reply, Status
from ipc.refusals import BURST, PER_SECOND, RefusalLog

log = logging.getLogger("titan.ipc.test")
PEER = Peer(4242, 1000, 1000)


def refusal(reason: Reason, message: str = "why", rid: str | int | None = "r1") -> Reply:
    return Reply(rid, Status.REJECTED, signal_id="sig-1", reason=reason, message=message)


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == log.name]


@pytest.fixture(autouse=True)
def capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=log.name)


async def test_a_refusal_is_one_line_with_signal_symbol_reason_and_message(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = RefusalLog(log)
    text = "5 symbols held or being entered (max 5)"
    refusals.refused(
        "PREPARE", refusal(Reason.MAX_POSITIONS, text), PEER, symbol="BTCUSDT", source="demo"
    )
    [line] = lines(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        "refused PREPARE reason=MAX_POSITIONS signal=sig-1 symbol=BTCUSDT request=r1 "
        f'source=demo pid=4242 uid=1000 message="{text}"'
    )


@pytest.mark.parametrize(
    ("reason", "level"),
    [
        (Reason.TRADING_HALTED, logging.WARNING),
        (Reason.INVALID_FRAME, logging.WARNING),
        (Reason.UNAUTHENTICATED, logging.WARNING),
        (Reason.MAX_CONNECTIONS, logging.WARNING),
        (Reason.SLIPPAGE_TOO_HIGH, logging.INFO),
        (Reason.EXPIRED, logging.INFO),
        (Reason.BUSY, logging.INFO),
    ],
)
async def test_level_by_reason(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    reason: Reason,
    level: int,
) -> None:
    RefusalLog(log).refused("CONFIRM", refusal(reason), PEER)
    [line] = lines(caplog)
    assert line.levelno == level
    assert f"reason={reason.value}" in line.getMessage()


async def test_values_a_client_chose_cannot_forge_a_log_line(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    forged = "x\n2026-11-30T00:00:00.000Z CRITICAL titan: Circuit breaker"
    RefusalLog(log).refused(
        "frame", refusal(Reason.INVALID_SIGNAL, f"{forged}: unknown field", rid=forged), PEER
    )
    [line] = lines(caplog)
    assert "\n" not in line.getMessage()
    assert line.getMessage().count("\\n") == 2  # the request id and the message, escaped


async def test_a_flood_is_cut_to_a_burst_then_reported_when_lines_pass_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = RefusalLog(log)
    for _ in range(1000):
        refusals.refused("frame", refusal(Reason.INVALID_FRAME), PEER)
    assert len(lines(caplog)) == BURST
    caplog.clear()
    await trio.sleep(1 / PER_SECOND)
    refusals.refused("frame", refusal(Reason.INVALID_FRAME, "the next one"), PEER)
    summary, line = lines(caplog)
    assert summary.levelno == logging.WARNING
    assert summary.getMessage().startswith(
        f"{1000 - BURST} more refusals suppressed (reason=INVALID_FRAME, over "
    )
    assert "the next one" in line.getMessage()
    # A long quiet spell fills the bucket again: a new burst is logged whole.
    caplog.clear()
    await trio.sleep(60)
    for _ in range(BURST):
        refusals.refused("frame", refusal(Reason.INVALID_FRAME), PEER)
    assert len(lines(caplog)) == BURST
    assert not [r for r in lines(caplog) if "suppressed" in r.getMessage()]


async def test_suppressed_refusals_are_reported_even_if_none_follows(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = RefusalLog(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(refusals.run)
        for _ in range(BURST + 25):
            refusals.refused("PREPARE", refusal(Reason.TRADING_HALTED), PEER)
        caplog.clear()
        await trio.sleep(2 / PER_SECOND)
        [summary] = lines(caplog)
        assert summary.getMessage().startswith("25 more refusals suppressed (reason=TRADING_HALTED")
        caplog.clear()
        await trio.sleep(60)  # nothing more to say
        assert not lines(caplog)
        nursery.cancel_scope.cancel()


async def test_one_reason_flooding_does_not_silence_another(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = RefusalLog(log)
    for _ in range(500):
        refusals.refused("frame", refusal(Reason.INVALID_FRAME), PEER)
    caplog.clear()
    refusals.refused("PREPARE", refusal(Reason.MAX_POSITIONS), PEER, symbol="ETHUSDT")
    [line] = lines(caplog)
    assert "reason=MAX_POSITIONS" in line.getMessage()
