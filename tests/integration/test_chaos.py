"""Chaos (issue 9): kill -9 at random moments under a steady stream of signals, restart on
the same database, and check after every restart that nothing the exchange knows was lost
and nothing was ordered twice (SPEC §7).

The service runs as a process of its own on the paper broker, whose account lives in the
same database (kv ``paper.account``, table ``paper_orders``), so both sides can be read in
one snapshot. A few strategy threads send PREPARE, CONFIRM and CLOSE on the three symbols,
LONG and SHORT, maker (resting at the touch) and taker, in a market that moves enough for
resting entries, take profits and stops to fill. SIGKILL comes after a random stretch of
traffic (``random.Random(SEED)``; the seed is printed, ``TITAN_CHAOS_SEED`` overrides it).

After every restart the strategies are paused. The checks read one snapshot at a time (a
read transaction; WAL) until shadow state and exchange agree, bounded: the market keeps
moving and each side commits on its own, so one snapshot may fall between the two commits
of one fill. Then the requests whose replies the kill swallowed are sent again with the
same ids (as a strategy must), CONFIRMs and CLOSEs already answered are repeated and must
tell the truth, and a second reconciliation must find nothing. Each disagreement is
reported once while it stands, with the service's log lines that name its orders; after
MAX_FAILED_CHECKPOINTS check points with new ones the killing stops. At the end the
service is stopped with SIGINT, everything is checked offline, and the test fails with
what was found, per check.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from ipc.client import IpcClientError, IpcConnectError, SignalClient
from ipc.protocol import Reason, Reply, Status
from tests.conftest import free_port
from tests.helpers import spawn, wait_healthy
from titan_trio.config import parse_config
from titan_trio.domain.instruments import Instrument
from titan_trio.engine import instruments_from_config
from titan_trio.execution.entry import client_order_id

SEED = int(os.environ.get("TITAN_CHAOS_SEED", "20260509"))
KILLS = 24  # at least 20
TRAFFIC_S = (0.2, 1.2)  # traffic before each kill
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
INITIAL_CAPITAL = Decimal("10000")
ZONE_PCT = 0.0005  # entry zone around the touch: maker rests at it, taker takes it
STOP_PCT = 0.002  # stop and target this far beyond the zone: some are hit
STRATEGIES_PER_SYMBOL = 2  # two on one symbol: one may close what the other opened
PAUSE_S = 0.05  # at most this between an entry and its CLOSE
CLOSE_SHARE = 0.6  # how often a strategy closes right after its entry
AGREE_LIMIT_S = 5.0  # how long shadow state and exchange may take to agree
REPEATS_OLDER = 5  # repeated CONFIRMs of signals from earlier rounds, per check point
REPEAT_LIMIT_S = 2.0  # how long a repeat's answer and the orders table may take to agree
REPEAT_FAILURES_SHOWN = 3  # per check point; the rest are not asked
MAX_FAILED_CHECKPOINTS = 4  # then stop killing: the evidence is in
EVIDENCE_SHOWN = 12  # disagreements shown with their log lines in the failure
EVIDENCE_LINES = 12
JOIN_LIMIT_S = 15.0
STOP_LIMIT_S = 15.0
POLL_S = 0.05
REPO = Path(__file__).resolve().parents[2]
# Statuses of an order the exchange took; REJECTED and EXPIRED ones it never had.
AT_EXCHANGE = {"ACCEPTED", "PARTIALLY_FILLED", "FILLED", "CANCELED", "PENDING_CANCEL"}
IN_FLIGHT = {"PENDING_SUBMIT", "SUBMITTED"}
ORDER_ID = re.compile(r"tt[ecst][0-9a-f]{32}|paper-sl-\d+")


# ----- what the strategies were told ------------------------------------------------------


@dataclass
class Ledger:
    """What the strategies were told: what they must be able to rely on."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0  # PREPAREs and CLOSEs written
    accepted: dict[str, str] = field(default_factory=dict)  # entry signal -> its order id
    closed: dict[str, tuple[str, str]] = field(default_factory=dict)  # signal -> (symbol, id)
    empty_closes: int = 0  # CLOSE answered closed with nothing held
    unsure: list[tuple[str, str, str]] = field(default_factory=list)  # written, no reply
    not_at_exchange: dict[str, str] = field(default_factory=dict)  # order id -> who said so

    def count_sent(self) -> None:
        with self.lock:
            self.sent += 1

    def record(self, kind: str, signal_id: str, symbol: str, reply: Reply) -> None:
        with self.lock:
            if kind == "CONFIRM" and reply.status is Status.ACCEPTED:
                assert reply.client_order_id, reply
                self.accepted[signal_id] = reply.client_order_id
            elif kind == "CLOSE" and reply.status is Status.CLOSED:
                if reply.client_order_id:
                    self.closed[signal_id] = (symbol, reply.client_order_id)
                else:
                    self.empty_closes += 1


def strategy(
    socket: str,
    port: int,
    symbol: str,
    tag: str,
    rng: random.Random,
    ledger: Ledger,
    paused: threading.Event,
) -> None:
    """PREPARE and CONFIRM an entry, LONG or SHORT, maker or taker, then mostly CLOSE it;
    until paused or the service goes away. A request written without its reply (the
    service died) is kept in ``ledger.unsure`` to be asked again after the restart."""
    unanswered: tuple[str, str, str] | None = None
    try:
        with SignalClient(socket, timeout=10, reconnect_attempts=0) as client:
            k = 0
            while not paused.is_set():
                k += 1
                sid = f"{tag}-{k}"
                quote = httpx.get(f"http://127.0.0.1:{port}/api/market", timeout=5).json()[symbol]
                bid, ask = float(quote["bid"]), float(quote["ask"])
                low, high = round(bid * (1 - ZONE_PCT), 2), round(ask * (1 + ZONE_PCT), 2)
                long = rng.random() < 0.5
                below, above = round(low * (1 - STOP_PCT), 2), round(high * (1 + STOP_PCT), 2)
                stop_loss, target = (below, above) if long else (above, below)
                velocity = 2.0 if rng.random() < 0.5 else None  # taker; else maker (phase 1)
                ledger.count_sent()
                reply = client.prepare(
                    sid,
                    symbol,
                    "LONG" if long else "SHORT",
                    (low, high),
                    stop_loss,
                    [target],
                    80,
                    10,
                    source="chaos",
                    velocity=velocity,
                )
                if reply.status is Status.PREPARED:
                    unanswered = ("CONFIRM", sid, symbol)
                    reply = client.confirm(sid)
                    unanswered = None
                    ledger.record("CONFIRM", sid, symbol, reply)
                time.sleep(rng.uniform(0, PAUSE_S))  # a resting entry may meet a quote
                if rng.random() < CLOSE_SHARE:
                    close_id = f"{sid}x"
                    ledger.count_sent()
                    unanswered = ("CLOSE", close_id, symbol)
                    reply = client.close(close_id, symbol, reason="chaos")
                    unanswered = None
                    ledger.record("CLOSE", close_id, symbol, reply)
    except IpcConnectError:
        return  # nothing was written
    except IpcClientError:
        if unanswered is not None:
            with ledger.lock:
                ledger.unsure.append(unanswered)
    except (OSError, httpx.HTTPError, KeyError):
        return  # the service went away between requests


@contextmanager
def traffic(socket: str, port: int, round_no: int, ledger: Ledger) -> Iterator[None]:
    paused = threading.Event()
    threads = [
        threading.Thread(
            target=strategy,
            args=(
                socket,
                port,
                symbol,
                f"r{round_no}{symbol[:3].lower()}{n}",
                random.Random(f"{SEED}-{round_no}-{symbol}-{n}"),
                ledger,
                paused,
            ),
            daemon=True,
        )
        for symbol in SYMBOLS
        for n in range(STRATEGIES_PER_SYMBOL)
    ]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        paused.set()
        for t in threads:
            t.join(timeout=JOIN_LIMIT_S)
        stuck = [t.name for t in threads if t.is_alive()]
        assert not stuck, f"strategy threads did not stop: {stuck}"


# ----- the service process ------------------------------------------------------------------


class Service:
    """The service as a process of its own, its output copied to a file per start."""

    def __init__(self, config: Path, cwd: Path, port: int) -> None:
        self.config = config
        self.cwd = cwd
        self.port = port
        self.starts = 0
        self.proc: subprocess.Popen[str] | None = None
        self.outputs: list[Path] = []
        self._drain: threading.Thread | None = None

    def start(self) -> dict[str, Any]:
        self.starts += 1
        out = self.cwd / f"service-{self.starts:02d}.out"
        self.outputs.append(out)
        # The service runs this checkout's code, whatever the environment has installed.
        proc = self.proc = spawn(self.config, self.cwd, PYTHONPATH=str(REPO))
        self._drain = threading.Thread(target=_copy_lines, args=(proc, out), daemon=True)
        self._drain.start()
        try:
            return wait_healthy(self.port, proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.tail()}") from None

    def kill(self) -> None:
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=STOP_LIMIT_S)
        self._join_drain()

    def stop(self) -> int:
        """SIGINT, a clean stop; the exit code."""
        proc = self.proc
        assert proc is not None
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=STOP_LIMIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the service ignored SIGINT:\n{self.tail()}") from None
        finally:
            self._join_drain()
        return code

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._join_drain()

    def _join_drain(self) -> None:
        if self._drain is not None:
            self._drain.join(timeout=STOP_LIMIT_S)

    def output(self) -> str:
        return self.outputs[-1].read_text() if self.outputs else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def lines_about(self, names: set[str], limit: int = 40) -> list[str]:
        """Lines of every start's output that name one of ``names``."""
        found = []
        for out in self.outputs:
            for line in out.read_text().splitlines():
                if any(name in line for name in names):
                    found.append(f"{out.name}: {line}")
        return found[-limit:]


def _copy_lines(proc: subprocess.Popen[str], out: Path) -> None:
    assert proc.stdout is not None
    with out.open("w") as f:
        for line in proc.stdout:
            f.write(line)
            f.flush()


# ----- one read snapshot of the database ------------------------------------------------------


@dataclass
class Books:
    """Shadow state and exchange as of one committed moment."""

    orders: dict[str, dict[str, Any]]  # shadow orders table, by client order id
    fills: list[dict[str, Any]]  # shadow fills table
    positions: dict[str, Decimal]  # shadow positions: signed size
    balance: Decimal | None  # kv shadow.balance
    account: dict[str, Any]  # kv paper.account
    exchange_orders: dict[str, dict[str, Any]]  # paper_orders bodies, by client order id


@contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def read_books(db: Path) -> Books:
    with read_only(db) as conn:
        conn.execute("BEGIN")  # one snapshot (WAL) for every table below
        try:
            kv = {r["key"]: json.loads(r["value"]) for r in conn.execute("SELECT * FROM kv")}
            return Books(
                orders={
                    r["client_order_id"]: dict(r) for r in conn.execute("SELECT * FROM orders")
                },
                fills=[dict(r) for r in conn.execute("SELECT * FROM fills")],
                positions={
                    r["symbol"]: Decimal(r["size"])
                    for r in conn.execute("SELECT symbol, size FROM positions")
                },
                balance=None if "shadow.balance" not in kv else Decimal(kv["shadow.balance"]),
                account=kv["paper.account"],
                exchange_orders={
                    r["client_order_id"]: json.loads(r["body"])
                    for r in conn.execute("SELECT client_order_id, body FROM paper_orders")
                },
            )
        finally:
            conn.execute("COMMIT")


@dataclass(frozen=True)
class Problem:
    """One disagreement. ``key`` names the check and what it is about, and stays the same
    while the disagreement lasts (the figures in ``text`` may change)."""

    key: str
    text: str


def problem(check: str, about: str, text: str) -> Problem:
    return Problem(f"[{check}] {about}", f"[{check}] {text}")


def integrity(db: Path) -> list[Problem]:
    with read_only(db) as conn:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    return [] if rows == ["ok"] else [problem("1 integrity", "db", "; ".join(rows[:5]))]


def disagreements(b: Books, ledger: Ledger, instruments: dict[str, Instrument]) -> list[Problem]:
    """Every way the shadow state, the exchange and what the strategies were told
    disagree in one snapshot, each labelled with its check."""
    out: list[Problem] = []
    # 2: one entry order per signal, on both sides; every exchange order known here.
    entries: dict[str, list[str]] = {}
    for coid, o in b.orders.items():
        if not o["reduce_only"]:
            entries.setdefault(o["signal_id"], []).append(coid)
            if o["signal_id"] is None or coid != client_order_id("e", o["signal_id"]):
                out.append(
                    problem("2 once", coid, f"entry {coid} is not derived from {o['signal_id']}")
                )
    for sid, coids in sorted(entries.items()):
        if len(coids) > 1:
            out.append(problem("2 once", sid, f"signal {sid} has entry orders {sorted(coids)}"))
    exchange_entries: dict[str, list[str]] = {}
    for coid, body in b.exchange_orders.items():
        if not body["reduce_only"]:
            exchange_entries.setdefault(body["signal_id"], []).append(coid)
    for sid, coids in sorted(exchange_entries.items()):
        if len(coids) > 1:
            out.append(
                problem("2 once", f"exchange {sid}", f"the exchange has entries {sorted(coids)}")
            )
    for coid in sorted(set(b.exchange_orders) - set(b.orders)):
        body = b.exchange_orders[coid]
        out.append(
            problem(
                "2 known",
                coid,
                f"exchange order {coid} ({body['side']} {body['qty']} {body['symbol']}, "
                f"{body['status']}, filled {body['filled_qty']}, {body['close_reason']}) "
                "is not in the orders table",
            )
        )
    for coid, o in sorted(b.orders.items()):
        body = b.exchange_orders.get(coid)
        if o["status"] in IN_FLIGHT:
            out.append(problem("2 settled", coid, f"order {coid} is still {o['status']}"))
        elif o["status"] in AT_EXCHANGE and body is None:
            out.append(
                problem("2 known", coid, f"order {coid} is {o['status']} here, not at the exchange")
            )
        elif body is not None and o["status"] != body["status"]:
            out.append(
                problem(
                    "2 status",
                    coid,
                    f"order {coid} ({o['symbol']}, {o['close_reason']}): {o['status']} "
                    f"here, {body['status']} at the exchange",
                )
            )
    # 3: every accepted signal: exactly one order, and the exchange has it.
    with ledger.lock:
        accepted = dict(ledger.accepted)
        closed = dict(ledger.closed)
        not_at_exchange = dict(ledger.not_at_exchange)
    for sid, coid in sorted(accepted.items()):
        row = b.orders.get(coid)
        if row is None or row["signal_id"] != sid:
            out.append(problem("3 accepted", sid, f"{sid} was accepted as {coid}: no such order"))
        elif entries.get(sid) != [coid]:
            out.append(problem("3 accepted", sid, f"{sid} has entry orders {entries.get(sid)}"))
        if coid not in b.exchange_orders:
            out.append(
                problem("3 accepted", f"{sid} exchange", f"{sid}'s {coid} is not at the exchange")
            )
    for sid, (_symbol, coid) in sorted(closed.items()):
        if coid not in b.exchange_orders or coid not in b.orders:
            out.append(problem("3 accepted", sid, f"CLOSE {sid}'s {coid} is missing on one side"))
    for coid, why in sorted(not_at_exchange.items()):
        if coid in b.exchange_orders:
            out.append(problem("8 truth", coid, f"{why}, but the exchange has {coid}"))
    # 4: positions, signed on both sides.
    held = {p["symbol"]: Decimal(p["size"]) for p in b.account["positions"]}
    ours = {s: q for s, q in b.positions.items() if q != 0}
    for symbol in sorted(set(held) | set(ours)):
        if ours.get(symbol) != held.get(symbol):
            out.append(
                problem(
                    "4 positions",
                    symbol,
                    f"{symbol}: shadow {ours.get(symbol)}, exchange {held.get(symbol)}",
                )
            )
    # 5: balance = capital + realized P&L - fees, and the exchange's.
    from_fills = (
        INITIAL_CAPITAL
        + sum((Decimal(f["realized_pnl"]) for f in b.fills), Decimal(0))
        - sum((Decimal(f["fee"]) for f in b.fills), Decimal(0))
    )
    exchange_balance = Decimal(b.account["balance"])
    if b.balance != exchange_balance:
        out.append(
            problem("5 balance", "exchange", f"shadow {b.balance}, exchange {exchange_balance}")
        )
    if b.balance is None or abs(b.balance - from_fills) > Decimal("1e-8"):
        out.append(
            problem(
                "5 balance",
                "fills",
                f"shadow {b.balance}, but capital + P&L - fees of its {len(b.fills)} fills "
                f"is {from_fills}",
            )
        )
    # 6: every fill once.
    filled: dict[str, Decimal] = {}
    for f in b.fills:
        coid = f["client_order_id"]
        filled[coid] = filled.get(coid, Decimal(0)) + Decimal(f["qty"])
    for coid, body in sorted(b.exchange_orders.items()):
        theirs, here = Decimal(body["filled_qty"]), filled.get(coid, Decimal(0))
        if theirs != here:
            out.append(
                problem(
                    "6 fills",
                    coid,
                    f"order {coid} ({body['side']} {body['symbol']}, {body['close_reason']}): "
                    f"the exchange filled {theirs}, the fills table has {here}",
                )
            )
    for coid in sorted(set(filled) - set(b.exchange_orders)):
        out.append(
            problem("6 fills", coid, f"fills of {coid} ({filled[coid]}), unknown to the exchange")
        )
    # 7: every open position has its stop: the one its entry's signal asked for (on the
    # tick grid, toward the position), placed with the position.
    stops = b.account.get("stop_losses", {})
    for symbol, size in sorted(held.items()):
        if symbol not in stops:
            out.append(problem("7 stops", symbol, f"{symbol} {size} is held without a stop loss"))
            continue
        entry = _opening_entry(b, symbol, size)
        asked = None if entry is None else b.orders.get(entry, {}).get("stop_loss")
        if asked is not None:
            instrument = instruments[symbol]
            wanted = (
                instrument.ceil_price(Decimal(asked))
                if size > 0
                else instrument.floor_price(Decimal(asked))
            )
            if Decimal(stops[symbol]) != wanted:
                out.append(
                    problem(
                        "7 stops",
                        f"{symbol} price",
                        f"{symbol} {size} has its stop at {stops[symbol]}; its entry {entry} "
                        f"asked for {wanted}",
                    )
                )
    return out


def _opening_entry(b: Books, symbol: str, size: Decimal) -> str | None:
    """The entry that opened the position held: the exchange's newest entry on the
    symbol, in its direction, with a fill (one entry per symbol at a time: no pyramiding)."""
    side = "BUY" if size > 0 else "SELL"
    entries = [
        body
        for body in b.exchange_orders.values()
        if body["symbol"] == symbol
        and body["side"] == side
        and not body["reduce_only"]
        and Decimal(body["filled_qty"]) > 0
    ]
    if not entries:
        return None
    return max(entries, key=lambda body: body["created_ms"])["client_order_id"]


def until_agreed(
    db: Path, ledger: Ledger, instruments: dict[str, Instrument], standing: set[str]
) -> list[Problem]:
    """Read snapshots until one shows no disagreement other than those ``standing`` from
    before (already reported); bounded. The disagreements of that snapshot, or of the
    last one read."""
    deadline = time.monotonic() + AGREE_LIMIT_S
    while True:
        problems = disagreements(read_books(db), ledger, instruments)
        if all(p.key in standing for p in problems) or time.monotonic() > deadline:
            return problems
        time.sleep(POLL_S)


# ----- asking the service again ---------------------------------------------------------------


def ask_unsure(client: SignalClient, ledger: Ledger) -> None:
    """The requests whose replies the kill swallowed, sent again with the same ids (as a
    strategy must). An order the repeat names as taken by the exchange joins the orders
    the strategies know of; one it calls EXPIRED, REJECTED or DENIED must not be at the
    exchange."""
    with ledger.lock:
        unsure, ledger.unsure = ledger.unsure, []
    for kind, sid, symbol in unsure:
        reply = client.confirm(sid) if kind == "CONFIRM" else client.close(sid, symbol)
        if reply.status in (Status.ACCEPTED, Status.CLOSED):
            ledger.record(kind, sid, symbol, reply)  # the first never arrived; this did it
            continue
        with ledger.lock:
            if reply.reason is Reason.EXPIRED:
                coid = client_order_id("e" if kind == "CONFIRM" else "c", sid)
                ledger.not_at_exchange[coid] = f"a repeated {kind} of {sid} answered EXPIRED"
            elif reply.reason is not Reason.DUPLICATE_SIGNAL or not reply.client_order_id:
                continue  # the signal placed no order (refused, or only prepared)
            elif reply.order_status in ("REJECTED", "DENIED", "EXPIRED"):
                ledger.not_at_exchange[reply.client_order_id] = (
                    f"a repeated {kind} of {sid} answered {reply.order_status}"
                )
            elif kind == "CONFIRM":
                ledger.accepted[sid] = reply.client_order_id
            else:
                ledger.closed[sid] = (symbol, reply.client_order_id)


def order_row(db: Path, coid: str) -> dict[str, Any] | None:
    with read_only(db) as conn:
        row = conn.execute(
            "SELECT status, filled_qty FROM orders WHERE client_order_id = ?", (coid,)
        ).fetchone()
    return None if row is None else dict(row)


def repeats_tell_the_truth(
    client: SignalClient,
    db: Path,
    asks: list[tuple[str, str, str, str]],
) -> list[Problem]:
    """Each (kind, signal id, symbol, order id) asked again: DUPLICATE_SIGNAL naming the
    order, with its status and filled quantity as the orders table has them. An order
    still working may move between the answer and the read: asked again, bounded. After
    a few that never agree, the rest are left (the evidence is in)."""
    problems = []
    for kind, sid, symbol, coid in asks:
        if len(problems) >= REPEAT_FAILURES_SHOWN:
            break
        deadline = time.monotonic() + REPEAT_LIMIT_S
        while True:
            reply = client.confirm(sid) if kind == "CONFIRM" else client.close(sid, symbol)
            row = order_row(db, coid)
            found = None
            if reply.reason is not Reason.DUPLICATE_SIGNAL or reply.client_order_id != coid:
                found = (
                    f"repeated {kind} of {sid} ({coid}): {reply.status} {reply.reason} "
                    f"{reply.client_order_id} {reply.message!r}"
                )
            elif row is None:
                found = f"repeated {kind} of {sid} names {coid}, not in the orders table"
            elif reply.order_status != row["status"] or Decimal(reply.filled_qty or "-1") != (
                Decimal(row["filled_qty"])
            ):
                found = (
                    f"repeated {kind} of {sid} ({coid}): answered {reply.order_status} "
                    f"filled {reply.filled_qty}; orders table {row['status']} filled "
                    f"{row['filled_qty']}"
                )
            if found is None:
                break
            if time.monotonic() > deadline:
                problems.append(problem("8 truth", sid, found))
                break
            time.sleep(POLL_S)
    return problems


# ----- the test -------------------------------------------------------------------------------


@dataclass
class Tally:
    kills: int = 0
    startup_differences: int = 0  # differences the first reconciliation after a start found
    reconciliation_lines: int = 0  # 'Reconciliation' lines in the output (settled included)
    checkpoints: int = 0
    repeats: int = 0


@dataclass
class Findings:
    """Disagreements found, each reported once while it stands, with the lines of the
    service's output that name its orders."""

    found: list[tuple[str, Problem, list[str]]] = field(default_factory=list)
    standing: set[str] = field(default_factory=set)  # snapshot disagreements still there
    once: set[str] = field(default_factory=set)  # others, reported once
    failed_checkpoints: int = 0
    last_words: dict[str, str] = field(default_factory=dict)  # the killed service's last lines

    def add(
        self,
        where: str,
        snapshot: list[Problem],
        others: list[Problem],
        service: Service,
        last_words: str = "",
    ) -> None:
        new = [p for p in snapshot if p.key not in self.standing]
        new += [p for p in others if p.key not in self.once]
        self.standing = {p.key for p in snapshot}
        self.once |= {p.key for p in others}
        if new:
            self.failed_checkpoints += 1
            self.last_words[where] = last_words
        for p in new:
            names = set(ORDER_ID.findall(p.text))
            lines = service.lines_about(names) if names else []
            self.found.append((where, p, lines))
            print(f"  {where}: {p.text}")

    def summary(self) -> str:
        per_check: dict[str, list[str]] = {}
        for where, p, _ in self.found:
            per_check.setdefault(p.key.split("]")[0] + "]", []).append(where)
        out = [f"seed {SEED}; disagreements per check (where first seen):"]
        out += [
            f"  {check} x{len(wheres)}: {', '.join(wheres[:8])}"
            for check, wheres in sorted(per_check.items())
        ]
        for where, p, lines in self.found[:EVIDENCE_SHOWN]:
            out.append(f"--- {where}: {p.text}")
            out += [f"    {line}" for line in lines[-EVIDENCE_LINES:]]
        for where, words in self.last_words.items():
            if words:
                out.append(f"--- the last lines of the service killed before {where}:")
                out += [f"    {line}" for line in words.splitlines()]
        if len(self.found) > EVIDENCE_SHOWN:
            out.append(f"--- and {len(self.found) - EVIDENCE_SHOWN} more (printed above with -s)")
        return "\n".join(out)


@dataclass
class Chaos:
    """One chaos run: the service, its database, and what was told and found."""

    service: Service
    db: Path
    socket: str
    instruments: dict[str, Instrument]
    rng: random.Random
    ledger: Ledger = field(default_factory=Ledger)
    tally: Tally = field(default_factory=Tally)
    findings: Findings = field(default_factory=Findings)
    asked: set[str] = field(default_factory=set)  # signals asked again already

    def checkpoint(self, where: str, last_words: str) -> None:
        """Everything checked with the strategies paused and the service running."""
        ledger, db = self.ledger, self.db
        self.tally.checkpoints += 1
        others = integrity(db)
        # The account as the restart left it, before anyone asks anything.
        snapshot = until_agreed(db, ledger, self.instruments, self.findings.standing)
        with SignalClient(self.socket, timeout=10, reconnect_attempts=0) as client:
            ask_unsure(client, ledger)  # what the answers claim is checked next time
            others += repeats_tell_the_truth(client, db, self._asks())
        port = self.service.port
        again = httpx.post(f"http://127.0.0.1:{port}/api/state/reconcile", timeout=30).json()
        for line in again["differences"] + again["errors"]:
            others.append(
                problem(
                    "R reconcile",
                    line,
                    f"a second reconciliation found: {line} (actions {again['actions']})",
                )
            )
        self.findings.add(where, snapshot, others, self.service, last_words)

    def _asks(self) -> list[tuple[str, str, str, str]]:
        """Every CONFIRM and CLOSE answered since the last check point, and a few older
        ones, to be asked again."""
        with self.ledger.lock:
            accepted = list(self.ledger.accepted.items())
            closed = list(self.ledger.closed.items())
        fresh = [("CONFIRM", sid, "", coid) for sid, coid in accepted if sid not in self.asked]
        fresh += [
            ("CLOSE", sid, symbol, coid) for sid, (symbol, coid) in closed if sid not in self.asked
        ]
        older = [("CONFIRM", sid, "", coid) for sid, coid in accepted if sid in self.asked]
        asks = fresh + self.rng.sample(older, min(REPEATS_OLDER, len(older)))
        self.asked.update(sid for _, sid, _, _ in fresh)
        self.tally.repeats += len(asks)
        return asks


@pytest.mark.slow
def test_kill_nine_at_random_moments_loses_nothing_and_orders_nothing_twice(
    tmp_path: Path, config_file: Callable[..., Path]
) -> None:
    print(f"\nchaos seed {SEED} (TITAN_CHAOS_SEED to repeat)")
    rng = random.Random(SEED)
    port = free_port()
    config = config_file(
        api={"port": port},
        broker={"initialCapital": float(INITIAL_CAPITAL)},
        # A market that moves: resting entries, take profits and stops fill on their own.
        simulation={"intervalMs": 100, "volatilityPct": 0.05},
        risk={
            # Phase 1 for any equity: maker entries (post-only at the touch) unless the
            # signal is fast; small positions; a breaker that never trips here.
            "phase1MaxEquity": 1e9,
            "phase2MaxEquity": 2e9,
            "maxRiskPct": 0.25,
            "phase1RiskPct": 0.25,
            "maxDrawdownPct": 50,
            "maxDailyLossPct": 50,
            "maxConsecutiveLosses": 100000,
        },
        execution={"makerTimeoutMs": 1500, "l2": {"maxSpreadPct": 1, "maxSlippagePct": 5}},
    )
    run = Chaos(
        service=Service(config, tmp_path, port),
        db=tmp_path / "titan.db",
        socket=str(tmp_path / "titan-ipc.sock"),
        instruments=instruments_from_config(parse_config(json.loads(config.read_text()), {})),
        rng=rng,
    )
    service, ledger, tally, findings = run.service, run.ledger, run.tally, run.findings
    started = time.monotonic()
    try:
        service.start()
        for round_no in range(1, KILLS + 1):
            with traffic(run.socket, port, round_no, ledger):
                time.sleep(rng.uniform(*TRAFFIC_S))
                service.kill()
            tally.kills += 1
            last_words = service.tail(EVIDENCE_LINES)
            health = service.start()
            healed = (health.get("reconciliation") or {}).get("differences", [])
            tally.startup_differences += len(healed)
            print(f"kill {round_no}: start-up reconciliation healed {len(healed)} {healed}")
            run.checkpoint(f"kill {round_no}", last_words)
            if findings.failed_checkpoints >= MAX_FAILED_CHECKPOINTS:
                break  # enough evidence; the rest would only cost time
        code = service.stop()
        assert code == 0, service.tail()
        offline = disagreements(read_books(run.db), ledger, run.instruments)
        findings.add("clean stop", offline, integrity(run.db), service)
    finally:
        service.ensure_dead()
    tally.reconciliation_lines = sum(
        out.read_text().count("Reconciliation") for out in service.outputs
    )
    print(
        f"chaos: {tally.kills} kills in {time.monotonic() - started:.1f} s; "
        f"{ledger.sent} signals sent (PREPARE + CLOSE), {len(ledger.accepted)} accepted, "
        f"{len(ledger.closed)} closes with an order ({ledger.empty_closes} with nothing "
        f"held); {tally.startup_differences} differences healed by start-up "
        f"reconciliations, {tally.reconciliation_lines} 'Reconciliation' log lines; "
        f"{tally.checkpoints} check points, {tally.repeats} repeated CONFIRM/CLOSE"
    )
    if findings.found:
        pytest.fail(findings.summary(), pytrace=False)
    assert tally.kills >= KILLS
    assert ledger.accepted and ledger.closed, "the strategies never traded"
