"""A clean stop under load (SIGTERM, SIGINT): the service stops admitting, finishes what it
admitted, answers it and commits it. Afterwards nothing is journaled and unsent, every
order the strategies were told was accepted is at the exchange, and the exchange holds no
fill the shadow state does not."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from ipc.client import IpcClientError, SignalClient
from ipc.protocol import Status
from tests.conftest import free_port
from tests.helpers import spawn, stop, wait_healthy

CLIENTS = 20
LOAD_S = 1.0


def strategy(socket: str, port: int, n: int, accepted: list[str], stopped: threading.Event) -> None:
    """PREPARE, CONFIRM, CLOSE in a loop on one symbol, as fast as the replies come, until
    the service goes away."""
    symbol = ("BTCUSDT", "ETHUSDT", "SOLUSDT")[n % 3]
    try:
        market = httpx.get(f"http://127.0.0.1:{port}/api/market", timeout=5).json()[symbol]
        mid = (float(market["bid"]) + float(market["ask"])) / 2
        zone = (round(mid * 0.99, 2), round(mid * 1.01, 2))  # wide: the walk stays inside
        stop_loss, take_profits = round(mid * 0.97, 2), [round(mid * 1.05, 2)]
        with SignalClient(socket, timeout=10, reconnect_attempts=0) as client:
            k = 0
            while not stopped.is_set():
                k += 1
                sid = f"c{n}-{k}"
                reply = client.prepare(sid, symbol, "LONG", zone, stop_loss, take_profits, 80, 2)
                if reply.status is not Status.PREPARED:
                    continue
                reply = client.confirm(sid)
                if reply.status is Status.ACCEPTED and reply.client_order_id:
                    accepted.append(reply.client_order_id)
                client.close(f"x{n}-{k}", symbol)
    except (IpcClientError, OSError, httpx.HTTPError):
        return  # the service stopped


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_under_load_leaves_nothing_journaled_and_unsent(
    tmp_path: Path, config_file: Callable[..., Path], sig: int
) -> None:
    port = free_port()
    config = config_file(
        api={"port": port},
        risk={
            "maxRiskPct": 0.1,
            "phase3RiskPct": 0.1,
            "maxPositions": 10,
            "maxConsecutiveLosses": 100000,
        },
        execution={"l2": {"maxSpreadPct": 1, "maxSlippagePct": 5}},
        ipc={"maxConnectionsPerProcess": 16},  # the clients are threads of this process
    )
    proc = spawn(config, tmp_path)
    wait_healthy(port, proc)
    accepted: list[str] = []
    stopped = threading.Event()
    socket = str(tmp_path / "titan-ipc.sock")
    threads = [
        threading.Thread(target=strategy, args=(socket, port, n, accepted, stopped))
        for n in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    time.sleep(LOAD_S)
    code, _elapsed, out = stop(proc, sig)
    stopped.set()
    for t in threads:
        t.join(timeout=15)
    assert code == 0, out
    assert accepted, "no order went through under load"
    db = sqlite3.connect(tmp_path / "titan.db")
    unsent = db.execute(
        "SELECT client_order_id, status FROM orders WHERE status IN ('PENDING_SUBMIT', 'SUBMITTED')"
    ).fetchall()
    assert unsent == [], "\n".join(
        line for line in out.splitlines() if any(c[:12] in line for c, _ in unsent)
    )
    at_exchange = {row[0] for row in db.execute("SELECT client_order_id FROM paper_orders")}
    assert set(accepted) <= at_exchange
    journaled = db.execute(
        "SELECT client_order_id FROM signals WHERE status IN ('CONFIRMED', 'CLOSED') "
        "AND client_order_id IS NOT NULL"
    ).fetchall()
    assert {row[0] for row in journaled} <= at_exchange
    exchange = json.loads(
        db.execute("SELECT value FROM kv WHERE key = 'paper.account'").fetchone()[0]
    )
    shadow = {row[0]: Decimal(row[1]) for row in db.execute("SELECT symbol, size FROM positions")}
    held = {p["symbol"]: Decimal(p["size"]) for p in exchange["positions"]}
    assert shadow == held, "\n".join(out.splitlines()[-40:])
