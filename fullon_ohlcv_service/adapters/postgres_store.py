"""Trade and 1m candle store for one exchange in PostgreSQL, in fullon_ohlcv's schema-per-exchange layout.

Tables per symbol in schema ``<exchange>``: ``<base>_trades`` (fullon's ``timestamp, price, volume,
side, type`` plus our ``trade_id``, unique), ``<base>_candles1m`` (``timestamp`` primary key, ``open,
high, low, close, vol`` plus our ``final``) and our ``<base>_coverage(start_ms, end_ms)``. Batches are
COPYed into a per-connection temp staging table and moved with ``INSERT ... ON CONFLICT`` in one
transaction, so a batch is stored whole or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from fullon_ohlcv_service.adapters.store_rules import (
    FETCH_ROWS,
    compute_gaps,
    dedupe_candles,
    first_minute,
    reject_rows,
    require_ids,
)
from fullon_ohlcv_service.errors import ConfigError, PermanentError, StoreDataError, StoreUnavailable
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
from fullon_ohlcv_service.settings import redact_url
from fullon_ohlcv_service.timeutil import datetime_to_ms, ms_to_datetime

T = TypeVar("T")

CONNECT_TIMEOUT_S = 10.0
# Serialises DDL across processes (CREATE ... IF NOT EXISTS is not concurrent-safe on its own).
_INIT_LOCK_KEY = 0x0F0110_0C1D
_STAGE_TRADES = "_ohlcv_stage_trades"
_STAGE_CANDLES = "_ohlcv_stage_candles"
_TRADE_COLS = ("timestamp", "price", "volume", "side", "type", "trade_id")
_CANDLE_COLS = ("timestamp", "open", "high", "low", "close", "vol", "final")

# Errors that mean "the server is not there right now": retry later.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # the server is there but cannot finish this now: deadlock/serialization (40), disk full or out of
    # memory (53), a lock not available (55P03), cancelled or shutting down (57), an I/O error (58)
    asyncpg.TransactionRollbackError,
    asyncpg.InsufficientResourcesError,
    asyncpg.LockNotAvailableError,
    asyncpg.OperatorInterventionError,
    asyncpg.PostgresSystemError,
)
# Errors about the values of a batch: a data exception (22, e.g. NUL in text, a number out of range),
# a constraint (23), a value too large for an index (54). The same rows fail again: the writer isolates them.
_DATA: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
# What asyncpg (or our own conversion) raises, before the server sees it, for a value it cannot encode.
_ENCODE = (UnicodeError, TypeError, OverflowError, ValueError)


class _Names:
    """Quoted, schema-qualified names for one symbol's tables and indexes."""

    __slots__ = ("base", "candles", "coverage", "rejects", "trades")

    def __init__(self, exchange: str, symbol: str) -> None:
        self.base = symbol_table_base(symbol)
        self.trades = qualified(exchange, trades_table(symbol))
        self.candles = qualified(exchange, candles_table(symbol))
        self.coverage = qualified(exchange, coverage_table(symbol))
        self.rejects = qualified(exchange, rejects_table(symbol))


async def _setup_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_TRADES} ("
        ' "timestamp" timestamptz, price float8, volume float8, side text, type text, trade_id text)'
        " ON COMMIT DELETE ROWS;"
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE_CANDLES} ("
        ' "timestamp" timestamptz, open float8, high float8, low float8, close float8, vol float8, final bool)'
        " ON COMMIT DELETE ROWS"
    )


class PostgresOhlcvStore:
    """OhlcvStore on one PostgreSQL database, schema ``<exchange>``; open with ``async with``."""

    def __init__(self, url: str, exchange: str, min_size: int = 1, max_size: int = 4) -> None:
        self.exchange = schema_name(exchange)
        self._url = url
        self._where = redact_url(url)
        self._schema = quote_ident(self.exchange)
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._names: dict[str, _Names] = {}
        self._log = Log("fullon.store.postgres", exchange=self.exchange)

    # ---- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> PostgresOhlcvStore:
        try:
            self._pool = await asyncpg.create_pool(
                self._url,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=300,
                init=_setup_connection,
            )
        except asyncpg.InvalidCatalogNameError as exc:
            raise ConfigError(f"PostgreSQL store {self._where}: database does not exist") from exc
        except asyncpg.InvalidAuthorizationSpecificationError as exc:
            raise ConfigError(f"PostgreSQL store {self._where}: authentication failed") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"PostgreSQL store {self._where} is unreachable: {type(exc).__name__}: {_clean(exc, self._url)}"
            ) from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _n(self, symbol: str) -> _Names:
        names = self._names.get(symbol)
        if names is None:
            names = self._names[symbol] = _Names(self.exchange, symbol)
        return names

    async def _with_conn(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` with a pooled connection, classifying errors (transient vs permanent)."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("PostgresOhlcvStore used outside 'async with'")
        genuine: BaseException | None = None
        try:
            async with pool.acquire() as conn:
                try:
                    return await fn(conn)
                except asyncpg.exceptions.InternalClientError as exc:
                    # asyncpg reports a connection killed mid-command (before it noticed) this way
                    await asyncio.sleep(0)
                    if not conn.is_closed():
                        genuine = exc
                        raise
                    raise StoreUnavailable(
                        f"PostgreSQL store {self._where}: connection lost ({exc})"
                    ) from exc
        except asyncpg.exceptions.InternalClientError as exc:
            if exc is genuine:
                raise
            # the pool resets a connection on release; one lost mid-command fails that reset in the same
            # way, and the pool terminates it: the server went away (seen when PostgreSQL stops)
            raise StoreUnavailable(f"PostgreSQL store {self._where}: connection lost on release ({exc})") from exc
        except asyncpg.UndefinedTableError as exc:
            raise PermanentError(
                f"{self.exchange}: a symbol's tables do not exist ({exc}); call init_symbol first"
            ) from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"PostgreSQL store {self._where}: {type(exc).__name__}: {_clean(exc, self._url)}"
            ) from exc
        except _DATA as exc:
            raise StoreDataError(f"PostgreSQL store {self._where}: {type(exc).__name__}: {_one_line(exc)}") from exc
        except asyncpg.PostgresError as exc:
            # anything else the server refuses (a missing object, a privilege): not about the rows
            raise PermanentError(f"PostgreSQL store {self._where}: {type(exc).__name__}: {exc}") from exc

    # ---- schema ----------------------------------------------------------------------------
    async def init_symbol(self, symbol: str) -> None:
        n = self._n(symbol)
        b = n.base
        s = self._schema
        ddl = [
            f"CREATE SCHEMA IF NOT EXISTS {s}",
            f"CREATE TABLE IF NOT EXISTS {n.trades} ("
            ' "timestamp" timestamptz NOT NULL, price float8 NOT NULL, volume float8 NOT NULL,'
            " side text NOT NULL, type text NOT NULL DEFAULT '', trade_id text)",
            # a table made earlier by fullon_ohlcv lacks our columns: add them
            f"ALTER TABLE {n.trades} ADD COLUMN IF NOT EXISTS trade_id text",
            f"CREATE TABLE IF NOT EXISTS {n.candles} ("
            ' "timestamp" timestamptz PRIMARY KEY, open float8 NOT NULL, high float8 NOT NULL,'
            " low float8 NOT NULL, close float8 NOT NULL, vol float8 NOT NULL, final bool NOT NULL DEFAULT true)",
            f"ALTER TABLE {n.candles} ADD COLUMN IF NOT EXISTS final bool NOT NULL DEFAULT true",
            f"CREATE TABLE IF NOT EXISTS {n.coverage} (start_ms bigint PRIMARY KEY, end_ms bigint NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {n.rejects} (kind text NOT NULL, ref text NOT NULL, reason text NOT NULL,"
            " raw text NOT NULL, seen_ms bigint NOT NULL, PRIMARY KEY (kind, ref, reason))",
            f'CREATE INDEX IF NOT EXISTS {quote_ident(b + "_tts")} ON {n.trades} ("timestamp", trade_id)',
        ]

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK_KEY)
                for stmt in ddl:
                    await conn.execute(stmt)
                timescale = await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
                if timescale:
                    # a hypertable's unique indexes must include the time column
                    await conn.execute(
                        f'CREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(b + "_tid")} ON {n.trades}'
                        ' (trade_id, "timestamp")'
                    )
                    for table in (n.trades, n.candles):
                        await conn.execute(
                            "SELECT create_hypertable($1::regclass, 'timestamp', if_not_exists => TRUE,"
                            " migrate_data => TRUE)",
                            table,
                        )
                else:
                    await conn.execute(
                        f"CREATE UNIQUE INDEX IF NOT EXISTS {quote_ident(b + '_tid')} ON {n.trades} (trade_id)"
                    )

        await self._with_conn(run)
        self._log.debug("symbol initialised", symbol=symbol)

    async def has_symbol(self, symbol: str) -> bool:
        """True if the symbol's trade and candle tables exist."""
        wanted = [trades_table(symbol), candles_table(symbol)]

        async def run(conn: asyncpg.Connection) -> bool:
            found = await conn.fetchval(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 AND table_name = ANY($2)",
                self.exchange,
                wanted,
            )
            return int(found) == 2

        return await self._with_conn(run)

    # ---- trades ----------------------------------------------------------------------------
    async def save_trades(self, symbol: str, trades: Sequence[Trade]) -> int:
        if not trades:
            return 0
        n = self._n(symbol)
        require_ids(symbol, trades)
        with _encoding(symbol):
            records = [(ms_to_datetime(t.ts), t.price, t.amount, t.side, t.type, t.id) for t in trades]
        cols = ", ".join(f'"{c}"' for c in _TRADE_COLS)
        sql = f"INSERT INTO {n.trades} ({cols}) SELECT {cols} FROM {_STAGE_TRADES} ON CONFLICT DO NOTHING"

        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                with _encoding(symbol):
                    await conn.copy_records_to_table(_STAGE_TRADES, records=records, columns=_TRADE_COLS)
                return _rows(await conn.execute(sql))

        return await self._with_conn(run)

    async def latest_trade(self, symbol: str) -> tuple[int, str] | None:
        sql = (
            f'SELECT "timestamp", trade_id FROM {self._n(symbol).trades}'
            ' ORDER BY "timestamp" DESC, trade_id DESC LIMIT 1'
        )

        async def run(conn: asyncpg.Connection) -> tuple[int, str] | None:
            row = await conn.fetchrow(sql)
            return None if row is None else (datetime_to_ms(row[0]), str(row[1]))

        return await self._with_conn(run)

    async def iter_trades(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Trade]:
        where, args = _range(since, until)
        sql = (
            f'SELECT "timestamp", trade_id, price, volume, side, type FROM {self._n(symbol).trades}{where}'
            ' ORDER BY "timestamp", trade_id'
        )
        async for r in self._stream(sql, args):
            yield Trade(ts=datetime_to_ms(r[0]), id=r[1], price=r[2], amount=r[3], side=_side(r[4]), type=r[5])

    async def _stream(self, sql: str, args: Sequence[Any]) -> AsyncIterator[asyncpg.Record]:
        """Rows of ``sql`` through a server-side cursor, FETCH_ROWS per round trip."""
        pool = self._pool
        if pool is None:
            raise RuntimeError("PostgresOhlcvStore used outside 'async with'")
        try:
            async with pool.acquire() as conn:
                try:
                    async with conn.transaction(readonly=True):
                        async for row in conn.cursor(sql, *args, prefetch=FETCH_ROWS):
                            yield row
                except asyncpg.exceptions.InternalClientError as exc:
                    await asyncio.sleep(0)
                    if not conn.is_closed():
                        raise
                    raise StoreUnavailable(f"PostgreSQL store {self._where}: connection lost ({exc})") from exc
        except asyncpg.UndefinedTableError as exc:
            raise PermanentError(f"{self.exchange}: {exc}; call init_symbol first") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(
                f"PostgreSQL store {self._where}: {type(exc).__name__}: {_clean(exc, self._url)}"
            ) from exc
        except asyncpg.PostgresError as exc:
            raise PermanentError(f"PostgreSQL store {self._where}: {type(exc).__name__}: {exc}") from exc

    # ---- candles ---------------------------------------------------------------------------
    async def save_candles(self, symbol: str, candles: Sequence[Candle]) -> int:
        if not candles:
            return 0
        n = self._n(symbol)
        with _encoding(symbol):
            records = [
                (ms_to_datetime(c.ts), c.open, c.high, c.low, c.close, c.volume, c.final)
                for c in dedupe_candles(candles)
            ]
        cols = ", ".join(f'"{c}"' for c in _CANDLE_COLS)
        sql = (
            f"INSERT INTO {n.candles} AS tbl ({cols}) SELECT {cols} FROM {_STAGE_CANDLES}"
            ' ON CONFLICT ("timestamp") DO UPDATE SET open = excluded.open, high = excluded.high,'
            " low = excluded.low, close = excluded.close, vol = excluded.vol, final = excluded.final"
            " WHERE NOT (tbl.final AND NOT excluded.final)"
            " AND (tbl.open, tbl.high, tbl.low, tbl.close, tbl.vol, tbl.final)"
            " IS DISTINCT FROM"
            " (excluded.open, excluded.high, excluded.low, excluded.close, excluded.vol, excluded.final)"
        )

        async def run(conn: asyncpg.Connection) -> int:
            async with conn.transaction():
                with _encoding(symbol):
                    await conn.copy_records_to_table(_STAGE_CANDLES, records=records, columns=_CANDLE_COLS)
                return _rows(await conn.execute(sql))

        return await self._with_conn(run)

    async def _one_candle(self, sql: str) -> Candle | None:
        async def run(conn: asyncpg.Connection) -> Candle | None:
            row = await conn.fetchrow(sql)
            return None if row is None else _candle(row)

        return await self._with_conn(run)

    async def latest_candle(self, symbol: str, final_only: bool = False) -> Candle | None:
        where = " WHERE final" if final_only else ""
        return await self._one_candle(
            f'SELECT {_SEL_CANDLE} FROM {self._n(symbol).candles}{where} ORDER BY "timestamp" DESC LIMIT 1'
        )

    async def iter_candles(
        self, symbol: str, since: int | None = None, until: int | None = None
    ) -> AsyncIterator[Candle]:
        where, args = _range(since, until)
        sql = f'SELECT {_SEL_CANDLE} FROM {self._n(symbol).candles}{where} ORDER BY "timestamp"'
        async for r in self._stream(sql, args):
            yield _candle(r)

    # ---- rejects ---------------------------------------------------------------------------
    async def save_rejects(self, symbol: str, rejects: Sequence[Reject]) -> int:
        if not rejects:
            return 0
        cols = list(zip(*reject_rows(rejects), strict=True))
        sql = (
            f"INSERT INTO {self._n(symbol).rejects} (kind, ref, reason, raw, seen_ms)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])"
            " ON CONFLICT (kind, ref, reason) DO NOTHING"
        )

        async def run(conn: asyncpg.Connection) -> int:
            with _encoding(symbol):
                return _rows(await conn.execute(sql, *(list(c) for c in cols)))

        return await self._with_conn(run)

    async def load_rejects(self, symbol: str) -> list[Reject]:
        sql = (
            f"SELECT kind, ref, reason, raw, seen_ms FROM {self._n(symbol).rejects}"
            " ORDER BY seen_ms, kind, ref, reason"
        )

        async def run(conn: asyncpg.Connection) -> list[Reject]:
            return [Reject(_kind(r[0]), r[1], r[2], r[3], int(r[4])) for r in await conn.fetch(sql)]

        return await self._with_conn(run)

    # ---- coverage and gaps -----------------------------------------------------------------
    async def add_coverage(self, symbol: str, start: int, end: int) -> None:
        if end <= start:
            return
        n = self._n(symbol)

        async def run(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                # serialise merges of this symbol's coverage across processes
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", n.coverage)
                rows = await conn.fetch(
                    f"DELETE FROM {n.coverage} WHERE start_ms <= $1 AND end_ms >= $2 RETURNING start_ms, end_ms",
                    end,
                    start,
                )
                lo = min([start, *(r[0] for r in rows)])
                hi = max([end, *(r[1] for r in rows)])
                await conn.execute(f"INSERT INTO {n.coverage} (start_ms, end_ms) VALUES ($1, $2)", lo, hi)

        await self._with_conn(run)

    async def candle_gaps(self, symbol: str, since: int, until: int) -> list[tuple[int, int]]:
        n = self._n(symbol)
        lo = first_minute(since)

        async def run(conn: asyncpg.Connection) -> list[tuple[int, int]]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                ts = await conn.fetch(
                    f'SELECT "timestamp" FROM {n.candles} WHERE "timestamp" >= $1 AND "timestamp" < $2'
                    ' ORDER BY "timestamp"',
                    ms_to_datetime(lo),
                    ms_to_datetime(until),
                )
                cov = await conn.fetch(
                    f"SELECT start_ms, end_ms FROM {n.coverage} WHERE end_ms > $1 AND start_ms < $2 ORDER BY start_ms",
                    lo,
                    until,
                )
            return compute_gaps(
                since, until, (datetime_to_ms(r[0]) for r in ts), [(int(r[0]), int(r[1])) for r in cov]
            )

        return await self._with_conn(run)


_SEL_CANDLE = '"timestamp", open, high, low, close, vol, final'


def _candle(r: Sequence[Any]) -> Candle:
    return Candle(
        ts=datetime_to_ms(r[0]), open=r[1], high=r[2], low=r[3], close=r[4], volume=r[5], final=bool(r[6])
    )


def _kind(value: str) -> RejectKind:
    return "candle" if value == "candle" else "trade"


def _side(value: str) -> Side:
    return "sell" if value == "sell" else "buy"


@contextlib.contextmanager
def _encoding(symbol: str) -> Iterator[None]:
    """Values that cannot be converted or encoded (a time past year 9999, a lone surrogate, a str for a
    float) are a StoreDataError of the batch, like the server's own data errors."""
    try:
        yield
    except _ENCODE as exc:
        raise StoreDataError(f"{symbol}: a value cannot be stored: {type(exc).__name__}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rows(status: str) -> int:
    """Row count from a command tag such as ``INSERT 0 42``."""
    return int(status.rsplit(" ", 1)[-1])


def _range(since: int | None, until: int | None) -> tuple[str, list[datetime]]:
    conds: list[str] = []
    args: list[datetime] = []
    if since is not None:
        args.append(ms_to_datetime(since))
        conds.append(f'"timestamp" >= ${len(args)}')
    if until is not None:
        args.append(ms_to_datetime(until))
        conds.append(f'"timestamp" < ${len(args)}')
    return (" WHERE " + " AND ".join(conds) if conds else ""), args


def _clean(exc: BaseException, url: str) -> str:
    """The exception text with any password from ``url`` (and any URL's password) removed."""
    from fullon_ohlcv_service.redaction import redact_text

    return redact_text(str(exc), url)
