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

The strategies, the service process, the findings and the check point are shared with
the same test against the fake Bybit (test_chaos_bybit.py) in chaos_kit.py; what is
paper's own here is the snapshot of both sides and its checks.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.chaos_kit import (
    CHAOS_EXECUTION,
    CHAOS_RISK,
    EVIDENCE_LINES,
    Chaos,
    Ledger,
    Mix,
    Problem,
    Service,
    integrity,
    problem,
    read_only,
    traffic,
)
from titan_trio.config import parse_config
from titan_trio.domain.instruments import Instrument
from titan_trio.engine import instruments_from_config
from titan_trio.execution.entry import client_order_id

SEED = int(os.environ.get("TITAN_CHAOS_SEED", "20260509"))
KILLS = 24  # at least 20
TRAFFIC_S = (0.2, 1.2)  # traffic before each kill
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
INITIAL_CAPITAL = Decimal("10000")
AGREE_LIMIT_S = 5.0  # how long shadow state and exchange may take to agree
MAX_FAILED_CHECKPOINTS = 4  # then stop killing: the evidence is in
# Statuses of an order the exchange took; REJECTED and EXPIRED ones it never had.
AT_EXCHANGE = {"ACCEPTED", "PARTIALLY_FILLED", "FILLED", "CANCELED", "PENDING_CANCEL"}
IN_FLIGHT = {"PENDING_SUBMIT", "SUBMITTED"}


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


# ----- the test -------------------------------------------------------------------------------


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
        risk=CHAOS_RISK,
        execution=CHAOS_EXECUTION,
    )
    db = tmp_path / "titan.db"
    instruments = instruments_from_config(parse_config(json.loads(config.read_text()), {}))
    ledger = Ledger()
    run = Chaos(
        service=Service(config, tmp_path, port),
        db=db,
        socket=str(tmp_path / "titan-ipc.sock"),
        rng=rng,
        # One read snapshot of the database: shadow state and paper exchange together.
        look=lambda: disagreements(read_books(db), ledger, instruments),
        seed=SEED,
        agree_limit_s=AGREE_LIMIT_S,
        ledger=ledger,
    )
    mix = Mix(SEED, SYMBOLS)
    service, tally, findings = run.service, run.tally, run.findings
    started = time.monotonic()
    try:
        service.start()
        for round_no in range(1, KILLS + 1):
            with traffic(mix, run.socket, port, round_no, ledger):
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
        offline = disagreements(read_books(db), ledger, instruments)
        findings.add("clean stop", offline, integrity(db), service)
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
