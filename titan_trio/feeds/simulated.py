"""The simulated market (the embedded default feed).

A seeded random walk per symbol: each step multiplies the mid by exp(N(0, volatility)),
quotes a bid and ask ``spreadTicks`` apart on the instrument's tick grid, a top-of-book
size worth about ``topSizeNotional`` USDT (varying 50-150 %), and four more levels a side,
one spread apart and thicker further out. Same seed, same prices:
tests and demos are repeatable. It reports health like a real feed.

The depth matters: the paper exchange fills market and marketable orders through these
levels and cancels what they cannot hold, and the L2 slippage gate estimates with the
same walk.
"""

from __future__ import annotations

import math
import random
import zlib
from decimal import Decimal

import trio

from titan_trio.clock import now_ms
from titan_trio.config import SimulationConfig
from titan_trio.domain.instruments import Instrument
from titan_trio.domain.quotes import Quote
from titan_trio.feeds.hub import MarketHub

FEED_NAME = "simulated"
DEPTH_LEVELS = 5  # price levels a side, the touch included


class RandomWalk:
    """One symbol's price path; pure and deterministic for a given seed."""

    def __init__(
        self,
        instrument: Instrument,
        start: float,
        seed: int,
        volatility_pct: float,
        spread_ticks: int,
        top_size_notional: float,
    ) -> None:
        self.instrument = instrument
        self.mid = start
        self.rng = random.Random(seed ^ zlib.crc32(instrument.symbol.encode()))
        self.sigma = volatility_pct / 100
        self.spread_ticks = spread_ticks
        self.top_size_notional = top_size_notional

    def step(self, ts_ms: int) -> Quote:
        inst = self.instrument
        self.mid *= math.exp(self.rng.gauss(0.0, self.sigma))
        tick = inst.tick_size
        spread = tick * self.spread_ticks
        bid = inst.floor_price(Decimal(repr(self.mid)) - spread / 2)
        bid = max(bid, tick)
        ask = bid + spread
        size = []
        for _ in range(2):
            raw = Decimal(repr(self.top_size_notional * self.rng.uniform(0.5, 1.5) / self.mid))
            size.append(max(inst.min_qty, inst.floor_qty(raw)))
        last = bid if self.rng.random() < 0.5 else ask
        # Four more levels a side, one spread apart, thicker further out.
        bids, asks = [], []
        for level in range(1, DEPTH_LEVELS):
            step = spread * level
            thicker = Decimal(1) + Decimal(level) / 2
            bids.append((max(bid - step, tick), inst.floor_qty(size[0] * thicker)))
            asks.append((ask + step, inst.floor_qty(size[1] * thicker)))
        return Quote(
            inst.symbol,
            bid,
            ask,
            size[0],
            size[1],
            last,
            ts_ms,
            FEED_NAME,
            tuple(bids),
            tuple(asks),
        )


class SimulatedFeed:
    def __init__(
        self,
        hub: MarketHub,
        instruments: dict[str, Instrument],
        symbols: list[str],
        cfg: SimulationConfig,
    ) -> None:
        self.hub = hub
        self.cfg = cfg
        self.walks = [
            RandomWalk(
                instruments[s],
                cfg.start_prices[s],
                cfg.seed,
                cfg.volatility_pct,
                cfg.spread_ticks,
                cfg.top_size_notional,
            )
            for s in symbols
        ]
        self.health = hub.register_feed(FEED_NAME)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.health.connected = True
        self.health.state = "connected"
        try:
            self.publish_all()  # the book has prices before anyone is told we started
            task_status.started()
            while True:
                await trio.sleep(self.cfg.interval_ms / 1000)
                self.publish_all()
        finally:
            self.health.connected = False
            self.health.state = "stopped"

    def publish_all(self) -> None:
        ts = now_ms()
        for walk in self.walks:
            self.hub.publish(walk.step(ts))
            self.health.message_received()
