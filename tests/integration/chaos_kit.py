"""What the chaos tests share (issue 9 on the paper broker, issue 11 against the fake
Bybit): strategy threads and what they were told, the service as a process killed and
started again, disagreements reported once while they stand, repeated requests that must
tell the truth, and one check point after each restart.

Each test supplies what differs: how the exchange's truth is read and compared with the
service (``Chaos.look``), and the traffic's shape (``Mix``). The paper test reads both
sides in one database snapshot; the Bybit test reads the fake exchange over its control
API and the service over its own API and database.
"""

from __future__ import annotations

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

from ipc.client import IpcClientError, IpcConnectError, SignalClient
from ipc.protocol import Reason, Reply, Status
from tests.helpers import spawn, wait_healthy
from titan_trio.execution.entry import client_order_id

REPEATS_OLDER = 5  # repeated CONFIRMs of signals from earlier rounds, per check point
REPEAT_LIMIT_S = 2.0  # how long a repeat's answer and the orders table may take to agree
REPEAT_FAILURES_SHOWN = 3  # per check point; the rest are not asked
EVIDENCE_SHOWN = 12  # disagreements shown with their log lines in the failure
EVIDENCE_LINES = 12
JOIN_LIMIT_S = 15.0
STOP_LIMIT_S = 15.0
POLL_S = 0.05
REPO = Path(__file__).resolve().parents[2]
ORDER_ID = re.compile(r"tt[ecstf][0-9a-f]{32}|paper-sl-\d+|bybit-[0-9a-f-]{36}")


# ----- what the strategies send and were told ----------------------------------------------


# Phase 1 for any equity: maker entries (post-only at the touch) unless the signal is
# fast; small positions; a breaker that never trips here.
CHAOS_RISK: dict[str, Any] = {
    "phase1MaxEquity": 1e9,
    "phase2MaxEquity": 2e9,
    "maxRiskPct": 0.25,
    "phase1RiskPct": 0.25,
    "maxDrawdownPct": 50,
    "maxDailyLossPct": 50,
    "maxConsecutiveLosses": 100000,
}
CHAOS_EXECUTION: dict[str, Any] = {
    "makerTimeoutMs": 1500,
    "l2": {"maxSpreadPct": 1, "maxSlippagePct": 5},
}


@dataclass(frozen=True)
class Mix:
    """The shape of the strategies' traffic."""

    seed: int
    symbols: tuple[str, ...]
    zone_pct: float = 0.0005  # entry zone around the touch: maker rests at it, taker takes it
    stop_pct: float = 0.002  # stop and target this far beyond the zone: some are hit
    strategies_per_symbol: int = 2  # two on one symbol: one may close what the other opened
    pause_s: float = 0.05  # at most this between an entry and its CLOSE
    close_share: float = 0.6  # how often a strategy closes right after its entry
    secret: str | None = None  # the IPC's HMAC secret, when frames must be signed


@dataclass
class Ledger:
    """What the strategies were told: what they must be able to rely on."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0  # PREPAREs and CLOSEs written
    prepared: set[str] = field(default_factory=set)  # every entry signal id written
    accepted: dict[str, str] = field(default_factory=dict)  # entry signal -> its order id
    closed: dict[str, tuple[str, str]] = field(default_factory=dict)  # signal -> (symbol, id)
    empty_closes: int = 0  # CLOSE answered closed with nothing held
    unsure: list[tuple[str, str, str]] = field(default_factory=list)  # written, no reply
    not_at_exchange: dict[str, str] = field(default_factory=dict)  # order id -> who said so

    def count_sent(self, entry_signal: str | None = None) -> None:
        with self.lock:
            self.sent += 1
            if entry_signal is not None:
                self.prepared.add(entry_signal)

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
    mix: Mix,
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
        with SignalClient(socket, mix.secret, timeout=10, reconnect_attempts=0) as client:
            k = 0
            while not paused.is_set():
                k += 1
                sid = f"{tag}-{k}"
                quote = httpx.get(f"http://127.0.0.1:{port}/api/market", timeout=5).json()[symbol]
                bid, ask = float(quote["bid"]), float(quote["ask"])
                low = round(bid * (1 - mix.zone_pct), 2)
                high = round(ask * (1 + mix.zone_pct), 2)
                long = rng.random() < 0.5
                below = round(low * (1 - mix.stop_pct), 2)
                above = round(high * (1 + mix.stop_pct), 2)
                stop_loss, target = (below, above) if long else (above, below)
                velocity = 2.0 if rng.random() < 0.5 else None  # taker; else maker (phase 1)
                ledger.count_sent(sid)
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
                time.sleep(rng.uniform(0, mix.pause_s))  # a resting entry may meet a quote
                if rng.random() < mix.close_share:
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
def traffic(mix: Mix, socket: str, port: int, round_no: int, ledger: Ledger) -> Iterator[None]:
    """The strategy threads of one round, running while the block runs; stopped (and
    joined, bounded) when it ends."""
    paused = threading.Event()
    threads = [
        threading.Thread(
            target=strategy,
            args=(
                mix,
                socket,
                port,
                symbol,
                f"r{round_no}{symbol[:3].lower()}{n}",
                random.Random(f"{mix.seed}-{round_no}-{symbol}-{n}"),
                ledger,
                paused,
            ),
            daemon=True,
        )
        for symbol in mix.symbols
        for n in range(mix.strategies_per_symbol)
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

    def __init__(self, config: Path, cwd: Path, port: int, env: dict[str, str] | None = None):
        self.config = config
        self.cwd = cwd
        self.port = port
        self.env = dict(env or {})
        self.starts = 0
        self.proc: subprocess.Popen[str] | None = None
        self.outputs: list[Path] = []
        self._drain: threading.Thread | None = None

    def start(self) -> dict[str, Any]:
        self.starts += 1
        out = self.cwd / f"service-{self.starts:02d}.out"
        self.outputs.append(out)
        # The service runs this checkout's code, whatever the environment has installed.
        proc = self.proc = spawn(self.config, self.cwd, PYTHONPATH=str(REPO), **self.env)
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


# ----- the database and disagreements ----------------------------------------------------------


@contextmanager
def read_only(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


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


def until_agreed(
    look: Callable[[], list[Problem]], standing: set[str], limit_s: float
) -> list[Problem]:
    """Look until no disagreement shows other than those ``standing`` from before
    (already reported); bounded by ``limit_s``. The disagreements of the last look."""
    deadline = time.monotonic() + limit_s
    while True:
        problems = look()
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


# ----- findings and one check point -------------------------------------------------------------


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

    seed: int
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
        out = [f"seed {self.seed}; disagreements per check (where first seen):"]
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
    """One chaos run: the service, its database, and what was told and found.

    ``look`` compares the exchange's truth with the service's view once and returns
    the disagreements; it is called until they settle (``agree_limit_s``), because the
    two sides commit on their own and one look may fall between them."""

    service: Service
    db: Path
    socket: str
    rng: random.Random
    look: Callable[[], list[Problem]]
    seed: int
    agree_limit_s: float = 5.0
    secret: str | None = None  # the IPC's HMAC secret
    api_token: str | None = None
    ledger: Ledger = field(default_factory=Ledger)
    tally: Tally = field(default_factory=Tally)
    findings: Findings = field(init=False)
    asked: set[str] = field(default_factory=set)  # signals asked again already

    def __post_init__(self) -> None:
        self.findings = Findings(self.seed)

    def checkpoint(self, where: str, last_words: str) -> None:
        """Everything checked with the strategies paused and the service running."""
        ledger, db = self.ledger, self.db
        self.tally.checkpoints += 1
        others = integrity(db)
        # The account as the restart left it, before anyone asks anything.
        snapshot = until_agreed(self.look, self.findings.standing, self.agree_limit_s)
        with SignalClient(self.socket, self.secret, timeout=10, reconnect_attempts=0) as client:
            ask_unsure(client, ledger)  # what the answers claim is checked next time
            others += repeats_tell_the_truth(client, db, self._asks())
        others += self.reconcile_again()
        self.findings.add(where, snapshot, others, self.service, last_words)

    def reconcile_again(self) -> list[Problem]:
        """A reconciliation asked for now: with everything settled, it must find nothing."""
        headers = {"Authorization": f"Bearer {self.api_token}"} if self.api_token else {}
        again = httpx.post(
            f"http://127.0.0.1:{self.service.port}/api/state/reconcile",
            headers=headers,
            timeout=30,
        ).json()
        return [
            problem(
                "R reconcile",
                line,
                f"a second reconciliation found: {line} (actions {again['actions']})",
            )
            for line in again["differences"] + again["errors"]
        ]

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
