"""The SQLite store after a real failed write (disk full, I/O error at COMMIT, a COMMIT that stays locked).

Each case makes SQLite itself fail: a file-size limit (RLIMIT_FSIZE) under the WAL file, the
database's own page limit (``max_page_count``, SQLITE_FULL), and a reader holding its lock past the
busy timeout at COMMIT. The original error must come out classified (StoreUnavailable: the writer
retries it), the connection must not stay inside the failed transaction, and the next write must
succeed once the cause is gone.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fullon_ohlcv_service.adapters.sqlite_store import SqliteOhlcvStore
from fullon_ohlcv_service.errors import StoreUnavailable
from fullon_ohlcv_service.models import Trade
from tests.store_reads import count_trades

SYM = "BTC/USD"
T0 = 1_700_000_040_000


def trades(n: int, prefix: str) -> list[Trade]:
    return [Trade(ts=T0 + i, id=f"{prefix}{i:07d}", price=100.0 + i % 7, amount=0.25, side="buy") for i in range(n)]


@pytest.fixture
async def store(home: Path) -> AsyncIterator[SqliteOhlcvStore]:
    async with SqliteOhlcvStore(home / "ohlcv", "kraken") as s:
        await s.init_symbol(SYM)
        yield s


async def traced(store: SqliteOhlcvStore) -> list[str]:
    """The statements the store's connection runs from now on (set on the store's own thread)."""
    seen: list[str] = []
    await store._run(lambda conn: conn.set_trace_callback(seen.append))
    return seen


async def in_transaction(store: SqliteOhlcvStore) -> bool:
    return await store._run(lambda conn: conn.in_transaction)


async def test_commit_locked_past_the_busy_timeout_is_rolled_back(store: SqliteOhlcvStore) -> None:
    """SQLite keeps a transaction open when COMMIT gets SQLITE_BUSY: without a rollback every later
    BEGIN fails ('cannot start a transaction within a transaction') until the worker restarts.

    The file is switched to a rollback journal, where COMMIT needs every reader gone: a reader that
    holds its lock past the busy timeout makes the COMMIT itself fail.
    """
    await store._run(lambda conn: conn.execute("PRAGMA kraken.journal_mode=DELETE").fetchall())
    await store._run(lambda conn: conn.execute("PRAGMA busy_timeout=200"))
    assert await store.save_trades(SYM, trades(10, "a")) == 10
    reader = sqlite3.connect(store.path, isolation_level=None)
    seen = await traced(store)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM btc_usd_trades").fetchall()  # holds a SHARED lock
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.save_trades(SYM, trades(100, "b"))
        assert seen[-2:] == ["COMMIT", "ROLLBACK"], seen[-3:]  # the COMMIT failed, and was rolled back
        assert not await in_transaction(store)
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert await store.save_trades(SYM, trades(100, "b")) == 100  # the cause is gone: the retry stores it
    assert await count_trades(store, SYM) == 110


async def test_disk_full_keeps_its_error_and_the_next_write_succeeds(store: SqliteOhlcvStore) -> None:
    """SQLITE_FULL from the database's page limit: SQLite rolls the transaction back by itself, so a
    blind ROLLBACK failed with 'no transaction is active' and replaced the disk-full error."""
    assert await store.save_trades(SYM, trades(10, "a")) == 10
    pages = await store._run(lambda conn: int(conn.execute("PRAGMA kraken.page_count").fetchone()[0]))
    await store._run(lambda conn: conn.execute(f"PRAGMA kraken.max_page_count={pages + 1}").fetchall())
    with pytest.raises(StoreUnavailable, match="database or disk is full") as err:
        await store.save_trades(SYM, trades(5000, "b"))
    assert "no transaction is active" not in str(err.value)
    assert not await in_transaction(store)
    assert await count_trades(store, SYM) == 10  # stored whole or not at all
    await store._run(lambda conn: conn.execute("PRAGMA kraken.max_page_count=1073741823").fetchall())
    assert await store.save_trades(SYM, trades(5000, "b")) == 5000
    assert await count_trades(store, SYM) == 5010


FSIZE_SCRIPT = r"""
import asyncio, json, os, resource, sys
from pathlib import Path
from fullon_ohlcv_service.adapters.sqlite_store import SqliteOhlcvStore
from fullon_ohlcv_service.errors import StoreUnavailable
from fullon_ohlcv_service.models import Trade

def trades(n, prefix):
    return [Trade(ts=1_700_000_040_000 + i, id=f"{prefix}{i:07d}", price=100.0, amount=0.25, side="buy")
            for i in range(n)]

async def main(directory):
    out = {}
    async with SqliteOhlcvStore(Path(directory), "kraken") as store:
        await store.init_symbol("BTC/USD")
        await store.save_trades("BTC/USD", trades(10, "a"))
        seen = []
        await store._run(lambda conn: conn.set_trace_callback(seen.append))
        wal = os.path.getsize(store.path.with_name(store.path.name + "-wal"))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal, hard))  # no file may grow past the WAL's size
        try:
            await store.save_trades("BTC/USD", trades(3000, "b"))
            out["error"] = None
        except StoreUnavailable as exc:
            out["error"] = str(exc)
        out["failed_at"] = seen[-1]
        out["in_transaction"] = await store._run(lambda conn: conn.in_transaction)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # the cause is gone
        out["retried"] = await store.save_trades("BTC/USD", trades(3000, "b"))
        out["count"] = sum([1 async for _ in store.iter_trades("BTC/USD")])
    print(json.dumps(out))

asyncio.run(main(sys.argv[1]))
"""


def test_io_error_at_commit_is_classified_and_the_next_write_succeeds(home: Path) -> None:
    """An I/O error while COMMIT appends the transaction to the WAL (a file-size limit: EFBIG).

    Run in its own process: the limit applies to every file the process writes.
    """
    r = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(home / "ohlcv")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["error"] and "disk I/O error" in out["error"], out
    assert out["failed_at"] == "COMMIT" and out["in_transaction"] is False, out
    assert (out["retried"], out["count"]) == (3000, 3010), out


async def test_the_writer_retries_a_failed_commit_until_it_is_stored_once(home: Path) -> None:
    """The same COMMIT failure under the BatchWriter: the batch stays queued, is retried, and lands once."""
    from fullon_ohlcv_service.collectors.writer import BatchWriter

    async with SqliteOhlcvStore(home / "ohlcv", "kraken") as s:
        await s.init_symbol(SYM)
        await s._run(lambda conn: conn.execute("PRAGMA kraken.journal_mode=DELETE").fetchall())
        await s._run(lambda conn: conn.execute("PRAGMA busy_timeout=100"))
        writer = BatchWriter(s, flush_interval=0.01, backoff_initial=0.05, backoff_max=0.2)
        task = asyncio.create_task(writer.run())
        reader = sqlite3.connect(s.path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM btc_usd_trades").fetchall()
            await writer.put_trades(SYM, trades(50, "w"))
            for _ in range(200):  # the COMMIT keeps failing while the reader holds on
                if writer.write_errors >= 2:
                    break
                await asyncio.sleep(0.05)
            assert writer.last_error is not None and "locked" in writer.last_error
        finally:
            reader.execute("COMMIT")
            reader.close()
        await asyncio.wait_for(writer.wait_committed(), 10)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await count_trades(s, SYM) == 50
        assert writer.stats_for(SYM).trades_stored == 50
