"""Execution styles end to end on the paper broker, with trio's MockClock: the maker
timeout and the taker chase run in virtual time (no real waiting)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal as D
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing

from titan_trio.brokers.paper import PaperBroker
from titan_trio.clock import now_ms
from titan_trio.config import BrokerConfig, ExecutionConfig
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from titan_trio.domain.quotes import Quote
from titan_trio.errors import BrokerRejected
from titan_trio.execution.executor import Executor
from titan_trio.execution.placement import OrderPlacer
from titan_trio.execution.protection import Protector
from titan_trio.execution.styles import EntryPlan, Style, choose_style, entry_price
from titan_trio.feeds.hub import MarketHub
from titan_trio.metrics import Metrics
from titan_trio.risk.breaker import OrderPurpose, TradingState, order_allowed
from titan_trio.risk.sizing import EntryRejected
from titan_trio.state import records
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


def market_010(coid: str, side: Side, *, reduce_only: bool = False) -> Order:
    """A market order for 0.010 BTCUSDT at 5x."""
    return Order(
        coid,
        "BTCUSDT",
        side,
        OrderType.MARKET,
        D("0.010"),
        time_in_force=TimeInForce.IOC,
        reduce_only=reduce_only,
        leverage=D(5),
    )


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


async def test_a_cancelled_broker_call_still_reports_its_fills(tmp_path: Path) -> None:
    """The exchange changed in memory; the caller is cancelled while the change is being
    saved: the shadow state must still hear of the fill (no silent drift)."""
    hub = MarketHub()
    async with trio.open_nursery() as nursery:
        store = await nursery.start(Store(str(tmp_path / "t.db"), inline=False).run)
        broker = PaperBroker(BrokerConfig(), {"BTCUSDT": BTC}, hub, store)
        await nursery.start(broker.run)
        shadow = ShadowState(await broker.balance())
        await nursery.start(ShadowSync(shadow, store, broker.events).run)
        hub.publish(
            Quote("BTCUSDT", D("95000.0"), D("95000.1"), D(10), D(10), D(95000), now_ms(), "test")
        )
        placer = OrderPlacer(broker, shadow, store, Metrics(lambda: None))  # type: ignore[arg-type,return-value]
        order, _plan = entry(Style.TAKER, "94999.9")
        await placer.place(order, OrderPurpose.ENTRY)  # resting below the ask
        with trio.CancelScope() as scope:

            async def cancel_once_filled() -> None:
                while broker.exchange.orders[order.client_order_id].status.is_open:
                    await trio.lowlevel.checkpoint()
                scope.cancel()  # the fill happened in memory; its save is under way

            nursery.start_soon(cancel_once_filled)
            await broker.amend("BTCUSDT", order.client_order_id, D("95000.1"))
        with trio.fail_after(5):
            while shadow.balance != await broker.balance():  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert shadow.positions["BTCUSDT"].position.size == D("0.100")
        assert order.status is OrderStatus.FILLED
        nursery.cancel_scope.cancel()


async def test_no_strategy_order_is_sent_once_trading_halted(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        placer = OrderPlacer(
            r.broker,
            r.shadow,
            r.executor.placer.store,
            r.executor.placer.metrics,
            lambda purpose: (
                None if order_allowed(TradingState.HALTED, purpose) else "trading is HALTED"
            ),
        )
        order, _plan = entry(Style.TAKER, "95000.1")
        with pytest.raises(EntryRejected) as info:
            await placer.place(order, OrderPurpose.ENTRY)
        assert info.value.reason.value == "TRADING_HALTED"
        assert order.status is OrderStatus.DENIED  # refused by our own checks
        assert order.client_order_id not in r.broker.exchange.orders  # never sent
        assert not r.shadow.orders

        def close(coid: str) -> Order:
            return Order(
                coid,
                "BTCUSDT",
                Side.SELL,
                OrderType.MARKET,
                D("0.001"),
                time_in_force=TimeInForce.IOC,
                reduce_only=True,
                leverage=D(5),
            )

        # a strategy's CLOSE is refused too while HALTED (SPEC §6), never sent
        with pytest.raises(EntryRejected) as info:
            await placer.place(close("exit-1"), OrderPurpose.CLOSE)
        assert info.value.reason.value == "TRADING_HALTED"
        assert "exit-1" not in r.broker.exchange.orders
        # the operator's flatten and the service's protection still go out
        for n, purpose in enumerate((OrderPurpose.FLATTEN, OrderPurpose.PROTECTION)):
            with pytest.raises(BrokerRejected) as refused:  # nothing to reduce, but sent
                await placer.place(close(f"exit-{n + 2}"), purpose)
            assert refused.value.reason == "REDUCE_ONLY_WOULD_NOT_REDUCE"


async def test_a_stop_the_market_already_passed_closes_the_position(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    async with rig(tmp_path) as r:
        market = Order(
            "buy-1",
            "BTCUSDT",
            Side.BUY,
            OrderType.MARKET,
            D("0.010"),
            time_in_force=TimeInForce.IOC,
            leverage=D(5),
        )
        await r.executor.placer.place(market, OrderPurpose.ENTRY)
        with trio.fail_after(1):
            while "BTCUSDT" not in r.shadow.positions:  # noqa: ASYNC110
                await trio.sleep(0.01)
        r.quote("94000.0", "94000.1")  # already below the stop the signal asked for
        protector = Protector(r.broker, r.executor.placer, {"BTCUSDT": BTC}, r.hub)
        await protector._set_stop("BTCUSDT", D("94500.0"))
        with trio.fail_after(1):
            while "BTCUSDT" in r.shadow.positions:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert await r.broker.positions() == []


async def test_a_stop_for_a_position_closed_meanwhile_is_no_protection_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(tmp_path) as r:
        placer = r.executor.placer
        market = market_010("buy-gone", Side.BUY)
        await placer.place(market, OrderPurpose.ENTRY)
        with trio.fail_after(1):
            while "BTCUSDT" not in r.shadow.positions:  # noqa: ASYNC110
                await trio.sleep(0.01)
        set_stop_loss = r.broker.set_stop_loss

        async def closed_first(symbol: str, stop: D | None) -> None:
            # a CLOSE reaches the exchange between the protector's look and its request
            exit_ = market_010("sell-gone", Side.SELL, reduce_only=True)
            await placer.place(exit_, OrderPurpose.CLOSE)
            await set_stop_loss(symbol, stop)

        r.broker.set_stop_loss = closed_first  # type: ignore[method-assign]
        protector = Protector(r.broker, placer, {"BTCUSDT": BTC}, r.hub)
        with caplog.at_level(logging.INFO, logger="titan.protection"):
            await protector._set_stop("BTCUSDT", D("94000.0"))
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert "position is closed" in caplog.records[-1].getMessage()
        assert placer.metrics.protection_failures._value.get() == 0
        assert await r.broker.positions() == []


async def test_protecting_held_positions_never_brings_back_one_a_fill_closed_meanwhile(
    tmp_path: Path, clock: trio.testing.MockClock
) -> None:
    # The chaos test's phantom: after a restart, reconciliation's protection pass read
    # the exchange's positions, a fill closed one here while it asked for the stop, and
    # a record made from the old list put the closed position back (in memory and in
    # the database), where the next reconciliation found a position the exchange lacks.
    async with rig(tmp_path) as r:
        placer = r.executor.placer
        entry_ = market_010("buy-held", Side.BUY)
        await placer.place(entry_, OrderPurpose.ENTRY)
        with trio.fail_after(1):
            while "BTCUSDT" not in r.shadow.positions:  # noqa: ASYNC110
                await trio.sleep(0.01)
        open_orders = r.broker.open_orders

        async def closed_meanwhile() -> list[Order]:
            exit_ = market_010("sell-held", Side.SELL, reduce_only=True)
            await placer.place(exit_, OrderPurpose.CLOSE)
            with trio.fail_after(1):
                while "BTCUSDT" in r.shadow.positions:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            return await open_orders()

        # the positions were read just before: the close comes between two requests
        r.broker.open_orders = closed_meanwhile  # type: ignore[method-assign]
        protector = Protector(r.broker, placer, {"BTCUSDT": BTC}, r.hub)
        await protector.protect_held(r.shadow.positions)
        assert "BTCUSDT" not in r.shadow.positions
        assert await placer.store.call(records.load_positions) == []
        assert await r.broker.positions() == []


async def test_a_take_profit_that_cannot_be_placed_leaves_the_stop_and_the_service_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(tmp_path) as r, trio.open_nursery() as nursery:
        protector = Protector(r.broker, r.executor.placer, {"BTCUSDT": BTC}, r.hub)
        await nursery.start(protector.run)
        market = Order(
            "buy-tp",
            "BTCUSDT",
            Side.BUY,
            OrderType.MARKET,
            D("0.010"),
            time_in_force=TimeInForce.IOC,
            leverage=D(5),
            stop_loss=D("94000.0"),
            take_profits=(D("1e30"),),  # no tick grid holds it: the arithmetic fails
        )
        await r.executor.placer.place(market, OrderPurpose.ENTRY)
        with trio.fail_after(1):
            while market.filled_qty == 0:  # noqa: ASYNC110 - the shadow sync updates it
                await trio.sleep(0.01)
        await r.broker.set_stop_loss("BTCUSDT", D("94000.0"))
        with caplog.at_level(logging.ERROR, logger="titan.protection"):
            protector.notice_order_finished(market)
            with trio.fail_after(1):
                while not caplog.records:  # noqa: ASYNC110
                    await trio.sleep(0.01)
        assert "take profits of BTCUSDT" in caplog.records[0].getMessage()
        assert r.executor.placer.metrics.protection_failures._value.get() == 1
        assert await r.broker.stop_loss("BTCUSDT") == D("94000.0")  # the stop stays
        # the protector (and the service around it) still works for the next position
        protector.notice_order_finished(market)
        with trio.fail_after(1):
            while len(caplog.records) < 2:  # noqa: ASYNC110
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_a_cancel_is_pending_until_answered_and_undone_when_refused(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        placer = r.executor.placer
        order, _plan = entry(Style.MAKER, "94990.0")
        await placer.place(order, OrderPurpose.ENTRY)
        with trio.fail_after(1):
            while order.status is not OrderStatus.ACCEPTED:  # noqa: ASYNC110
                await trio.sleep(0.01)
        cancel = r.broker.cancel
        seen: list[OrderStatus] = []

        async def refused(symbol: str, coid: str) -> Order:
            seen.append(order.status)
            raise BrokerRejected("EXCHANGE_UNAVAILABLE", "try later")

        r.broker.cancel = refused  # type: ignore[method-assign]
        with pytest.raises(BrokerRejected):
            await placer.cancel("BTCUSDT", order.client_order_id)
        assert seen == [OrderStatus.PENDING_CANCEL]  # while the request was out
        assert order.status is OrderStatus.ACCEPTED  # the exchange kept it
        r.broker.cancel = cancel  # type: ignore[method-assign]
        await placer.cancel("BTCUSDT", order.client_order_id)
        with trio.fail_after(1):
            while order.status is not OrderStatus.CANCELED:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert order.history[-2:] == [OrderStatus.ACCEPTED, OrderStatus.PENDING_CANCEL]
