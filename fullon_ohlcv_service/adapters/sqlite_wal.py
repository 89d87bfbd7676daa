"""SQLite connection helpers: WAL mode despite a racing opener, and ending a failed write transaction."""

from __future__ import annotations

import sqlite3
import time


def enable_wal(conn: sqlite3.Connection, timeout_ms: int, schema: str | None = None) -> None:
    """``PRAGMA [schema.]journal_mode=WAL``, retried for up to ``timeout_ms`` while the database is locked.

    On a new file, two processes that open it at the same moment race for the switch, and the loser
    gets 'database is locked' at once: the busy timeout does not apply to it.
    """
    target = f"{schema}." if schema else ""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            conn.execute(f"PRAGMA {target}journal_mode=WAL").fetchall()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def end_failed_transaction(conn: sqlite3.Connection, error: BaseException | None = None) -> None:
    """Roll back the transaction a failed statement or COMMIT left open, keeping ``error`` the error raised.

    SQLite rolls back by itself after most disk-full or I/O errors, but not after every failure (a
    COMMIT that got SQLITE_BUSY keeps its transaction open), and a ROLLBACK with nothing to roll back
    raises: so roll back only while a transaction is open, and never let the rollback's own failure
    replace ``error`` (it is attached to it as a note).
    """
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        if error is None:
            raise
        error.add_note(f"the ROLLBACK after it failed too: {exc}")
