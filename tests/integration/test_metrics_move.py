"""Every metric of SPEC §9 is exported with HELP and its type, and moves when what it
measures moves: the service is driven (signals, a fill, a price move, a loss, the breaker,
an IPC connection, a reconciliation, a backup file appearing) and the exposition read
before and after."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import eventually, service
from tests.integration.test_risk import TOKEN, open_long, publish
from titan_trio.config import Config
from titan_trio.domain.positions import Position
from titan_trio.state.shadow import PositionRecord

# SPEC §9, name -> type (counters are named without _total in the exposition's families)
SPEC_METRICS = {
    "titan_health_status": "gauge",
    "titan_signals": "counter",
    "titan_order_latency_seconds": "histogram",
    "titan_position_pnl_usd": "gauge",
    "titan_equity_usd": "gauge",
    "titan_order_fill_rate": "gauge",
    "titan_drawdown_percent": "gauge",
    "titan_process_cpu_seconds": "counter",
    "titan_process_resident_memory_bytes": "gauge",
    "titan_orders": "counter",
    "titan_open_positions": "gauge",
    "titan_total_leverage": "gauge",
    "titan_circuit_breaker_tripped": "gauge",
    "titan_ws_reconnects": "counter",
    "titan_ws_last_message_age_seconds": "gauge",
    "titan_ipc_connections": "gauge",
    "titan_reconciliation_drift": "gauge",
    "titan_backup_last_success_timestamp_seconds": "gauge",
}


async def scrape(client: httpx.AsyncClient) -> dict[str, dict[tuple, float]]:
    text = (await client.get("/metrics")).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def total(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if want <= set(k))


async def test_every_spec_metric_is_exported_with_help_and_type(
    make_config: Callable[..., Config],
) -> None:
    async with service(make_config()) as engine:
        async with httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client:
            text = (await client.get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in SPEC_METRICS.items():
        assert name in families, name
        assert families[name].type == kind, (name, families[name].type)
        assert families[name].documentation, name


def orders_counted(engine: Any) -> float:
    """titan_orders_total as the service's registry holds it, every status summed."""
    return sum(
        sample.value
        for family in engine.metrics.orders.collect()
        for sample in family.samples
        if sample.name == "titan_orders_total"
    )


async def test_each_metric_moves_when_what_it_measures_moves(
    risk_config: Callable[..., Config], tmp_path: Path
) -> None:
    cfg = risk_config(api={"token": TOKEN}, database={"backupDir": str(tmp_path / "bk")})
    async with service(cfg) as engine:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client:
            publish(engine, "BTCUSDT", Decimal(95000))
            before = await scrape(client)
            assert total(before, "titan_open_positions") == 0
            assert total(before, "titan_backup_last_success_timestamp_seconds") == 0

            # a signal that trades: signals, orders, latency, position, P&L, leverage
            await open_long(engine, "m-1")
            publish(engine, "BTCUSDT", Decimal(95500))  # the price moves: P&L, equity
            await eventually(lambda: engine.equity_monitor.equity() > Decimal(10000))
            # the order is counted once its fill is saved (the position shows before that)
            await eventually(lambda: orders_counted(engine) > 0)
            # an IPC connection held open
            stream = await trio.open_unix_socket(engine.cfg.ipc.socket_path)
            await eventually(lambda: engine.ipc is not None and engine.ipc.connections >= 1)
            # a backup that finished (its checksum beside it)
            bk = tmp_path / "bk"
            bk.mkdir()
            stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime())
            (bk / f"backup-{stamp}.db.gz").write_bytes(gzip.compress(b"x"))
            (bk / f"backup-{stamp}.db.gz.sha256").write_text("0" * 64)
            after = await scrape(client)
            await stream.aclose()

            assert total(after, "titan_signals_total") > total(before, "titan_signals_total")
            assert total(after, "titan_orders_total") > total(before, "titan_orders_total")
            assert total(after, "titan_order_latency_seconds_count") == 1
            assert total(after, "titan_open_positions") == 1
            assert total(after, "titan_position_pnl_usd", symbol="BTCUSDT") > 0
            assert total(after, "titan_equity_usd") > total(before, "titan_equity_usd")
            assert total(after, "titan_total_leverage") > 0
            assert total(after, "titan_ipc_connections") >= 1
            assert total(after, "titan_order_fill_rate") == 100.0  # one entry, filled
            assert (
                abs(total(after, "titan_backup_last_success_timestamp_seconds") - time.time()) < 120
            )
            assert total(after, "titan_process_cpu_seconds_total") >= total(
                before, "titan_process_cpu_seconds_total"
            )
            assert total(after, "titan_process_resident_memory_bytes") > 0

            # a loss from the peak: drawdown; then the breaker
            publish(engine, "BTCUSDT", Decimal(90000))
            await eventually(lambda: engine.risk.tracker.drawdown_pct > 0)
            lower = await scrape(client)
            assert total(lower, "titan_drawdown_percent") > 0
            assert total(lower, "titan_circuit_breaker_tripped") == 1  # 5 %+ below the peak

            # a difference for reconciliation to find: a position the broker does not hold
            ghost = Position("ETHUSDT", Decimal(1), Decimal(3500))
            engine.shadow.positions["ETHUSDT"] = PositionRecord(ghost)
            answer = await client.post("/api/state/reconcile", headers=headers)
            assert answer.status_code == 200
            healed = await scrape(client)
            assert total(healed, "titan_reconciliation_drift") >= 1

            # a feed that stops: its health and message age
            engine._feeds_scope.cancel()  # type: ignore[union-attr]
            for feed in engine.hub.feeds.values():
                feed.connected = False
            stopped = await scrape(client)
            assert total(stopped, "titan_health_status", component="websocket") == 0
            assert total(healed, "titan_health_status", component="websocket") == 1
    # (titan_ws_reconnects_total moving with a dropped feed: tests/feeds/test_reconnect.py)
