"""Reconciliation heals what a kill leaves apart: fills the exchange committed that the
shadow state never applied are replayed once at start, so positions, the balance and the
trade list are rebuilt from what happened (not adopted whole); a position nobody here
knows of is closed when ``reconcile.adoptUnknown`` is false; until the first run has
finished the service says ``starting`` and takes no entries."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import trio

import titan_trio.brokers.paper as paper
from tests.helpers import eventually, service
from tests.integration.test_risk import api, open_long, prepare_msg, signal
from titan_trio.brokers.base import BrokerEvent, FillEvent
from titan_trio.brokers.paper import PaperBroker
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.orders import (
    Fill,
    Order,
    OrderEventKind,
    OrderRequest,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    TimeInForce,
)
from titan_trio.domain.positions import Position
from titan_trio.engine import Engine
from titan_trio.errors import BrokerRejected
from titan_trio.state import records
from titan_trio.state.reconcile import IN_FLIGHT_QUIET_MS, Reconciler


def lose_fills(engine: Engine) -> list[Fill]:
    """From now on the shadow state never hears from the exchange, as when the process
    dies between the exchange's commit and its own (what the order placer recorded from
    the exchange's answer stays); returns the fills it missed."""
    lost: list[Fill] = []

    async def nothing(events: list[BrokerEvent]) -> list[Fill]:
        lost.extend(e.fill for e in events if isinstance(e, FillEvent))
        return []

    engine.sync.apply = nothing  # type: ignore[method-assign]
    return lost


def reconciliation_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Reconciliation" in r.getMessage()]


async def test_an_entry_fill_lost_by_a_kill_is_replayed_once_with_its_plan(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = risk_config()
    async with service(cfg) as engine:
        lost = lose_fills(engine)
        ready = await signal(engine, prepare_msg(engine, "lost-fill-1", stop=0.99))
        assert ready.status == "prepared", ready
        accepted = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "lost-fill-1"})
        assert accepted.status == "accepted", accepted
        await eventually(lambda: lost)
        assert "BTCUSDT" not in engine.shadow.positions  # the exchange holds it, we do not
        stop = Decimal(str(prepare_msg(engine, "x", stop=0.99)["stop_loss"]))
    with caplog.at_level(logging.WARNING, logger="titan.reconcile"):
        async with service(cfg) as engine:
            assert engine.broker is not None
            rec = engine.shadow.positions["BTCUSDT"]
            held = (await engine.broker.positions())[0]
            assert rec.position.size == held.size == sum(f.qty for f in lost)
            assert rec.position.entry_price == held.entry_price
            assert rec.signal_id == "lost-fill-1"  # rebuilt from the fill, with its plan
            assert abs(rec.stop_loss - stop) < stop * Decimal("0.002")  # not the 2 % default
            assert engine.shadow.balance == await engine.broker.balance()
            at_exchange = await engine.broker.stop_loss("BTCUSDT")  # on the tick grid
            assert at_exchange is not None and abs(at_exchange - rec.stop_loss) < 1
            report = engine.reconciler.last
            assert report is not None and not report.errors
            # nothing was adopted whole: the replayed fills explain everything
            assert all("fill_only_at_broker" in line for line in report.differences), report
            again = await engine.reconciler.reconcile()
            assert again.differences == [] and again.errors == []
    lines = reconciliation_lines(caplog)
    assert len([line for line in lines if "fill_only_at_broker" in line]) == len(lost)
    assert all(f.exec_id in " ".join(lines) for f in lost)


async def test_a_closing_fill_lost_by_a_kill_becomes_its_trade_at_start(
    risk_config: Callable[..., Config],
) -> None:
    cfg = risk_config()
    async with service(cfg) as engine:
        await open_long(engine, "lost-close-1")
        lost = lose_fills(engine)
        closed = await signal(
            engine, {"type": "CLOSE", "id": 3, "signal_id": "lost-close-x", "symbol": "BTCUSDT"}
        )
        assert closed.status == "closed", closed
        await eventually(lambda: lost)
        assert "BTCUSDT" in engine.shadow.positions  # a ghost until reconciled
    async with service(cfg) as engine, api(engine) as client:
        assert engine.broker is not None
        assert "BTCUSDT" not in engine.shadow.positions
        assert engine.shadow.balance == await engine.broker.balance()
        trades = (await client.get("/api/trades")).json()
        assert [t["signal_id"] for t in trades] == ["lost-close-1"]
        assert engine.reconciler.last is not None
        assert not any("position_only_here" in d for d in engine.reconciler.last.differences)
        # the symbol is free again
        assert (await signal(engine, prepare_msg(engine, "after-1"))).status == "prepared"


async def test_a_fill_replayed_twice_counts_once(risk_config: Callable[..., Config]) -> None:
    async with service(risk_config()) as engine:
        lost = lose_fills(engine)
        await signal(engine, prepare_msg(engine, "twice-1"))
        await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "twice-1"})
        await eventually(lambda: lost)
        del engine.sync.apply  # events reach the shadow state again
        first = await engine.sync.replay(lost)
        second = await engine.sync.replay(lost)
        assert first == lost and second == []
        balance = engine.shadow.balance
        report = await engine.reconciler.reconcile()
        assert report.differences == [], report
        assert engine.shadow.balance == balance == await engine.broker.balance()


@pytest.mark.parametrize("adopt", [True, False])
async def test_a_position_nobody_here_knows_of_is_adopted_or_closed_as_configured(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture, adopt: bool
) -> None:
    cfg = risk_config(reconcile={"adoptUnknown": adopt})
    async with service(cfg) as engine, api(engine) as client:
        assert engine.broker is not None
        exchange = engine.broker.exchange
        # A position made at the exchange by hand: nothing here has a record of it.
        mid = engine.hub.book.get("ETHUSDT").mid
        exchange.positions["ETHUSDT"] = Position("ETHUSDT", Decimal("2"), mid)
        with caplog.at_level(logging.WARNING, logger="titan.reconcile"):
            report = (await client.post("/api/state/reconcile")).json()
        assert any("position_only_at_broker ETHUSDT" in d for d in report["differences"])
        if adopt:
            assert engine.shadow.positions["ETHUSDT"].position.size == Decimal(2)
            assert await engine.broker.stop_loss("ETHUSDT") is not None
        else:
            assert any("closed at market" in a for a in report["actions"]), report
            await eventually(lambda: "ETHUSDT" not in engine.shadow.positions)
            assert not await engine.broker.positions()
            trades = (await client.get("/api/trades?symbol=ETHUSDT")).json()
            assert len(trades) == 1 and trades[0]["qty"] == 2
            assert any("adoptUnknown is false" in line for line in reconciliation_lines(caplog))


async def test_until_the_first_reconciliation_finished_health_says_starting_and_no_entry_is_taken(
    risk_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    held = trio.Event()
    reconcile = Reconciler._reconcile

    async def slow_first(self: Reconciler, report: Any) -> None:
        await held.wait()  # a slow exchange at start
        await reconcile(self, report)

    monkeypatch.setattr(Reconciler, "_reconcile", slow_first)
    async with service(risk_config(), ready=False) as engine, api(engine) as client:
        health = await client.get("/api/health")
        assert health.status_code == 503 and health.json()["status"] == "starting"
        refused = await signal(engine, prepare_msg(engine, "early-1"))
        assert refused.reason == "BUSY" and "starting" in (refused.message or ""), refused
        pong = await signal(engine, {"type": "PING", "id": 9})
        assert pong.status == "pong"
        # no equity mark either: peak and day start wait for the healed account
        assert engine.risk.tracker.last_equity == 0
        held.set()
        await engine.reconciler.ready.wait()
        await eventually(lambda: engine.risk.tracker.last_equity > 0)
        health = await client.get("/api/health")
        assert health.status_code == 200 and health.json()["status"] == "healthy"
        assert (await signal(engine, prepare_msg(engine, "early-2"))).status == "prepared"


def resting_buy(
    engine: Engine, coid: str, status: OrderStatus = OrderStatus.PENDING_SUBMIT
) -> Order:
    """A post-only BUY 1 % under the market: it rests."""
    instrument = engine.instruments["BTCUSDT"]
    price = instrument.floor_price(engine.hub.book.get("BTCUSDT").mid * Decimal("0.99"))
    return Order(
        coid,
        "BTCUSDT",
        Side.BUY,
        OrderType.LIMIT,
        Decimal("0.010"),
        price=price,
        time_in_force=TimeInForce.POST_ONLY,
        leverage=Decimal(5),
        status=status,
        created_ms=now_ms(),
        updated_ms=now_ms(),
    )


def request_of(order: Order) -> OrderRequest:
    return OrderRequest(
        order.client_order_id,
        order.symbol,
        order.side,
        order.order_type,
        order.qty,
        order.price,
        order.time_in_force,
        order.reduce_only,
        order.leverage,
    )


async def test_an_order_in_flight_with_no_news_is_asked_for_and_lost_only_after_three_misses(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    async with service(risk_config(execution={"makerTimeoutMs": 60000})) as engine:
        assert engine.broker is not None
        quiet = now_ms() - IN_FLIGHT_QUIET_MS - 1
        # Its answer was lost on the way: the exchange has it, we have it as SUBMITTED.
        known = resting_buy(engine, "tte-answer-lost")
        await engine.broker.submit(request_of(known))
        # Sent, but the exchange never had it.
        unknown = resting_buy(engine, "tte-never-arrived")
        for order in (known, unknown):
            order.apply(OrderUpdate(OrderEventKind.SUBMITTED, quiet))
            engine.shadow.track(order)
        with caplog.at_level(logging.WARNING, logger="titan.reconcile"):
            first = await engine.reconciler.reconcile()
            assert known.status is OrderStatus.ACCEPTED  # settled by its id
            assert unknown.status is OrderStatus.SUBMITTED  # one "not found" is no proof
            assert any("1 of 3" in a for a in first.actions), first
            await engine.reconciler.reconcile()
            assert unknown.status is OrderStatus.SUBMITTED
            third = await engine.reconciler.reconcile()
        assert unknown.status is OrderStatus.EXPIRED
        assert "tte-never-arrived" not in engine.shadow.orders
        assert any("tte-never-arrived" in d and "EXPIRED" in d for d in third.differences)
        assert any("not found at the broker in 3" in r.getMessage() for r in caplog.records)


async def test_a_resting_entry_adopted_from_the_broker_gets_its_timeout(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config(execution={"makerTimeoutMs": 300})) as engine:
        assert engine.broker is not None
        stray = resting_buy(engine, "tte-only-at-broker")
        await engine.broker.submit(request_of(stray))
        await eventually(lambda: "tte-only-at-broker" in engine.shadow.orders)
        del engine.shadow.orders["tte-only-at-broker"]  # its record was lost
        report = await engine.reconciler.reconcile()
        assert any("order_only_at_broker tte-only-at-broker" in d for d in report.differences)
        # made just now, so it rests for the 300 ms timeout and is then cancelled
        await eventually(
            lambda: (
                not engine.broker.exchange.open_orders()
                and "tte-only-at-broker" not in engine.shadow.orders
            ),
            limit_s=5,
        )


async def lost_entries(engine: Engine, symbols: list[str]) -> list[Fill]:
    """Entries the exchange fills and the shadow state never hears of, one per symbol."""
    lost = lose_fills(engine)
    for symbol in symbols:
        sid = f"lost-{symbol}"
        assert (await signal(engine, prepare_msg(engine, sid, symbol))).status == "prepared"
        reply = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": sid})
        assert reply.status == "accepted", reply
        await eventually(lambda s=symbol: any(f.symbol == s for f in lost))
    return lost


async def test_missed_fills_over_many_pages_are_all_replayed_once_before_comparing(
    risk_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = risk_config(risk={"maxRiskPct": 0.1, "phase3RiskPct": 0.1})
    async with service(cfg) as engine:
        lost = await lost_entries(engine, ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    monkeypatch.setattr(paper, "FILLS_PAGE", 2)  # the journal read two fills at a time
    async with service(cfg) as engine:
        assert engine.broker is not None
        first = engine.reconciler.last
        assert first is not None and not first.errors
        assert sum("fill_only_at_broker" in d for d in first.differences) == len(lost)
        assert not any("position_" in d for d in first.differences)  # none taken whole
        held = {p.symbol: p.size for p in await engine.broker.positions()}
        assert {s: r.position.size for s, r in engine.shadow.positions.items()} == held
        assert engine.shadow.balance == await engine.broker.balance()
        second = await engine.reconciler.reconcile()
        assert second.differences == [], second  # nothing applied twice


async def test_an_order_filled_before_the_fill_journal_existed_does_not_block_its_symbol(
    risk_config: Callable[..., Config],
) -> None:
    """A database from before the fill journal: the entry's fills are nowhere, its order
    says FILLED. The position is taken whole, and the order stops counting as exposure
    still to come: once the position is closed the symbol is free."""
    cfg = risk_config()
    async with service(cfg) as engine:
        await lost_entries(engine, ["BTCUSDT"])
    with sqlite3.connect(cfg.database.path) as db:
        db.execute("DELETE FROM paper_fills")  # the older version kept no fill history
    async with service(cfg) as engine:
        assert engine.broker is not None
        assert not engine.shadow.unsettled and not engine.shadow.entry_exposure()
        lines = engine.reconciler.last.differences if engine.reconciler.last else []
        assert any("no fill history" in d for d in lines), lines
        assert any("position_only_at_broker BTCUSDT" in d for d in lines), lines
        closed = await signal(
            engine, {"type": "CLOSE", "id": 3, "signal_id": "close-old", "symbol": "BTCUSDT"}
        )
        assert closed.status == "closed", closed
        await eventually(lambda: "BTCUSDT" not in engine.shadow.positions)
        again = await signal(engine, prepare_msg(engine, "after-old", "BTCUSDT"))
        assert again.status == "prepared", again


async def test_a_first_run_that_failed_once_still_puts_missing_stops_back(
    risk_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = risk_config()
    async with service(cfg) as engine:
        assert engine.broker is not None
        await open_long(engine, "unprotected-1")
        await eventually(lambda: engine.broker.exchange.stop_losses.get("BTCUSDT"))
        await engine.broker.set_stop_loss("BTCUSDT", None)  # killed before the stop was set
    account = PaperBroker.account
    calls: list[int] = []

    async def blip_once(self: PaperBroker, fills_since_ms: int | None = None) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise BrokerRejected("EXCHANGE_UNAVAILABLE", "a blip at start")
        return await account(self, fills_since_ms)

    monkeypatch.setattr(PaperBroker, "account", blip_once)
    async with service(cfg) as engine:
        assert engine.broker is not None
        assert engine.reconciler.runs["error"] == 1
        assert await engine.broker.stop_loss("BTCUSDT") is not None


async def test_with_adopt_unknown_false_a_close_that_fails_is_reported_and_tried_again(
    risk_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with service(risk_config(reconcile={"adoptUnknown": False})) as engine:
        assert engine.broker is not None
        mid = engine.hub.book.get("ETHUSDT").mid
        engine.broker.exchange.positions["ETHUSDT"] = Position("ETHUSDT", Decimal(2), mid)
        submit = engine.broker.submit

        async def refuse(request: Any) -> Any:
            raise BrokerRejected("EXCHANGE_UNAVAILABLE", "maintenance")

        monkeypatch.setattr(engine.broker, "submit", refuse)
        failed = await engine.reconciler.reconcile()
        assert any("maintenance" in e for e in failed.errors), failed
        assert any("NOT closed" in a for a in failed.actions), failed
        # held meanwhile: recorded and protected
        assert "ETHUSDT" in engine.shadow.positions
        assert await engine.broker.stop_loss("ETHUSDT") is not None
        monkeypatch.setattr(engine.broker, "submit", submit)
        retried = await engine.reconciler.reconcile()
        assert any("closed at market" in a for a in retried.actions), retried
        assert not await engine.broker.positions()


async def test_an_order_that_finishes_while_healing_is_not_opened_again(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config(execution={"makerTimeoutMs": 60000})) as engine:
        broker = engine.broker
        assert broker is not None
        stray = resting_buy(engine, "tte-stale-1")
        await broker.submit(request_of(stray))
        await eventually(lambda: "tte-stale-1" in engine.shadow.orders)
        del engine.shadow.orders["tte-stale-1"]  # its record was lost
        mid = engine.hub.book.get("ETHUSDT").mid
        broker.exchange.positions["ETHUSDT"] = Position("ETHUSDT", Decimal(2), mid)
        store = engine.reconciler.store

        class CancelWhileHealing:
            """The ETH heal's write, during which the order finishes at the exchange."""

            async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
                if fn is records.set_position:
                    await broker.cancel("BTCUSDT", "tte-stale-1")
                    await eventually(lambda: engine.sync.events_done == broker.events_sent)
                return await store.call(fn, *args, **kwargs)

        engine.reconciler.store = CancelWhileHealing()  # type: ignore[assignment]
        await engine.reconciler.reconcile()
        engine.reconciler.store = store
        assert not broker.exchange.open_orders()
        assert "tte-stale-1" not in engine.shadow.orders
