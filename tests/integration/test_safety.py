"""Defects that lose money or stop the service, each through the real service: the
breaker reset re-bases, HALTED refuses every strategy order first, a failed save stops
entries until the database works again, flatten reaches what only the broker knows,
a CLOSE right after a resting CONFIRM, fat-fingered prices.

As in test_risk, the simulated market publishes once and then stays quiet, so every
later price is one the test publishes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import trio

from tests.helpers import eventually, service
from tests.integration.test_risk import api, open_long, prepare_msg, publish, signal
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.orders import Order, OrderRequest, OrderType, Side, TimeInForce
from titan_trio.domain.positions import Position
from titan_trio.errors import BrokerRejected, StoreError
from titan_trio.state import records
from titan_trio.state.shadow import PositionRecord


async def test_a_breaker_reset_rebases_so_the_next_mark_does_not_trip_it_again(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = risk_config(risk={"maxRiskPct": 20, "phase3RiskPct": 20})
    async with service(cfg) as engine, api(engine) as client:
        start = engine.hub.book.get("BTCUSDT").mid
        await open_long(engine, "rb-1", stop=0.97)
        low = start * Decimal("0.984")  # about 8 % down at 5x: trips, flattens
        publish(engine, "BTCUSDT", low)
        await eventually(lambda: engine.risk.state.tripped)
        await eventually(lambda: not engine.shadow.positions)
        equity = engine.equity_monitor.equity()
        assert equity < Decimal(9400)  # the loss is real and stays
        with caplog.at_level(logging.WARNING, logger="titan.risk"):
            reset = await client.post(
                "/api/risk/breaker/reset", headers={"X-Titan-Operator": "alice"}
            )
        assert reset.json()["reset"] is True and reset.json()["trading_state"] == "ACTIVE"
        line = next(r.getMessage() for r in caplog.records if "reset by alice" in r.getMessage())
        assert f"peak 10000.00 -> {equity:.2f}" in line and "losing streak 0" in line
        risk = (await client.get("/api/risk")).json()
        assert Decimal(str(risk["peak_equity"])) == equity
        assert Decimal(str(risk["day_start_equity"])) == equity
        # Trading again, a little lower: the next marks judge from the re-based peak.
        await open_long(engine, "rb-2", stop=0.97)
        for n in range(1, 4):
            before = engine.risk.tracker.last_equity
            publish(engine, "BTCUSDT", low * (1 - Decimal("0.0005") * n))
            await eventually(lambda b=before: engine.risk.tracker.last_equity != b)
        assert not engine.risk.state.tripped
        assert "BTCUSDT" in engine.shadow.positions
        closed = await signal(
            engine, {"type": "CLOSE", "id": 1, "signal_id": "rb-x", "symbol": "BTCUSDT"}
        )
        assert closed.status == "closed", closed
        await eventually(lambda: not engine.shadow.positions)
        peak = engine.risk.tracker.peak_equity
        assert peak < Decimal(9400)
    async with service(cfg) as engine:  # one record: the restart keeps the re-based peak
        assert engine.risk.tracker.peak_equity == peak
        assert not engine.risk.state.tripped


async def test_a_reset_can_leave_trading_reducing(risk_config: Callable[..., Config]) -> None:
    cfg = risk_config(risk={"maxConsecutiveLosses": 1, "flattenOnBreaker": False})
    async with service(cfg) as engine, api(engine) as client:
        await open_long(engine, "rr-1")
        closed = await signal(
            engine, {"type": "CLOSE", "id": 1, "signal_id": "rr-x", "symbol": "BTCUSDT"}
        )
        assert closed.status == "closed", closed
        await eventually(lambda: engine.risk.state.tripped)  # one losing trade (fees)
        bad = await client.post("/api/risk/breaker/reset", params={"trading_state": "HALTED"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_trading_state"
        assert engine.risk.state.tripped  # a refused request changed nothing
        reset = await client.post("/api/risk/breaker/reset", params={"trading_state": "REDUCING"})
        assert reset.json()["trading_state"] == "REDUCING"
        assert (await signal(engine, prepare_msg(engine, "rr-2"))).reason == "TRADING_HALTED"


async def test_halted_refuses_every_strategy_order_before_any_other_reason(
    risk_config: Callable[..., Config],
) -> None:
    cfg = risk_config(risk={"maxRiskPct": 20, "phase3RiskPct": 20, "flattenOnBreaker": False})
    async with service(cfg) as engine:
        start = engine.hub.book.get("BTCUSDT").mid
        await open_long(engine, "h-1", stop=0.97)
        ready = await signal(engine, prepare_msg(engine, "h-2", "ETHUSDT"))
        assert ready.status == "prepared", ready
        publish(engine, "BTCUSDT", start * Decimal("0.984"))
        await eventually(lambda: engine.risk.state.tripped)
        assert engine.risk.trading_state.value == "HALTED"
        close = await signal(
            engine, {"type": "CLOSE", "id": 1, "signal_id": "h-x", "symbol": "BTCUSDT"}
        )
        assert (close.status, close.reason) == ("rejected", "TRADING_HALTED"), close
        assert "BTCUSDT" in engine.shadow.positions  # nothing was sent
        unknown = {**prepare_msg(engine, "h-3"), "symbol": "DOGEUSDT"}
        assert (await signal(engine, unknown)).reason == "TRADING_HALTED"
        confirm = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "h-2"})
        assert confirm.reason == "TRADING_HALTED", confirm
        assert "ETHUSDT" not in engine.shadow.positions
        pong = await signal(engine, {"type": "PING", "id": 3})
        assert pong.trading_state == "HALTED"


class FailingWrites:
    """Makes the service's database refuse writes while ``failing`` is set, as a full
    disk would: every write (or only those of ``only``) raises the store's own error
    with SQLite's words; reads still work, as they do on a full disk."""

    READS = (records.kv_get, records.signal_status, records.paper_open_orders)

    def __init__(self, engine: Any, only: tuple[Any, ...] = (), everything: bool = False) -> None:
        self.failing = False
        self.only = only
        self.everything = everything  # reads too, as when they share a failing batch
        self._call = engine.store.call
        engine.store.call = self.call

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        hit = fn in self.only if self.only else self.everything or fn not in self.READS
        if self.failing and hit:
            raise StoreError("database or disk is full")
        return await self._call(fn, *args, **kwargs)


SERVICE_RECORDS = (
    records.run_all,
    records.journal_signal,
    records.journal_order,
    records.set_signal_status,
    records.save_order,
)


async def test_a_failed_save_stops_entries_and_trading_recovers_by_itself(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    async with service(risk_config()) as engine, api(engine) as client:
        await open_long(engine, "fs-1")
        await eventually(lambda: [o for o in engine.shadow.orders.values() if o.reduce_only])
        # The service's own records fail; the paper exchange stands for a remote
        # exchange, whose account does not live on our disk, so it keeps working.
        writes = FailingWrites(engine, only=SERVICE_RECORDS)
        writes.failing = True
        with caplog.at_level(logging.CRITICAL):
            # A fill the shadow state cannot save (a take profit filling at the exchange).
            mid = engine.hub.book.get("BTCUSDT").mid
            publish(engine, "BTCUSDT", mid * Decimal("1.06"))
            await eventually(lambda: engine.sync.unsaved, limit_s=10)
        assert any("NOT saved" in r.getMessage() for r in caplog.records)
        assert engine.risk.trading_state.value == "REDUCING"
        refused = await signal(engine, prepare_msg(engine, "fs-2", "ETHUSDT"))
        assert refused.reason == "BUSY"  # nobody halted trading: it resumes by itself
        assert (refused.message or "").startswith(
            "the database cannot record this request: database or disk is full; nothing was done"
        )
        health = (await client.get("/api/health")).json()
        assert health["status"] == "unhealthy"
        assert health["database"]["status"] == "unhealthy"
        assert health["database"]["trading_limited_to"] == "REDUCING"
        assert (
            'titan_health_status{component="database"} 0.0' in (await client.get("/metrics")).text
        )
        # An exit that cannot be recorded either: nothing from strategies passes.
        exit_ = await signal(
            engine, {"type": "CLOSE", "id": 9, "signal_id": "fs-x", "symbol": "BTCUSDT"}
        )
        assert exit_.reason in ("BUSY", "INVALID_SIGNAL"), exit_
        if exit_.reason == "BUSY":
            assert engine.risk.trading_state.value == "HALTED"
        writes.failing = False  # space is back
        await eventually(lambda: engine.risk.trading_state.value == "ACTIVE", limit_s=10)
        assert not engine.sync.unsaved
        assert (await client.get("/api/health")).json()["database"]["status"] == "healthy"
        # what was kept in memory is on disk now
        saved = await engine.store.call(records.load_positions)
        assert {r.position.symbol for r in saved} == set(engine.shadow.positions)
        assert (await signal(engine, prepare_msg(engine, "fs-3", "ETHUSDT"))).status == ("prepared")


class FailingExitWrites(FailingWrites):
    """Refuses only the write that records the exit order of the CLOSE ``signal_id`` (a
    disk that fills up just then), while ``failing`` is set."""

    def __init__(self, engine: Any, signal_id: str) -> None:
        super().__init__(engine)
        self.signal_id = signal_id

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        exit_order = any(isinstance(a, Order) and a.signal_id == self.signal_id for a in args)
        if self.failing and exit_order:
            raise StoreError("database or disk is full")
        return await self._call(fn, *args, **kwargs)


async def test_a_close_the_database_refused_can_be_retried_with_its_signal_id(
    risk_config: Callable[..., Config],
) -> None:
    # BUSY says nothing was sent and the same ids may be retried: the retry closes, and
    # does not meet a journal entry the refused attempt left behind (DUPLICATE_SIGNAL).
    async with service(risk_config()) as engine:
        await open_long(engine, "rt-1")
        writes = FailingExitWrites(engine, "rt-x")
        writes.failing = True
        close = {"type": "CLOSE", "id": 1, "signal_id": "rt-x", "symbol": "BTCUSDT"}
        refused = await signal(engine, close)
        assert refused.reason == "BUSY", refused
        assert not [o for o in engine.shadow.orders.values() if o.signal_id == "rt-x"]
        assert [p for p in await engine.broker.positions() if not p.is_flat]  # nothing sent
        writes.failing = False
        await eventually(lambda: engine.risk.trading_state.value == "ACTIVE", limit_s=10)
        closed = await signal(engine, {**close, "id": 2})
        assert closed.status == "closed" and closed.order_status == "FILLED", closed
        await eventually(lambda: "BTCUSDT" not in engine.shadow.positions)
        again = await signal(engine, {**close, "id": 3})
        assert again.reason == "DUPLICATE_SIGNAL", again
        assert again.client_order_id == closed.client_order_id


async def test_flatten_cancels_orders_only_the_broker_knows_and_reports_each_error(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine, api(engine) as client:
        assert engine.broker is not None
        mid = engine.hub.book.get("SOLUSDT").mid
        request = OrderRequest(
            "unknown-to-shadow",
            "SOLUSDT",
            Side.BUY,
            OrderType.LIMIT,
            Decimal("0.1"),
            price=engine.instruments["SOLUSDT"].floor_price(mid * Decimal("0.9")),
            time_in_force=TimeInForce.GTC,
            leverage=Decimal(5),
        )
        await engine.broker.submit(request)
        # the shadow state never heard of it (its event lost, as across a crash)
        await eventually(lambda: "unknown-to-shadow" in engine.shadow.orders)
        engine.shadow.orders.pop("unknown-to-shadow")
        await open_long(engine, "fl-1")
        # and one close fails on the way (the database refuses to record it)
        writes = FailingWrites(engine, only=(records.save_order,))
        writes.failing = True
        report = (await client.post("/api/emergency/flatten-all")).json()
        writes.failing = False
        assert "unknown-to-shadow" in report["cancelled_orders"]
        assert [e for e in report["errors"] if "close BTCUSDT" in e and "disk is full" in e]
        assert report["trading_state"] == "HALTED"
        # carried on past the error: a second flatten closes what is left
        second = (await client.post("/api/emergency/flatten-all")).json()
        assert [p["symbol"] for p in second["closed_positions"]] == ["BTCUSDT"]
        await eventually(lambda: not engine.shadow.positions)
        assert not await engine.broker.open_orders()


async def test_a_flatten_against_a_broker_that_never_answers_ends_within_its_deadline(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    async with service(risk_config()) as engine, api(engine) as client:
        await open_long(engine, "slow-1")
        assert engine.broker is not None

        async def hangs(*args: Any, **kwargs: Any) -> Any:
            await trio.sleep_forever()

        engine.broker.submit = hangs  # type: ignore[method-assign]
        engine.broker.cancel = hangs  # type: ignore[method-assign]
        started = trio.current_time()
        with caplog.at_level(logging.ERROR, logger="titan.flatten"):
            report = (await client.post("/api/emergency/flatten-all", timeout=30)).json()
        elapsed = trio.current_time() - started
        assert any("did not answer in time" in e for e in report["errors"])
        assert any("did NOT finish" in r.getMessage() for r in caplog.records)
        assert elapsed < 30  # bounded by the flatten's own deadline, not the client's


async def test_close_right_after_a_resting_confirm_cancels_the_entry(
    risk_config: Callable[..., Config],
) -> None:
    # Phase 1 equity: maker entries rest at the touch until makerTimeoutMs.
    cfg = risk_config(broker={"initialCapital": 900}, execution={"makerTimeoutMs": 60000})
    async with service(cfg) as engine:
        ready = await signal(engine, prepare_msg(engine, "cr-1"))
        assert ready.status == "prepared" and ready.execution == "maker", ready
        accepted = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "cr-1"})
        assert accepted.status == "accepted" and accepted.order_status != "FILLED", accepted
        entry_id = accepted.client_order_id
        close = await signal(
            engine, {"type": "CLOSE", "id": 3, "signal_id": "cr-x", "symbol": "BTCUSDT"}
        )
        assert close.status == "closed", close
        assert close.cancelled_orders == [entry_id]
        assert "no position" in (close.message or "")
        # the market now crosses where the entry was: nothing fills, nothing is held
        mid = engine.hub.book.get("BTCUSDT").mid
        publish(engine, "BTCUSDT", mid * Decimal("0.995"))
        await eventually(lambda: entry_id not in engine.shadow.orders)
        assert not engine.shadow.positions
        assert not [p for p in await engine.broker.positions() if not p.is_flat]
        again = await signal(
            engine, {"type": "CLOSE", "id": 4, "signal_id": "cr-y", "symbol": "BTCUSDT"}
        )
        assert again.reason == "INVALID_SIGNAL"  # nothing resting, nothing held


@pytest.mark.parametrize(
    ("field", "value"),
    [("take_profits", [1e30]), ("stop_loss", 1.0), ("take_profits", [1e6])],
)
async def test_prices_far_from_the_market_are_refused_and_the_service_stays_up(
    risk_config: Callable[..., Config], field: str, value: Any
) -> None:
    async with service(risk_config()) as engine:
        message = {**prepare_msg(engine, "fat-1"), field: value}
        refused = await signal(engine, message)
        assert refused.reason == "INVALID_SIGNAL", refused
        assert field in (refused.message or "") and "away from the market" in (
            refused.message or ""
        )
        await open_long(engine, "fat-2")  # still trading


async def test_a_wall_clock_step_neither_expires_intents_nor_freshens_a_stale_book(
    risk_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = risk_config(execution={"l2": {"maxAgeMs": 200, "maxSpreadPct": 1}})
    real_time_ns = time.time_ns
    async with service(cfg) as engine:
        publish(engine, "BTCUSDT", engine.hub.book.get("BTCUSDT").mid)
        ready = await signal(engine, prepare_msg(engine, "step-1"))
        assert ready.status == "prepared", ready
        # The system clock steps an hour forward: the intent's 10 s are not over.
        monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() + 3600 * 10**9)
        confirmed = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "step-1"})
        assert confirmed.status == "accepted", confirmed
        # A quote that arrived, then aged past 200 ms, then the clock steps an hour back:
        # still stale.
        monkeypatch.setattr(time, "time_ns", real_time_ns)
        publish(engine, "ETHUSDT", engine.hub.book.get("ETHUSDT").mid)
        await trio.sleep(0.3)
        monkeypatch.setattr(time, "time_ns", lambda: real_time_ns() - 3600 * 10**9)
        stale = await signal(engine, prepare_msg(engine, "step-2", "ETHUSDT"))
        assert stale.reason == "L2_STALE", stale


async def test_a_close_that_cannot_cancel_the_resting_entry_does_not_say_closed(
    risk_config: Callable[..., Config],
) -> None:
    cfg = risk_config(broker={"initialCapital": 900}, execution={"makerTimeoutMs": 60000})
    async with service(cfg) as engine:
        assert engine.broker is not None
        ready = await signal(engine, prepare_msg(engine, "cf-1"))
        assert ready.execution == "maker", ready
        accepted = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "cf-1"})
        assert accepted.status == "accepted" and accepted.order_status != "FILLED", accepted
        cancel = engine.broker.cancel

        async def unavailable(*args: Any) -> Any:
            raise BrokerRejected("EXCHANGE_UNAVAILABLE", "the exchange cannot record changes")

        engine.broker.cancel = unavailable  # type: ignore[method-assign]
        close = await signal(
            engine, {"type": "CLOSE", "id": 3, "signal_id": "cf-x", "symbol": "BTCUSDT"}
        )
        assert (close.status, close.reason) == ("rejected", "BROKER_REJECTED"), close
        assert accepted.client_order_id in (close.message or "")
        engine.broker.cancel = cancel  # type: ignore[method-assign]
        retry = await signal(
            engine, {"type": "CLOSE", "id": 4, "signal_id": "cf-y", "symbol": "BTCUSDT"}
        )
        assert retry.status == "closed" and retry.cancelled_orders == [accepted.client_order_id]


def slow_acknowledgements(engine: Any, seconds: float = 0.3) -> None:
    """An exchange that takes its time to acknowledge each new order."""
    assert engine.broker is not None
    submit = engine.broker.submit

    async def slow_submit(request: OrderRequest) -> Any:
        await trio.sleep(seconds)
        return await submit(request)

    engine.broker.submit = slow_submit


async def test_a_close_racing_an_entry_on_its_way_to_the_exchange_leaves_nothing(
    risk_config: Callable[..., Config],
) -> None:
    cfg = risk_config(broker={"initialCapital": 900}, execution={"makerTimeoutMs": 60000})
    async with service(cfg) as engine:
        slow_acknowledgements(engine)
        assert (await signal(engine, prepare_msg(engine, "race-1"))).status == "prepared"
        replies: dict[str, Any] = {}

        async def confirm() -> None:
            replies["confirm"] = await signal(
                engine, {"type": "CONFIRM", "id": 2, "signal_id": "race-1"}
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(confirm)
            await eventually(lambda: engine.shadow.orders)  # the entry is on its way
            replies["close"] = await signal(
                engine, {"type": "CLOSE", "id": 3, "signal_id": "race-x", "symbol": "BTCUSDT"}
            )
        confirmed, closed = replies["confirm"], replies["close"]
        assert closed.status == "closed", closed
        if confirmed.status == "accepted":  # it reached the exchange first: cancelled
            assert closed.cancelled_orders == [confirmed.client_order_id]
        else:  # or it was never sent
            assert confirmed.reason == "INVALID_SIGNAL", confirmed
        mid = engine.hub.book.get("BTCUSDT").mid
        publish(engine, "BTCUSDT", mid * Decimal("0.995"))  # where the entry would fill
        await eventually(lambda: not engine.shadow.orders)
        assert not await engine.broker.open_orders()
        assert not [p for p in await engine.broker.positions() if not p.is_flat]


async def test_the_paper_exchange_survives_a_database_that_refuses_reads_too(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine:
        assert engine.broker is not None
        mid = engine.hub.book.get("SOLUSDT").mid
        price = engine.instruments["SOLUSDT"].floor_price(mid * Decimal("0.99"))
        await engine.broker.submit(
            OrderRequest(
                "rest-1",
                "SOLUSDT",
                Side.BUY,
                OrderType.LIMIT,
                Decimal("0.1"),
                price=price,
                time_in_force=TimeInForce.GTC,
                leverage=Decimal(5),
            )
        )
        failing = FailingWrites(engine, everything=True)
        failing.failing = True
        below = price - engine.instruments["SOLUSDT"].tick_size  # its ask meets the order
        publish(engine, "SOLUSDT", below)  # would fill it: the save fails, so does the undo
        await eventually(lambda: engine.broker._stale)
        with pytest.raises(BrokerRejected) as refused:
            await engine.broker.cancel("SOLUSDT", "rest-1")
        assert refused.value.reason == "EXCHANGE_UNAVAILABLE"
        failing.failing = False
        publish(engine, "SOLUSDT", below - Decimal("0.01"))  # next quote: reload, then match
        await eventually(lambda: "SOLUSDT" in engine.shadow.positions)
        assert (await signal(engine, {"type": "PING", "id": 1})).status == "pong"


async def test_a_clean_stop_finishes_and_answers_what_it_admitted_and_refuses_the_rest(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine:
        slow_acknowledgements(engine)
        assert (await signal(engine, prepare_msg(engine, "drain-1"))).status == "prepared"
        replies: dict[str, Any] = {}

        async def confirm() -> None:
            replies["confirm"] = await signal(
                engine, {"type": "CONFIRM", "id": 2, "signal_id": "drain-1"}
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(confirm)
            await eventually(lambda: engine.executor.placer.sending)  # on its way
            nursery.start_soon(engine.drain)
            await eventually(lambda: not engine.ipc.admitting)
            late = await signal(engine, prepare_msg(engine, "drain-2", "ETHUSDT"))
        assert late.reason == "BUSY" and "stopping" in (late.message or ""), late
        assert replies["confirm"].status == "accepted", replies["confirm"]
        # sent, answered and committed before the stop goes on
        saved = await engine.store.call(records.signal_order, "drain-1")
        assert saved is not None and saved.status.value in ("ACCEPTED", "FILLED")
        assert await engine.store.call(records.signal_status, "drain-2") is None


async def test_reconciliation_closes_out_ghosts_and_adopts_what_only_the_broker_holds(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    async with service(risk_config()) as engine, api(engine) as client:
        assert engine.broker is not None
        assert engine.reconciler.last is not None  # the first run was part of the start
        # A ghost: a position only our record has (the broker never filled it).
        ghost = PositionRecord(Position("ETHUSDT", Decimal("1"), Decimal("3500")))
        engine.shadow.positions["ETHUSDT"] = ghost
        await engine.store.call(records.set_position, "ETHUSDT", ghost)
        # And a position only the broker has (its fill never reached us).
        request = OrderRequest(
            "broker-only", "SOLUSDT", Side.BUY, OrderType.MARKET, Decimal("1"), leverage=Decimal(5)
        )
        engine.broker.exchange.place(request, engine.hub.book.get("SOLUSDT"), now_ms())
        with caplog.at_level(logging.WARNING, logger="titan.reconcile"):
            report = (await client.post("/api/state/reconcile")).json()
        assert len(report["differences"]) >= 2, report
        assert any("position_only_here ETHUSDT" in d for d in report["differences"])
        assert any("position_only_at_broker SOLUSDT" in d for d in report["differences"])
        assert "ETHUSDT" not in engine.shadow.positions
        assert engine.shadow.positions["SOLUSDT"].position.size == Decimal("1")
        # adopted with no stop known: one 2 % below the market, at the exchange
        stop = await engine.broker.stop_loss("SOLUSDT")
        mid = engine.hub.book.get("SOLUSDT").mid
        assert stop is not None and abs(stop - mid * Decimal("0.98")) <= Decimal("0.01")
        assert sum(1 for r in caplog.records if "Reconciliation" in r.getMessage()) >= 2
        metrics = (await client.get("/metrics")).text
        assert "titan_reconciliation_drift" in metrics
        health = (await client.get("/api/health")).json()
        assert health["reconciliation"]["differences"] == report["differences"]
        saved = {r.position.symbol for r in await engine.store.call(records.load_positions)}
        assert saved == {"SOLUSDT"}
        again = (await client.post("/api/state/reconcile")).json()
        assert again["differences"] == [] and again["message"] == "no differences"
        assert "titan_reconciliation_drift 0.0" in (await client.get("/metrics")).text
