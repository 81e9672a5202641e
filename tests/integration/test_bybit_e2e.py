"""End to end against the fake exchange, each in its own process, as an operator would
run it: ``broker.name = "bybit"`` and ``feeds = ["bybit"]`` pointed at the fake, keys in
the environment. A signal becomes an order at the exchange under its client order id, its
fill arrives over the private stream, the position shows its stop (held by the exchange),
a position made while the service was down is adopted at the restart, and CLOSE and
flatten-all close at the exchange."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ipc.client import SignalClient
from tests.conftest import free_port
from tests.helpers import PROCESS_POLL_S, exact, spawn, stop, wait_healthy
from tests.integration.bybit_kit import HMAC, KEYS_ENV, TOKEN, Fake, fake_exchange, live_config

pytestmark = pytest.mark.slow


@pytest.fixture
def fake() -> Iterator[Fake]:
    with fake_exchange({"BTCUSDT": "95000", "ETHUSDT": "3500"}, walk_ms=100) as fx:
        yield fx


def until(predicate: Any, limit_s: float = 15.0) -> Any:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(PROCESS_POLL_S)
    raise AssertionError("condition not reached in time")


def api_get(port: int, path: str) -> Any:
    return exact(httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5))


def long_signal(client: SignalClient, port: int, signal_id: str) -> Any:
    quote = until(lambda: api_get(port, "/api/market").get("BTCUSDT"))
    assert quote["source"] == "bybit"
    mid = (float(quote["bid"]) + float(quote["ask"])) / 2
    reply = client.prepare(
        signal_id,
        "BTCUSDT",
        "LONG",
        (mid * 0.995, mid * 1.005),
        round(mid * 0.98, 1),
        [round(mid * 1.03, 1)],
        80,
        5,
        velocity=5.0,  # taker: fills at once
    )
    assert reply.status == "prepared", reply
    return client.confirm(signal_id), round(mid * 0.98, 1)


def test_signals_trade_at_the_exchange_and_a_restart_adopts_what_happened_meanwhile(
    tmp_path: Path, fake: Fake
) -> None:
    port = free_port()
    config = live_config(tmp_path, fake, port, ["BTCUSDT", "ETHUSDT"])
    env = KEYS_ENV
    proc = spawn(config, tmp_path, **env)
    try:
        health = wait_healthy(port, proc)
        assert health["broker"]["name"] == "bybit" and health["broker"]["stream"]["connected"]
        assert health["websocket"]["feeds"]["bybit"]["connected"]
        with SignalClient(str(tmp_path / "titan.sock"), secret=HMAC) as client:
            reply, stop_price = long_signal(client, port, "e2e-1")
            assert reply.status == "accepted", reply
            coid = reply.client_order_id
            # the order at the exchange under our id, its fill back over the stream
            made = until(lambda: [o for o in fake.state()["orders"] if o["orderLinkId"] == coid])
            assert len(made) == 1
            held = until(lambda: api_get(port, "/api/state/positions"))
            assert (held[0]["symbol"], held[0]["side"]) == ("BTCUSDT", "LONG")
            until(
                lambda: (
                    fake.state()["positions"].get("BTCUSDT", {}).get("stopLoss")
                    not in (None, "", "0")
                )
            )
            assert float(fake.state()["positions"]["BTCUSDT"]["stopLoss"]) == pytest.approx(
                stop_price
            )
            assert float(api_get(port, "/api/state/positions")[0]["stop_loss"]) == pytest.approx(
                stop_price
            )

        # killed; meanwhile an ETH position is opened at the exchange by hand
        proc.kill()
        proc.wait(timeout=10)
        made = fake.signed_create(
            {
                "category": "linear",
                "symbol": "ETHUSDT",
                "side": "Sell",
                "orderType": "Market",
                "qty": "0.50",
                "orderLinkId": "by-hand-1",
            }
        )
        assert made["retCode"] == 0, made
        proc = spawn(config, tmp_path, **env)
        wait_healthy(port, proc)
        positions = until(
            lambda: (
                {p["symbol"]: p for p in api_get(port, "/api/state/positions")}
                if len(api_get(port, "/api/state/positions")) == 2
                else None
            )
        )
        assert positions["ETHUSDT"]["side"] == "SHORT" and positions["ETHUSDT"][
            "size"
        ] == pytest.approx(0.5)
        until(  # adopted and protected: a stop at the exchange too
            lambda: fake.state()["positions"]["ETHUSDT"].get("stopLoss") not in (None, "", "0")
        )
        stops = {p["symbol"]: p["stop_loss"] for p in api_get(port, "/api/state/positions")}
        assert stops["ETHUSDT"] is not None
        assert positions["BTCUSDT"]["signal_id"] == "e2e-1"  # ours, still known as ours

        with SignalClient(str(tmp_path / "titan.sock"), secret=HMAC) as client:
            closed = client.close("e2e-close-1", "BTCUSDT", reason="e2e")
            assert closed.status == "closed", closed
        until(lambda: "BTCUSDT" not in fake.state()["positions"])
        flat = httpx.post(
            f"http://127.0.0.1:{port}/api/emergency/flatten-all",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert flat.status_code == 200, flat.text
        until(lambda: fake.state()["positions"] == {})
        until(lambda: api_get(port, "/api/state/positions") == [])
        trades = api_get(port, "/api/trades")
        assert {t["symbol"] for t in trades} == {"BTCUSDT", "ETHUSDT"}
    finally:
        if proc.poll() is None:
            code, _, out = stop(proc)
            assert code == 0, out


def fault(fake: Fake, kind: str, **args: Any) -> None:
    answer = httpx.post(f"{fake.url}/fake/fault", json={"kind": kind, **args}, timeout=5)
    assert answer.status_code == 200, answer.text


def test_faults_at_the_exchange_lose_and_double_nothing(tmp_path: Path, fake: Fake) -> None:
    port = free_port()
    config = live_config(tmp_path, fake, port, ["BTCUSDT", "ETHUSDT"])
    proc = spawn(config, tmp_path, **KEYS_ENV)
    try:
        wait_healthy(port, proc)
        # the market streams cut every half second: reconnects, and the prices stay fresh
        for _ in range(4):
            fault(fake, "drop_ws", channel="bybit_public")
            time.sleep(0.5)
        health = until(lambda: (h := api_get(port, "/api/health"))["status"] == "healthy" and h)
        assert health["websocket"]["feeds"]["bybit"]["reconnects"] >= 4
        until(lambda: api_get(port, "/api/market")["BTCUSDT"]["age_ms"] < 1000)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'titan_ws_reconnects_total{exchange="bybit"} 4.0' in metrics or any(
            line.startswith('titan_ws_reconnects_total{exchange="bybit"}')
            and float(line.split()[-1]) >= 4
            for line in metrics.splitlines()
        )

        with SignalClient(str(tmp_path / "titan.sock"), secret=HMAC) as client:
            # the acknowledgement of the order is lost: one order, found and settled
            fault(fake, "lose_ack", path="/v5/order/create", count=1)
            reply, _ = long_signal(client, port, "lost-ack-1")
            assert reply.status == "accepted", reply
            coid = reply.client_order_id
            until(
                lambda: [
                    p for p in api_get(port, "/api/state/positions") if p["symbol"] == "BTCUSDT"
                ]
            )
            assert [o["orderLinkId"] for o in fake.state()["orders"]].count(coid) == 1

            # the private stream is down (cut, and its reconnection not answered for a
            # while): REST polling keeps the positions right meanwhile
            fault(fake, "stall_ws", channel="bybit_private", seconds=10)
            fault(fake, "drop_ws", channel="bybit_private")
            until(lambda: api_get(port, "/api/health")["broker"]["stream"]["polling"])
            closed = client.close("lost-ack-1-close", "BTCUSDT", reason="while polling")
            assert closed.status == "closed", closed
            until(lambda: "BTCUSDT" not in fake.state()["positions"])
            until(lambda: api_get(port, "/api/state/positions") == [], limit_s=5)
            assert api_get(port, "/api/health")["broker"]["stream"]["polling"]  # still down
            until(lambda: api_get(port, "/api/health")["broker"]["stream"]["connected"])
        executions = fake.state()["executions"]
        db = sqlite3.connect(f"file:{tmp_path / 'titan.db'}?mode=ro", uri=True)
        recorded = [row[0] for row in db.execute("SELECT exec_id FROM fills")]
        db.close()
        assert sorted(recorded) == sorted(e["execId"] for e in executions)  # each once
    finally:
        if proc.poll() is None:
            code, _, out = stop(proc)
            assert code == 0, out


def test_live_without_keys_refuses_to_start_and_keys_never_show(tmp_path: Path, fake: Fake) -> None:
    port = free_port()
    config = live_config(tmp_path, fake, port, ["BTCUSDT"])
    bare = {k: "" for k in KEYS_ENV}
    refused = spawn(config, tmp_path, **bare)
    out, _ = refused.communicate(timeout=30)
    assert refused.returncode != 0
    assert "broker bybit needs API keys: set TITAN_BYBIT_API_KEY and TITAN_BYBIT_API_SECRET" in out
    assert "Traceback" not in out

    proc = spawn(config, tmp_path, **KEYS_ENV)
    try:
        health = wait_healthy(port, proc)
        text = json.dumps(health) + httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        code, _, out = stop(proc)
    assert code == 0, out
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log*"))
    for secret in KEYS_ENV.values():
        assert secret not in text and secret not in out and secret not in logs
    assert "key …0000 (from the environment)" in logs  # named by its last characters only
