"""Store benchmark: what a committed write costs, and whether the trio thread stays free.

Prints, measured in this run on this machine:
- floor: a pony commit of one small row inline (on the calling thread), and the same
  through trio.to_thread.run_sync per row (SPEC §1 quotes ~90 us and ~290 us);
- the Store, one awaited write at a time (latency of a committed write);
- the Store, N concurrent writers (group commit: rows per commit, throughput);
- the largest lateness of a 1 ms ticker on the trio thread during the concurrent run,
  which is how long the event loop was ever blocked by database work.

Run: `make bench` (or `.venv/bin/python tests/bench/bench_store.py`).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import trio
from pony import orm

from titan_trio.state import records
from titan_trio.state.schema import open_database
from titan_trio.state.store import Store

ROWS = 2000
WRITERS = 50
PER_WRITER = 40
CONCURRENT = WRITERS * PER_WRITER


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} us"


def floor_inline(path: str) -> list[float]:
    e = open_database(path)
    out = []
    for i in range(ROWS):
        t = time.perf_counter()
        with orm.db_session:
            records.kv_set(e, f"inline-{i}", {"i": i}, 0)
        out.append(time.perf_counter() - t)
    e.db.disconnect()
    return out


async def floor_to_thread(path: str) -> list[float]:
    e = await trio.to_thread.run_sync(open_database, path)

    def one(i: int) -> None:
        with orm.db_session:
            records.kv_set(e, f"thread-{i}", {"i": i}, 0)

    out = []
    for i in range(ROWS):
        t = time.perf_counter()
        await trio.to_thread.run_sync(one, i)
        out.append(time.perf_counter() - t)
    return out


async def store_runs(path: str) -> tuple[list[float], float, int, float]:
    async with trio.open_nursery() as nursery:
        store: Store = await nursery.start(Store(path).run)
        sequential = []
        for i in range(ROWS):
            t = time.perf_counter()
            await store.call(records.kv_set, f"seq-{i}", {"i": i}, 0)
            sequential.append(time.perf_counter() - t)

        lateness: list[float] = []
        done = trio.Event()

        async def ticker() -> None:
            while not done.is_set():
                t = trio.current_time()
                await trio.sleep(0.001)
                lateness.append(trio.current_time() - t - 0.001)

        commits_before = store.stats.commits
        nursery.start_soon(ticker)
        t0 = time.perf_counter()

        async def writer(w: int) -> None:
            for i in range(PER_WRITER):
                await store.call(records.kv_set, f"con-{w}-{i}", {"i": i}, 0)

        async with trio.open_nursery() as writers:
            for w in range(WRITERS):
                writers.start_soon(writer, w)
        elapsed = time.perf_counter() - t0
        done.set()
        commits = store.stats.commits - commits_before
        nursery.cancel_scope.cancel()
    return sequential, elapsed, commits, max(lateness)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inline = floor_inline(str(Path(tmp) / "inline.db"))
        threaded = trio.run(floor_to_thread, str(Path(tmp) / "thread.db"))
        sequential, elapsed, commits, late = trio.run(store_runs, str(Path(tmp) / "store.db"))
    print(f"store benchmark ({ROWS} rows each; WAL, synchronous=NORMAL, the default)")
    print(f"{'':38} {'p50':>11} {'p99':>11}")
    print(f"{'floor: pony commit inline':38} {fmt(pct(inline, 0.5))} {fmt(pct(inline, 0.99))}")
    print(
        f"{'floor: pony commit via to_thread':38} {fmt(pct(threaded, 0.5))} "
        f"{fmt(pct(threaded, 0.99))}"
    )
    print(
        f"{'Store.call, one write at a time':38} {fmt(pct(sequential, 0.5))} "
        f"{fmt(pct(sequential, 0.99))}"
    )
    print(
        f"Store.call, {WRITERS} tasks x {PER_WRITER} writes: {elapsed * 1000:.1f} ms total, "
        f"{commits} commits ({CONCURRENT / commits:.1f} rows per commit), "
        f"{CONCURRENT / elapsed:,.0f} committed writes/s"
    )
    print(
        f"  vs inline floor at one commit per row: "
        f"{CONCURRENT / sum(inline[:CONCURRENT]):,.0f} writes/s"
    )
    print(f"largest trio-thread lateness during the concurrent run: {late * 1000:.2f} ms")
    print(f"mean sequential Store.call: {statistics.mean(sequential) * 1e6:.1f} us")


if __name__ == "__main__":
    main()
