"""Stops and take profits travel with every position and go away with it."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from tests.helpers import exact
from tests.integration.test_risk import (
    api,
    eventually,
    publish,
    service,
    signal,
)
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.engine import Engine


async def open_protected(engine: Engine, signal_id: str) -> tuple[Decimal, Decimal, Decimal]:
    mid = engine.hub.book.get("BTCUSDT").mid
    stop, tp1, tp2 = (round(mid * Decimal(f), 1) for f in ("0.99", "1.01", "1.02"))
    prepared = await signal(
        engine,
        {
            "type": "PREPARE",
            "id": 1,
            "signal_id": signal_id,
            "source": "test",
            "symbol": "BTCUSDT",
            "direction": "LONG",
            "entry_zone": {
                "min": float(round(mid * Decimal("0.999"), 1)),
                "max": float(round(mid * Decimal("1.001"), 1)),
            },
            "stop_loss": float(stop),
            "take_profits": [float(tp1), float(tp2)],
            "confidence": 90,
            "leverage": 5,
            "timestamp": now_ms(),
        },
    )
    assert prepared.status == "prepared", prepared
    accepted = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": signal_id})
    assert accepted.status == "accepted", accepted
    return stop, tp1, tp2


def targets(engine: Engine) -> list:
    return sorted(
        (o for o in engine.shadow.orders.values() if o.reduce_only), key=lambda o: o.price
    )


async def test_stop_and_targets_follow_the_position_until_the_stop_closes_it(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine, api(engine) as client:
        assert engine.broker is not None
        stop, tp1, tp2 = await open_protected(engine, "prot-1")
        await eventually(lambda: len(targets(engine)) == 2)
        size = engine.shadow.positions["BTCUSDT"].position.size
        assert await engine.broker.stop_loss("BTCUSDT") == stop
        first, second = targets(engine)
        assert (first.price, second.price) == (tp1, tp2)
        assert first.side.value == "SELL" and first.qty + second.qty == size
        orders = (await client.get("/api/state/orders")).json()
        assert sorted(o["reduce_only"] for o in orders) == [True, True]
        position = (await client.get("/api/state/positions")).json()[0]
        assert Decimal(str(position["stop_loss"])) == stop
        assert [Decimal(str(t)) for t in position["take_profits"]] == [tp1, tp2]

        publish(engine, "BTCUSDT", tp1 + Decimal("0.5"))  # the first target is reached
        await eventually(
            lambda: engine.shadow.positions["BTCUSDT"].position.size == size - first.qty
        )
        assert [o.price for o in targets(engine)] == [tp2]

        publish(engine, "BTCUSDT", stop - Decimal(1))  # then the market falls through the stop
        await eventually(lambda: "BTCUSDT" not in engine.shadow.positions)
        await eventually(lambda: not engine.shadow.orders)  # the second target went too
        assert await engine.broker.stop_loss("BTCUSDT") is None
        trades = exact(await client.get("/api/trades"))
        assert trades[0]["close_reason"].startswith("stop loss")
        assert trades[0]["qty"] == size


async def test_close_takes_the_protection_away(risk_config: Callable[..., Config]) -> None:
    async with service(risk_config()) as engine:
        assert engine.broker is not None
        await open_protected(engine, "prot-2")
        await eventually(lambda: len(targets(engine)) == 2)
        closed = await signal(
            engine, {"type": "CLOSE", "id": 3, "signal_id": "prot-x", "symbol": "BTCUSDT"}
        )
        assert closed.status == "closed", closed
        await eventually(lambda: not engine.shadow.positions and not engine.shadow.orders)
        assert await engine.broker.stop_loss("BTCUSDT") is None
