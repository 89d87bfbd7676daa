#!/usr/bin/env python3
"""Benchmark our trade writes against raw bulk inserts, side by side: PostgreSQL COPY and SQLite executemany.

For N fresh trades (then the same N again, all duplicates) it times our ``save_trades`` against a raw
``copy_records_to_table`` (PostgreSQL) / ``executemany`` (SQLite) into an unindexed table holding the
same columns, from the same Trade objects. Uses a temporary database and directory, removed after.
Ends with one line ``RESULT key=value ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from fullon_ohlcv_service.adapters.postgres_store import PostgresOhlcvStore
from fullon_ohlcv_service.adapters.sqlite_store import BUSY_TIMEOUT_MS, SqliteOhlcvStore
from fullon_ohlcv_service.models import Trade
from fullon_ohlcv_service.timeutil import ms_to_datetime

SYMBOL = "BTC/USD"


def make_trades(n: int, batch: int) -> list[list[Trade]]:
    """``n`` trades over about a day, several per ms at times, ids like Kraken's, in batches."""
    rng = random.Random(7)
    ts = 1_700_000_000_000
    out: list[Trade] = []
    for i in range(n):
        ts += rng.choice((0, 1, 3, 250, 900))
        side = "buy" if rng.random() < 0.5 else "sell"
        out.append(Trade(ts=ts, id=f"{ts}-{i}", price=37_000 + rng.random() * 100, amount=rng.random(), side=side))
    return [out[i : i + batch] for i in range(0, n, batch)]


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = await fn()
    return time.perf_counter() - t0, rows


async def bench_pg(admin_url: str, batches: list[list[Trade]]) -> dict[str, float]:
    name = f"ohlcv_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    n = sum(len(b) for b in batches)
    try:
        raw = await asyncpg.connect(url)
        await raw.execute(
            'CREATE TABLE raw_trades ("timestamp" timestamptz, price float8, volume float8, side text,'
            " type text, trade_id text)"
        )

        async def raw_copy() -> int:
            for b in batches:
                recs = [(ms_to_datetime(t.ts), t.price, t.amount, t.side, t.type, t.id) for t in b]
                await raw.copy_records_to_table("raw_trades", records=recs)
            return n

        async with PostgresOhlcvStore(url, "kraken") as store:
            await store.init_symbol(SYMBOL)

            async def ours() -> int:
                total = 0
                for b in batches:
                    total += await store.save_trades(SYMBOL, b)
                return total

            t_raw, _ = await timed(raw_copy)
            t_new, new = await timed(ours)
            t_dup, dup = await timed(ours)
        await raw.close()
        assert new == n and dup == 0, (new, dup)
        return {"raw": n / t_raw, "ours": n / t_new, "dup": n / t_dup}
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def bench_sqlite(batches: list[list[Trade]]) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="ohlcv_bench_"))
    n = sum(len(b) for b in batches)
    try:
        raw = sqlite3.connect(tmp / "raw.sqlite", isolation_level=None)
        # the same pragmas our store uses, so only the work differs
        for p in (f"busy_timeout={BUSY_TIMEOUT_MS}", "journal_mode=WAL", "synchronous=NORMAL", "cache_size=-32768"):
            raw.execute(f"PRAGMA {p}").fetchall()
        raw.execute("CREATE TABLE raw_trades (timestamp INTEGER, price REAL, volume REAL, side TEXT, type TEXT,"
                    " trade_id TEXT)")

        async def raw_many() -> int:
            for b in batches:
                rows = [(t.ts, t.price, t.amount, t.side, t.type, t.id) for t in b]

                def write(rows: list[tuple[int, float, float, str, str, str]] = rows) -> None:
                    raw.execute("BEGIN IMMEDIATE")
                    raw.executemany("INSERT INTO raw_trades VALUES (?, ?, ?, ?, ?, ?)", rows)
                    raw.execute("COMMIT")

                write()  # on the loop thread: the raw baseline pays no thread hop
            return n

        async with SqliteOhlcvStore(tmp / "ohlcv", "kraken") as store:
            await store.init_symbol(SYMBOL)

            async def ours() -> int:
                total = 0
                for b in batches:
                    total += await store.save_trades(SYMBOL, b)
                return total

            t_raw, _ = await timed(raw_many)
            t_new, new = await timed(ours)
            t_dup, dup = await timed(ours)
        raw.close()
        assert new == n and dup == 0, (new, dup)
        return {"raw": n / t_raw, "ours": n / t_new, "dup": n / t_dup}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main_async(args: argparse.Namespace) -> int:
    batches = make_trades(args.rows, args.batch)
    pg = await bench_pg(args.pg_admin, batches)
    print(f"PostgreSQL ({args.rows} trades, batches of {args.batch}):")
    print(f"  raw copy_records_to_table, unindexed: {pg['raw']:>12,.0f} rows/s")
    print(f"  save_trades, fresh:                   {pg['ours']:>12,.0f} rows/s  ({pg['ours'] / pg['raw']:.2f}x raw)")
    print(f"  save_trades, all duplicates:          {pg['dup']:>12,.0f} rows/s  ({pg['dup'] / pg['raw']:.2f}x raw)")
    sq = await bench_sqlite(batches)
    print(f"SQLite ({args.rows} trades, batches of {args.batch}):")
    print(f"  raw executemany, unindexed:           {sq['raw']:>12,.0f} rows/s")
    print(f"  save_trades, fresh:                   {sq['ours']:>12,.0f} rows/s  ({sq['ours'] / sq['raw']:.2f}x raw)")
    print(f"  save_trades, all duplicates:          {sq['dup']:>12,.0f} rows/s  ({sq['dup'] / sq['raw']:.2f}x raw)")
    pg_ratio = pg["ours"] / pg["raw"]
    sq_ratio = sq["ours"] / sq["raw"]
    print(f"targets: PG >= 0.25x raw COPY ({'met' if pg_ratio >= 0.25 else 'MISSED'}), "
          f"SQLite >= 0.5x raw executemany ({'met' if sq_ratio >= 0.5 else 'MISSED'})")
    print(
        f"RESULT pg_rows_s={pg['ours']:.0f} pg_vs_copy={pg_ratio:.3f} pg_dup_rows_s={pg['dup']:.0f}"
        f" sqlite_rows_s={sq['ours']:.0f} sqlite_vs_executemany={sq_ratio:.3f} sqlite_dup_rows_s={sq['dup']:.0f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5_000, help="trades per save_trades call")
    parser.add_argument(
        "--pg-admin",
        default=os.environ.get("OHLCV_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="URL of a database from which a temporary benchmark database is created and dropped",
    )
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
