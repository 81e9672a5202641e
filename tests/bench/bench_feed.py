"""Feed ingest benchmark: Binance ``bookTicker`` messages into the price book.

A loopback server in its own process speaks just enough WebSocket (the opening
handshake, then pre-framed unmasked text frames written in large batches) to send
Binance combined-stream ``bookTicker`` messages faster than any Python client can read
them, so the client is what is measured. In this process, in the same run:
- the floor: a bare trio-websocket client that only ``json.loads`` each message;
- the real path: ``BinanceFeed`` (trio-websocket, decoding, checks, ``Quote``) publishing
  into a ``MarketHub``, counted when the book has taken the quote.

Prints, measured in this run on this machine:
- messages per second over BLAST_MESSAGES messages, the floor and the feed alternating,
  ROUNDS times each (the best of each compared: a shared machine's noise only ever
  slows a round down);
- send -> price-book latency at a paced PACED_RATE messages/s for PACED_S seconds, p50,
  p99 and max, for the feed and for the floor (send -> parsed). The server writes its
  CLOCK_MONOTONIC send time (ns) into each message's bid size ``B`` (one clock for both
  processes on Linux), and the client subtracts it from the moment the book took the
  quote (the floor: the moment ``json.loads`` returned). It includes the loopback hop,
  so it is an upper bound of arrival -> book;
- the target with PASS/FAIL: feed messages/s >= 70 % of the floor's.

Run: `make bench` (or `.venv/bin/python tests/bench/bench_feed.py`). About 50 s.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import trio
import trio_websocket

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from titan_trio.domain.quotes import Quote  # noqa: E402
from titan_trio.feeds.binance import BinanceFeed  # noqa: E402
from titan_trio.feeds.hub import MarketHub  # noqa: E402
from titan_trio.feeds.ws import MESSAGE_QUEUE_SIZE  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
BLAST_MESSAGES = 100_000
ROUNDS = 3
PACED_RATE = 1000  # messages per second
PACED_S = 5.0
TARGET_RATIO = 0.70
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BATCH = 500  # frames per write when blasting


# ----- the server (its own process) ------------------------------------------------------


def frame(text: str) -> bytes:
    """One unmasked (server -> client) text frame."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        header = bytes([0x81, n])
    elif n < 65536:
        header = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return header + payload


def book_ticker(seq: int, stamp_ns: int) -> str:
    symbol = SYMBOLS[seq % len(SYMBOLS)]
    base = {"BTCUSDT": 95000, "ETHUSDT": 3500, "SOLUSDT": 180}[symbol]
    bid = base + (seq % 1000) / 100
    data = {
        "e": "bookTicker",
        "u": seq,
        "E": 1_700_000_000_000 + seq,
        "T": 1_700_000_000_000 + seq,
        "s": symbol,
        "b": f"{bid:.2f}",
        "B": str(stamp_ns),
        "a": f"{bid + 0.1:.2f}",
        "A": "3.125",
    }
    return json.dumps({"stream": f"{symbol.lower()}@bookTicker", "data": data})


async def handle(stream: trio.SocketStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        request += chunk
    head = request.split(b"\r\n\r\n", 1)[0].decode()
    path = head.split(" ", 2)[1]
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    await stream.send_all(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        ).encode()
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain, stream, nursery.cancel_scope)
        if path.startswith("/blast"):
            pool = [frame(book_ticker(seq, 0)) for seq in range(1000)]
            batch = b"".join(pool[:BATCH]), b"".join(pool[BATCH:])
            sent = 0
            while sent < BLAST_MESSAGES + 10 * BATCH:  # a margin: the client stops at N
                await stream.send_all(batch[(sent // BATCH) % 2])
                sent += BATCH
        else:  # paced
            start = trio.current_time()
            for seq in range(int(PACED_RATE * (PACED_S + 1))):
                await trio.sleep_until(start + seq / PACED_RATE)
                await stream.send_all(frame(book_ticker(seq, time.monotonic_ns())))
        await trio.sleep_forever()  # until the client closes
    with trio.move_on_after(1):
        await stream.send_all(b"\x88\x00")  # the close frame, answering the client's
    await stream.aclose()


async def _drain(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """The only thing these clients send is their close (no pings come from this
    server to answer): stop sending when it comes (``handle`` answers it)."""
    try:
        await stream.receive_some(4096)
    except trio.BrokenResourceError:
        pass
    scope.cancel()


async def serve() -> None:
    async def guarded(stream: trio.SocketStream) -> None:
        try:
            await handle(stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client hung up mid-send

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(guarded, listeners)


# ----- the clients (this process) ---------------------------------------------------------


class CountingHub(MarketHub):
    """The real hub, counting the quotes the book took and, when paced, how long each
    took from the server's send."""

    def __init__(self, limit: int) -> None:
        super().__init__("binance")
        self.limit = limit
        self.taken = 0
        self.first = self.last = 0.0
        self.latencies_ns: list[int] = []
        self.stamped = False
        self.done = trio.Event()

    def publish(self, quote: Quote) -> None:
        super().publish(quote)
        now = time.perf_counter()
        if self.stamped:
            self.latencies_ns.append(time.monotonic_ns() - int(quote.bid_size))
        if self.taken == 0:
            self.first = now
        self.taken += 1
        self.last = now
        if self.taken >= self.limit:
            self.done.set()


async def feed_run(base_url: str, limit: int, *, stamped: bool) -> CountingHub:
    hub = CountingHub(limit)
    hub.stamped = stamped
    feed = BinanceFeed(hub, SYMBOLS, base_url)
    async with trio.open_nursery() as nursery:
        await nursery.start(feed.run)
        with trio.fail_after(60):
            await hub.done.wait()
        nursery.cancel_scope.cancel()
    assert hub.book.updates == hub.taken, "every message should have reached the book"
    assert feed.health.malformed == 0 and feed.health.reconnects == 0
    return hub


async def floor_run(base_url: str, limit: int, *, stamped: bool) -> tuple[float, list[int]]:
    """Messages/s of a client that only parses, and its send -> parsed latencies."""
    url = f"{base_url}/stream?streams=" + "/".join(f"{s.lower()}@bookTicker" for s in SYMBOLS)
    latencies: list[int] = []
    count, first = 0, 0.0
    with trio.fail_after(60):
        async with trio_websocket.open_websocket_url(
            url, message_queue_size=MESSAGE_QUEUE_SIZE
        ) as ws:
            while count < limit:
                message = json.loads(await ws.get_message())
                if stamped:
                    latencies.append(time.monotonic_ns() - int(message["data"]["B"]))
                if count == 0:
                    first = time.perf_counter()
                count += 1
    return (count - 1) / (time.perf_counter() - first), latencies


def pct(values: list[int], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] / 1000


async def measure(port: int) -> bool:
    blast, paced = f"ws://127.0.0.1:{port}/blast", f"ws://127.0.0.1:{port}/paced"
    floor_rates: list[float] = []
    feed_rates: list[float] = []
    for _ in range(ROUNDS):
        rate, _lat = await floor_run(blast, BLAST_MESSAGES, stamped=False)
        floor_rates.append(rate)
        hub = await feed_run(blast, BLAST_MESSAGES, stamped=False)
        feed_rates.append((hub.taken - 1) / (hub.last - hub.first))
    paced_n = int(PACED_RATE * PACED_S)
    _rate, floor_lat = await floor_run(paced, paced_n, stamped=True)
    feed_lat = (await feed_run(paced, paced_n, stamped=True)).latencies_ns

    def rates(values: list[float]) -> str:
        return ", ".join(f"{v:,.0f}" for v in values)

    best_floor, best_feed = max(floor_rates), max(feed_rates)
    ratio = best_feed / best_floor
    print(f"feed ingest (tests/bench/bench_feed.py; {BLAST_MESSAGES:,} messages per round)")
    print(
        f"  floor: trio-websocket + json.loads     {best_floor:>10,.0f} msg/s  "
        f"({rates(floor_rates)})"
    )
    print(
        f"  BinanceFeed -> price book             {best_feed:>10,.0f} msg/s  ({rates(feed_rates)})"
    )
    print(f"send -> book at {PACED_RATE:,} msg/s for {PACED_S:g} s (us): p50 / p99 / max")
    for name, lat in (
        ("floor (send -> parsed)", floor_lat),
        ("BinanceFeed (send -> book)", feed_lat),
    ):
        print(f"  {name:<30} {pct(lat, 0.5):8.1f} / {pct(lat, 0.99):8.1f} / {max(lat) / 1000:8.1f}")
    passed = ratio >= TARGET_RATIO
    print("target:")
    print(
        f"  {'PASS' if passed else 'FAIL'}  feed >= {TARGET_RATIO:.0%} of the floor: "
        f"{ratio:.0%} ({best_feed:,.0f} of {best_floor:,.0f} msg/s)"
    )
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="run the server (internal)")
    if parser.parse_args().serve:
        trio.run(serve)
        return
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        trio.run(measure, port)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
