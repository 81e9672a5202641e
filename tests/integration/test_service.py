"""The whole service in-process on loopback: every endpoint, a paper trade flowing into
positions, trades and metrics, and a restart resuming the same account."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import pytest
import trio

from tests.helpers import eventually, exact
from titan_trio.config import Config
from titan_trio.domain.orders import OrderRequest, OrderType, Side
from titan_trio.engine import Engine
from titan_trio.errors import BrokerRejected


async def start(nursery: trio.Nursery, cfg: Config) -> tuple[Engine, httpx.AsyncClient]:
    engine: Engine = await nursery.start(Engine(cfg).run)
    with trio.fail_after(10):  # health says "starting" until the first reconciliation
        await engine.reconciler.ready.wait()
    client = httpx.AsyncClient(base_url=engine.api_url, timeout=5)
    return engine, client


async def test_every_endpoint_answers(make_config: Callable[..., Config]) -> None:
    async with trio.open_nursery() as nursery:
        engine, client = await start(nursery, make_config())
        async with client:
            health = (await client.get("/api/health")).json()
            assert health["status"] == "healthy"
            assert set(health) >= {"websocket", "database", "ipc", "broker", "uptime_s", "version"}
            assert health["websocket"]["feeds"]["simulated"]["connected"] is True
            assert health["database"]["writable"] is True
            assert health["broker"]["name"] == "paper"

            equity = (await client.get("/api/state/equity")).json()
            assert equity["equity"] == 10000
            assert equity["initial_capital"] == 10000
            assert equity["drawdown_pct"] == 0
            assert equity["trading_state"] == "ACTIVE"

            assert (await client.get("/api/state/positions")).json() == []
            assert (await client.get("/api/state/orders")).json() == []
            assert (await client.get("/api/trades")).json() == []

            market = (await client.get("/api/market")).json()
            assert set(market) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
            btc = market["BTCUSDT"]
            assert btc["bid"] < btc["ask"]
            assert btc["source"] == "simulated"
            assert btc["age_ms"] < 5000

            metrics = (await client.get("/metrics")).text
            for name in (
                'titan_health_status{component="database"} 1.0',
                "titan_equity_usd 10000.0",
                "titan_drawdown_percent 0.0",
                "titan_process_cpu_seconds_total",
                "titan_process_resident_memory_bytes",
                "titan_open_positions 0.0",
            ):
                assert name in metrics

            spec = (await client.get("/api/openapi.json")).json()
            assert spec["openapi"].startswith("3.")
            served = {r.rule for r in _routes(engine)}
            assert served == set(spec["paths"])
        nursery.cancel_scope.cancel()


def _routes(engine: Engine) -> list[Any]:
    from titan_trio.api.app import create_app

    app = create_app(engine)
    return [r for r in app.url_map.iter_rules() if r.endpoint != "static"]


async def test_bad_requests_get_json_4xx(make_config: Callable[..., Config]) -> None:
    async with trio.open_nursery() as nursery:
        _engine, client = await start(nursery, make_config())
        async with client:
            cases = [
                ("GET", "/api/nope", 404),
                ("POST", "/api/health", 405),
                ("GET", "/api/trades?limit=0", 400),
                ("GET", "/api/trades?limit=abc", 400),
                ("GET", "/api/trades?limit=1001", 400),
                ("GET", "/api/trades?date=2026-13-01", 400),
                ("GET", "/api/trades?date=yesterday", 400),
                ("GET", "/api/trades?symbol=DOGEUSDT", 400),
                ("GET", "/api/trades?colour=red", 400),
            ]
            for method, path, code in cases:
                response = await client.request(method, path)
                assert response.status_code == code, path
                body = response.json()
                assert set(body) == {"error", "message"}, path
                assert body["message"], path
            # and the service is still fine afterwards
            assert (await client.get("/api/health")).json()["status"] == "healthy"
        nursery.cancel_scope.cancel()


async def _buy(engine: Engine, client_id: str, qty: str) -> None:
    assert engine.broker is not None
    await engine.broker.submit(
        OrderRequest(
            client_id, "BTCUSDT", Side.BUY, OrderType.MARKET, Decimal(qty), leverage=Decimal(5)
        )
    )


async def _sell(engine: Engine, client_id: str, qty: str) -> None:
    assert engine.broker is not None
    await engine.broker.submit(
        OrderRequest(
            client_id,
            "BTCUSDT",
            Side.SELL,
            OrderType.MARKET,
            Decimal(qty),
            reduce_only=True,
            leverage=Decimal(5),
        )
    )


async def test_paper_trade_moves_positions_trades_and_metrics(
    make_config: Callable[..., Config],
) -> None:
    async with trio.open_nursery() as nursery:
        engine, client = await start(nursery, make_config())
        async with client:
            await _buy(engine, "it-buy-1", "0.010")

            async def one_position() -> list[Any]:
                return (await client.get("/api/state/positions")).json()

            await eventually(lambda: "BTCUSDT" in engine.shadow.positions)
            positions = await one_position()
            assert len(positions) == 1
            pos = positions[0]
            assert pos["symbol"] == "BTCUSDT"
            assert pos["side"] == "LONG"
            assert pos["size"] == 0.01
            metrics = (await client.get("/metrics")).text
            assert "titan_open_positions 1.0" in metrics
            assert 'titan_position_pnl_usd{symbol="BTCUSDT"}' in metrics

            await _sell(engine, "it-sell-1", "0.010")
            await eventually(lambda: not engine.shadow.positions)
            today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
            trades = exact(await client.get(f"/api/trades?date={today}&limit=5"))
            assert len(trades) == 1
            trade = trades[0]
            assert trade["symbol"] == "BTCUSDT"
            assert trade["side"] == "LONG"  # the position's side, as in /api/state/positions
            assert trade["qty"] == Decimal("0.010")
            assert trade["net_pnl"] == trade["realized_pnl"] - trade["fees"]
            assert trade["fees"] > 0
            assert trade["closed_at"].endswith("Z") and trade["closed_at"] >= trade["opened_at"]
            # the shadow's balance agrees with the paper exchange's to the last digit
            assert engine.shadow.balance == await engine.broker.balance()
            equity = exact(await client.get("/api/state/equity"))
            assert equity["balance"] == engine.shadow.balance  # to the last digit
            assert equity["realized_pnl_today"] == trade["net_pnl"]
            other_day = (await client.get("/api/trades?date=2001-01-01")).json()
            assert other_day == []
        nursery.cancel_scope.cancel()


async def test_restart_resumes_the_same_account(make_config: Callable[..., Config]) -> None:
    cfg = make_config()
    async with trio.open_nursery() as nursery:
        engine, client = await start(nursery, cfg)
        await client.aclose()
        await _buy(engine, "resume-buy-1", "0.020")
        await eventually(lambda: "BTCUSDT" in engine.shadow.positions)
        balance_before = engine.shadow.balance
        entry_before = engine.shadow.positions["BTCUSDT"].position.entry_price
        peak_before = engine.risk.tracker.peak_equity
        nursery.cancel_scope.cancel()

    # The database was closed cleanly and says so in its own journal.
    with sqlite3.connect(cfg.database.path) as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM system_events ORDER BY id")]
    assert kinds == ["start", "stop"]

    async with trio.open_nursery() as nursery:
        engine, client = await start(nursery, cfg)
        async with client:
            assert engine.broker is not None and engine.broker.resumed
            assert engine.shadow.balance == balance_before
            assert await engine.broker.balance() == balance_before
            rec = engine.shadow.positions["BTCUSDT"]
            assert rec.position.entry_price == entry_before
            assert rec.position.size == Decimal("0.020")
            assert engine.risk.tracker.peak_equity >= peak_before
            positions = (await client.get("/api/state/positions")).json()
            assert [p["symbol"] for p in positions] == ["BTCUSDT"]
            # The exchange still knows the first order, and refuses its id a second time.
            first = await engine.broker.order_status("BTCUSDT", "resume-buy-1")
            assert first is not None and first.status.value == "FILLED"
            with pytest.raises(BrokerRejected) as info:
                await _buy(engine, "resume-buy-1", "0.020")
            assert info.value.reason == "DUPLICATE_ORDER_ID"
            assert engine.shadow.positions["BTCUSDT"].position.size == Decimal("0.020")
            await _sell(engine, "resume-sell-1", "0.020")
            await eventually(lambda: not engine.shadow.positions)
        nursery.cancel_scope.cancel()
