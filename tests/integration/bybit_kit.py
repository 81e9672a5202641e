"""The fake Bybit exchange as a process of its own, and the service's live configuration
pointed at it: what the tests that run the service against the fake share
(test_bybit_e2e.py, test_chaos_bybit.py).

The fake runs from this checkout (``python -m tests.fakes.exchange``) and prints its
address on its first line; it is stopped with SIGINT when the block ends. Its control API
(``/fake/state``, ``/fake/price``, ``/fake/fault``) is plain JSON without auth.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import merge

KEY, SECRET = "fake-key-000000000000", "fake-secret-000000000000"
TOKEN = "e2e-token-" + "x" * 30
HMAC = "e2e-hmac-secret-" + "y" * 30
KEYS_ENV = {"TITAN_BYBIT_API_KEY": KEY, "TITAN_BYBIT_API_SECRET": SECRET}
ROOT = Path(__file__).resolve().parents[2]
STOP_LIMIT_S = 10.0


class Fake:
    """The fake exchange's process and its control API."""

    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc, self.url = proc, url
        self.http = httpx.Client(base_url=url, timeout=5)

    def state(self) -> dict[str, Any]:
        return self.http.get("/fake/state").json()

    def price(self, symbol: str, bid: str) -> None:
        """Move a symbol's quote (the ask one tick above); resting orders and position
        stops it crosses fill at the fake."""
        answer = self.http.post("/fake/price", json={"symbol": symbol, "bid": bid})
        assert answer.status_code == 200, answer.text

    def signed_create(self, params: dict[str, Any]) -> dict[str, Any]:
        """An order placed by hand at the exchange (someone else, or the app)."""
        body = json.dumps(params)
        ts = str(int(time.time() * 1000))
        sign = hmac.new(SECRET.encode(), f"{ts}{KEY}5000{body}".encode(), hashlib.sha256)
        headers = {
            "X-BAPI-API-KEY": KEY,
            "X-BAPI-TIMESTAMP": ts,
            "X-BAPI-RECV-WINDOW": "5000",
            "X-BAPI-SIGN": sign.hexdigest(),
            "X-BAPI-SIGN-TYPE": "2",
            "Content-Type": "application/json",
        }
        return self.http.post("/v5/order/create", content=body, headers=headers).json()


@contextmanager
def fake_exchange(symbols: dict[str, str], walk_ms: int = 0, seed: int = 1) -> Iterator[Fake]:
    """The fake as a process with ``symbols`` (symbol -> first bid) and our key; with
    ``walk_ms`` it moves its own prices (a seeded random walk of a few ticks)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.exchange",
            "--port",
            "0",
            "--symbols",
            ",".join(f"{s}={p}" for s, p in symbols.items()),
            "--key",
            f"{KEY}:{SECRET}",
            "--walk-ms",
            str(walk_ms),
            "--seed",
            str(seed),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("fake exchange listening on "), line
    fake = Fake(proc, line.split()[-1])
    try:
        yield fake
    finally:
        fake.http.close()
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def live_config(tmp_path: Path, fake: Fake, port: int, symbols: list[str], **extra: Any) -> Path:
    """The service's configuration file: mode live, broker bybit and the bybit feed at
    the fake, signed IPC, an API token; ``extra`` merged over it section by section."""
    ws = fake.url.replace("http://", "ws://")
    cfg = {
        "mode": "live",
        "api": {"port": port, "token": TOKEN},
        "ipc": {"socketPath": str(tmp_path / "titan.sock"), "hmacSecret": HMAC},
        "database": {"path": str(tmp_path / "titan.db")},
        "broker": {"name": "bybit"},
        "exchanges": {
            "bybit": {
                "restUrl": fake.url,
                "wsPublicUrl": f"{ws}/v5/public/linear",
                "wsPrivateUrl": f"{ws}/v5/private",
            }
        },
        "feeds": ["bybit"],
        "symbols": symbols,
        "reconcile": {"intervalS": 2},
        "logging": {"dir": str(tmp_path / "logs")},
    }
    path = tmp_path / "live.json"
    path.write_text(json.dumps(merge(cfg, extra)))
    return path
