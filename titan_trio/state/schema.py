"""Database schema: pony entities on SQLite (WAL), the schema version and migrations.

Money and quantities are stored as decimal strings, never as SQLite REAL, so what was
written is exactly what is read back. Entities are defined per Database object (not at
module level) so tests can open several databases in one process.

Migrations: ``MIGRATIONS[n]`` upgrades a database from version n-1 to n with plain SQL on
a sqlite3 connection, before pony maps the entities. A database newer than this code is
refused rather than guessed at.

File modes: a new database is created 0600 before SQLite opens it, and SQLite gives its
-wal and -shm files the database's mode, so all three are private whatever the umask
(private_files.py). An existing database keeps its mode; one that others can read gets a
WARNING at start.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pony import orm

from titan_trio.errors import StoreError
from titan_trio.private_files import open_private, shared_mode

log = logging.getLogger("titan.store")

SCHEMA_VERSION = 1

# version -> function upgrading from version-1. Version 1 is created by pony itself.
Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: dict[int, Migration] = {}


@dataclass(frozen=True)
class Entities:
    db: orm.Database
    Order: Any
    Fill: Any
    Position: Any
    Trade: Any
    Signal: Any
    EquitySnapshot: Any
    SystemEvent: Any
    KeyValue: Any
    PaperOrder: Any
    PaperFill: Any


def define_entities(db: orm.Database) -> Entities:
    class Order(db.Entity):
        _table_ = "orders"
        client_order_id = orm.PrimaryKey(str)
        symbol = orm.Required(str, index=True)
        side = orm.Required(str)
        order_type = orm.Required(str)
        qty = orm.Required(str)
        price = orm.Optional(str, nullable=True)
        time_in_force = orm.Required(str)
        reduce_only = orm.Required(bool)
        leverage = orm.Required(str)
        signal_id = orm.Optional(str, nullable=True, index=True)
        status = orm.Required(str, index=True)
        exchange_order_id = orm.Optional(str, nullable=True)
        filled_qty = orm.Required(str)
        avg_fill_price = orm.Optional(str, nullable=True)
        reject_reason = orm.Optional(str, nullable=True)
        created_ms = orm.Required(int, size=64)
        updated_ms = orm.Required(int, size=64)
        stop_loss = orm.Optional(str, nullable=True)
        take_profits = orm.Required(str, default="[]")  # JSON list of decimal strings
        trap_type = orm.Optional(str, nullable=True)
        close_reason = orm.Optional(str, nullable=True)

    class Fill(db.Entity):
        _table_ = "fills"
        exec_id = orm.PrimaryKey(str)
        client_order_id = orm.Required(str, index=True)
        symbol = orm.Required(str)
        side = orm.Required(str)
        qty = orm.Required(str)
        price = orm.Required(str)
        fee = orm.Required(str)
        is_maker = orm.Required(bool)
        realized_pnl = orm.Required(str)
        ts_ms = orm.Required(int, size=64, index=True)

    class Position(db.Entity):
        _table_ = "positions"
        symbol = orm.PrimaryKey(str)
        size = orm.Required(str)
        entry_price = orm.Required(str)
        realized_pnl = orm.Required(str)
        fees = orm.Required(str)
        leverage = orm.Required(str)
        opened_ms = orm.Required(int, size=64)
        signal_id = orm.Optional(str, nullable=True)
        stop_loss = orm.Optional(str, nullable=True)
        take_profits = orm.Required(str, default="[]")  # JSON list of decimal strings
        trap_type = orm.Optional(str, nullable=True)
        closed_qty = orm.Required(str, default="0")  # closed so far (partial exits)
        exit_notional = orm.Required(str, default="0")  # sum of exit price x qty
        closed_entry_notional = orm.Required(str, default="0")  # entry x qty of parts closed

    class Trade(db.Entity):
        _table_ = "trades"
        id = orm.PrimaryKey(int, auto=True)
        symbol = orm.Required(str, index=True)
        side = orm.Required(str)  # side of the position that closed
        qty = orm.Required(str)
        entry_price = orm.Required(str)
        exit_price = orm.Required(str)
        realized_pnl = orm.Required(str)  # gross
        fees = orm.Required(str)
        net_pnl = orm.Required(str)
        opened_ms = orm.Required(int, size=64)
        closed_ms = orm.Required(int, size=64, index=True)
        day = orm.Required(str, index=True)  # YYYY-MM-DD, UTC, of closed_ms
        signal_id = orm.Optional(str, nullable=True)
        close_reason = orm.Optional(str, nullable=True)

    class Signal(db.Entity):
        _table_ = "signals"
        signal_id = orm.PrimaryKey(str)
        type = orm.Required(str)
        source = orm.Optional(str, nullable=True)
        symbol = orm.Optional(str, nullable=True)
        status = orm.Required(str)  # PREPARED, REJECTED, CONFIRMED, ABORTED, EXPIRED, CLOSED
        reason = orm.Optional(str, nullable=True)
        client_order_id = orm.Optional(str, nullable=True)
        received_ms = orm.Required(int, size=64, index=True)
        updated_ms = orm.Required(int, size=64)
        payload = orm.Required(str)  # the message as received, JSON

    class EquitySnapshot(db.Entity):
        _table_ = "equity_snapshots"
        id = orm.PrimaryKey(int, auto=True)
        ts_ms = orm.Required(int, size=64, index=True)
        equity = orm.Required(str)
        balance = orm.Required(str)
        unrealized_pnl = orm.Required(str)
        peak_equity = orm.Required(str)
        drawdown_pct = orm.Required(str)

    class SystemEvent(db.Entity):
        _table_ = "system_events"
        id = orm.PrimaryKey(int, auto=True)
        ts_ms = orm.Required(int, size=64, index=True)
        level = orm.Required(str)
        kind = orm.Required(str)
        message = orm.Required(str)

    class PaperOrder(db.Entity):
        """The paper exchange's own order book (every order it ever took), so that a
        client order id stays unique and queryable across restarts, as on an exchange."""

        _table_ = "paper_orders"
        client_order_id = orm.PrimaryKey(str)
        status = orm.Required(str)
        body = orm.Required(str)  # JSON of the order
        updated_ms = orm.Required(int, size=64)

    class PaperFill(db.Entity):
        """The paper exchange's executions, committed with the account they changed: the
        journal the service replays fills from that a kill kept from the shadow state
        (``fills_since``, as a real exchange's execution history)."""

        _table_ = "paper_fills"
        exec_id = orm.PrimaryKey(str)
        ts_ms = orm.Required(int, size=64, index=True)
        body = orm.Required(str)  # JSON of the fill

    class KeyValue(db.Entity):
        _table_ = "kv"
        key = orm.PrimaryKey(str)
        value = orm.Required(str)  # JSON
        updated_ms = orm.Required(int, size=64)

    return Entities(
        db,
        Order,
        Fill,
        Position,
        Trade,
        Signal,
        EquitySnapshot,
        SystemEvent,
        KeyValue,
        PaperOrder,
        PaperFill,
    )


def _pragmas(
    synchronous: str, on_connect: Callable[[sqlite3.Connection], None] | None
) -> Callable[[Any, sqlite3.Connection], None]:
    def set_pragmas(_db: Any, connection: sqlite3.Connection) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL (the default): every commit is in the WAL before it is acknowledged, so it
        # survives the process dying (kill -9); only an OS crash or power cut can lose the
        # last commits, which reconciliation with the exchange then restores. FULL adds an
        # fsync per commit and survives power loss too, at about twice the latency.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=5000")
        # Checkpoints run on the store thread only, never inside an inline commit; the
        # store bounds the WAL itself (store.py: WAL_TRUNCATE_BYTES).
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.execute("PRAGMA foreign_keys=ON")
        if on_connect is not None:
            on_connect(connection)

    return set_pragmas


RESTORE_ADVICE = (
    "stop here and restore the latest good backup (`titan restore --latest`), or move the "
    "file aside to start an empty account; the exchange is the truth for what is held"
)


def check_integrity(conn: sqlite3.Connection, path: str) -> None:
    """``PRAGMA quick_check`` at start: a damaged database stops the service before
    anything is read from it, with what to do about it (StoreError)."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"database {path} is damaged ({exc}): {RESTORE_ADVICE}") from None
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    if problems:
        shown = "; ".join(problems[:3]) + (
            f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        raise StoreError(f"database {path} failed its integrity check ({shown}): {RESTORE_ADVICE}")


def migrate(
    path: str, migrations: dict[int, Migration] | None = None, target: int = SCHEMA_VERSION
) -> int:
    """Bring the database at ``path`` to ``target`` (creating the version table), and
    return the version it had before. Raises StoreError for a database newer than us."""
    migrations = MIGRATIONS if migrations is None else migrations
    try:
        os.close(open_private(path, os.O_RDONLY))  # a new database is born 0600
        conn = sqlite3.connect(path, isolation_level=None)
    except OSError as exc:
        raise StoreError(f"cannot open database {path}: {exc.strerror}") from None
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open database {path}: {exc}") from None
    try:
        check_integrity(conn, path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        fresh = row is None
        found = target if fresh else int(row[0])
        if fresh:
            has_tables = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='orders'"
            ).fetchone()[0]
            found = 1 if has_tables else target
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (found,))
        if found > target:
            raise StoreError(
                f"database {path} has schema version {found}, newer than this version of "
                f"titan ({target}); upgrade titan or restore an older backup"
            )
        for version in range(found + 1, target + 1):
            step = migrations.get(version)
            if step is None:
                raise StoreError(f"no migration to schema version {version}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                step(conn)
                conn.execute("UPDATE schema_version SET version = ?", (version,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return found
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"database {path} is not usable: {exc}") from None
    finally:
        conn.close()


def open_database(
    path: str,
    synchronous: str = "NORMAL",
    on_connect: Callable[[sqlite3.Connection], None] | None = None,
) -> Entities:
    """Migrate, then bind pony to ``path`` and create missing tables. Call from the thread
    that will use the database. ``on_connect`` is given every sqlite3 connection pony
    opens, on the thread that opens it (the store reads its change counter)."""
    if synchronous not in ("NORMAL", "FULL"):
        raise StoreError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
    migrate(path)
    mode = shared_mode(path)
    if mode is not None:
        log.warning(
            "database %s is open to other users (mode %04o); `chmod 600` it and its "
            "-wal and -shm files to keep the account private",
            path,
            mode,
        )
    db = orm.Database()
    db.on_connect(provider="sqlite")(_pragmas(synchronous, on_connect))
    entities = define_entities(db)
    try:
        db.bind(provider="sqlite", filename=path, create_db=True)
        db.generate_mapping(create_tables=True)
    except Exception as exc:  # pony raises many unrelated types here; report them as one
        raise StoreError(f"cannot open database {path}: {exc}") from exc
    return entities
