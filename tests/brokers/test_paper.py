"""The paper broker around the exchange model: what a close larger than the book looks
like to the callers (emergency flatten, the stop loss), through the real store, event
stream and shadow state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal as D
from pathlib import Path

import pytest
import trio

from tests.brokers.test_paper_depth import book
from tests.helpers import eventually
from titan_trio.brokers.paper import PaperBroker
from titan_trio.clock import now_ms
from titan_trio.config import BrokerConfig
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.orders import OrderRequest, OrderStatus, OrderType, Side
from titan_trio.execution.flatten import Flattener
from titan_trio.execution.placement import OrderPlacer
from titan_trio.feeds.hub import MarketHub
from titan_trio.metrics import Metrics
from titan_trio.state.shadow import ShadowState
from titan_trio.state.store import Store
from titan_trio.state.sync import ShadowSync

BTC = Instrument("BTCUSDT", D("0.10"), D("0.001"), D("0.001"), D("5"), D("100"))


@dataclass
class Rig:
    hub: MarketHub
    broker: PaperBroker
    shadow: ShadowState
    flattener: Flattener

    def publish(self, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> None:
        self.hub.publish(book(bids, asks, now_ms()))

    async def open_long(self, qty: str) -> None:
        self.publish([("30000.0", "10")], [("30000.1", "10")])
        await self.broker.submit(
            OrderRequest("open", "BTCUSDT", Side.BUY, OrderType.MARKET, D(qty), leverage=D(5))
        )
        await eventually(lambda: "BTCUSDT" in self.shadow.positions)


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
        placer = OrderPlacer(broker, shadow, store, metrics)
        yield Rig(hub, broker, shadow, Flattener(broker, shadow, placer, ["BTCUSDT"]))
        nursery.cancel_scope.cancel()


# 0.040 on the bids, over three levels
THIN_BIDS = [("30000.0", "0.010"), ("29999.7", "0.010"), ("29999.2", "0.020")]


async def test_flatten_larger_than_the_book_reports_what_it_closed(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        await r.open_long("0.100")
        r.publish(THIN_BIDS, [("30000.1", "10")])
        report = await r.flattener.flatten("test")

        (closed,) = report.closed_positions
        assert closed["qty"] == "0.100"
        assert closed["status"] == OrderStatus.CANCELED.value
        assert D(closed["filled_qty"]) == D("0.040")
        (held,) = await r.broker.positions()
        assert held.size == D("0.060")
        await eventually(lambda: r.shadow.positions["BTCUSDT"].position.size == D("0.060"))

        # flattening again on a new quote closes the rest
        r.publish([("30000.0", "10")], [("30000.1", "10")])
        report = await r.flattener.flatten("test again")
        (closed,) = report.closed_positions
        assert (closed["qty"], closed["status"]) == ("0.060", OrderStatus.FILLED.value)
        assert await r.broker.positions() == []


async def test_stop_loss_larger_than_the_book_closes_in_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with rig(tmp_path) as r:
        await r.open_long("0.100")
        await r.broker.set_stop_loss("BTCUSDT", D("29999.5"))
        with caplog.at_level(logging.WARNING, logger="titan.broker.paper"):
            # mid 29999.05 is through the stop; the bids hold 0.050
            r.publish([("29999.0", "0.030"), ("29998.5", "0.020")], [("29999.1", "10")])
            await eventually(lambda: r.shadow.positions["BTCUSDT"].position.size == D("0.050"))
        assert "0.050 of 0.100 closed" in caplog.text
        assert "fires again on the next quote" in caplog.text
        assert await r.broker.stop_loss("BTCUSDT") == D("29999.5")

        r.publish([("29999.0", "10")], [("29999.1", "10")])
        await eventually(lambda: "BTCUSDT" not in r.shadow.positions)
        assert await r.broker.positions() == []
        assert await r.broker.stop_loss("BTCUSDT") is None
