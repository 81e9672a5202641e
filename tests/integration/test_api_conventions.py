"""One convention across the API's answers (README, "API conventions"): money, prices,
quantities and percentages are JSON numbers written with every digit of the decimal;
moments are ISO 8601 UTC strings (``*_at``); a position's and a trade's side is LONG or
SHORT, an order's BUY or SELL."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from tests.helpers import eventually, exact, service
from tests.integration.test_risk import api, open_long, signal
from titan_trio.config import Config

MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
AMOUNTS = {
    "equity", "balance", "unrealized_pnl", "realized_pnl_today", "peak_equity",
    "drawdown_pct", "initial_capital", "size", "entry_price", "mark_price", "realized_pnl",
    "fees", "leverage", "stop_loss", "qty", "price", "filled_qty", "exit_price", "net_pnl",
    "bid", "ask", "last", "day_start_equity", "daily_pnl", "total_notional",
}  # fmt: skip


def check(value: Any, path: str = "") -> None:
    """Every amount a number, every moment ISO 8601 UTC, everywhere in an answer."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if key.endswith("_at") and item is not None:
                assert isinstance(item, str) and MOMENT.match(item), (where, item)
                dt.datetime.fromisoformat(item)  # a real moment
            elif key in AMOUNTS and item is not None:
                assert isinstance(item, Decimal | int), (where, item)
            check(item, where)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            check(item, f"{path}[{n}]")


async def test_every_answer_writes_amounts_as_exact_numbers_and_moments_in_iso_utc(
    risk_config: Callable[..., Config],
) -> None:
    async with service(risk_config()) as engine, api(engine) as client:
        await open_long(engine, "conv-1")  # a position, its stop and take profit
        closed = await signal(
            engine, {"type": "CLOSE", "id": 9, "signal_id": "conv-x", "symbol": "BTCUSDT"}
        )
        assert closed.status == "closed", closed
        await eventually(lambda: "BTCUSDT" not in engine.shadow.positions)
        await open_long(engine, "conv-2")
        answers = {
            path: exact(await client.get(path))
            for path in (
                "/api/state/equity",
                "/api/state/positions",
                "/api/state/orders",
                "/api/market",
                "/api/trades",
                "/api/risk",
                "/api/health",
            )
        }
        for path, body in answers.items():
            check(body, path)
        [position] = answers["/api/state/positions"]
        [trade] = answers["/api/trades"]
        assert position["side"] == trade["side"] == "LONG"
        assert {o["side"] for o in answers["/api/state/orders"]} == {"SELL"}  # its target
        # every digit: the trade's figures add up exactly
        assert trade["net_pnl"] == trade["realized_pnl"] - trade["fees"]
        assert answers["/api/state/equity"]["balance"] == engine.shadow.balance
