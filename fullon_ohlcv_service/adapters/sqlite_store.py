"""Trade and 1m candle store for one exchange in its own SQLite file, ATTACHed under the exchange name.

Layout: ``<dir>/<exchange>.sqlite`` attached as ``<exchange>``, so tables read ``kraken.btc_usd_trades``
exactly as the PostgreSQL schema does. SQLite has no timestamptz: the ``timestamp`` column holds
INTEGER epoch milliseconds (UTC). Booleans (``final``) are INTEGER 0/1. WAL mode, a 30 s busy
timeout, and one ``BEGIN IMMEDIATE`` transaction per batch: a batch is stored whole or not at all.
All sqlite3 calls run on one private thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fullon_ohlcv_service.adapters.sqlite_files import check_file, corrupt, is_corrupt, probe, uri
from fullon_ohlcv_service.adapters.sqlite_wal import enable_wal, end_failed_transaction
from fullon_ohlcv_service.adapters.store_rules import (
    FETCH_ROWS,
    compute_gaps,
    dedupe_candles,
    first_minute,
    reject_rows,
    require_ids,
)
from fullon_ohlcv_service.errors import PermanentError, StoreDataError, StoreUnavailable
from fullon_ohlcv_service.identifiers import (
    candles_table,
    coverage_table,
    qualified,
    quote_ident,
    rejects_table,
    schema_name,
    symbol_table_base,
    trades_table,
)
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, Reject, RejectKind, Side, Trade

T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
# Errors about the values of a batch (the same rows fail again; the writer isolates them): a constraint
# (NaN is bound as NULL and breaks NOT NULL), an integer past 64 bits, text that is not encodable.
_DATA: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    OverflowError,
    UnicodeError,
)


class _Names:
    """Quoted, schema-qualified names for one symbol's tables and indexes."""

    __slots__ = ("base", "candles", "coverage", "rejects", "trades", "trades_bare")

    def __init__(self, exchange: str, symbol: str) -> None:
        self.base = symbol_table_base(symbol)
        self.trades_bare = trades_table(symbol)
        self.trades = qualified(exchange, self.trades_bare)
        self.candles = qualified(exchange, candles_table(symbol))
        self.coverage = qualified(exchange, coverage_table(symbol))
        self.rejects = qualified(exchange, rejects_table(symbol))


class SqliteOhlcvStore:
    """OhlcvStore on ``<directory>/<exchange>.sqlite``; open with ``async with``.

    ``readonly`` (ohlcv-export) attaches an existing file ``mode=ro`` and creates nothing.
    """

    def __init__(self, directory: Path, exchange: str, *, readonly: bool = False) -> None:
        self.readonly = readonly
        self.exchange = schema_name(exchange)
        self.directory = Path(directory)
        self.path = self.directory / f"{self.exchange}.sqlite"
        self._schema = quote_ident(self.exchange)
        self._conn: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._names: dict[str, _Names] = {}
        self._log = Log("fullon.store.sqlite", exchange=self.exchange)

    # ---- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> SqliteOhlcvStore:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{self.exchange}")
        try:
            self._conn = await self._run_raw(self._connect)
        except BaseException:
            self._pool.shutdown(wait=False)
            self._pool = None
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        pool, conn = self._pool, self._conn
        self._conn = None
        self._pool = None
        if pool is None:
            return
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(pool, conn.close)
        finally:
            pool.shutdown(wait=True)

    def _connect(self) -> sqlite3.Connection:
        check_file("the SQLite store", self.path)
        try:
            if not self.readonly:
                self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=True, uri=self.readonly)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"SQLite store {self.path} cannot be opened: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            target = uri(self.path, "ro") if self.readonly else str(self.path)
            conn.execute(f"ATTACH DATABASE ? AS {self._schema}", (target,))
            probe(conn, self._schema)
            if not self.readonly:
                enable_wal(conn, BUSY_TIMEOUT_MS, self._schema)
                conn.execute(f"PRAGMA {self._schema}.synchronous=NORMAL")
            conn.execute(f"PRAGMA {self._schema}.cache_size=-32768")
            conn.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.Error as exc:
            conn.close()
            if is_corrupt(exc):
                raise corrupt("the SQLite store", self.path, exc) from None
            raise StoreUnavailable(f"SQLite store {self.path} cannot be opened: {exc}") from exc
        return conn

    async def _run_raw(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            raise RuntimeError("SqliteOhlcvStore used outside 'async with'")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the store thread, classifying sqlite errors."""
        conn = self._conn
        if conn is None:
            raise RuntimeError("SqliteOhlcvStore used outside 'async with'")

        def call() -> T:
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    raise PermanentError(
                        f"{self.exchange}: a symbol's tables do not exist ({exc}); call init_symbol first"
                    ) from exc
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from exc
            except _DATA as exc:
                raise StoreDataError(f"SQLite store {self.path}: {type(exc).__name__}: {exc}") from exc
            except sqlite3.ProgrammingError as exc:
                if "binding parameter" in str(exc):  # a value of a type SQLite cannot store
                    raise StoreDataError(f"SQLite store {self.path}: {exc}") from exc
                raise PermanentError(f"SQLite store {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise PermanentError(f"SQLite store {self.path}: {exc}") from exc

        return await self._run_raw(call)

    def _n(self, symbol: str) -> _Names:
        names = self._names.get(symbol)
        if names is None:
            names = self._names[symbol] = _Names(self.exchange, symbol)
        return names

    @staticmethod
    def _write(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
        """One write transaction: BEGIN IMMEDIATE (waits on busy_timeout), body, COMMIT; ROLLBACK on any failure.

        A failed COMMIT (disk full, I/O error, a lock that outlived the busy timeout) is rolled back
        too, so the connection never stays inside a transaction that every later BEGIN would trip
        on; the original error is what propagates (see ``end_failed_transaction``).
        """
        end_failed_transaction(conn)  # a transaction left open by an earlier failure
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            conn.execute("COMMIT")
        except BaseException as exc:
            end_failed_transaction(conn, exc)
            raise
        return result

    # ---- schema ----------------------------------------------------------------------------
    async def init_symbol(self, symbol: str) -> None:
        n = self._n(symbol)
        s = self._schema
        b = n.base
        ddl = [
            # Clustered on the trade id (the dedup key); the time index carries the primary key, so it
            # serves (timestamp, trade_id) order. Two b-trees per row instead of three.
            f"CREATE TABLE IF NOT EXISTS {n.trades} ("
            " timestamp INTEGER NOT NULL, price REAL NOT NULL, volume REAL NOT NULL,"
            " side TEXT NOT NULL, type TEXT NOT NULL DEFAULT '', trade_id TEXT NOT NULL PRIMARY KEY) WITHOUT ROWID",
            f"CREATE INDEX IF NOT EXISTS {s}.{quote_ident(b + '_tts')} ON {quote_ident(n.trades_bare)} (timestamp)",
            f"CREATE TABLE IF NOT EXISTS {n.candles} ("
            " timestamp INTEGER PRIMARY KEY, open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL,"
            " close REAL NOT NULL, vol REAL NOT NULL, final INTEGER NOT NULL DEFAULT 1)",
            f"CREATE TABLE IF NOT EXISTS {n.coverage} (start_ms INTEGER NOT NULL PRIMARY KEY, end_ms INTEGER NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {n.rejects} ("
            " kind TEXT NOT NULL, ref TEXT NOT NULL, reason TEXT NOT NULL, raw TEXT NOT NULL,"
            " seen_ms INTEGER NOT NULL, PRIMARY KEY (kind, ref, reason)) WITHOUT ROWID",
        ]

        def run(conn: sqlite3.Connection) -> None:
            def body() -> None:
                for stmt in ddl:
                    conn.execute(stmt)

            self._write(conn, body)

        await self._run(run)

    async def has_symbol(self, symbol: str) -> bool:
        """True if the symbol's trade and candle tables exist."""
        n = self._n(symbol)
        wanted = {trades_table(symbol), candles_table(symbol)}

        def run(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(
                f"SELECT name FROM {self._schema}.sqlite_master WHERE type='table' AND name IN (?, ?)",
                tuple(wanted),
            ).fetchall()
            return len(rows) == 2

        del n
        return await self._run(run)

    # ---- trades ----------------------------------------------------------------------------
    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        if not trades:
            return 0
        n = self._n(symbol)
        # ON CONFLICT (trade_id) DO NOTHING, not INSERT OR IGNORE: OR IGNORE would also silently
        # skip rows that break NOT NULL; this skips only duplicates and fails the batch otherwise.
        sql = (
            f"INSERT INTO {n.trades} (timestamp, price, volume, side, type, trade_id)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (trade_id) DO NOTHING"
        )
        require_ids(symbol, trades)
        rows = [(t.ts, t.price, t.amount, t.side, t.type, t.id) for t in trades]
        rows.sort(key=_by_id)  # key order makes the clustered b-tree inserts local

        def run(conn: sqlite3.Connection) -> int:
            return self._write(conn, lambda: conn.executemany(sql, rows).rowcount)

        return await self._run(run)

    async def latest_trade(self, symbol: str) -> tuple[int, str] | None:
        n = self._n(symbol)
        sql = f"SELECT timestamp, trade_id FROM {n.trades} ORDER BY timestamp DESC, trade_id DESC LIMIT 1"

        def run(conn: sqlite3.Connection) -> tuple[int, str] | None:
            row = conn.execute(sql).fetchone()
            return None if row is None else (int(row[0]), str(row[1]))

        return await self._run(run)

    async def iter_trades(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Trade]:
        # Keyset pages on (timestamp, trade_id): no cursor is held open across awaits.
        n = self._n(symbol)
        cols = "timestamp, trade_id, price, volume, side, type"
        upper = "" if until is None else " AND timestamp < ?"
        up_args: tuple[int, ...] = () if until is None else (until,)
        first = f"SELECT {cols} FROM {n.trades} WHERE timestamp >= ?{upper} ORDER BY timestamp, trade_id LIMIT ?"
        nxt = (
            f"SELECT {cols} FROM {n.trades} WHERE (timestamp, trade_id) > (?, ?){upper}"
            " ORDER BY timestamp, trade_id LIMIT ?"
        )
        lo = -(2**63) if since is None else since
        page = await self._run(lambda conn: conn.execute(first, (lo, *up_args, FETCH_ROWS)).fetchall())
        while page:
            for r in page:
                yield Trade(ts=r[0], id=r[1], price=r[2], amount=r[3], side=_side(r[4]), type=r[5])
            if len(page) < FETCH_ROWS:
                return
            last_ts, last_id = page[-1][0], page[-1][1]
            page = await self._run(
                lambda conn, a=(last_ts, last_id, *up_args, FETCH_ROWS): conn.execute(nxt, a).fetchall()  # type: ignore[misc]
            )

    # ---- candles ---------------------------------------------------------------------------
    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int:
        if not candles:
            return 0
        n = self._n(symbol)
        sql = (
            f"INSERT INTO {n.candles} AS tbl (timestamp, open, high, low, close, vol, final)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (timestamp) DO UPDATE SET open = excluded.open, high = excluded.high,"
            " low = excluded.low, close = excluded.close, vol = excluded.vol, final = excluded.final"
            " WHERE NOT (tbl.final AND NOT excluded.final)"
            " AND (tbl.open, tbl.high, tbl.low, tbl.close, tbl.vol, tbl.final)"
            " IS NOT (excluded.open, excluded.high, excluded.low, excluded.close, excluded.vol, excluded.final)"
        )
        rows = [(c.ts, c.open, c.high, c.low, c.close, c.volume, int(c.final)) for c in dedupe_candles(candles)]

        def run(conn: sqlite3.Connection) -> int:
            return self._write(conn, lambda: conn.executemany(sql, rows).rowcount)

        return await self._run(run)

    async def _one_candle(self, sql: str) -> Candle | None:
        def run(conn: sqlite3.Connection) -> Candle | None:
            row = conn.execute(sql).fetchone()
            return None if row is None else _candle(row)

        return await self._run(run)

    async def latest_candle(self, symbol: str, final_only: bool = False) -> Candle | None:
        where = " WHERE final = 1" if final_only else ""
        return await self._one_candle(
            f"SELECT {_CANDLE_COLS} FROM {self._n(symbol).candles}{where} ORDER BY timestamp DESC LIMIT 1"
        )

    async def iter_candles(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Candle]:
        n = self._n(symbol)
        upper = "" if until is None else " AND timestamp < ?"
        up_args: tuple[int, ...] = () if until is None else (until,)
        first = f"SELECT {_CANDLE_COLS} FROM {n.candles} WHERE timestamp >= ?{upper} ORDER BY timestamp LIMIT ?"
        nxt = f"SELECT {_CANDLE_COLS} FROM {n.candles} WHERE timestamp > ?{upper} ORDER BY timestamp LIMIT ?"
        lo = -(2**63) if since is None else since
        page = await self._run(lambda conn: conn.execute(first, (lo, *up_args, FETCH_ROWS)).fetchall())
        while page:
            for r in page:
                yield _candle(r)
            if len(page) < FETCH_ROWS:
                return
            a = (page[-1][0], *up_args, FETCH_ROWS)
            page = await self._run(lambda conn, a=a: conn.execute(nxt, a).fetchall())  # type: ignore[misc]

    # ---- rejects ---------------------------------------------------------------------------
    async def save_rejects(self, symbol: str, rejects: Sequence[Reject]) -> int:
        if not rejects:
            return 0
        sql = (
            f"INSERT INTO {self._n(symbol).rejects} (kind, ref, reason, raw, seen_ms) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (kind, ref, reason) DO NOTHING"
        )
        rows = reject_rows(rejects)

        def run(conn: sqlite3.Connection) -> int:
            return self._write(conn, lambda: conn.executemany(sql, rows).rowcount)

        return await self._run(run)

    async def load_rejects(self, symbol: str) -> list[Reject]:
        sql = (
            f"SELECT kind, ref, reason, raw, seen_ms FROM {self._n(symbol).rejects}"
            " ORDER BY seen_ms, kind, ref, reason"
        )

        def run(conn: sqlite3.Connection) -> list[Reject]:
            return [Reject(_kind(r[0]), r[1], r[2], r[3], int(r[4])) for r in conn.execute(sql).fetchall()]

        return await self._run(run)

    # ---- coverage and gaps -----------------------------------------------------------------
    async def add_coverage(self, symbol: str, start: int, end: int) -> None:
        if end <= start:
            return
        n = self._n(symbol)

        def run(conn: sqlite3.Connection) -> None:
            def body() -> None:
                touching = conn.execute(
                    f"SELECT start_ms, end_ms FROM {n.coverage} WHERE start_ms <= ? AND end_ms >= ?", (end, start)
                ).fetchall()
                lo = min([start, *(r[0] for r in touching)])
                hi = max([end, *(r[1] for r in touching)])
                conn.execute(f"DELETE FROM {n.coverage} WHERE start_ms <= ? AND end_ms >= ?", (end, start))
                conn.execute(f"INSERT INTO {n.coverage} (start_ms, end_ms) VALUES (?, ?)", (lo, hi))

            self._write(conn, body)

        await self._run(run)

    async def candle_gaps(self, symbol: str, since: int, until: int) -> list[tuple[int, int]]:
        n = self._n(symbol)
        lo = first_minute(since)

        def run(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            # one read transaction so candles and coverage are a consistent snapshot
            conn.execute("BEGIN")
            try:
                ts = [r[0] for r in conn.execute(
                    f"SELECT timestamp FROM {n.candles} WHERE timestamp >= ? AND timestamp < ? ORDER BY timestamp",
                    (lo, until),
                )]
                cov = [(int(r[0]), int(r[1])) for r in conn.execute(
                    f"SELECT start_ms, end_ms FROM {n.coverage} WHERE end_ms > ? AND start_ms < ? ORDER BY start_ms",
                    (lo, until),
                )]
            finally:
                conn.execute("COMMIT")
            return compute_gaps(since, until, ts, cov)

        return await self._run(run)


_CANDLE_COLS = "timestamp, open, high, low, close, vol, final"


def _candle(r: Sequence[Any]) -> Candle:
    return Candle(ts=r[0], open=r[1], high=r[2], low=r[3], close=r[4], volume=r[5], final=bool(r[6]))


def _kind(value: str) -> RejectKind:
    return "candle" if value == "candle" else "trade"


def _side(value: str) -> Side:
    return "sell" if value == "sell" else "buy"


def _by_id(row: tuple[int, float, float, str, str, str]) -> str:
    return row[5]
