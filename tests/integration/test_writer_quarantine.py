"""BatchWriter on real SQLite and PostgreSQL stores: a row the store refuses is bisected out and quarantined.

The rows here skip validation on purpose (as a row made elsewhere, or a rule validation lacks, would):
the store itself refuses them, and only they may end up in the reject table.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fullon_ohlcv_service.adapters.stores import SqlOhlcvStore, open_ohlcv_store
from fullon_ohlcv_service.collectors.rejects import RejectBook
from fullon_ohlcv_service.collectors.writer import BatchWriter
from fullon_ohlcv_service.errors import StoreDataError
from fullon_ohlcv_service.log import Log
from fullon_ohlcv_service.models import Candle, Trade
from fullon_ohlcv_service.settings import StoreURL, parse_store_url
from tests.store_reads import count_rejects, count_trades

SYM = "BTC/USD"
M = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % M


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, home: Path) -> StoreURL:
    if request.param == "sqlite":
        return parse_store_url("test", f"sqlite://{home / 'ohlcv'}", ("sqlite",))
    return parse_store_url("test", request.getfixturevalue("pg_url"), ("postgresql",))


@pytest.fixture
async def store(store_url: StoreURL) -> AsyncIterator[SqlOhlcvStore]:
    async with open_ohlcv_store(store_url, "kraken") as s:
        await s.init_symbol(SYM)
        yield s


def store_refuses(store: SqlOhlcvStore) -> tuple[list[Trade], Candle]:
    """Rows this store refuses. Both: a time past 64 bits. SQLite: NaN (bound as NULL, against NOT NULL).
    PostgreSQL: NUL in text, a time past year 9999."""
    bad = [Trade(2**63, "huge-ts", 1.0, 1.0, "buy")]
    if type(store).__name__.startswith("Sqlite"):
        bad.append(Trade(T0 + 77_000, "nan-price", math.nan, 1.0, "buy"))
        return bad, Candle(T0 + 9 * M, math.nan, 1.0, 1.0, 1.0, 1.0)
    bad.append(Trade(T0 + 77_000, "nul\x00id", 1.0, 1.0, "buy"))
    return bad, Candle(10**17 - 10**17 % M, 1.0, 1.0, 1.0, 1.0, 1.0)


async def test_a_refused_row_is_bisected_out_and_the_rest_committed(store: SqlOhlcvStore) -> None:
    good = [Trade(T0 + i * 100, f"t{i:04d}", 100.0 + i, 0.5, "sell" if i % 2 else "buy") for i in range(300)]
    bad, bad_candle = store_refuses(store)
    for t in bad:
        with pytest.raises(StoreDataError):  # classified by the store adapter: permanent for these rows only
            await store.save_trades(SYM, [good[0], t])
    with pytest.raises(StoreDataError):
        await store.save_candles(SYM, [bad_candle])
    batch = [*good[:100], bad[0], *good[100:250], bad[1], *good[250:]]
    candles = [Candle(T0 + m * M, 9.0, 11.0, 8.0, 10.0, 1.5) for m in range(5)] + [bad_candle]
    book = RejectBook(Log("test.writer"))
    w = BatchWriter(store, flush_rows=1000, flush_interval=0.01, backoff_initial=0.01, backoff_max=0.05, rejects=book)
    task = asyncio.create_task(w.run())
    try:
        await w.put_trades(SYM, batch)
        await w.put_candles(SYM, candles)
        await w.put_coverage(SYM, T0, T0 + 5 * M)
        seq = w.last_seq
        await asyncio.wait_for(w.wait_committed(seq), 20)  # never committed before: retried forever
        await asyncio.wait_for(w.wait_committed(), 20)  # and the quarantined rows' reject batch after it
        assert [t async for t in store.iter_trades(SYM)] == good
        assert [c async for c in store.iter_candles(SYM)] == candles[:5]
        assert await store.candle_gaps(SYM, T0, T0 + 5 * M) == []  # the coverage after them too
        rejects = await store.load_rejects(SYM)
        assert sorted((r.kind, r.ref) for r in rejects) == sorted(
            [("trade", "huge-ts"), ("trade", bad[1].id.replace("\x00", "\\x00")), ("candle", str(candles[5].ts))])
        assert all(r.reason.startswith("store refused: StoreDataError: ") for r in rejects)
        assert book.counts == {SYM: 3} and w.quarantined == 3
        st = w.stats_for(SYM)
        assert (st.trades_stored, st.candles_stored, st.last_trade_ms) == (300, 5, good[-1].ts)
        assert not w.failing and w.depth == 0
        # a later batch of the same rows (a re-fetch): nothing new, nothing counted twice, nothing blocks
        await w.put_trades(SYM, batch)
        await asyncio.wait_for(w.wait_committed(), 20)
        assert await count_trades(store, SYM) == 300 and await count_rejects(store, SYM) == 3
        assert book.counts == {SYM: 3}
    finally:
        task.cancel()
