"""The fake exchange as a process of its own: ``python -m tests.fakes.exchange``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_prints_its_address_serves_and_exits_cleanly(stop: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "tests.fakes.exchange",
        "--port",
        "0",
        "--symbols",
        "BTCUSDT=95000,DOGEUSDT=0.2",
        "--key",
        "k1:s1",
        "--walk-ms",
        "20",
    ]
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            prefix = "fake exchange listening on "
            assert line.startswith(prefix + "http://127.0.0.1:")
            base = line.removeprefix(prefix)
            with httpx.Client(base_url=base, timeout=5) as client:
                assert client.get("/v5/market/time").json()["retCode"] == 0
                doge = client.get(
                    "/v5/market/instruments-info?category=linear&symbol=DOGEUSDT"
                ).json()
                assert doge["result"]["list"][0]["priceFilter"]["tickSize"] == "0.01"
                assert client.post(
                    "/fake/price", json={"symbol": "BTCUSDT", "bid": "90000"}
                ).json() == {"ok": True}
                assert client.post("/fake/fault", json={"kind": "nope"}).status_code == 400
                state = client.get("/fake/state").json()
                assert state["quotes"]["BTCUSDT"]["bid"] != ""
            process.send_signal(stop)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()
