"""The risk engine through the real service: circuit breaker on a scripted price path,
trading states, emergency flatten and the bearer token.

The simulated market is told to publish once at start and then stay quiet
(intervalMs 60 s), so every later price is one the test publishes itself.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio

from ipc.protocol import Reply
from tests.helpers import eventually, service
from tests.ipc.wire import Wire
from titan_trio.clock import now_ms
from titan_trio.config import Config
from titan_trio.domain.orders import OrderRequest, OrderType, Side, TimeInForce
from titan_trio.domain.quotes import Quote
from titan_trio.engine import Engine

TOKEN = "operator-token-0123456789abcdef-0123456789"


@asynccontextmanager
async def api(engine: Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client:
        yield client


def publish(engine: Engine, symbol: str, mid: Decimal) -> None:
    """A one-tick-wide quote around ``mid`` with plenty of size."""
    tick = engine.instruments[symbol].tick_size
    bid = engine.instruments[symbol].floor_price(mid)
    engine.hub.publish(
        Quote(symbol, bid, bid + tick, Decimal(1000), Decimal(1000), bid, now_ms(), "simulated")
    )


async def signal(engine: Engine, message: dict[str, Any]) -> Reply:
    stream = await trio.open_unix_socket(engine.cfg.ipc.socket_path)
    async with stream:
        return Reply(**await Wire(stream).request(message))


def prepare_msg(
    engine: Engine, signal_id: str, symbol: str = "BTCUSDT", stop: float = 0.998
) -> dict[str, Any]:
    mid = float(engine.hub.book.get(symbol).mid)
    return {
        "type": "PREPARE",
        "id": f"p-{signal_id}",
        "signal_id": signal_id,
        "source": "test",
        "symbol": symbol,
        "direction": "LONG",
        "entry_zone": {"min": round(mid * 0.999, 2), "max": round(mid * 1.001, 2)},
        "stop_loss": round(mid * stop, 2),
        "take_profits": [round(mid * 1.05, 2)],
        "confidence": 90,
        "leverage": 20,
        "timestamp": now_ms(),
    }


async def open_long(
    engine: Engine, signal_id: str, symbol: str = "BTCUSDT", stop: float = 0.998
) -> None:
    prepared = await signal(engine, prepare_msg(engine, signal_id, symbol, stop))
    assert prepared.status == "prepared", prepared
    accepted = await signal(engine, {"type": "CONFIRM", "id": 2, "signal_id": signal_id})
    assert accepted.status == "accepted", accepted
    await eventually(lambda: symbol in engine.shadow.positions)


async def test_drawdown_trips_the_breaker_flattens_and_survives_restart(
    risk_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    # A stop 3 % away, so the 1.6 % fall below reaches the breaker, not the stop; 20 %
    # risk over 3 % still sizes the entry at the 5x cap.
    cfg = risk_config(risk={"maxRiskPct": 20, "phase3RiskPct": 20})
    async with service(cfg) as engine, api(engine) as client:
        start = engine.hub.book.get("BTCUSDT").mid
        await open_long(engine, "dd-1", stop=0.97)
        notional = engine.shadow.total_notional(engine.hub.book)
        assert notional > Decimal(45000)  # about 5x of 10,000
        # 1 % down: about 5 % drawdown at 5x, below the 7 % limit.
        publish(engine, "BTCUSDT", start * Decimal("0.99"))
        await eventually(lambda: engine.risk.tracker.drawdown_pct > 4)
        assert not engine.risk.state.tripped
        # 1.6 % down: about 8 %: one update trips it.
        with caplog.at_level(logging.CRITICAL, logger="titan.risk"):
            publish(engine, "BTCUSDT", start * Decimal("0.984"))
            await eventually(lambda: engine.risk.state.tripped)
            await eventually(lambda: any(r.levelno == logging.CRITICAL for r in caplog.records))
        critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
        assert len(critical) == 1 and "Circuit breaker" in critical[0].getMessage()
        assert "drawdown" in critical[0].getMessage()
        await eventually(lambda: not engine.shadow.positions)  # flattened
        risk = (await client.get("/api/risk")).json()
        assert risk["trading_state"] == "HALTED"
        assert risk["breaker"]["tripped"] is True
        assert risk["breaker"]["cause"] == "drawdown"
        tripped_at = dt.datetime.fromisoformat(risk["breaker"]["tripped_at"])  # ISO 8601 UTC
        assert tripped_at.tzinfo is not None and tripped_at.utcoffset() == dt.timedelta(0)
        metrics = (await client.get("/metrics")).text
        assert "titan_circuit_breaker_tripped 1.0" in metrics
        equity = (await client.get("/api/state/equity")).json()
        assert equity["breaker"]["tripped"] is True and equity["trading_state"] == "HALTED"
        refused = await signal(engine, prepare_msg(engine, "dd-2"))
        assert refused.reason == "TRADING_HALTED"
        assert "circuit breaker" in (refused.message or "")

    async with service(cfg) as engine, api(engine) as client:
        assert engine.risk.state.tripped  # a restart does not clear it
        assert (await signal(engine, prepare_msg(engine, "dd-3"))).reason == "TRADING_HALTED"
        response = await client.post("/api/trading/resume")
        assert response.status_code == 409
        assert "reset" in response.json()["message"]
        response = await client.post(
            "/api/risk/breaker/reset", headers={"X-Titan-Operator": "alice"}
        )
        assert response.json() == {
            "reset": True,
            "message": "circuit breaker reset",
            "trading_state": "ACTIVE",
        }
        assert (await client.get("/api/risk")).json()["history"][-1]["by"] == "alice"
        again = await client.post("/api/risk/breaker/reset")
        assert again.json()["reset"] is False
        assert (await signal(engine, prepare_msg(engine, "dd-4"))).status == "prepared"


async def test_daily_loss_trips_with_its_own_cause(risk_config: Callable[..., Config]) -> None:
    cfg = risk_config(risk={"maxDailyLossPct": 3, "maxRiskPct": 20, "phase3RiskPct": 20})
    async with service(cfg) as engine:
        start = engine.hub.book.get("BTCUSDT").mid
        await open_long(engine, "day-1", stop=0.97)
        publish(engine, "BTCUSDT", start * Decimal("0.99"))  # about 5 % on the day
        await eventually(lambda: engine.risk.state.tripped)
        assert engine.risk.state.trip is not None
        assert engine.risk.state.trip.cause == "daily_loss"


async def test_losing_streak_trips(risk_config: Callable[..., Config]) -> None:
    cfg = risk_config(risk={"maxConsecutiveLosses": 2, "flattenOnBreaker": False})
    async with service(cfg) as engine:
        for n in range(2):  # each round trip loses the fees
            await open_long(engine, f"streak-{n}")
            closed = await signal(
                engine, {"type": "CLOSE", "id": 9, "signal_id": f"x-{n}", "symbol": "BTCUSDT"}
            )
            assert closed.status == "closed", closed
            await eventually(lambda: not engine.shadow.positions)
        await eventually(lambda: engine.risk.state.tripped)
        assert engine.risk.state.trip is not None
        assert engine.risk.state.trip.cause == "consecutive_losses"


async def test_pause_allows_exits_only_and_needs_the_token(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config(api={"token": TOKEN})) as engine, api(engine) as client:
        await open_long(engine, "pause-1")
        # Four refusals in all: a fifth would throttle this client (tests/api/test_auth.py).
        for path, headers in (
            ("/api/trading/pause", {}),
            ("/api/trading/resume", {"Authorization": "Bearer nope"}),
            ("/api/risk/breaker/reset", {}),
            ("/api/emergency/flatten-all", {"Authorization": f"Bearer {TOKEN[:-1]}"}),
        ):
            refused = await client.post(path, headers=headers)
            assert refused.status_code == 401, path
            assert refused.json()["error"] == "unauthorized"
        assert engine.shadow.positions  # nothing happened
        auth = {"Authorization": f"Bearer {TOKEN}"}
        paused = await client.post("/api/trading/pause", headers=auth)
        assert paused.json() == {"trading_state": "REDUCING"}
        refused_entry = await signal(engine, prepare_msg(engine, "pause-2", "ETHUSDT"))
        assert refused_entry.reason == "TRADING_HALTED"
        assert "paused" in (refused_entry.message or "")
        pong = await signal(engine, {"type": "PING", "id": 1})
        assert pong.trading_state == "REDUCING"
        closed = await signal(
            engine,
            {
                "type": "CLOSE",
                "id": 3,
                "signal_id": "pause-x",
                "symbol": "BTCUSDT",
                "reason": "take profit",
            },
        )
        assert closed.status == "closed", closed
        await eventually(lambda: not engine.shadow.positions)
        trades = (await client.get("/api/trades")).json()
        assert trades[0]["close_reason"] == "CLOSE: take profit"
        resumed = await client.post("/api/trading/resume", headers=auth)
        assert resumed.json() == {"trading_state": "ACTIVE"}
        assert (await signal(engine, prepare_msg(engine, "pause-3", "ETHUSDT"))).status == (
            "prepared"
        )


async def test_flatten_all_leaves_nothing_twice_in_a_row(
    risk_config: Callable[..., Config],
) -> None:
    async with (
        service(risk_config(risk={"maxRiskPct": 0.2, "phase3RiskPct": 0.2})) as engine,
        api(engine) as client,
    ):
        await open_long(engine, "flat-1", "BTCUSDT")
        await open_long(engine, "flat-2", "ETHUSDT")
        # A resting order far below the market.
        assert engine.broker is not None
        mid = engine.hub.book.get("SOLUSDT").mid
        await engine.broker.submit(
            OrderRequest(
                "resting-1",
                "SOLUSDT",
                Side.BUY,
                OrderType.LIMIT,
                Decimal("1"),
                price=engine.instruments["SOLUSDT"].floor_price(mid * Decimal("0.9")),
                time_in_force=TimeInForce.GTC,
                leverage=Decimal(5),
            )
        )
        await eventually(lambda: "resting-1" in engine.shadow.orders)
        first = (await client.post("/api/emergency/flatten-all")).json()
        assert first["trading_state"] == "HALTED"
        # the resting entry, and the take-profit orders that protected the two positions
        assert "resting-1" in first["cancelled_orders"]
        others = [c for c in first["cancelled_orders"] if c != "resting-1"]
        assert len(others) == 2 and all(c.startswith("ttt") for c in others)
        assert sorted(p["symbol"] for p in first["closed_positions"]) == ["BTCUSDT", "ETHUSDT"]
        await eventually(lambda: not engine.shadow.positions and not engine.shadow.orders)
        assert (await client.get("/api/state/positions")).json() == []
        assert (await client.get("/api/state/orders")).json() == []
        second = (await client.post("/api/emergency/flatten-all")).json()
        assert second["cancelled_orders"] == [] and second["closed_positions"] == []
        assert second["message"].startswith("nothing to do")
        assert (await signal(engine, prepare_msg(engine, "flat-3"))).reason == ("TRADING_HALTED")
