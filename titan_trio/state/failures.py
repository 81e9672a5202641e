"""What a failed database operation was, in SQLite's words.

Pony wraps sqlite3's errors (CommitException, UnexpectedError, its own copies of the
DB-API classes) and its messages name the wrapper, which tells an operator nothing. This
module finds the sqlite3 error underneath, names it with SQLite's code ("database or disk
is full (SQLITE_FULL)", "database is locked (SQLITE_BUSY)"), and tells the database
failing (every job would meet it) from one job's own error. It maps, and nothing else:
no connection, no retry, no logging.
"""

from __future__ import annotations

import sqlite3

from titan_trio.errors import StoreError, TitanError

# SQLite primary result codes that are the database's failure, not one job's: every job
# of a batch would meet them.
DATABASE_FAILURES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOTADB,
    }
)


def _wrapped(exc: BaseException) -> BaseException | None:
    """The exception a pony wrapper carries, when ``exc`` is one."""
    inner = getattr(exc, "original_exc", None)  # UnexpectedError, pony's DB-API copies
    if inner is None:
        listed = getattr(exc, "exceptions", None)  # CommitException & co: exc_info tuples
        if listed and isinstance(listed[0], tuple):
            inner = listed[0][1]
    return inner if isinstance(inner, BaseException) else None


def root_cause(exc: BaseException) -> BaseException:
    """The sqlite3 error under pony's wrappers and Python's exception chaining, when there
    is one; else the innermost exception pony wrapped (or ``exc`` itself)."""
    todo, seen = [exc], set()
    while todo:
        current = todo.pop(0)
        if isinstance(current, sqlite3.Error):
            return current
        if id(current) not in seen:
            seen.add(id(current))
            linked = (_wrapped(current), current.__cause__, current.__context__)
            todo.extend(e for e in linked if e is not None)
    innermost, seen = exc, {id(exc)}
    while (inner := _wrapped(innermost)) is not None and id(inner) not in seen:
        innermost = inner
        seen.add(id(inner))
    return innermost


def describe(err: sqlite3.Error) -> str:
    """SQLite's own words and code: 'database or disk is full (SQLITE_FULL)'."""
    name = getattr(err, "sqlite_errorname", None)
    return f"{err} ({name})" if name else str(err)


def database_failure(exc: BaseException) -> int | None:
    """SQLite's primary result code when ``exc`` is the database failing (full, locked,
    read-only, I/O...), None when it is one job's own error."""
    if isinstance(exc, TitanError):
        return None
    root = root_cause(exc)
    code = getattr(root, "sqlite_errorcode", None) if isinstance(root, sqlite3.Error) else None
    if code is None or code & 0xFF not in DATABASE_FAILURES:
        return None
    return code & 0xFF


def as_store_error(exc: BaseException) -> BaseException:
    """A TitanError as it is; anything else as a StoreError naming the real cause."""
    if isinstance(exc, TitanError):
        return exc
    root = root_cause(exc)
    failing = database_failure(exc) is not None
    if isinstance(root, sqlite3.Error):
        err = StoreError(describe(root), database_failing=failing)
    else:
        err = StoreError(f"{type(root).__name__}: {root}", database_failing=failing)
    err.__cause__ = exc
    return err
