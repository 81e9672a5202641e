"""Execution styles end to end on the paper broker, with trio's MockClock: the maker
timeout and the taker chase run in virtual time (no real waiting)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal as D
from pathlib import Path

import pytest
import trio
import trio.testing

from titan_trio.brokers.paper import PaperBroker
from titan_trio.clock import now_ms
from titan_trio.config import BrokerConfig, ExecutionConfig
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from titan_trio.domain.quotes import Quote
from titan_trio.execution.executor import Executor
from titan_trio.execution.placement import OrderPlacer
from titan_trio.execution.styles import EntryPlan, Style, choose_style, entry_price
from titan_trio.feeds.hub import MarketHub
from titan_trio.metrics import Metrics
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store
from titan_trio.state.sync import ShadowSync

BTC = Instrument("BTCUSDT", D("0.10"), D("0.001"), D("0.001"), D("5"), D("100"))
CFG = ExecutionConfig(
    maker_timeout_ms=5000, chase_interval_ms=200, chase_max_ms=1000, chase_max_ticks=5
)


@dataclass
class Rig:
    hub: MarketHub
    broker: PaperBroker
    shadow: ShadowState
    executor: Executor

    def quote(self, bid: str, ask: str, size: str = "10") -> None:
        self.hub.publish(
            Quote("BTCUSDT", D(bid), D(ask), D(size), D(size), D(bid), now_ms(), "test")
        )


@asynccontextmanager
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), always_inline=True).run)
        broker = PaperBroker(BrokerConfig(), {"BTCUSDT": BTC}, hub, store)
        await nursery.start(broker.run)
        shadow = ShadowState(await broker.balance())
        await nursery.start(ShadowSync(shadow, store, broker.events).run)
        metrics = Metrics(lambda: None)  # type: ignore[arg-type,return-value]
        executor = Executor(CFG, broker, OrderPlacer(broker, shadow, store, metrics), hub)
        await nursery.start(executor.run)
        r = Rig(hub, broker, shadow, executor)
        r.quote("95000.0", "95000.1")
        yield r
        nursery.cancel_scope.cancel()


def entry(style: Style, price: str, qty: str = "0.100") -> tuple[Order, EntryPlan]:
    order = Order(
        f"tt-{style}-{price}",
        "BTCUSDT",
        Side.BUY,
        OrderType.LIMIT,
        D(qty),
        price=D(price),
        time_in_force=TimeInForce.POST_ONLY if style is Style.MAKER else TimeInForce.GTC,
        leverage=D(5),
        created_ms=now_ms(),
    )
    plan = EntryPlan(style, Side.BUY, D("94000"), D("95010"), BTC.tick_size, D(price), 5)
    return order, plan


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def test_style_choice_and_first_price() -> None:
    assert choose_style("maker", None, 1.0) is Style.MAKER
    assert choose_style("maker", 2.5, 1.0) is Style.TAKER
    assert choose_style("taker", 0.1, 1.0) is Style.TAKER
    assert choose_style("maker", 99.0, None) is Style.MAKER
    q = Quote("BTCUSDT", D("100.0"), D("100.1"), D(1), D(1), D(100), 0, "t")
    assert entry_price(Style.MAKER, Side.BUY, q, D(90), D(110)) == D("100.0")
    assert entry_price(Style.MAKER, Side.SELL, q, D(90), D(110)) == D("100.1")
    assert entry_price(Style.MAKER, Side.BUY, q, D(90), D("99.5")) == D("99.5")  # zone top
    assert entry_price(Style.TAKER, Side.BUY, q, D(90), D(110)) == D("100.1")
    assert entry_price(Style.TAKER, Side.BUY, q, D(90), D(100)) is None  # ask above zone
    assert entry_price(Style.MAKER, Side.BUY, q, D(101), D(110)) is None  # would cross


async def test_maker_rests_keeps_partial_fills_and_cancels_at_timeout(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        order, plan = entry(Style.MAKER, "95000.0")
        ack = await r.executor.place_entry(order, plan)
        assert ack.status is OrderStatus.ACCEPTED  # post-only at the bid: resting
        start = trio.current_time()
        await trio.sleep(1.0)
        r.quote("94999.9", "95000.0", size="0.030")  # the ask comes down to our price
        with trio.fail_after(CFG.maker_timeout_ms / 1000 + 1):
            while order.client_order_id in r.executor.following:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.25)
        assert order.status is OrderStatus.CANCELED
        assert order.filled_qty == D("0.030")  # the partial fill is kept
        assert r.shadow.positions["BTCUSDT"].position.size == D("0.030")
        assert not r.shadow.orders


async def test_maker_that_fills_stops_being_followed(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        order, plan = entry(Style.MAKER, "95000.0")
        await r.executor.place_entry(order, plan)
        await trio.sleep(0.5)
        r.quote("94999.0", "94999.9")  # crosses our bid with plenty of size
        with trio.fail_after(1):
            while order.status.is_open:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert order.status is OrderStatus.FILLED
        assert r.shadow.positions["BTCUSDT"].position.size == D("0.100")


async def test_taker_chases_within_its_ticks_then_cancels(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        # The market runs away just after the order was priced at the old ask.
        order, plan = entry(Style.TAKER, "94999.9")
        r.quote("95000.0", "95000.1")
        ack = await r.executor.place_entry(order, plan)
        assert ack.status is OrderStatus.ACCEPTED  # 94999.9 < ask: resting
        started = trio.current_time()
        r.quote("95010.0", "95010.1")  # far away: the chase goes at most 5 ticks
        await trio.sleep(0.3)  # one chase step
        assert order.price == D("95000.4")  # 94999.9 + 5 x 0.1, not the ask
        assert order.status.is_open
        with trio.fail_after(2):
            while order.client_order_id in r.executor.following:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert trio.current_time() - started <= 1.0 + 0.05  # chaseMaxMs
        assert order.status is OrderStatus.CANCELED
        assert order.filled_qty == 0
        assert not r.shadow.positions


async def test_taker_chase_fills_when_it_catches_the_market(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        order, plan = entry(Style.TAKER, "94999.9")
        await r.executor.place_entry(order, plan)
        r.quote("95000.1", "95000.2")
        with trio.fail_after(2):
            while order.status.is_open:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert order.status is OrderStatus.FILLED
        assert order.avg_fill_price == D("95000.2")
        assert r.shadow.positions["BTCUSDT"].position.size == D("0.100")


def test_take_profit_split() -> None:
    from titan_trio.execution.protection import split_targets

    assert split_targets(D("0.100"), 2, BTC) == [D("0.050"), D("0.050")]
    assert split_targets(D("0.100"), 3, BTC) == [D("0.033"), D("0.033"), D("0.034")]
    assert split_targets(D("0.001"), 3, BTC) == [D("0.001")]  # too small to split
    assert split_targets(D("0.100"), 0, BTC) == []
