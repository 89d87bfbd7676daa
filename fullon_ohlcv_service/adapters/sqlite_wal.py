"""Switch a SQLite database to WAL mode, riding out the race of several processes opening a new file at once."""

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
