"""What a restart must restore, and what a stop must not wait on forever: exposure of
partly filled entries counted once, the fill-rate window, entry orders only in it; a
shutdown during a flatten against a broker that never answers; a failing background
write (the equity snapshot) that must not stop the service.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import eventually, service
from tests.integration.test_risk import api, open_long, prepare_msg, signal
from tests.integration.test_safety import FailingWrites
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.orders import Order, OrderType, Side, TimeInForce
from titan_trio.domain.quotes import Quote
from titan_trio.risk.breaker import OrderPurpose
from titan_trio.state import records


async def test_a_partly_filled_entry_counts_once_after_a_restart(
    risk_config: Callable[..., Config],
) -> None:
    cfg = risk_config(execution={"makerTimeoutMs": 60000})  # it keeps resting after
    async with service(cfg) as engine:
        instrument = engine.instruments["BTCUSDT"]
        price = instrument.floor_price(engine.hub.book.get("BTCUSDT").mid * Decimal("0.99"))
        order = Order(
            "tte-partly-filled",
            "BTCUSDT",
            Side.BUY,
            OrderType.LIMIT,
            Decimal("0.200"),
            price=price,
            time_in_force=TimeInForce.POST_ONLY,
            leverage=Decimal(5),
            created_ms=now_ms(),
        )
        await engine.executor.placer.place(order, OrderPurpose.ENTRY)
        # The market comes down to the order with half its size on offer.
        engine.hub.publish(
            Quote(
                "BTCUSDT",
                price - instrument.tick_size,
                price,
                Decimal(10),
                Decimal("0.100"),
                price,
                now_ms(),
                "simulated",
            )
        )
        await eventually(lambda: "BTCUSDT" in engine.shadow.positions)
        pending = [(o.client_order_id, q) for o, q in engine.shadow.entry_exposure()]
        assert pending == [("tte-partly-filled", Decimal("0.100"))]
    async with service(cfg) as engine:
        assert engine.shadow.positions["BTCUSDT"].position.size == Decimal("0.100")
        # the filled half is in the position; only the resting half counts as pending
        pending = [(o.client_order_id, q) for o, q in engine.shadow.entry_exposure()]
        assert pending == [("tte-partly-filled", Decimal("0.100"))]


async def test_fill_rate_counts_entries_only_and_survives_a_restart(
    risk_config: Callable[..., Config],
) -> None:
    cfg = risk_config(risk={"maxRiskPct": 0.5, "phase3RiskPct": 0.5})
    async with service(cfg) as engine, api(engine) as client:
        assert math.isnan(engine.metrics.fill_rate_pct())  # a new account: no sample
        for n in range(3):  # three ordinary round trips; each cancels its take profit
            await open_long(engine, f"fr-{n}")
            await eventually(lambda: [o for o in engine.shadow.orders.values() if o.reduce_only])
            closed = await signal(
                engine, {"type": "CLOSE", "id": 1, "signal_id": f"fr-x-{n}", "symbol": "BTCUSDT"}
            )
            assert closed.status == "closed", closed
            await eventually(lambda: not engine.shadow.positions and not engine.shadow.orders)
        assert engine.metrics.fill_rate_pct() == 100.0
        assert "titan_order_fill_rate 100.0" in (await client.get("/metrics")).text
        assert 'titan_orders_total{status="CANCELED"}' in (await client.get("/metrics")).text
    async with service(cfg) as engine:
        assert engine.metrics.fill_rate_pct() == 100.0  # restored, not NaN


async def test_a_stop_during_a_flatten_against_a_silent_broker_ends_within_its_budget(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    async with trio.open_nursery() as outer:
        with trio.fail_after(15):  # the flatten deadline (5 s) plus the store's close
            async with service(risk_config()) as engine:
                await open_long(engine, "stop-1")
                assert engine.broker is not None

                async def hangs(*args: Any, **kwargs: Any) -> Any:
                    await trio.sleep_forever()

                async def flatten() -> None:
                    async with api(engine) as client:
                        with contextlib.suppress(httpx.HTTPError):  # the service goes away
                            await client.post("/api/emergency/flatten-all", timeout=30)

                engine.broker.submit = hangs  # type: ignore[method-assign]
                engine.broker.cancel = hangs  # type: ignore[method-assign]
                outer.start_soon(flatten)
                await eventually(lambda: engine.risk.state.trading_state.value == "HALTED")
                # ... and the operator stops the service while the flatten hangs
        outer.cancel_scope.cancel()
    assert any("did NOT finish" in r.getMessage() for r in caplog.records)


async def test_a_failing_equity_snapshot_is_retried_and_never_stops_the_service(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    async with service(risk_config()) as engine:
        writes = FailingWrites(engine, only=(records.add_equity_snapshot,))
        writes.failing = True
        with caplog.at_level(logging.WARNING, logger="titan.equity"):
            assert await engine.equity_monitor.snapshot() is False
        assert engine.equity_monitor.snapshot_failures == 1
        assert any("disk is full" in r.getMessage() for r in caplog.records)
        writes.failing = False
        assert await engine.equity_monitor.snapshot() is True
        await open_long(engine, "snap-1")  # the service carries on


async def test_a_position_left_without_its_stop_and_targets_gets_them_back_at_start(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = risk_config()
    async with service(cfg) as engine:
        await open_long(engine, "prot-1")
        assert engine.broker is not None
        stops = engine.broker.exchange.stop_losses
        stop = await eventually(lambda: stops.get("BTCUSDT"))
        # the take profit is at the exchange (not still on its way there)
        await eventually(
            lambda: (
                [o for o in engine.broker.exchange.open_orders() if o.reduce_only]
                and not engine.executor.placer.sending
            )
        )
        # As if the service had stopped right after the fill: no stop, no targets.
        for order in await engine.broker.open_orders():
            await engine.broker.cancel("BTCUSDT", order.client_order_id)
        await engine.broker.set_stop_loss("BTCUSDT", None)
        await eventually(lambda: not engine.shadow.orders)
    with caplog.at_level(logging.WARNING, logger="titan.protection"):
        async with service(cfg) as engine:
            assert engine.broker is not None
            assert await engine.broker.stop_loss("BTCUSDT") == stop
            targets = [o for o in await engine.broker.open_orders() if o.reduce_only]
            assert (
                sum(o.qty for o in targets) == engine.shadow.positions["BTCUSDT"].position.abs_size
            )
    lines = [r.getMessage() for r in caplog.records]
    assert any("had no stop loss" in line for line in lines)
    assert any("had no take profits" in line for line in lines)


async def test_an_order_journaled_but_never_sent_expires_at_start_and_retries_learn_it(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = risk_config()
    async with trio.open_nursery() as outer:
        async with service(cfg) as engine:
            assert engine.broker is not None

            async def never_answers(*args: Any) -> Any:
                await trio.sleep_forever()

            engine.broker.submit = never_answers  # type: ignore[method-assign]
            ready = await signal(engine, prepare_msg(engine, "lost-1"))
            assert ready.status == "prepared", ready

            async def confirm() -> None:
                with contextlib.suppress(Exception):  # the service stops under it
                    await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "lost-1"})

            outer.start_soon(confirm)
            await eventually(lambda: engine.executor.placer.sending)
            # ... and the service stops between the journal write and the exchange's answer
    with caplog.at_level(logging.WARNING, logger="titan.reconcile"):
        async with service(cfg) as engine:
            assert not engine.shadow.orders  # settled: it no longer holds the symbol
            again = await signal(engine, {"type": "CONFIRM", "id": 3, "signal_id": "lost-1"})
            assert again.reason == "EXPIRED" and "never reached" in (again.message or ""), again
            assert (await signal(engine, prepare_msg(engine, "lost-2"))).status == "prepared"
    assert any(
        "Reconciliation" in r.getMessage() and "never sent" in r.getMessage()
        for r in caplog.records
    )


async def test_a_repeated_confirm_and_close_tell_the_state_of_their_orders(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine:
        await open_long(engine, "rep-1")
        again = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "rep-1"})
        assert (again.reason, again.order_status) == ("DUPLICATE_SIGNAL", "FILLED"), again
        assert again.client_order_id and again.filled_qty == again.size
        close = {"type": "CLOSE", "id": 3, "signal_id": "rep-x", "symbol": "BTCUSDT"}
        first = await signal(engine, close)
        assert first.status == "closed", first
        second = await signal(engine, close)
        assert second.reason == "DUPLICATE_SIGNAL" and second.order_status == "FILLED"
        assert second.client_order_id == first.client_order_id


async def test_a_maker_entry_resting_across_a_restart_gets_its_timeout_again(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = risk_config(broker={"initialCapital": 900}, execution={"makerTimeoutMs": 1500})
    async with service(cfg) as engine:
        ready = await signal(engine, prepare_msg(engine, "rest-1"))
        assert ready.execution == "maker", ready
        accepted = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": "rest-1"})
        assert accepted.status == "accepted" and accepted.order_status == "ACCEPTED", accepted
    with caplog.at_level(logging.WARNING, logger="titan.executor"):
        async with service(cfg) as engine:
            assert engine.broker is not None
            assert accepted.client_order_id in engine.shadow.orders  # still resting
            await eventually(lambda: accepted.client_order_id not in engine.shadow.orders)
            assert not await engine.broker.open_orders()
    assert any("still rests from before the restart" in r.getMessage() for r in caplog.records)
