"""SQLite files as commands open them: read-only URIs, and a damaged, foreign or unreadable file as one line.

A file that is not a SQLite database (or is damaged, or is a directory, or cannot be read) is
StoreCorrupt or ConfigError, never StoreUnavailable: retrying cannot help, so a command stops at
once with exit 78 naming the file, and a worker is parked instead of restarted.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from fullon_ohlcv_service.errors import ConfigError, StoreCorrupt

SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26


def is_corrupt(exc: BaseException) -> bool:
    """True for SQLite's 'file is not a database' and 'database disk image is malformed' (any engine text)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return True
    text = str(exc).lower()
    return "file is not a database" in text or "malformed" in text


def corrupt(what: str, path: Path, exc: BaseException) -> StoreCorrupt:
    """The one-line error for a ``what`` file at ``path`` that SQLite refuses as a database."""
    return StoreCorrupt(f"{what} {path} is not a usable SQLite database ({exc}); move it aside or restore it "
                        "from a backup")


def check_file(what: str, path: Path) -> None:
    """ConfigError if ``path`` exists but is not a regular file this process can read (and write, unless
    it is only read). A missing file is fine: the caller decides whether to create it."""
    if not path.exists():
        return
    if not path.is_file():
        raise ConfigError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{what} {path} cannot be read: permission denied")


def uri(path: Path, mode: str) -> str:
    """A ``file:`` URI for ``path`` (``#``, ``?``, ``%`` encoded) opened with ``mode`` (ro, rw, rwc)."""
    return f"{path.absolute().as_uri()}?mode={mode}"


def probe(conn: sqlite3.Connection, schema: str | None = None) -> None:
    """Read the schema once, so that a file that is not a database fails here, at open."""
    prefix = f"{schema}." if schema else ""
    conn.execute(f"SELECT count(*) FROM {prefix}sqlite_master").fetchone()
