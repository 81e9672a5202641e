"""The signal router on the paper broker, with trio's MockClock: what a CLOSE waits for
and what it costs, in virtual time and in round trips (no real waiting, no wall clock).

The rig is the engine's wiring without its sockets: the router's jobs are run the way
the IPC listener runs them, the database commits inline (the store's thread would let
virtual time run ahead of its work).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ipc.protocol import Close, Confirm, EntryZone, Message, Prepare, Reply
from titan_trio.brokers.paper import PaperBroker
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.orders import OrderRequest
from titan_trio.domain.quotes import Quote
from titan_trio.engine import instruments_from_config
from titan_trio.execution.executor import Executor
from titan_trio.execution.placement import OrderPlacer
from titan_trio.execution.router import SignalRouter
from titan_trio.feeds.hub import MarketHub
from titan_trio.metrics import Metrics
from titan_trio.risk.controller import RiskController
from titan_trio.state import records
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store
from titan_trio.state.sync import ShadowSync

MID = Decimal("95000.00")
ACK_S = 0.3013  # how long the exchange takes to acknowledge an entry, when it is slow


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@dataclass
class Rig:
    router: SignalRouter
    broker: PaperBroker
    store: Store
    shadow: ShadowState
    sync: ShadowSync

    async def ask(self, message: Message) -> Reply:
        return await self.router.admit(message)()

    async def settled(self) -> None:
        """Until the shadow state applied every broker event sent so far."""
        while not self.sync.idle(self.broker.events_sent):  # noqa: ASYNC110
            await trio.sleep(0.001)


@asynccontextmanager
async def rig(cfg: Config, tmp_path: Path) -> AsyncIterator[Rig]:
    instruments = instruments_from_config(cfg)
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        broker = PaperBroker(cfg.broker, instruments, hub, store)
        await nursery.start(broker.run)
        shadow = ShadowState(await broker.balance())
        sync = ShadowSync(shadow, store, broker.events)
        await nursery.start(sync.run)
        equity: Callable[[], Decimal] = lambda: shadow.equity(hub.book)  # noqa: E731
        capital = Decimal(repr(cfg.broker.initial_capital))
        risk = RiskController(cfg.risk, store, capital, equity)
        await nursery.start(risk.run)
        metrics = Metrics(lambda: None)  # type: ignore[arg-type,return-value]
        placer = OrderPlacer(
            broker, shadow, store, metrics, gate=risk.refusal, storage_failed=risk.storage_failed
        )
        executor = Executor(cfg.execution, broker, placer, hub)
        await nursery.start(executor.run)
        router = SignalRouter(
            cfg,
            instruments,
            hub,
            shadow,
            broker,
            store,
            metrics,
            equity,
            risk,
            executor,
            events_applied=sync.applied,
        )
        tick = instruments["BTCUSDT"].tick_size
        hub.publish(
            Quote("BTCUSDT", MID, MID + tick, Decimal(1000), Decimal(1000), MID, now_ms(), "test")
        )
        yield Rig(router, broker, store, shadow, sync)
        nursery.cancel_scope.cancel()


@pytest.fixture
def cfg(make_config: Callable[..., Config]) -> Config:
    # Phase 3 equity: taker entries, which fill as soon as the exchange takes them.
    return make_config(
        simulation={"intervalMs": 60000},
        execution={"l2": {"maxAgeMs": 600000, "maxSpreadPct": 1}},
    )


def prepare(signal_id: str) -> Prepare:
    return Prepare(
        id=f"p-{signal_id}",
        signal_id=signal_id,
        source="test",
        symbol="BTCUSDT",
        direction="LONG",
        entry_zone=EntryZone(float(MID * Decimal("0.999")), float(MID * Decimal("1.001"))),
        stop_loss=float(MID * Decimal("0.99")),
        take_profits=[],
        confidence=90,
        leverage=5,
    )


def close(signal_id: str) -> Close:
    return Close(id=f"x-{signal_id}", signal_id=signal_id, symbol="BTCUSDT")


def slow_entry_acknowledgements(broker: PaperBroker) -> None:
    """An exchange that takes ACK_S to acknowledge each entry (exits go through at once)."""
    submit = broker.submit

    async def slow_submit(request: OrderRequest) -> Any:
        if not request.reduce_only:
            await trio.sleep(ACK_S)
        return await submit(request)

    broker.submit = slow_submit  # type: ignore[method-assign]


async def test_a_close_right_behind_its_confirm_is_answered_when_the_entry_is(
    cfg: Config, tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """A strategy that gets out right after getting in (its CLOSE pipelined behind its
    CONFIRM) waits for the entry to reach the exchange, and not a moment longer."""
    async with rig(cfg, tmp_path) as r:
        slow_entry_acknowledgements(r.broker)
        assert (await r.ask(prepare("in-1"))).status == "prepared"
        replies: dict[str, tuple[Reply, float]] = {}

        async def ask(name: str, message: Message) -> None:
            reply = await r.ask(message)
            replies[name] = reply, trio.current_time()

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, "confirm", Confirm(id=2, signal_id="in-1"))
            await trio.testing.wait_all_tasks_blocked()  # the entry is on its way
            assert r.shadow.orders
            nursery.start_soon(ask, "close", close("out-1"))
        (confirmed, confirmed_at), (closed, closed_at) = replies["confirm"], replies["close"]
        assert confirmed.status == "accepted" and confirmed.order_status == "FILLED", confirmed
        assert closed.status == "closed" and closed.order_status == "FILLED", closed
        assert closed.size == confirmed.size  # the whole entry, once it had filled
        assert confirmed_at - started == pytest.approx(ACK_S)
        assert closed_at - started == pytest.approx(ACK_S)  # no poll interval on top
        await r.settled()
        assert not r.shadow.positions and not r.shadow.orders
        assert not [p for p in await r.broker.positions() if not p.is_flat]


async def test_a_close_pipelined_behind_its_prepare_and_confirm_closes_what_they_open(
    cfg: Config, tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """PREPARE, CONFIRM and CLOSE sent at once (the CONFIRM still waiting for its PREPARE
    when the CLOSE arrives): the CLOSE waits for the entry, then closes it; it never
    answers "no open position" and leaves the entry to fill behind it."""
    async with rig(cfg, tmp_path) as r:
        call = r.store.call

        async def slow_journal(fn: Any, *args: Any, **kwargs: Any) -> Any:
            if fn is records.journal_signal and args[1] == "PREPARE":
                await trio.sleep(0.2)  # a busy database
            return await call(fn, *args, **kwargs)

        r.store.call = slow_journal  # type: ignore[method-assign]
        messages = [prepare("in-1"), Confirm(id=2, signal_id="in-1"), close("out-1")]
        jobs = [r.router.admit(m) for m in messages]  # in arrival order, as the listener
        replies: list[Reply] = []

        async def run(job: Any) -> None:
            replies.append(await job())

        async with trio.open_nursery() as nursery:
            for job in jobs:
                nursery.start_soon(run, job)
        by_id = {reply.id: reply for reply in replies}
        confirmed, closed = by_id[2], by_id["x-out-1"]
        assert confirmed.status == "accepted" and confirmed.order_status == "FILLED", confirmed
        assert closed.status == "closed" and closed.size == confirmed.size, closed
        await r.settled()
        assert not r.shadow.positions
        assert not [p for p in await r.broker.positions() if not p.is_flat]


async def test_a_close_costs_what_a_confirm_costs_before_its_order_is_sent(
    cfg: Config, tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    """Each database commit and each question to the exchange before the order goes out
    is time the strategy waits: a CLOSE of a held position (nothing to cancel) makes one
    commit (its journal entry with its exit order) and asks the exchange for positions
    once, as a CONFIRM makes one commit."""
    async with rig(cfg, tmp_path) as r:
        asked: list[str] = []
        commits_at_submit: list[int] = []
        submit, positions = r.broker.submit, r.broker.positions

        async def counting_submit(request: OrderRequest) -> Any:
            commits_at_submit.append(r.store.stats.commits)
            return await submit(request)

        async def counting_positions() -> Any:
            asked.append("positions")
            return await positions()

        r.broker.submit = counting_submit  # type: ignore[method-assign]
        r.broker.positions = counting_positions  # type: ignore[method-assign]
        assert (await r.ask(prepare("in-1"))).status == "prepared"
        await r.settled()
        before = r.store.stats.commits
        accepted = await r.ask(Confirm(id=2, signal_id="in-1"))
        assert accepted.order_status == "FILLED", accepted
        confirm_commits = commits_at_submit[-1] - before
        await r.settled()
        asked.clear()
        before = r.store.stats.commits
        closed = await r.ask(close("out-1"))
        assert closed.status == "closed" and closed.order_status == "FILLED", closed
        close_commits = commits_at_submit[-1] - before
        assert (confirm_commits, close_commits, len(asked)) == (1, 1, 1)
        # and it is journaled like any other: a repeat says what became of it
        await r.settled()
        again = await r.ask(close("out-1"))
        assert again.reason == "DUPLICATE_SIGNAL", again
        assert again.client_order_id == closed.client_order_id
        assert again.order_status == "FILLED"
