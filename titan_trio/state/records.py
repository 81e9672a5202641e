"""Database operations, each run on the store thread as ``store.call(fn, *args)``.

Each function takes the Entities first, works inside the store's transaction, and
returns plain data (never pony objects). Conversion between rows and the domain lives
here and nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pony import orm

from titan_trio.clock import iso_utc
from titan_trio.domain.orders import Order, OrderStatus, OrderType, Side, TimeInForce
from titan_trio.domain.positions import Position
from titan_trio.errors import TitanError
from titan_trio.state.schema import Entities
from titan_trio.state.shadow import FillChanges, PositionRecord, TradeRecord
from titan_trio.state.store import plain_sql, plain_sql_function


def _upsert(e: Entities, table: str, key: str, values: dict[str, Any]) -> None:
    """INSERT or UPDATE one row by its primary key, in one statement. Hot paths use this
    instead of pony's entity cache: a write costs half as much (tests/bench)."""
    columns = [key, *(c for c in values if c != key)]
    params = {f"p{i}": values[c] for i, c in enumerate(columns)}
    placeholders = ", ".join(f"${name}" for name in params)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    e.db.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT({key}) DO UPDATE SET {updates}",
        params,
    )


def _dec(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _str(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def run_all(e: Entities, writes: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Any]:
    """Several operations in one transaction, in order (all or nothing)."""
    return [fn(e, *args) for fn, args in writes]


# plain SQL exactly when every write it carries is
run_all.plain_sql = lambda writes: all(plain_sql(fn) for fn, _ in writes)  # type: ignore[attr-defined]


# ----- key-value ------------------------------------------------------------------------


def kv_get(e: Entities, key: str) -> Any:
    row = e.KeyValue.get(key=key)
    return None if row is None else json.loads(row.value)


@plain_sql_function
def kv_set(e: Entities, key: str, value: Any, now_ms: int) -> None:
    text = json.dumps(value, separators=(",", ":"))
    _upsert(e, "kv", "key", {"key": key, "value": text, "updated_ms": now_ms})


# ----- the paper exchange's own records -----------------------------------------------


@plain_sql_function
def paper_open_orders(e: Entities) -> list[dict[str, Any]]:
    """The paper exchange's resting orders, oldest first."""
    open_states = ", ".join(f"'{st.value}'" for st in OrderStatus if st.is_open)  # constants
    rows = e.db.select(
        f"body FROM paper_orders WHERE status IN ({open_states}) ORDER BY updated_ms", {}
    )
    return [json.loads(body) for body in rows]


def paper_order(e: Entities, client_order_id: str) -> dict[str, Any] | None:
    row = e.PaperOrder.get(client_order_id=client_order_id)
    return None if row is None else json.loads(row.body)


class DuplicateOrderId(TitanError):
    """The paper exchange already took an order with this client order id."""


@plain_sql_function
def save_paper_account(
    e: Entities,
    key: str,
    snapshot: dict[str, Any],
    orders: list[dict[str, Any]],
    now_ms: int,
    new_order_id: str | None = None,
    fills: list[dict[str, Any]] | None = None,
) -> None:
    """The paper account snapshot, the orders it touched and the fills it made, in one
    transaction; refused (nothing written) when ``new_order_id`` was used before, even
    before a restart."""
    if new_order_id is not None and e.db.exists(
        "client_order_id FROM paper_orders WHERE client_order_id = $new_order_id",
        {"new_order_id": new_order_id},
    ):
        raise DuplicateOrderId(new_order_id)
    kv_set(e, key, snapshot, now_ms)
    for body in orders:
        _upsert(
            e,
            "paper_orders",
            "client_order_id",
            {
                "client_order_id": body["client_order_id"],
                "status": body["status"],
                "body": json.dumps(body, separators=(",", ":")),
                "updated_ms": now_ms,
            },
        )
    for body in fills or ():
        e.db.execute(
            "INSERT INTO paper_fills (exec_id, ts_ms, body) VALUES ($exec_id, $ts_ms, $body)",
            {
                "exec_id": body["exec_id"],
                "ts_ms": body["ts_ms"],
                "body": json.dumps(body, separators=(",", ":")),
            },
        )


@plain_sql_function
def paper_fills_since(
    e: Entities, since_ms: int, after_rowid: int, limit: int
) -> list[tuple[int, dict[str, Any]]]:
    """One page of the paper exchange's fills at or after ``since_ms``: those stored after
    row ``after_rowid``, in the order they were made (rowid), at most ``limit``; each with
    its rowid, to ask for the next page."""
    rows = e.db.select(
        "rowid, body FROM paper_fills WHERE ts_ms >= $since_ms AND rowid > $after "
        "ORDER BY rowid LIMIT $limit",
        {"since_ms": since_ms, "after": after_rowid, "limit": limit},
    )
    return [(rowid, json.loads(body)) for rowid, body in rows]


@plain_sql_function
def newest_fill_ms(e: Entities) -> int | None:
    """The time of the newest fill the shadow state recorded, None before the first."""
    rows = e.db.select("max(ts_ms) FROM fills", {})
    return rows[0] if rows else None


def order_known(e: Entities, client_order_id: str) -> bool:
    """Whether the orders table has this order."""
    return e.Order.get(client_order_id=client_order_id) is not None


def oldest_order_ms(e: Entities) -> int | None:
    """When the oldest order this database recorded was made, None before the first."""
    rows = e.db.select("min(created_ms) FROM orders", {})
    return rows[0] if rows else None


# ----- the signals journal: every signal id is accepted once, across restarts ----------


@plain_sql_function
def journal_signal(
    e: Entities,
    signal_id: str,
    kind: str,
    source: str | None,
    symbol: str | None,
    status: str,
    reason: str | None,
    payload: str,
    now_ms: int,
) -> bool:
    """Record a new signal id; False (and nothing written) when it was seen before."""
    cursor = e.db.execute(
        "INSERT OR IGNORE INTO signals (signal_id, type, source, symbol, status, reason, "
        "received_ms, updated_ms, payload) VALUES ($signal_id, $kind, $source, $symbol, "
        "$status, $reason, $now_ms, $now_ms, $payload)",
        {
            "signal_id": signal_id,
            "kind": kind,
            "source": source,
            "symbol": symbol,
            "status": status,
            "reason": reason,
            "now_ms": now_ms,
            "payload": payload,
        },
    )
    return cursor.rowcount == 1


@dataclass(frozen=True, slots=True)
class SignalEntry:
    """A new signal's journal entry, for ``journal_order``."""

    signal_id: str
    kind: str
    source: str | None
    symbol: str | None
    payload: str
    received_ms: int


class SignalUsed(TitanError):
    """The signal id was journaled before: nothing was written."""


@plain_sql_function
def journal_order(e: Entities, entry: SignalEntry, status: str, order: Order) -> None:
    """Journal a new signal at ``status`` together with the order it places, in one
    commit (a CLOSE with nothing to cancel first); SignalUsed, and nothing written, when
    its id was journaled before."""
    if not journal_signal(
        e,
        entry.signal_id,
        entry.kind,
        entry.source,
        entry.symbol,
        status,
        None,
        entry.payload,
        entry.received_ms,
    ):
        raise SignalUsed(f"signal {entry.signal_id} was already used")
    set_signal_status(e, entry.signal_id, status, None, entry.received_ms, order)


def signal_status(e: Entities, signal_id: str) -> tuple[str, str | None] | None:
    row = e.Signal.get(signal_id=signal_id)
    return None if row is None else (row.status, row.reason)


def signal_order(e: Entities, signal_id: str) -> Order | None:
    """The order a signal placed (CONFIRM's entry, CLOSE's exit), as last saved."""
    row = e.Signal.get(signal_id=signal_id)
    if row is None or not row.client_order_id:
        return None
    order = e.Order.get(client_order_id=row.client_order_id)
    return None if order is None else _order_from_row(order)


@plain_sql_function
def set_signal_status(
    e: Entities,
    signal_id: str,
    status: str,
    reason: str | None,
    now_ms: int,
    order: Order | None = None,
) -> None:
    """Move a signal to ``status``, and save the order it placed in the same commit."""
    e.db.execute(
        "UPDATE signals SET status = $status, reason = $reason, updated_ms = $now_ms, "
        "client_order_id = coalesce($coid, client_order_id) WHERE signal_id = $signal_id",
        {
            "status": status,
            "reason": reason,
            "now_ms": now_ms,
            "signal_id": signal_id,
            "coid": None if order is None else order.client_order_id,
        },
    )
    if order is not None:
        save_order(e, order)


def expire_signals(e: Entities, signal_ids: list[str], now_ms: int) -> None:
    for signal_id in signal_ids:
        row = e.Signal.get(signal_id=signal_id)
        if row is not None and row.status == "PREPARED":
            row.set(status="EXPIRED", updated_ms=now_ms)


# ----- orders, fills, positions, trades -------------------------------------------------


@plain_sql_function
def save_order(e: Entities, o: Order) -> None:
    values = {
        "symbol": o.symbol,
        "side": o.side.value,
        "order_type": o.order_type.value,
        "qty": str(o.qty),
        "price": _str(o.price),
        "time_in_force": o.time_in_force.value,
        "reduce_only": o.reduce_only,
        "leverage": str(o.leverage),
        "signal_id": o.signal_id,
        "status": o.status.value,
        "exchange_order_id": o.exchange_order_id,
        "filled_qty": str(o.filled_qty),
        "avg_fill_price": _str(o.avg_fill_price),
        "reject_reason": o.reject_reason,
        "created_ms": o.created_ms,
        "updated_ms": o.updated_ms,
        "stop_loss": _str(o.stop_loss),
        "take_profits": json.dumps([str(tp) for tp in o.take_profits]),
        "trap_type": o.trap_type,
        "close_reason": o.close_reason,
    }
    _upsert(
        e,
        "orders",
        "client_order_id",
        {"client_order_id": o.client_order_id, **values, "reduce_only": int(o.reduce_only)},
    )


@plain_sql_function
def expire_unsent_order(e: Entities, o: Order) -> None:
    """Record that ``o`` was never sent, only over its own PENDING_SUBMIT row (a commit
    that never happened, or a repeat whose journal entry was refused, has no such row)."""
    e.db.execute(
        "UPDATE orders SET status = $status, reject_reason = $why, updated_ms = $now "
        "WHERE client_order_id = $coid AND status = 'PENDING_SUBMIT'",
        {
            "status": o.status.value,
            "why": o.reject_reason,
            "now": o.updated_ms,
            "coid": o.client_order_id,
        },
    )


def _order_from_row(r: Any) -> Order:
    return Order(
        client_order_id=r.client_order_id,
        symbol=r.symbol,
        side=Side(r.side),
        order_type=OrderType(r.order_type),
        qty=Decimal(r.qty),
        price=_dec(r.price),
        time_in_force=TimeInForce(r.time_in_force),
        reduce_only=r.reduce_only,
        leverage=Decimal(r.leverage),
        signal_id=r.signal_id,
        status=OrderStatus(r.status),
        exchange_order_id=r.exchange_order_id,
        filled_qty=Decimal(r.filled_qty),
        avg_fill_price=_dec(r.avg_fill_price),
        reject_reason=r.reject_reason,
        created_ms=r.created_ms,
        updated_ms=r.updated_ms,
        stop_loss=_dec(r.stop_loss),
        take_profits=tuple(Decimal(x) for x in json.loads(r.take_profits)),
        trap_type=r.trap_type,
        close_reason=r.close_reason,
    )


def load_open_orders(e: Entities) -> list[Order]:
    open_states = [s.value for s in OrderStatus if s.is_open]
    rows = orm.select(o for o in e.Order if o.status in open_states).order_by(
        lambda o: o.created_ms
    )
    return [_order_from_row(r) for r in rows]


def load_unsettled_orders(e: Entities, since_ms: int) -> list[tuple[Order, Decimal]]:
    """Finished orders updated at or after ``since_ms`` whose fills are not all recorded
    (the order's final state was saved, its fills were not: a kill in between), each
    with the quantity its recorded fills add up to."""
    final = [s.value for s in OrderStatus if s.is_terminal]
    rows = orm.select(
        o for o in e.Order if o.status in final and o.updated_ms >= since_ms and o.filled_qty != "0"
    )
    orders = [_order_from_row(row) for row in rows]
    recorded = _recorded_fill_qty(
        e,
        "o.status IN (SELECT value FROM json_each($final)) AND o.updated_ms >= $since "
        "AND o.filled_qty != '0'",
        {"final": json.dumps(final), "since": since_ms},
    )
    out = []
    for order in orders:
        qty = recorded.get(order.client_order_id, Decimal(0))
        if qty < order.filled_qty:
            out.append((order, qty))
    return out


def recorded_fill_qty_of_open_orders(e: Entities) -> dict[str, Decimal]:
    """What the recorded fills of each open order add up to."""
    open_states = [s.value for s in OrderStatus if s.is_open]
    return _recorded_fill_qty(
        e, "o.status IN (SELECT value FROM json_each($states))", {"states": json.dumps(open_states)}
    )


def _recorded_fill_qty(e: Entities, where: str, params: dict[str, Any]) -> dict[str, Decimal]:
    """Recorded fill quantity per order, for the orders ``where`` selects (alias o)."""
    out: dict[str, Decimal] = {}
    rows = e.db.select(
        "f.client_order_id, f.qty FROM fills f JOIN orders o "
        f"ON o.client_order_id = f.client_order_id WHERE {where}",
        params,
    )
    for coid, qty in rows:
        out[coid] = out.get(coid, Decimal(0)) + Decimal(qty)
    return out


def recent_entry_outcomes(e: Entities, limit: int) -> list[bool]:
    """Whether each of the newest ``limit`` finished entry orders filled (at least in
    part), oldest first: the fill-rate window as it was before a restart. Only entries
    the exchange took count (REJECTED ones never could fill)."""
    finished = [OrderStatus.FILLED.value, OrderStatus.CANCELED.value, OrderStatus.EXPIRED.value]
    rows = (
        orm.select(o for o in e.Order if o.status in finished and not o.reduce_only)
        .order_by(lambda o: orm.desc(o.updated_ms))
        .limit(limit)
    )
    return [Decimal(r.filled_qty) > 0 for r in reversed(list(rows))]


def _save_position(e: Entities, rec: PositionRecord) -> None:
    p = rec.position
    values = {
        "size": str(p.size),
        "entry_price": str(p.entry_price),
        "realized_pnl": str(p.realized_pnl),
        "fees": str(p.fees),
        "leverage": str(p.leverage),
        "opened_ms": p.opened_ms,
        "signal_id": rec.signal_id,
        "stop_loss": _str(rec.stop_loss),
        "take_profits": json.dumps([str(tp) for tp in rec.take_profits]),
        "trap_type": rec.trap_type,
        "closed_qty": str(rec.closed_qty),
        "exit_notional": str(rec.exit_notional),
        "closed_entry_notional": str(rec.closed_entry_notional),
    }
    _upsert(e, "positions", "symbol", {"symbol": p.symbol, **values})


@plain_sql_function
def set_position(e: Entities, symbol: str, rec: PositionRecord | None) -> None:
    """Reconciliation's write: the position as the exchange has it, or none."""
    if rec is None:
        e.db.execute("DELETE FROM positions WHERE symbol = $symbol", {"symbol": symbol})
    else:
        _save_position(e, rec)


def load_positions(e: Entities) -> list[PositionRecord]:
    out = []
    for r in orm.select(p for p in e.Position).order_by(lambda p: p.symbol):
        pos = Position(
            symbol=r.symbol,
            size=Decimal(r.size),
            entry_price=Decimal(r.entry_price),
            realized_pnl=Decimal(r.realized_pnl),
            fees=Decimal(r.fees),
            opened_ms=r.opened_ms,
            leverage=Decimal(r.leverage),
        )
        out.append(
            PositionRecord(
                position=pos,
                signal_id=r.signal_id,
                stop_loss=_dec(r.stop_loss),
                take_profits=[Decimal(x) for x in json.loads(r.take_profits)],
                trap_type=r.trap_type,
                closed_qty=Decimal(r.closed_qty),
                exit_notional=Decimal(r.exit_notional),
                closed_entry_notional=Decimal(r.closed_entry_notional),
            )
        )
    return out


def _insert_trade(e: Entities, t: TradeRecord) -> None:
    values = {
        "symbol": t.symbol,
        "side": t.side.value,
        "qty": str(t.qty),
        "entry_price": str(t.entry_price),
        "exit_price": str(t.exit_price),
        "realized_pnl": str(t.realized_pnl),
        "fees": str(t.fees),
        "net_pnl": str(t.net_pnl),
        "opened_ms": t.opened_ms,
        "closed_ms": t.closed_ms,
        "day": t.day,
        "signal_id": t.signal_id,
        "close_reason": t.close_reason,
    }
    e.db.execute(
        f"INSERT INTO trades ({', '.join(values)}) VALUES ({', '.join('$' + c for c in values)})",
        values,
    )


@plain_sql_function
def save_fill_changes(e: Entities, changes: FillChanges, balance: Decimal, now_ms: int) -> bool:
    """Persist one fill and everything it changed, atomically. False when the fill was
    already recorded (a replay after a restart), in which case nothing changes."""
    f = changes.fill
    cursor = e.db.execute(
        "INSERT OR IGNORE INTO fills (exec_id, client_order_id, symbol, side, qty, price, fee, "
        "is_maker, realized_pnl, ts_ms) VALUES ($exec_id, $coid, $symbol, $side, $qty, $price, "
        "$fee, $is_maker, $realized_pnl, $ts_ms)",
        {
            "exec_id": f.exec_id,
            "coid": f.client_order_id,
            "symbol": f.symbol,
            "side": f.side.value,
            "qty": str(f.qty),
            "price": str(f.price),
            "fee": str(f.fee),
            "is_maker": int(f.is_maker),
            "realized_pnl": str(f.realized_pnl),
            "ts_ms": f.ts_ms,
        },
    )
    if cursor.rowcount != 1:
        return False
    if changes.order is not None:
        save_order(e, changes.order)
    if changes.position is None:
        e.db.execute("DELETE FROM positions WHERE symbol = $symbol", {"symbol": changes.symbol})
    else:
        _save_position(e, changes.position)
    if changes.trade is not None:
        _insert_trade(e, changes.trade)
    kv_set(e, "shadow.balance", str(balance), now_ms)
    return True


def recent_exec_ids(e: Entities, since_ms: int, limit: int) -> list[tuple[str, int]]:
    """(exec_id, ts_ms) of the newest ``limit`` fills since ``since_ms``, oldest first."""
    rows = e.db.select(
        "exec_id, ts_ms FROM fills WHERE ts_ms >= $since_ms ORDER BY ts_ms DESC LIMIT $limit",
        {"since_ms": since_ms, "limit": limit},
    )
    return [(exec_id, ts_ms) for exec_id, ts_ms in reversed(rows)]


@plain_sql_function
def fill_recorded(e: Entities, exec_id: str) -> bool:
    return e.db.exists("exec_id FROM fills WHERE exec_id = $exec_id", {"exec_id": exec_id})


def list_trades(
    e: Entities, day: str | None, limit: int, symbol: str | None
) -> list[dict[str, Any]]:
    query = orm.select(t for t in e.Trade)
    if day is not None:
        query = query.filter(lambda t: t.day == day)
    if symbol is not None:
        query = query.filter(lambda t: t.symbol == symbol)
    rows = query.order_by(lambda t: (orm.desc(t.closed_ms), orm.desc(t.id)))[:limit]
    return [
        {
            "id": t.id,
            "symbol": t.symbol,
            "side": "LONG" if t.side == Side.BUY.value else "SHORT",  # the position's side
            "qty": Decimal(t.qty),
            "entry_price": Decimal(t.entry_price),
            "exit_price": Decimal(t.exit_price),
            "realized_pnl": Decimal(t.realized_pnl),
            "fees": Decimal(t.fees),
            "net_pnl": Decimal(t.net_pnl),
            "opened_at": iso_utc(t.opened_ms),
            "closed_at": iso_utc(t.closed_ms),
            "signal_id": t.signal_id,
            "close_reason": t.close_reason,
        }
        for t in rows
    ]


def realized_pnl_on(e: Entities, day: str) -> Decimal:
    return sum(
        (Decimal(t.net_pnl) for t in orm.select(t for t in e.Trade if t.day == day)), Decimal(0)
    )


# ----- equity and events ----------------------------------------------------------------


def add_equity_snapshot(
    e: Entities,
    ts_ms: int,
    equity: Decimal,
    balance: Decimal,
    unrealized: Decimal,
    peak: Decimal,
    drawdown_pct: Decimal,
) -> None:
    e.EquitySnapshot(
        ts_ms=ts_ms,
        equity=str(equity),
        balance=str(balance),
        unrealized_pnl=str(unrealized),
        peak_equity=str(peak),
        drawdown_pct=str(drawdown_pct),
    )


def add_event(e: Entities, ts_ms: int, level: str, kind: str, message: str) -> None:
    e.SystemEvent(ts_ms=ts_ms, level=level, kind=kind, message=message)


def table_counts(e: Entities) -> dict[str, int]:
    return {
        "orders": orm.count(o for o in e.Order),
        "fills": orm.count(f for f in e.Fill),
        "positions": orm.count(p for p in e.Position),
        "trades": orm.count(t for t in e.Trade),
        "signals": orm.count(s for s in e.Signal),
        "equity_snapshots": orm.count(s for s in e.EquitySnapshot),
        "system_events": orm.count(s for s in e.SystemEvent),
    }
