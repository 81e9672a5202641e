"""The service while its database fails (issue #8): writes that fail show in health, in a
metric and in the log with SQLite's cause; the service keeps running and is healthy again
once writes succeed; a stop record that cannot be written neither fails a clean stop nor
hides what stopped the service. Last, the real thing: a service process on a small disk
that fills up and empties again."""

from __future__ import annotations

import logging
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from ipc.client import SignalClient
from ipc.protocol import Reason, Status
from tests.conftest import fill_disk, free_port
from tests.helpers import PROCESS_POLL_S, service, spawn, stop, wait_healthy
from titan_trio.config import Config
from titan_trio.engine import Engine
from titan_trio.errors import StoreError, TitanError
from titan_trio.state import records
from titan_trio.state.schema import Entities

READ_ONLY = "attempt to write a readonly database (SQLITE_READONLY)"
RECOVERY_LIMIT_S = 10.0  # once space returns, how long the service may take to show it


def read_only(e: Entities) -> None:
    """The store thread's connection refuses writes, as on a read-only file or a full
    disk, until one fails (pony then replaces the connection: it recovers by itself)."""
    e.db.execute("PRAGMA query_only = 1")


async def quiet(engine: Engine) -> Engine:
    """After the start-up writes (the first equity snapshot may land after ``ready``): an
    idle service writes nothing else for a minute, so no write but the test's can meet
    (or replace) the read-only connection."""
    with trio.fail_after(5):
        counts = records.table_counts
        while not (await engine.store.call(counts))["equity_snapshots"]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    return engine


async def health(engine: Engine) -> tuple[int, dict]:
    async with httpx.AsyncClient(base_url=engine.api_url, timeout=5) as client:
        response = await client.get("/api/health")
        metrics = (await client.get("/metrics")).text
    body = response.json()
    body["metrics"] = metrics
    return response.status_code, body


async def test_failing_writes_show_in_health_and_metrics_until_one_succeeds(
    make_config: Callable[..., Config],
) -> None:
    async with service(make_config()) as engine:
        await quiet(engine)
        await engine.store.call(read_only)
        with pytest.raises(StoreError, match="readonly"):
            await engine.store.call(records.add_event, 1, "INFO", "test", "refused")
        code, body = await health(engine)
        assert code == 503, body["database"]
        assert body["database"]["status"] == "unhealthy"
        assert body["database"]["last_error"] == READ_ONLY
        assert body["database"]["write_failures"] == 1
        assert "titan_database_write_failures_total 1.0" in body["metrics"]
        assert 'titan_health_status{component="database"} 0.0' in body["metrics"]

        await engine.store.call(records.add_event, 2, "INFO", "test", "written")
        code, body = await health(engine)
        assert code == 200
        assert body["database"]["status"] == "healthy"
        assert body["database"]["last_error"] is None
        assert "titan_database_write_failures_total 1.0" in body["metrics"]  # a counter


async def test_clean_stop_while_writes_fail_warns_and_succeeds(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_config()
    async with service(cfg) as engine:
        await quiet(engine)
        await engine.store.call(read_only)
    # no exception: the stop was clean, only its record is missing
    assert f"the stop record could not be written: {READ_ONLY}" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
    ]
    with sqlite3.connect(cfg.database.path) as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM system_events ORDER BY id")]
    assert kinds == ["start"]


class FeedDied(TitanError):
    pass


async def test_what_stopped_the_service_survives_a_failing_stop_record(
    make_config: Callable[..., Config],
) -> None:
    async def crash(*mark: object) -> None:
        raise FeedDied("the real cause")

    with pytest.RaisesGroup(
        pytest.RaisesExc(FeedDied, match="the real cause"), flatten_subgroups=True
    ):
        async with service(make_config()) as engine:
            await quiet(engine)
            await engine.store.call(read_only)
            engine.equity_monitor.on_mark = crash  # told of every mark
            await trio.sleep_forever()


# ----- a real small disk, filled and emptied under a running service ------------------------


def prepare(client: SignalClient, signal_id: str, port: int) -> tuple[Status, Reason | None]:
    """A PREPARE near the market, journaled before it is answered: a write on the request
    path (one the database cannot record is answered BUSY)."""
    market = httpx.get(f"http://127.0.0.1:{port}/api/market", timeout=2).json()["BTCUSDT"]
    mid = (float(market["bid"]) + float(market["ask"])) / 2
    zone = (round(mid * 0.999, 1), round(mid * 1.001, 1))
    reply = client.prepare(
        signal_id, "BTCUSDT", "LONG", zone, round(mid * 0.99, 1), [round(mid * 1.02, 1)], 80, 5
    )
    return reply.status, reply.reason


def database_health(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()["database"]


@pytest.mark.slow
def test_service_on_a_full_disk_keeps_running_and_recovers(
    tmp_path: Path,
    small_disk: Path,
    config_file: Callable[..., Path],
) -> None:
    port = free_port()
    config = config_file(api={"port": port}, database={"path": str(small_disk / "titan.db")})
    proc = spawn(config, tmp_path)
    try:
        wait_healthy(port, proc)
        filler = fill_disk(small_disk)
        with SignalClient(str(tmp_path / "titan-ipc.sock")) as client:
            # Until a write needs space the disk no longer has (the WAL may have room left).
            for n in range(500):
                if prepare(client, f"full-{n}", port) == (Status.REJECTED, Reason.BUSY):
                    break
            else:
                raise AssertionError("no write failed on a full disk")
            db = database_health(port)
            assert db["status"] == "unhealthy"
            assert db["last_error"] == "database or disk is full (SQLITE_FULL)"

            filler.unlink()
            deadline = time.monotonic() + RECOVERY_LIMIT_S
            n = 0
            while (db := database_health(port))["status"] != "healthy":
                assert proc.poll() is None, "the service stopped"
                assert time.monotonic() < deadline, f"still unhealthy: {db}"
                n += 1
                prepare(client, f"after-{n}", port)  # the next write, as a strategy would send
                time.sleep(PROCESS_POLL_S)
            assert prepare(client, "after-recovery", port)[1] is not Reason.BUSY
    finally:
        code, _took, out = stop(proc, signal.SIGTERM)
    assert code == 0, out
    assert "database write failed: database or disk is full (SQLITE_FULL)" in out
    assert "database writes succeed again" in out
    assert out.rstrip().splitlines()[-1].endswith("stopped cleanly")
