"""fullon_orm's configuration tables (DDL for SQLite and PostgreSQL) and a tiny async connection over both."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from fullon_ohlcv_service.adapters.sqlite_files import check_file, corrupt, is_corrupt, probe, uri
from fullon_ohlcv_service.errors import ConfigError, StoreUnavailable
from fullon_ohlcv_service.redaction import redact_text
from fullon_ohlcv_service.settings import StoreURL

TABLES = ("users", "cat_exchanges", "cat_exchanges_params", "exchanges", "symbols")

# fullon_orm's column names. {serial}/{now} differ per engine; everything else is portable SQL.
# CREATE TABLE IF NOT EXISTS: an existing fullon database (with more columns) is left untouched.
_DDL = (
    """CREATE TABLE IF NOT EXISTS users (
        uid {serial},
        mail VARCHAR(255) NOT NULL UNIQUE,
        password TEXT,
        f2a TEXT,
        role VARCHAR(50) DEFAULT 'user',
        name VARCHAR(255),
        lastname VARCHAR(255),
        phone VARCHAR(50),
        id_num VARCHAR(50),
        note TEXT,
        manager INTEGER,
        timestamp TIMESTAMP DEFAULT {now},
        active BOOLEAN DEFAULT TRUE,
        external_id TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS cat_exchanges (
        cat_ex_id {serial},
        name VARCHAR(100) NOT NULL UNIQUE,
        ohlcv_view TEXT DEFAULT ''
    )""",
    """CREATE TABLE IF NOT EXISTS cat_exchanges_params (
        cat_ex_param_id {serial},
        cat_ex_id INTEGER NOT NULL REFERENCES cat_exchanges(cat_ex_id) ON DELETE CASCADE,
        name VARCHAR(100) NOT NULL,
        value TEXT,
        UNIQUE (cat_ex_id, name)
    )""",
    """CREATE TABLE IF NOT EXISTS exchanges (
        ex_id {serial},
        uid INTEGER NOT NULL REFERENCES users(uid) ON DELETE CASCADE,
        cat_ex_id INTEGER NOT NULL REFERENCES cat_exchanges(cat_ex_id) ON DELETE CASCADE,
        name VARCHAR(100) NOT NULL,
        test BOOLEAN DEFAULT FALSE,
        active BOOLEAN DEFAULT TRUE,
        timestamp TIMESTAMP DEFAULT {now},
        UNIQUE (uid, cat_ex_id, name)
    )""",
    """CREATE TABLE IF NOT EXISTS symbols (
        symbol_id {serial},
        symbol VARCHAR(100) NOT NULL,
        cat_ex_id INTEGER NOT NULL REFERENCES cat_exchanges(cat_ex_id) ON DELETE CASCADE,
        updateframe VARCHAR(10) DEFAULT '1h',
        backtest INTEGER DEFAULT 30,
        decimals INTEGER DEFAULT 8,
        base VARCHAR(50),
        quote VARCHAR(50),
        futures BOOLEAN DEFAULT FALSE,
        only_ticker BOOLEAN DEFAULT FALSE,
        UNIQUE (symbol, cat_ex_id)
    )""",
)

_ENGINE = {
    "sqlite": {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "now": "CURRENT_TIMESTAMP"},
    "postgresql": {"serial": "SERIAL PRIMARY KEY", "now": "now()"},
}


def ddl(kind: str) -> list[str]:
    """The CREATE TABLE IF NOT EXISTS statements for ``kind`` ("sqlite" or "postgresql")."""
    return [stmt.format(**_ENGINE[kind]) for stmt in _DDL]


Row = tuple[Any, ...]

_SQLITE_GONE = ("locked", "busy", "unable to open", "disk i/o", "readonly", "read-only")
_MISSING = ("no such table", "no such column")


def _pg_params(sql: str) -> str:
    """``?`` placeholders to ``$1, $2 ...`` (our SQL never has ``?`` inside literals)."""
    counter = iter(range(1, 1000))
    return re.sub(r"\?", lambda _m: f"${next(counter)}", sql)


def schema_missing(url: StoreURL) -> ConfigError:
    return ConfigError(
        f"the configuration tables are missing or incomplete in {url.redacted}; run: ohlcv-config init"
    )


class ConfigConnection:
    """One connection to the configuration database (sqlite3 off the loop, or asyncpg). ``?`` placeholders.

    ``create`` makes a missing SQLite file (and its directory); ``readonly`` opens it ``mode=ro`` and
    creates nothing; otherwise it must exist and is opened ``mode=rw``.
    """

    def __init__(self, url: StoreURL, *, create: bool, readonly: bool = False) -> None:
        self.url = url
        self.kind = url.kind
        self._create = create
        self._readonly = readonly and not create
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None  # asyncpg.Connection

    async def __aenter__(self) -> ConfigConnection:
        if self.kind == "sqlite":
            self._sqlite = await asyncio.to_thread(self._open_sqlite)
        elif self.kind == "postgresql":
            self._pg = await self._open_pg()
        else:
            raise ConfigError(f"--config-db: {self.url.redacted} is not a SQLite or PostgreSQL URL")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sqlite is not None:
            conn, self._sqlite = self._sqlite, None
            await asyncio.to_thread(conn.close)
        if self._pg is not None:
            pg, self._pg = self._pg, None
            await pg.close(timeout=5)

    def _open_sqlite(self) -> sqlite3.Connection:
        path: Path = self.url.path
        check_file("the configuration database", path)
        try:
            if self._create:
                path.parent.mkdir(parents=True, exist_ok=True)
                target = uri(path, "rwc")
            else:
                if not path.exists():
                    raise ConfigError(f"no configuration at {path}; run: ohlcv-config init")
                target = uri(path, "ro" if self._readonly else "rw")
            conn = sqlite3.connect(target, timeout=10.0, isolation_level=None, check_same_thread=False, uri=True)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"config database {self.url.redacted} unavailable: {exc}") from None
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            probe(conn)
        except sqlite3.Error as exc:
            conn.close()
            if is_corrupt(exc):
                raise corrupt("the configuration database", path, exc) from None
            raise StoreUnavailable(f"config database {self.url.redacted} unavailable: {exc}") from None
        return conn

    async def _open_pg(self) -> Any:
        try:
            return await asyncpg.connect(self.url.url, timeout=10.0)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(
                f"config database {self.url.redacted} unreachable: {type(exc).__name__}: {self._scrub(exc)}"
            ) from None

    def _scrub(self, exc: BaseException) -> str:
        text = str(exc).splitlines()[0] if str(exc) else ""
        return redact_text(text, self.url.url)

    # --- queries -------------------------------------------------------------------------------
    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        if self._sqlite is not None:
            conn = self._sqlite
            return await self._sqlite_call(lambda: conn.execute(sql, args).fetchall())
        return [tuple(r) for r in await self._pg_call(lambda: self._pg.fetch(_pg_params(sql), *args))]

    async def execute(self, sql: str, *args: Any) -> None:
        if self._sqlite is not None:
            conn = self._sqlite
            await self._sqlite_call(lambda: conn.execute(sql, args))
            return
        await self._pg_call(lambda: self._pg.execute(_pg_params(sql), *args))

    async def executescript(self, statements: Sequence[str]) -> None:
        for stmt in statements:
            await self.execute(stmt)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One write transaction (SQLite: BEGIN IMMEDIATE, so concurrent writers queue)."""
        if self._sqlite is not None:
            conn = self._sqlite
            await self.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if conn.in_transaction:  # some errors already rolled back; the original error is what counts
                    await asyncio.to_thread(conn.rollback)
                raise
            await self.execute("COMMIT")
            return
        if self._pg is None:
            raise StoreUnavailable(f"config database {self.url.redacted} is not open")
        tr = self._pg.transaction()
        await self._pg_call(tr.start)
        try:
            yield
        except BaseException:
            # On a dead connection the rollback fails too: the original error is the one to report.
            with contextlib.suppress(OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                await tr.rollback()
            raise
        await self._pg_call(tr.commit)

    async def existing_tables(self) -> set[str]:
        if self.kind == "sqlite":
            rows = await self.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            rows = await self.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            )
        return {str(r[0]) for r in rows}

    async def _sqlite_call(self, fn: Any) -> list[Row]:
        try:
            result = await asyncio.to_thread(fn)
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if any(m in text for m in _MISSING):
                raise schema_missing(self.url) from None
            if any(m in text for m in _SQLITE_GONE):
                raise StoreUnavailable(f"config database {self.url.redacted} unavailable: {exc}") from None
            raise
        except sqlite3.DatabaseError as exc:
            if is_corrupt(exc):
                raise corrupt("the configuration database", self.url.path, exc) from None
            raise
        return result if isinstance(result, list) else []

    async def _pg_call(self, fn: Any) -> Any:
        if self._pg is None:
            raise StoreUnavailable(f"config database {self.url.redacted} is not open")
        try:
            return await fn()
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            raise schema_missing(self.url) from None
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError) as exc:
            raise StoreUnavailable(
                f"config database {self.url.redacted} unavailable: {type(exc).__name__}: {self._scrub(exc)}"
            ) from None


def is_unique_violation(exc: BaseException) -> bool:
    """True for a UNIQUE constraint failure on either engine."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return True
    return isinstance(exc, sqlite3.IntegrityError) and "unique" in str(exc).lower()
