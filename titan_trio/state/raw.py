"""The plain sqlite3 connection the store runs urgent transactions on, on the trio thread.

Why: on these one-row writes pony's per-statement layer costs more than SQLite itself
(store.py says when a call may run here). What it must never do: wait on another
process's write lock longer than RAW_BUSY_TIMEOUT_MS, or leave a transaction open, or
keep the write lock after a failure. It raises Deferred when it did nothing and the
store thread should do the work instead.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


class RawSql:
    """The slice of pony's Database API the urgent record functions use (SQLite binds
    ``$name`` parameters from a dict natively)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: dict[str, Any]) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    def exists(self, sql: str, params: dict[str, Any]) -> bool:
        return self.conn.execute(f"SELECT {sql} LIMIT 1", params).fetchone() is not None

    def select(self, sql: str, params: dict[str, Any]) -> list[Any]:
        rows = self.conn.execute(f"SELECT {sql}", params).fetchall()
        return [row[0] for row in rows] if rows and len(rows[0]) == 1 else rows


@dataclass
class RawEntities:
    db: RawSql


class Deferred(Exception):
    """The inline attempt did nothing and the store thread should do it: another
    connection holds the write lock, or the disk is full (the store thread can truncate
    the WAL to make room)."""


RAW_BUSY_TIMEOUT_MS = 20  # the trio thread never waits longer than this for the lock


class RawDatabase:
    def __init__(self, path: str, synchronous: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={synchronous}",
            f"busy_timeout={RAW_BUSY_TIMEOUT_MS}",
            "wal_autocheckpoint=0",
        ):
            self.conn.execute(f"PRAGMA {pragma}")
        self.entities = RawEntities(RawSql(self.conn))
        self.closed = False  # the store opens a new one in its place

    @contextmanager
    def transaction(self) -> Iterator[RawEntities]:
        """BEGIN IMMEDIATE ... COMMIT; anything failing, the COMMIT included (a full disk
        shows there), rolls back, so the connection never keeps the write lock; one that
        cannot even roll back is closed."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise Deferred(str(exc)) from exc
            raise
        try:
            yield self.entities
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:  # SQLite may have rolled back already
                try:
                    self.conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self.close()  # the original error is the one to report
            raise

    def close(self) -> None:
        self.closed = True
        self.conn.close()
