"""A demo strategy: random but well-formed signals, so positions, trades and equity move.

Run it next to a service (``make demo`` starts both)::

    python -m ipc.examples.demo_strategy --socket titan-ipc.sock --api http://127.0.0.1:8080

Every couple of seconds it reads the prices from the service's ``/api/market``, and either
opens a position on a symbol it does not hold (PREPARE with an entry zone around the
touch, a stop about 0.5-0.8 % away on the losing side and one or two take profits, then
CONFIRM most of the time or ABORT) or closes one it has held for a few seconds (CLOSE).
One line per action, with the reply. A rejection is printed with its reason and the
loop goes on. Ctrl-C or ``--duration`` ends it; at the end of ``--duration`` it closes
what it opened, so the account is left flat.

It holds at most two positions at once, counting any the account already has: with
10,000 USDT (phase 3, 1 % risk, 5x) a position is about 15,000-20,000 USDT of notional
and 3,000-4,000 USDT of margin. Positions an earlier demo run left open (signal ids
``demo-...``, e.g. after a Ctrl-C) are adopted and closed in turn; others are left alone.

It uses only the standard library and the blocking ``SignalClient``; it is an example of
a client, not part of the service. It trades at random: never point it at a live service.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from ipc.client import IpcClientError, IpcConnectError, SignalClient
from ipc.protocol import Reply

SOURCE = "demo-strategy"
MAX_OPEN = 2
TICK_S = (1.0, 2.5)  # seconds between decisions
HOLD_S = (6.0, 15.0)  # how long a position is held before its CLOSE
REENTRY_PAUSE_S = 3.0  # after a CLOSE, the service sees the position flat a moment later
CONFIRM_RATE = 0.85  # the rest are aborted
TRADES_LIMIT = 1000  # the API's maximum


@dataclass
class Held:
    symbol: str
    direction: str
    signal_id: str
    close_at: float
    opened_at: float = 0.0


class ApiError(Exception):
    pass


def get_json(api: str, path: str) -> Any:
    try:
        with urllib.request.urlopen(api.rstrip("/") + path, timeout=3) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiError(f"GET {path}: {exc}") from None


def describe(reply: Reply) -> str:
    if reply.status == "rejected":
        return f"rejected {reply.reason}: {reply.message}"
    if reply.status == "prepared":
        return f"prepared size {reply.size} @ {reply.entry_price} (risk {reply.risk_usd} USDT)"
    if reply.status in ("accepted", "closed"):
        price = f" @ {reply.avg_price}" if reply.avg_price else ""
        return f"{reply.status} {reply.order_status} filled {reply.filled_qty}{price}"
    return str(reply.status)


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def decimals(price: float) -> int:
    """Decimals to write prices with: about 6 significant digits."""
    return 1 if price >= 10000 else 2 if price >= 100 else 4


class DemoStrategy:
    def __init__(self, client: SignalClient, api: str, rng: random.Random) -> None:
        self.client = client
        self.api = api
        self.rng = rng
        self.run_id = f"{int(time.time())}{os.getpid() % 1000:03d}"
        self.count = 0
        self.held: dict[str, Held] = {}
        self.closed_at: dict[str, float] = {}

    def next_signal_id(self) -> str:
        self.count += 1
        return f"demo-{self.run_id}-{self.count:04d}"

    def step(self) -> None:
        now = time.monotonic()
        positions = {p["symbol"]: p for p in get_json(self.api, "/api/state/positions")}
        self.reconcile(positions, now)
        due = [h for h in self.held.values() if h.close_at <= now]
        if due:
            self.close(due[0], "time exit")
            return
        if len(positions.keys() | self.held.keys()) >= MAX_OPEN:
            return
        market = get_json(self.api, "/api/market")
        free = [
            s
            for s in sorted(market)
            if s not in positions
            and s not in self.held
            and now - self.closed_at.get(s, -1e9) > REENTRY_PAUSE_S
        ]
        if free:
            self.open(self.rng.choice(free), market)

    def reconcile(self, positions: dict[str, Any], now: float) -> None:
        """Adopt positions an earlier demo run left open; forget ours closed elsewhere."""
        for symbol, position in positions.items():
            if symbol not in self.held and str(position.get("signal_id")).startswith("demo-"):
                hold = self.rng.uniform(*HOLD_S)
                self.held[symbol] = Held(
                    symbol, position["side"], position["signal_id"], now + hold
                )
                say(f"ADOPT   {symbol} {position['side']} left open by an earlier demo run")
        for symbol, held in list(self.held.items()):
            # the account shows a fill a moment after CONFIRM answers
            if symbol not in positions and now - held.opened_at > REENTRY_PAUSE_S:
                say(f"GONE    {symbol} position was closed elsewhere")
                del self.held[symbol]

    def open(self, symbol: str, market: dict[str, Any]) -> None:
        quote = market[symbol]
        bid, ask = float(quote["bid"]), float(quote["ask"])
        direction = self.rng.choice(("LONG", "SHORT"))
        touch = ask if direction == "LONG" else bid
        places = decimals(touch)
        half_zone = touch * 0.0005
        stop_pct = self.rng.uniform(0.005, 0.008)
        sign = 1 if direction == "LONG" else -1
        zone = (round(touch - half_zone, places), round(touch + half_zone, places))
        edge = zone[0] if direction == "LONG" else zone[1]
        stop = round(edge * (1 - sign * stop_pct), places)
        targets = [round(touch * (1 + sign * stop_pct * r), places) for r in (1.5, 3.0)]
        take_profits = targets[: self.rng.choice((1, 2))]
        signal_id = self.next_signal_id()
        reply = self.client.prepare(
            signal_id,
            symbol,
            direction,
            entry_zone=zone,
            stop_loss=stop,
            take_profits=take_profits,
            confidence=round(self.rng.uniform(55, 95)),
            leverage=self.rng.choice((3, 5, 10)),
            source=SOURCE,
            velocity=round(self.rng.uniform(0, 2), 3),
        )
        say(
            f"PREPARE {signal_id} {symbol} {direction} zone {zone[0]}-{zone[1]} stop {stop} "
            f"tp {'/'.join(str(tp) for tp in take_profits)} -> {describe(reply)}"
        )
        if reply.status != "prepared":
            return
        if self.rng.random() > CONFIRM_RATE:
            say(f"ABORT   {signal_id} -> {describe(self.client.abort(signal_id))}")
            return
        reply = self.client.confirm(signal_id)
        say(f"CONFIRM {signal_id} -> {describe(reply)}")
        if reply.status == "accepted" and reply.filled_qty not in (None, "0"):
            now = time.monotonic()
            hold = self.rng.uniform(*HOLD_S)
            self.held[symbol] = Held(symbol, direction, signal_id, now + hold, now)

    def close(self, held: Held, why: str) -> None:
        signal_id = self.next_signal_id()
        reply = self.client.close(signal_id, held.symbol, reason=f"demo: {why}")
        say(f"CLOSE   {signal_id} {held.symbol} ({why}) -> {describe(reply)}")
        # A rejected CLOSE (no position any more) also ends our interest in it.
        del self.held[held.symbol]
        self.closed_at[held.symbol] = time.monotonic()

    def close_all(self, why: str) -> None:
        for held in list(self.held.values()):
            self.close(held, why)


@dataclass(frozen=True)
class Account:
    equity: float
    positions: int
    trades: int

    def __str__(self) -> str:
        return (
            f"equity {self.equity:.2f} USDT, {self.positions} open position(s), "
            f"{self.trades} trade(s) recorded"
        )


def account(api: str) -> Account | None:
    try:
        equity = get_json(api, "/api/state/equity")
        positions = get_json(api, "/api/state/positions")
        trades = get_json(api, f"/api/trades?limit={TRADES_LIMIT}")
    except ApiError as exc:
        say(f"account: unavailable ({exc})")
        return None
    return Account(float(equity["equity"]), len(positions), len(trades))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ipc.examples.demo_strategy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--socket", default="titan-ipc.sock", help="the service's IPC socket")
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="the service's API")
    parser.add_argument(
        "--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)"
    )
    parser.add_argument("--seed", type=int, help="random seed, for repeatable decisions")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    secret = os.environ.get("TITAN_IPC_HMAC_SECRET") or None
    client = SignalClient(args.socket, secret=secret, timeout=5.0)
    strategy = DemoStrategy(client, args.api, rng)
    deadline = None if args.duration is None else time.monotonic() + args.duration
    try:
        reply = client.ping()
        if reply.status != "pong":
            say(f"the service refused us: {describe(reply)}")
            return 1
        say(f"connected to {args.socket}: trading state {reply.trading_state}")
        before = account(args.api)
        if before is not None:
            say(f"start: {before}")
        while deadline is None or time.monotonic() < deadline:
            try:
                strategy.step()
            except ApiError as exc:
                say(f"cannot read prices ({exc}); retrying")
            except IpcConnectError as exc:
                say(f"the service is gone ({exc}); stopping")
                return 1
            except IpcClientError as exc:
                say(f"request failed ({exc}); going on")
            pause = rng.uniform(*TICK_S)
            if deadline is not None:
                pause = min(pause, max(deadline - time.monotonic(), 0))
            time.sleep(pause)
        say("duration reached: closing what this run opened")
        strategy.close_all("end of run")
        time.sleep(0.5)  # the last fills reach the account's record a moment later
        after = account(args.api)
        if after is not None:
            say(f"end: {after}")
            if before is not None:
                say(
                    f"this run: equity {after.equity - before.equity:+.2f} USDT, "
                    f"{after.trades - before.trades} new trade(s)"
                )
        return 0
    except IpcConnectError as exc:
        say(f"cannot reach the service: {exc}; is it running?")
        return 1
    except IpcClientError as exc:
        say(f"request failed ({exc}); stopping")
        return 1
    except KeyboardInterrupt:
        say(f"stopped (Ctrl-C); {len(strategy.held)} position(s) of this run left open")
        return 0
    finally:
        client.disconnect()


if __name__ == "__main__":
    sys.exit(main())
