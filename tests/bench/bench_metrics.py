"""Scrape benchmark: what one Prometheus scrape of ``/metrics`` costs the service, against
a bare Hypercorn app answering the same bytes from memory (the floor: HTTP, the ASGI
server and the client, with no metrics to gather).

Both run in this process on trio, one after the other, on loopback, and are scraped by
the same httpx client over one keep-alive connection, sequentially, for ``--seconds``
each. The service runs its real collector (health of every component, equity, positions,
the fill-rate window, the process figures) on the embedded default with three open
positions, so the answer has labels to render.

Prints scrapes per second and p50 / p99 per scrape for both, the exposition's size, and
the target with PASS/FAIL: a scrape costs at most 5 ms at p99 more than the floor's, and
the service sustains at least 20 % of the floor's rate (a scrape every 15 s needs one per
15 s: the target guards against a collector that grows with history, not for speed).

Run: `make bench` or `.venv/bin/python tests/bench/bench_metrics.py [--seconds 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import service
from titan_trio.config import parse_config
from titan_trio.domain.positions import Position
from titan_trio.state.shadow import PositionRecord

P99_MARGIN_MS = 5.0
RATE_SHARE = 0.20


async def measure(url: str, seconds: float) -> tuple[list[float], int]:
    times: list[float] = []
    size = 0
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for _ in range(20):  # warm-up
            await client.get("/metrics")
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            started = time.perf_counter()
            answer = await client.get("/metrics")
            times.append(time.perf_counter() - started)
            size = len(answer.content)
            assert answer.status_code == 200
    return times, size


def bare_app(body: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def summary(name: str, times: list[float], seconds: float) -> tuple[float, float]:
    ms = sorted(t * 1000 for t in times)
    p50 = statistics.median(ms)
    p99 = ms[int(len(ms) * 0.99) - 1]
    rate = len(ms) / seconds
    print(f"  {name:<34} {rate:>8,.0f} scrapes/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    return rate, p99


async def main(seconds: float) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = parse_config(
            {
                "api": {"port": 0},
                "ipc": {"socketPath": f"{tmp}/t.sock"},
                "database": {"path": f"{tmp}/t.db"},
                "logging": {"dir": f"{tmp}/logs", "level": "WARNING"},
            },
            environ={},
        )
        async with service(cfg) as engine:
            for symbol, size in (("BTCUSDT", "0.1"), ("ETHUSDT", "-2"), ("SOLUSDT", "10")):
                mark = engine.hub.book.mark(symbol) or Decimal(1)
                engine.shadow.positions[symbol] = PositionRecord(
                    Position(symbol, Decimal(size), mark)
                )
            assert engine.api_url is not None
            service_times, size = await measure(engine.api_url, seconds)
            body = (await httpx.AsyncClient().get(f"{engine.api_url}/metrics")).content
    async with trio.open_nursery() as nursery:
        config = HypercornConfig()
        config.bind = ["127.0.0.1:0"]
        config.accesslog = None
        binds = await nursery.start(serve, bare_app(body), config)
        floor_times, _ = await measure(binds[0], seconds)
        nursery.cancel_scope.cancel()
    print(f"metrics scrape (tests/bench/bench_metrics.py; {seconds:g} s each, {size:,} bytes)")
    floor_rate, floor_p99 = summary("floor: bare Hypercorn, same bytes", floor_times, seconds)
    rate, p99 = summary("service /metrics", service_times, seconds)
    ok_p99 = p99 <= floor_p99 + P99_MARGIN_MS
    ok_rate = rate >= RATE_SHARE * floor_rate
    print("targets:")
    print(
        f"  {'PASS' if ok_p99 else 'FAIL'}  p99 within {P99_MARGIN_MS:g} ms of the floor's: "
        f"{p99:.2f} vs {floor_p99:.2f} ms"
    )
    print(
        f"  {'PASS' if ok_rate else 'FAIL'}  rate >= {RATE_SHARE:.0%} of the floor's: "
        f"{rate / floor_rate:.0%} ({rate:,.0f} of {floor_rate:,.0f} scrapes/s)"
    )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    sys.exit(trio.run(main, parser.parse_args().seconds))
